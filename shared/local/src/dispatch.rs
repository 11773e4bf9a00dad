//! The dispatcher of a single-process host: takes messages off a [`LocalQueue`]'s
//! [`Receivers`] and runs the same handlers the Lambda functions run, plus the sweeper.
//!
//! - Work messages: [`Worker::handle_work`] with bounded concurrency (a semaphore;
//!   [`DispatchSettings::workers`], 2 by default), one handler per request at a time
//!   (see the `gates` module).
//! - Finalize messages: [`Finalizer::handle`], one at a time.
//! - Each message gets an [`Invocation`] with a random worker id and a deadline
//!   [`DispatchSettings::invocation_time`] ahead (15 minutes, like the Lambda timeout).
//!   A `Retry` error is retried after an exponential backoff with jitter, with the same
//!   worker id (so a claim the failed attempt left behind is its own), up to
//!   [`DispatchSettings::attempts`]; then the message is dead-lettered with the last reason.
//!   Poison work messages are dead-lettered by the pipeline itself; poison finalize messages
//!   here.
//! - The sweeper calls [`Worker::sweep`] every [`DispatchSettings::sweep_every`], the
//!   first time at once. The state store is the truth and the queue forgets everything when
//!   the process dies, so this first sweep is what picks up the requests a killed process
//!   left behind.
//!
//! The sweeper only re-drives a request whose claim (lease) has expired and whose last write
//! is older than `stall_after`. With the cloud's lease (6 minutes) a restarted host would
//! leave such requests alone for minutes, so a local host uses [`local_slice_settings`] and
//! [`local_finalizer_settings`] (one-minute leases). A short lease is safe within the process
//! (a re-drive of a request being handled waits for its handler and is then found stale); it
//! assumes one host process per database.
//!
//! [`LocalQueue`]: crate::LocalQueue

use std::sync::Arc;
use std::time::{Duration, Instant};

use tb_core::backoff::{Attempt, Backoff, GaveUp, Jitter, RetryPolicy, retry};
use tb_core::domain::RequestId;
use tb_pipeline::requests::job_request_id;
use tb_pipeline::{
    FinalizeDone, FinalizeError, Finalizer, FinalizerSettings, Incoming, Invocation, SliceSettings,
    WorkError, WorkMessage, Worker,
};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::{JoinHandle, JoinSet};

use crate::gates::RequestGates;
use crate::queue::Receivers;

/// How the dispatcher runs.
#[derive(Clone, Debug)]
pub struct DispatchSettings {
    /// Work messages handled at once.
    pub workers: usize,
    /// Attempts per message (the first included) before it is dead-lettered.
    pub attempts: u32,
    /// The backoff before the second attempt; it doubles per attempt, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How often the sweeper runs (it also runs once at start).
    pub sweep_every: Duration,
    /// The deadline of each message's invocation, from its start.
    pub invocation_time: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            workers: 2,
            attempts: 5,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            sweep_every: Duration::from_secs(30),
            invocation_time: Duration::from_secs(15 * 60),
        }
    }
}

impl DispatchSettings {
    /// How a message is retried: `attempts` in all, the backoff after failed attempt `n`
    /// between half and all of `base_backoff * 2^(n - 1)`, at most `max_backoff`.
    pub fn retrying(&self) -> RetryPolicy {
        let backoff = Backoff::new(self.base_backoff, self.max_backoff);
        RetryPolicy::new("dispatcher", self.attempts, backoff, Jitter::Equal)
    }
}

/// Slice settings for a local host: the standard ones with a one-minute lease and stall
/// time, so requests a killed process left claimed are re-driven about a minute after it
/// died (plus up to one sweep interval). See the module documentation.
pub fn local_slice_settings() -> SliceSettings {
    SliceSettings {
        lease: Duration::from_secs(60),
        stall_after: Duration::from_secs(60),
        ..SliceSettings::standard()
    }
}

/// Finalizer settings for a local host: the standard ones with a one-minute lease (safe:
/// finalize messages are handled one at a time, so a re-drive waits for the one in flight).
pub fn local_finalizer_settings() -> FinalizerSettings {
    FinalizerSettings {
        lease: Duration::from_secs(60),
        ..FinalizerSettings::standard()
    }
}

/// Runs the dispatcher with `concurrency` work handlers and default settings otherwise.
/// See [`run_workers_with`].
pub fn run_workers(
    worker: Arc<Worker>,
    finalizer: Arc<Finalizer>,
    receivers: Receivers,
    concurrency: usize,
) -> JoinHandle<()> {
    let settings = DispatchSettings {
        workers: concurrency,
        ..DispatchSettings::default()
    };
    run_workers_with(worker, finalizer, receivers, settings)
}

/// Spawns the work loop, the finalize loop and the sweeper. The handle ends when both
/// queues are closed and drained (which, as the pipeline holds the sending side, is
/// normally never); aborting it stops everything at once, in-flight messages included,
/// which is safe: their requests are re-driven by the next process's sweeper.
pub fn run_workers_with(
    worker: Arc<Worker>,
    finalizer: Arc<Finalizer>,
    receivers: Receivers,
    settings: DispatchSettings,
) -> JoinHandle<()> {
    let settings = Arc::new(settings);
    tokio::spawn(async move {
        let Receivers { work, finalize } = receivers;
        let mut loops = JoinSet::new();
        loops.spawn(work_loop(worker.clone(), work, settings.clone()));
        loops.spawn(finalize_loop(
            worker.clone(),
            finalizer,
            finalize,
            settings.clone(),
        ));
        let sweeper = tokio::spawn(sweep_loop(worker, settings));
        while let Some(ended) = loops.join_next().await {
            report_panic("a dispatcher loop", ended);
        }
        sweeper.abort();
    })
}

