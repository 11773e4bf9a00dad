//! Spacing of mutating Machines API calls: Fly allows about one request per second (burst
//! three) per action and machine (or app), so calls that change the same machine, and
//! app-level calls of the same action on the same app, are kept at least an interval apart.
//! 429s that still happen are retried by the client after `retry-after`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Spacing {
    interval: Duration,
    next_free: Mutex<HashMap<String, Instant>>,
}

impl Spacing {
    pub(crate) fn new(interval: Duration) -> Self {
        Spacing {
            interval,
            next_free: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a call on `key` (a machine id, or `<action>/<app>` for app-level calls) is
    /// due, and books the next slot.
    pub(crate) async fn wait(&self, key: &str) {
        let due = {
            let mut next = self.next_free.lock().expect("spacing lock");
            let now = Instant::now();
            // Forget keys long past, so the map does not grow with every machine ever seen.
            next.retain(|_, t| *t + Duration::from_secs(60) > now);
            let due = next.get(key).copied().unwrap_or(now).max(now);
            next.insert(key.to_owned(), due + self.interval);
            due
        };
        tokio::time::sleep_until(due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_on_the_same_key_are_spaced_and_other_keys_are_not() {
        let interval = Duration::from_millis(200);
        let s = Spacing::new(interval);
        let start = Instant::now();
        s.wait("m1").await;
        s.wait("m2").await;
        assert!(Instant::now() - start < interval / 2);
        s.wait("m1").await;
        s.wait("m1").await;
        let took = Instant::now() - start;
        assert!(took >= interval * 2 && took < interval * 4, "{took:?}");
    }
}
