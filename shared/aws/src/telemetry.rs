//! Logging for the Lambda functions: JSON lines through `tracing`, filtered by `TB_LOG`
//! (default `info`). The request id of the pipeline is a field on every line of its span.

pub fn init() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TB_LOG").unwrap_or_else(|_| "info".into());
    // Lambda stamps every line itself, and the span carries the request id.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .without_time()
        .with_target(false)
        .try_init();
}
