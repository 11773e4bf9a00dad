//! How SQLite failures map onto [`PortError`]: by what the caller should do about them.

use sqlx::error::ErrorKind;
use tb_core::ports::PortError;

/// SQLite's primary result codes that mean "try again later" (the extended codes carry the
/// primary one in their low byte): BUSY, LOCKED, IOERR, FULL, PROTOCOL.
const TRANSIENT_CODES: [i64; 5] = [5, 6, 10, 13, 15];

/// Maps a sqlx error to a port error; `what` says what was being done.
pub(crate) fn port_error(what: &str, e: sqlx::Error) -> PortError {
    let message = format!("{what}: {e}");
    match &e {
        sqlx::Error::Database(db) => {
            let primary = db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .map(|c| c & 0xff);
            if primary.is_some_and(|c| TRANSIENT_CODES.contains(&c)) {
                PortError::Transient(message)
            } else {
                PortError::Permanent(message)
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => PortError::Transient(message),
        _ => PortError::Permanent(message),
    }
}

/// Whether `e` is a primary-key or unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation)
}

/// A value that does not fit SQLite's signed 64-bit integers.
pub(crate) fn to_i64(what: &str, value: u64) -> Result<i64, PortError> {
    i64::try_from(value).map_err(|_| PortError::Permanent(format!("{what} {value} is too large")))
}

/// A stored integer that must not be negative.
pub(crate) fn to_u64(what: &str, value: i64) -> Result<u64, PortError> {
    u64::try_from(value)
        .map_err(|_| PortError::Permanent(format!("stored {what} {value} is negative")))
}

pub(crate) fn json_error(what: &str, e: serde_json::Error) -> PortError {
    PortError::Permanent(format!("{what}: {e}"))
}
