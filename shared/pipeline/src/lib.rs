//! The request pipeline over ports, one type per host:
//!
//! - [`Requests`] (the api): create a request through admission, report its status, cancel
//!   it, list a user's requests.
//! - [`Worker`] (the worker): slices of agent work, the hand-over to the next slice or the
//!   finalizer, and the sweeper that re-drives stalled requests.
//! - [`Finalizer`] (the finalizer): the checkpointed steps that publish a finished request.
//!
//! No AWS here: the DynamoDB/SQS adapters live in `tb-aws`, the local ones in `tb-local`,
//! and the same code runs on Lambda, locally and in tests.

pub mod admission;
pub mod base;
pub mod callback;
pub mod finalizer;
pub mod lifecycle;
pub mod memory;
pub mod messages;
pub mod ports;
pub mod project_ops;
pub mod receipt;
pub mod record;
pub mod repair;
pub mod requests;
pub mod settings;
pub mod snapshot;
pub mod steps;
pub mod template;
pub mod verify;
pub mod worker;

pub use admission::{Limits, LimitsError, Refusal};
pub use finalizer::{FinalizeDone, FinalizeError, Finalizer, FinalizerSettings};
pub use messages::{FinalizeMessage, Incoming, Job, WorkMessage};
pub use ports::{Appended, Created, Queue, StateStore};
pub use record::{AgentHeader, Failure, Lease, RequestRecord};
pub use requests::{Accepted, NewRequest, RequestError, Requests, Status};
pub use settings::SliceSettings;
pub use steps::{Step, Steps};
pub use worker::sweep::SweepReport;
pub use worker::{Invocation, SliceStats, WorkDone, WorkError, Worker};