/// Handles work messages as they come, `workers` at a time.
async fn work_loop(
    worker: Arc<Worker>,
    mut messages: UnboundedReceiver<String>,
    settings: Arc<DispatchSettings>,
) {
    let permits = Arc::new(Semaphore::new(settings.workers.max(1)));
    let gates = RequestGates::default();
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            next = messages.recv() => match next {
                Some(body) => {
                    running.spawn(handle_work(
                        worker.clone(),
                        body,
                        permits.clone(),
                        gates.clone(),
                        settings.clone(),
                    ));
                }
                None => break,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                report_panic("a work handler", done);
            }
        }
    }
    while let Some(done) = running.join_next().await {
        report_panic("a work handler", done);
    }
}

/// The request a work body is about, if it names one (malformed bodies do not).
fn request_of(body: &str) -> Option<RequestId> {
    match Incoming::parse(body).ok()? {
        Incoming::Work(WorkMessage::Continue { request_id, .. }) => Some(request_id),
        Incoming::Job(job) => Some(job_request_id(&job.job_id)),
    }
}

fn new_worker_id() -> String {
    format!("local-{}", tb_core::ids::random_hex(8))
}

async fn handle_work(
    worker: Arc<Worker>,
    body: String,
    permits: Arc<Semaphore>,
    gates: RequestGates,
    settings: Arc<DispatchSettings>,
) {
    let _pass = match request_of(&body) {
        Some(id) => Some(gates.enter(&id).await),
        None => None,
    };
    let worker_id = &new_worker_id();
    let (worker, body, permits, settings) = (&worker, &body, &permits, &*settings);
    let handled = retry(&settings.retrying(), move |_| async move {
        let result = {
            let _permit = permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let invocation = Invocation {
                worker_id: worker_id.clone(),
                deadline: Instant::now() + settings.invocation_time,
            };
            worker.handle_work(body, &invocation).await
        };
        match result {
            Ok(done) => {
                tracing::debug!(?done, "work message handled");
                Attempt::Done(())
            }
            // Already parked on the dead-letter queue by the pipeline.
            Err(WorkError::Poison { .. }) => Attempt::Done(()),
            Err(WorkError::Retry(reason)) => Attempt::Retry {
                after: None,
                error: reason,
            },
        }
    })
    .await;
    if let Err(gave_up) = handled {
        give_up(worker, body, gave_up).await;
    }
}

/// Handles finalize messages one at a time (each in its own task, so a panic ends only it).
async fn finalize_loop(
    worker: Arc<Worker>,
    finalizer: Arc<Finalizer>,
    mut messages: UnboundedReceiver<String>,
    settings: Arc<DispatchSettings>,
) {
    while let Some(body) = messages.recv().await {
        let one = tokio::spawn(handle_finalize(
            worker.clone(),
            finalizer.clone(),
            body,
            settings.clone(),
        ));
        report_panic("a finalize handler", one.await);
    }
}

async fn handle_finalize(
    worker: Arc<Worker>,
    finalizer: Arc<Finalizer>,
    body: String,
    settings: Arc<DispatchSettings>,
) {
    let worker_id = &new_worker_id();
    let (worker, finalizer, body) = (&worker, &finalizer, &body);
    let handled = retry(&settings.retrying(), move |_| async move {
        loop {
            match finalizer.handle(body, worker_id).await {
                Ok(FinalizeDone::Finished { phase, failure }) => {
                    tracing::info!(?phase, ?failure, "finalized");
                    return Attempt::Done(());
                }
                Ok(FinalizeDone::Stale(why)) => {
                    tracing::debug!(why, "stale finalize message");
                    return Attempt::Done(());
                }
                Ok(FinalizeDone::Repairing { round }) => {
                    tracing::info!(round, "verification failed; back to the agent");
                    return Attempt::Done(());
                }
                // Not with `handle`'s missing deadline; a new invocation continues at once,
                // in the same attempt.
                Ok(FinalizeDone::Continue) => continue,
                Err(FinalizeError::Poison(reason)) => {
                    dead_letter(worker, body, &reason).await;
                    return Attempt::Done(());
                }
                Err(FinalizeError::Retry(reason)) => {
                    return Attempt::Retry {
                        after: None,
                        error: reason,
                    };
                }
            }
        }
    })
    .await;
    if let Err(gave_up) = handled {
        give_up(worker, body, gave_up).await;
    }
}

/// Dead-letters a message whose attempts are used up.
async fn give_up(worker: &Worker, body: &str, gave_up: GaveUp<String>) {
    let reason = format!(
        "gave up after {} attempts: {}",
        gave_up.attempts, gave_up.error
    );
    dead_letter(worker, body, &reason).await;
}

async fn dead_letter(worker: &Worker, body: &str, reason: &str) {
    if let Err(e) = worker.requests.queue.dead_letter(body, reason).await {
        tracing::error!(body, reason, "could not dead-letter a message: {e}");
    }
}

async fn sweep_loop(worker: Arc<Worker>, settings: Arc<DispatchSettings>) {
    let mut every = tokio::time::interval(settings.sweep_every.max(Duration::from_millis(10)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let report = worker.sweep().await;
        for error in &report.errors {
            tracing::warn!("sweep: {error}");
        }
    }
}

fn report_panic(what: &str, ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!("{what} panicked: {e}");
    }
}
