//! Whether a work message is still wanted, and the claim on its request.

use tb_core::clock::now_ms;
use tb_core::domain::{Phase, RequestId};
use tb_core::ports::PortError;

use super::{Invocation, WorkError, Worker};
use crate::ports::Appended;
use crate::record::RequestRecord;

/// What [`Worker::claim`] found.
pub(super) enum Claim {
    /// Claimed by this invocation, as written.
    Claimed(Box<RequestRecord>),
    /// Nothing to do: a duplicate, late or superseded message.
    Stale(&'static str),
}

impl Worker {
    /// Claims the request for this invocation unless the message is stale: the request is
    /// past its agent phase, its sequence moved on, or another worker holds a live claim.
    /// The claim is a write conditional on the version read (fencing).
    pub(super) async fn claim(
        &self,
        id: &RequestId,
        seq: u64,
        inv: &Invocation,
    ) -> Result<Claim, WorkError> {
        let Some(mut rec) = self.requests.store.load(id).await? else {
            return Err(WorkError::Poison {
                request: None,
                reason: format!("no request {id}"),
            });
        };
        if rec.phase.is_terminal() || rec.phase == Phase::Finalizing {
            return Ok(Claim::Stale("the request is past its agent phase"));
        }
        if rec.seq != seq {
            return Ok(Claim::Stale("superseded sequence"));
        }
        if rec.leased_by_other(&inv.worker_id, now_ms()) {
            return Ok(Claim::Stale("another worker holds the request"));
        }
        rec.phase = Phase::Running;
        rec.lease = Some(self.lease(&inv.worker_id));
        match self.save(&mut rec, Appended::default()).await {
            Ok(()) => Ok(Claim::Claimed(Box::new(rec))),
            Err(PortError::Conflict(_)) => Ok(Claim::Stale("another worker claimed it first")),
            Err(e) => Err(e.into()),
        }
    }
}
