//! Per-request gates: within one process, at most one handler works on a request at a time.
//!
//! A second message for a request that is being handled (a duplicate, or a re-drive by the
//! sweeper because the claim's lease ran out during a long iteration) waits at the gate, and
//! by the time it passes, the first handler has moved the request on, so the worker finds it
//! stale and drops it. That is what makes a short lease safe for a local run: it decides only
//! when a *later process* may take over requests that a killed one left claimed, never whether
//! two workers of this process run the same iteration side by side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tb_core::domain::RequestId;
use tokio::sync::OwnedMutexGuard;

type Gate = Arc<tokio::sync::Mutex<()>>;

/// The gates of the requests currently handled or waited for. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestGates {
    open: Arc<Mutex<HashMap<RequestId, Gate>>>,
}

/// Holding this means being the only handler of the request; dropping it lets the next in.
pub(crate) struct Pass {
    gates: RequestGates,
    id: RequestId,
    gate: Option<Gate>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl RequestGates {
    /// Waits (first come, first served) until no other handler holds `id`.
    pub(crate) async fn enter(&self, id: &RequestId) -> Pass {
        let gate = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.entry(id.clone()).or_default().clone()
        };
        let guard = gate.clone().lock_owned().await;
        Pass {
            gates: self.clone(),
            id: id.clone(),
            gate: Some(gate),
            guard: Some(guard),
        }
    }

    /// Requests with a gate (being handled, or waited for).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.guard.take();
        let Some(gate) = self.gate.take() else {
            return;
        };
        let mut open = self.gates.open.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and we hold the gate: nobody waits for it, so it can go. (Others take
        // their copy under the map's lock, so none can appear between the check and removal.)
        if Arc::strong_count(&gate) == 2 {
            open.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_second_handler_of_a_request_waits_and_other_requests_do_not() {
        let gates = RequestGates::default();
        let a = RequestId::parse("req_a").unwrap();
        let b = RequestId::parse("req_b").unwrap();
        let first = gates.enter(&a).await;
        let other = tokio::time::timeout(Duration::from_secs(1), gates.enter(&b)).await;
        assert!(other.is_ok(), "another request is not held up");
        drop(other);
        let waiting = tokio::spawn({
            let gates = gates.clone();
            let a = a.clone();
            async move {
                let _pass = gates.enter(&a).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second handler of a waits");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("let in once the first left")
            .unwrap();
        assert_eq!(gates.len(), 0, "gates nobody holds are removed");
    }
}
