//! Polling an app's health endpoint until it answers 200, within a deadline.

use std::time::Duration;

use tokio::time::Instant;

/// Polls `url` every `interval` until it answers 200 or `deadline` passes; then returns the
/// last failure (a status and the start of the body, or the connection error). `give_up`
/// is asked before each try and ends the wait early with its reason (a process that exited).
pub(crate) async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    deadline: Instant,
    interval: Duration,
    mut give_up: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    let mut last;
    loop {
        if let Some(reason) = give_up() {
            return Err(reason);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = remaining.clamp(Duration::from_millis(100), Duration::from_secs(10));
        match http.get(url).timeout(timeout).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let body: String = resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                last = format!("GET {url} answered {status}: {body}");
            }
            Err(e) => last = format!("GET {url} failed: {e}"),
        }
        if Instant::now() + interval > deadline {
            return Err(last);
        }
        tokio::time::sleep(interval).await;
    }
}
