//! The request pipeline over ports: create, status and cancel (the api function), slices of
//! agent work (the worker), hand-over to the finalizer, and the sweeper that re-drives
//! stalled requests. No AWS here: the DynamoDB/SQS adapters live in `tb-aws`, the local
//! ones in `tb-local`, and the same code runs on Lambda, locally and in tests.

pub mod messages;
pub mod metrics;
pub mod ports;
pub mod record;

pub use messages::{FinalizeMessage, Incoming, Job, WorkMessage};
pub use ports::{Appended, Created, Queue, StateStore};
pub use record::{AgentHeader, Failure, Lease, RequestRecord};
pub mod base;
pub mod callback;
pub mod dir_archive;
pub mod finalizer;
pub mod lifecycle;
pub mod memory;
pub mod pipeline;
pub mod project_ops;
pub mod receipt;
pub mod repair;
pub mod requests;
pub mod rest;
pub mod snapshot;
pub mod sweeper;
pub mod template;
pub mod verify;
pub mod worker;

pub use finalizer::{FinalizeDone, FinalizeError, Finalizer, FinalizerSettings};
pub use pipeline::{Pipeline, SliceSettings};
pub use requests::{Accepted, NewRequest, RequestError, Status};
pub use sweeper::SweepReport;
pub use worker::{Invocation, SliceStats, WorkDone, WorkError};
