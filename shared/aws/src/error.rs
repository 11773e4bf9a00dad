//! How AWS SDK errors map onto [`PortError`]: what the caller should do about them.
//!
//! - Throttling, 5xx, timeouts and network failures are [`PortError::Transient`] (the SDK has
//!   already retried them with backoff by the time we see them).
//! - A failed condition is [`PortError::Conflict`]: someone else wrote first.
//! - Validation errors, missing tables or buckets and denied access are
//!   [`PortError::Permanent`]: retrying will not help.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use tb_core::ports::PortError;

/// Error codes that mean "try again later", across DynamoDB, SQS and S3.
const TRANSIENT_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "InternalServerError",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "TransactionConflictException",
    "TransactionInProgressException",
    "RequestTimeout",
    "RequestTimeoutException",
    "KMSThrottlingException",
];

/// Error codes that mean "someone else wrote first".
const CONFLICT_CODES: &[&str] = &["ConditionalCheckFailedException"];

/// Maps any SDK error of the three services onto a [`PortError`]; `what` says which call
/// failed and on what (it leads the message).
pub(crate) fn classify<E>(what: &str, err: &SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let status = service.raw().status().as_u16();
            let message = service.err().message().unwrap_or_default();
            let detail = format!(
                "{what}: {} (HTTP {status}): {message}",
                if code.is_empty() { "error" } else { code }
            );
            if CONFLICT_CODES.contains(&code) {
                PortError::Conflict(detail)
            } else if TRANSIENT_CODES.contains(&code) || status >= 500 || status == 429 {
                PortError::Transient(detail)
            } else {
                PortError::Permanent(detail)
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            PortError::Transient(format!("{what}: {}", DisplayErrorContext(err)))
        }
        // A request that could not even be built (a bug or bad settings).
        _ => PortError::Permanent(format!("{what}: {}", DisplayErrorContext(err))),
    }
}

/// Why a `TransactWriteItems` failed.
#[derive(Debug)]
pub(crate) enum TransactionFailure {
    /// The conditions of these items (by position in the transaction) did not hold.
    ConditionFailed(Vec<usize>),
    Other(PortError),
}

/// Reads the per-item cancellation reasons of a cancelled transaction. DynamoDB lists one
/// reason per item, in order (`None` for the items that were fine); if a server leaves them
/// out, the message (`... [ConditionalCheckFailed, None]`) still names them.
pub(crate) fn transaction_failure(
    what: &str,
    err: &SdkError<TransactWriteItemsError, HttpResponse>,
) -> TransactionFailure {
    let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
        err.as_service_error()
    else {
        return TransactionFailure::Other(classify(what, err));
    };
    let mut codes: Vec<String> = cancelled
        .cancellation_reasons()
        .iter()
        .map(|r| r.code().unwrap_or("None").to_string())
        .collect();
    if codes.is_empty() {
        codes = reasons_from_message(cancelled.message().unwrap_or_default());
    }
    let failed: Vec<usize> = codes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.as_str() == "ConditionalCheckFailed")
        .map(|(i, _)| i)
        .collect();
    let detail = format!("{what}: transaction cancelled: [{}]", codes.join(", "));
    if !failed.is_empty() {
        TransactionFailure::ConditionFailed(failed)
    } else if codes.iter().any(|c| c == "ValidationError") {
        TransactionFailure::Other(PortError::Permanent(detail))
    } else {
        // TransactionConflict, throttling, capacity: another try will do.
        TransactionFailure::Other(PortError::Transient(detail))
    }
}

/// `"Transaction cancelled, please refer cancellation reasons for specific reasons
/// [ConditionalCheckFailed, None]"` → `["ConditionalCheckFailed", "None"]`.
fn reasons_from_message(message: &str) -> Vec<String> {
    let Some(open) = message.rfind('[') else {
        return Vec::new();
    };
    let Some(close) = message[open..].find(']') else {
        return Vec::new();
    };
    message[open + 1..open + close]
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_reasons_are_read_from_the_message_when_not_listed() {
        let m = "Transaction cancelled, please refer cancellation reasons for specific reasons [None, ConditionalCheckFailed]";
        assert_eq!(
            reasons_from_message(m),
            vec!["None", "ConditionalCheckFailed"]
        );
        assert!(reasons_from_message("no brackets").is_empty());
    }
}
