//! A project's deletion and rollback, carried out by the finalizer (the api records what was
//! asked for, [`crate::lifecycle`], and sends a `delete_project` / `rollback_project`
//! finalize message).
//!
//! Both are sequences of steps recorded on the project's [`Lifecycle`] like the finalizer's
//! steps on a request: a step is recorded with its result when it is done, and a
//! redelivered message skips the recorded ones. Each step is idempotent on its own (a
//! machine, database or object already gone is skipped), so one killed half-way is simply
//! done again.
//!
//! Deletion: `requests` (wait until no request of the project runs: the api cancelled them;
//! a request still being finalized by someone else is waited for) → `app` (machines, IPs,
//! the app) → `database` (databases and roles) → `repository` (archived, or kept locally) →
//! `archive` (the project's objects under `projects/<id>/`). Transient failures are retried
//! with backoff; a refusal, or a service down past `outage_retry`, stops the deletion at
//! that step with the reason, and deleting again retries from there. Then the record says
//! deleted, when, and what each step removed.
//!
//! Rollback: `deploy` (the deployer runs the previous version again and checks its health)
//! → `swap` (the record's deployed and previous versions change places).
//!
//! A step the invocation's deadline cuts is done again by the next invocation
//! ([`FinalizeDone::Continue`]).

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tb_core::backoff::{Attempt, Backoff, Jitter, RetryPolicy, Stop, retry};
use tb_core::clock::now_ms;
use tb_core::domain::{Phase, ProjectId};
use tb_core::ports::{Lifecycle, Operation, OperationFailure, PlatformRecords, PortError};

use crate::finalizer::{FinalizeDone, FinalizeError, Finalizer, StepError};
use crate::record::Failure;

/// The deletion's steps, in order.
pub const DELETE_STEPS: [&str; 5] = ["requests", "app", "database", "repository", "archive"];
/// The rollback's steps, in order.
pub const ROLLBACK_STEPS: [&str; 2] = ["deploy", "swap"];

/// Requests of a project looked at when waiting for them to stop.
const REQUESTS_SCAN: usize = 100;

/// Whether a deletion of `project` was asked for (under way, stopped or done): its requests
/// are then neither archived, pushed nor deployed.
pub async fn deleting(
    records: &dyn PlatformRecords,
    project: &ProjectId,
) -> Result<bool, PortError> {
    Ok(records
        .project(project)
        .await?
        .is_some_and(|p| p.lifecycle.deletion.is_some()))
}

/// Which operation of the lifecycle a run works on.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Delete,
    Rollback,
}

impl Kind {
    fn op(self, l: &mut Lifecycle) -> &mut Option<Operation> {
        match self {
            Kind::Delete => &mut l.deletion,
            Kind::Rollback => &mut l.rollback,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Delete => "delete",
            Kind::Rollback => "rollback",
        }
    }
}

impl Finalizer {
    /// Carries out the deletion or the rollback recorded on `project`.
    pub(crate) async fn run_operation(
        &self,
        kind: Kind,
        project: &ProjectId,
        hard: Option<Instant>,
    ) -> Result<FinalizeDone, FinalizeError> {
        let Some(record) = self.records.project(project).await? else {
            return Err(FinalizeError::Poison(format!("no project {project}")));
        };
        let mut lifecycle = record.lifecycle.clone();
        if matches!(kind, Kind::Delete) && lifecycle.deleted_at_ms.is_some() {
            return Ok(FinalizeDone::Stale("the project is deleted already"));
        }
        let Some(op) = kind.op(&mut lifecycle).clone() else {
            return Ok(FinalizeDone::Stale("nothing was asked for this project"));
        };
        if !op.under_way() {
            return Ok(FinalizeDone::Stale(
                "the operation is finished, or stopped at a refused step",
            ));
        }
        let steps: &[&str] = match kind {
            Kind::Delete => &DELETE_STEPS,
            Kind::Rollback => &ROLLBACK_STEPS,
        };
        let recorded = op.steps.len();
        for step in steps {
            if op_of(kind, &mut lifecycle).steps.contains_key(*step) {
                continue;
            }
            tracing::info!(%project, operation = kind.name(), step, "project step");
            let started = Instant::now();
            let result = match kind {
                Kind::Delete => {
                    let requester = op.requested_by.clone();
                    self.with_retries(step, hard, || self.delete_step(step, project, &requester))
                        .await
                }
                Kind::Rollback => {
                    let op = op_of(kind, &mut lifecycle).clone();
                    self.with_retries(step, hard, || self.rollback_step(step, project, &op))
                        .await
                }
            };
            match result {
                Ok(mut value) => {
                    if let Value::Object(map) = &mut value {
                        map.insert(
                            "duration_ms".into(),
                            json!(started.elapsed().as_millis() as u64),
                        );
                    }
                    op_of(kind, &mut lifecycle)
                        .steps
                        .insert(step.to_string(), value);
                    if !self.save_lifecycle(project, &mut lifecycle).await? {
                        return Ok(changed());
                    }
                }
                Err(StepError::OutOfTime) if op_of(kind, &mut lifecycle).steps.len() > recorded => {
                    return Ok(FinalizeDone::Continue);
                }
                Err(StepError::OutOfTime) => {
                    return self
                        .stop_at(
                            kind,
                            project,
                            &mut lifecycle,
                            step,
                            "it takes longer than one invocation of the finalizer allows".into(),
                        )
                        .await;
                }
                Err(StepError::Transient(reason) | StepError::Permanent(reason)) => {
                    return self
                        .stop_at(kind, project, &mut lifecycle, step, reason)
                        .await;
                }
            }
        }
        let now = now_ms();
        let op = op_of(kind, &mut lifecycle);
        op.finished_at_ms = Some(now);
        let by = op.requested_by.clone();
        let detail = summary(kind, op);
        let action = match kind {
            Kind::Delete => {
                lifecycle.deleted_at_ms = Some(now);
                "deleted"
            }
            Kind::Rollback => "rolled back",
        };
        lifecycle.record(action, &by, now, detail);
        if !self.save_lifecycle(project, &mut lifecycle).await? {
            return Ok(changed());
        }
        tracing::info!(%project, operation = kind.name(), "project operation done");
        Ok(FinalizeDone::Finished {
            phase: Phase::Succeeded,
            failure: None,
        })
    }

    /// Records that `step` was refused for good: the project stays marked with it and the
    /// reason; asking again retries from there.
    async fn stop_at(
        &self,
        kind: Kind,
        project: &ProjectId,
        lifecycle: &mut Lifecycle,
        step: &str,
        reason: String,
    ) -> Result<FinalizeDone, FinalizeError> {
        tracing::warn!(%project, operation = kind.name(), step, "project step refused: {reason}");
        let op = op_of(kind, lifecycle);
        op.failure = Some(OperationFailure {
            step: step.to_string(),
            reason: reason.clone(),
        });
        let by = op.requested_by.clone();
        lifecycle.record(
            &format!("{} failed", kind.name()),
            &by,
            now_ms(),
            format!("{step}: {reason}"),
        );
        if !self.save_lifecycle(project, lifecycle).await? {
            return Ok(changed());
        }
        Ok(FinalizeDone::Finished {
            phase: Phase::Failed,
            failure: Some(Failure {
                step: step.to_string(),
                reason,
            }),
        })
    }

    /// Writes `lifecycle` as its next version; `false` when someone else wrote first (the
    /// api recorded more and sent the message again, or another delivery runs the
    /// operation): this run stops and leaves it to the latest.
    async fn save_lifecycle(
        &self,
        project: &ProjectId,
        lifecycle: &mut Lifecycle,
    ) -> Result<bool, FinalizeError> {
        lifecycle.next_version();
        match self.records.save_lifecycle(project, lifecycle).await {
            Ok(()) => Ok(true),
            Err(PortError::Conflict(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `attempt` until it succeeds, retrying transient failures with backoff for up to
    /// `outage_retry`, never past `hard`.
    async fn with_retries<F, Fut>(
        &self,
        step: &str,
        hard: Option<Instant>,
        attempt: F,
    ) -> Result<Value, StepError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Value, StepError>>,
    {
        let s = &self.settings;
        let policy = RetryPolicy::new(
            "finalizer",
            u32::MAX,
            Backoff::new(s.base_delay, s.max_delay),
            Jitter::Full,
        )
        .give_up_after(s.outage_retry)
        .deadline(hard.map(Into::into));
        let began = Instant::now();
        let attempt = &attempt;
        let done = retry(&policy, move |_| async move {
            let result = match hard {
                Some(h) => tokio::time::timeout_at(h.into(), attempt())
                    .await
                    .unwrap_or(Err(StepError::OutOfTime)),
                None => attempt().await,
            };
            match result {
                Err(StepError::Transient(m)) => {
                    tracing::info!(step, "transient failure: {m}");
                    Attempt::Retry {
                        after: None,
                        error: m,
                    }
                }
                other => Attempt::Done(other),
            }
        })
        .await;
        done.unwrap_or_else(|gave_up| match gave_up.stop {
            Stop::Deadline => Err(StepError::OutOfTime),
            _ => Err(StepError::Permanent(format!(
                "{} (still failing after {} s, {} attempts)",
                gave_up.error,
                began.elapsed().as_secs(),
                gave_up.attempts
            ))),
        })
    }

    async fn delete_step(
        &self,
        step: &str,
        project: &ProjectId,
        owner: &tb_core::domain::UserId,
    ) -> Result<Value, StepError> {
        match step {
            "requests" => {
                let running: Vec<String> = self
                    .store
                    .list_for_project(owner, project, REQUESTS_SCAN)
                    .await?
                    .into_iter()
                    .filter(|r| {
                        matches!(r.phase, Phase::Queued | Phase::Running)
                            || (r.phase == Phase::Finalizing
                                && r.lease.as_ref().is_some_and(|l| l.until_ms > now_ms()))
                    })
                    .map(|r| r.id.to_string())
                    .collect();
                if running.is_empty() {
                    Ok(json!({"running": 0}))
                } else {
                    // The api asked them to stop; the worker stops each at its next
                    // iteration boundary.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Err(StepError::Transient(format!(
                        "waiting for request(s) {} to stop",
                        running.join(", ")
                    )))
                }
            }
            "app" => Ok(self.deployer.destroy(project).await?),
            "database" => match &self.databases {
                Some(dbs) => Ok(dbs.drop_project(project).await?),
                None => Ok(json!({"skipped": "no database cluster configured"})),
            },
            "repository" => Ok(self.code_host.archive(project).await?),
            "archive" => {
                let prefix = format!("projects/{project}/");
                let removed = self.archive.delete_prefix(&prefix).await?;
                Ok(json!({"prefix": prefix, "objects_removed": removed}))
            }
            other => Err(StepError::Permanent(format!("unknown step {other}"))),
        }
    }

    async fn rollback_step(
        &self,
        step: &str,
        project: &ProjectId,
        op: &Operation,
    ) -> Result<Value, StepError> {
        let target = op
            .target_version
            .as_deref()
            .ok_or_else(|| StepError::Permanent("no version to roll back to".into()))?;
        match step {
            "deploy" => {
                let deployment = self.deployer.rollback(project, target).await?;
                Ok(serde_json::to_value(deployment).expect("serialisable"))
            }
            "swap" => {
                let mut p = self
                    .records
                    .project(project)
                    .await?
                    .ok_or_else(|| StepError::Permanent(format!("no project {project}")))?;
                let url = op
                    .steps
                    .get("deploy")
                    .and_then(|d| d["url"].as_str())
                    .map(String::from);
                // Done already by a run that died before recording it.
                if p.deployed_version.as_deref() != Some(target) {
                    p.previous_version = p.deployed_version.take();
                    p.deployed_version = Some(target.to_string());
                    // Verified when it is the last version that passed `verify`.
                    p.deployed_verified = p.last_verified_version.as_ref().map(|v| v == target);
                    if url.is_some() {
                        p.deploy_url = url;
                    }
                    p.updated_at_ms = now_ms();
                    self.records.save_project(&p).await?;
                }
                Ok(json!({
                    "deployed_version": p.deployed_version,
                    "previous_version": p.previous_version,
                }))
            }
            other => Err(StepError::Permanent(format!("unknown step {other}"))),
        }
    }
}

fn changed() -> FinalizeDone {
    FinalizeDone::Stale("the project's record changed meanwhile; the latest message carries on")
}

fn op_of(kind: Kind, lifecycle: &mut Lifecycle) -> &mut Operation {
    kind.op(lifecycle)
        .as_mut()
        .expect("the operation was read from this lifecycle")
}

/// One line saying what the operation did, for the project's history.
fn summary(kind: Kind, op: &Operation) -> String {
    match kind {
        Kind::Delete => {
            let mut parts = Vec::new();
            if !op.cancelled_requests.is_empty() {
                parts.push(format!(
                    "{} request(s) cancelled",
                    op.cancelled_requests.len()
                ));
            }
            for step in ["app", "database", "repository", "archive"] {
                if let Some(v) = op.steps.get(step) {
                    parts.push(format!("{step}: {}", brief(v)));
                }
            }
            parts.join("; ")
        }
        Kind::Rollback => format!(
            "from {} to {}",
            op.from_version.as_deref().unwrap_or("?"),
            op.target_version.as_deref().unwrap_or("?")
        ),
    }
}

/// A step's result without its timing.
fn brief(v: &Value) -> String {
    let mut v = v.clone();
    if let Value::Object(map) = &mut v {
        map.remove("duration_ms");
    }
    v.to_string()
}
