//! The finalizer: deterministic code that turns a finished agent run into a published,
//! running backend. No model is involved.
//!
//! Steps ([`Step`]), each result recorded as its type in the request's `steps` when it
//! succeeds ([`crate::steps`]; a retry skips it):
//! `archive` (snapshot the sandbox → tar.gz → archive, with its SHA-256) → `repository`
//! (commit to the code host) → `database` (provision, apply migrations) → `build`
//! (`npm install` + `npm run build` in the sandbox → artifact → archive) → `deploy` →
//! `verify` (health and the declared checks against the live URL: [`crate::verify`]) →
//! `receipt` (signed, archived beside the source and committed on top of the source
//! commit as `.turbobackend/receipt.json`: [`crate::receipt`]) → cleanup (release the sandbox, write the usage ledger, update the project, set the final
//! phase). A request whose agent did not finish gets only its archive and the cleanup.
//! When `verify` fails, the request goes back to the agent while a repair round is left
//! ([`crate::repair`], with the app's recent log lines where the deployer can read them);
//! after the last one, `restore` runs instead of `receipt`: the project's last verified
//! version runs again ([`Deployer::rollback`]), or, with none, the app stays up marked
//! unverified; the request fails at `verify` naming the failed checks. A failed `verify`
//! recorded by an invocation that ended before acting on it is acted on by the next.
//! Transient failures are retried with exponential backoff and jitter; after the retry
//! budget, or at once for permanent ones, the request fails naming the step and the cause.
//!
//! Deadlines ([`Finalizer::handle_until`]): no step runs past the invocation's deadline
//! less [`FinalizerSettings::safety_margin`] (at most half the time left). The build is checkpointed: `npm install` and
//! `npm run build` are sub-steps recorded as `build:install` and `build:compile` when
//! done, so a build longer than one invocation continues in the next. A step (or sub-step)
//! the deadline cuts is redone from its start in the next invocation
//! ([`FinalizeDone::Continue`]: the host delivers the message again); one cut although it
//! was the first work of its invocation can never fit, and fails the request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tb_core::agent::Outcome;
use tb_core::clock::now_ms;
use tb_core::domain::Phase;
use tb_core::encoding::sha256_hex;
use tb_core::ports::{
    Archive, Artifact, CodeHost, DatabaseProvisioner, Deployer, Notifier, PlatformRecords,
    PortError, ProjectRecord,
};
use tb_core::sandbox::{Sandbox, SandboxError, SandboxProvider, WorkspacePath};

use crate::messages::FinalizeMessage;
use crate::ports::{Appended, StateStore};
use crate::project_ops::Kind;
use crate::record::{Failure, Lease, RequestRecord};
use crate::snapshot;
use crate::steps::{
    Archived, BuildStep, Built, Notified, Provisioned, Published, Receipted, Restored, Step,
    StepResult,
};

#[derive(Clone, Debug)]
pub struct FinalizerSettings {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub build_timeout: Duration,
    /// Longer than the finalizer's function timeout.
    pub lease: Duration,
    /// Kept back before an invocation's deadline for the commit and the hand-over
    /// (`TB_INVOCATION_MARGIN_SECS`).
    pub safety_margin: Duration,
    /// How long a service a step needs (the deploy target, the code host, …) is waited out
    /// once the step's own attempts are used up, before the request fails naming it
    /// (`TB_OUTAGE_RETRY_SECS`).
    pub outage_retry: Duration,
    /// The `verify` step's bounds: each call's timeout, how long the app may take to
    /// answer its health check after the deploy.
    pub verify: tb_core::checks::RunPolicy,
    /// Times a failed verification goes back to the agent, in the same sandbox, before the
    /// request fails (`TB_REPAIR_ROUNDS`).
    pub repair_rounds: u32,
}

impl FinalizerSettings {
    pub fn standard() -> Self {
        FinalizerSettings {
            attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            build_timeout: Duration::from_secs(600),
            lease: Duration::from_secs(960),
            safety_margin: Duration::from_secs(60),
            outage_retry: Duration::from_secs(600),
            verify: tb_core::checks::RunPolicy::standard(),
            repair_rounds: 2,
        }
    }

    /// The standard settings with `TB_INVOCATION_MARGIN_SECS` and `TB_OUTAGE_RETRY_SECS`
    /// read through `var`.
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, tb_core::settings::SettingError> {
        let mut s = FinalizerSettings::standard();
        if let Some(m) = crate::settings::seconds(&var, "TB_INVOCATION_MARGIN_SECS")? {
            s.safety_margin = m;
        }
        if let Some(b) = crate::settings::seconds(&var, "TB_OUTAGE_RETRY_SECS")? {
            s.outage_retry = b;
        }
        if let Some(v) = var("TB_REPAIR_ROUNDS").filter(|v| !v.trim().is_empty()) {
            s.repair_rounds = v
                .trim()
                .parse()
                .map_err(|_| tb_core::settings::SettingError {
                    name: "TB_REPAIR_ROUNDS",
                    problem: format!("{v:?} is not a whole number"),
                })?;
        }
        Ok(s)
    }
}

pub struct Finalizer {
    pub store: Arc<dyn StateStore>,
    pub sandboxes: Arc<dyn SandboxProvider>,
    pub archive: Arc<dyn Archive>,
    pub code_host: Arc<dyn CodeHost>,
    /// `None`: no database cluster is configured; the step records that it was skipped.
    pub databases: Option<Arc<dyn DatabaseProvisioner>>,
    pub deployer: Arc<dyn Deployer>,
    pub records: Arc<dyn PlatformRecords>,
    /// Sends the callback of requests that have a callback URL (`None`: no callbacks).
    pub notifier: Option<Arc<dyn Notifier>>,
    /// Calls the deployed app in the `verify` step, under the platform's outbound policy.
    pub prober: Arc<dyn tb_core::checks::Prober>,
    /// Signs verification receipts (the platform's callback key); `None`: receipts are
    /// recorded unsigned and not archived.
    pub receipt_key: Option<crate::receipt::SigningKey>,
    /// Where a repair round hands the request back to the agent.
    pub queue: Arc<dyn crate::ports::Queue>,
    pub settings: FinalizerSettings,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FinalizeDone {
    Finished {
        phase: Phase,
        failure: Option<Failure>,
    },
    Stale(&'static str),
    /// The invocation's time ran out; what was done is recorded. Deliver the same message
    /// again (at once) to continue.
    Continue,
    /// Verification failed and the request went back to the agent for repair round
    /// `round` (its work message is sent); the agent's next `finish` finalizes it again.
    Repairing {
        round: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error("retry later: {0}")]
    Retry(String),
    #[error("poison message: {0}")]
    Poison(String),
}

impl From<PortError> for FinalizeError {
    fn from(e: PortError) -> Self {
        FinalizeError::Retry(e.to_string())
    }
}

/// A step's failure (of a request's steps, or a project operation's): retry it, or give
/// up; or the invocation's time ran out.
#[derive(Debug)]
pub(crate) enum StepError {
    Transient(String),
    Permanent(String),
    OutOfTime,
}

impl From<PortError> for StepError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Transient(m) => StepError::Transient(m),
            other => StepError::Permanent(other.to_string()),
        }
    }
}

impl From<SandboxError> for StepError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Unavailable(m) => StepError::Transient(m),
            other => StepError::Permanent(other.to_string()),
        }
    }
}

impl Finalizer {
    /// [`Finalizer::handle_until`] with no deadline (hosts whose invocations have none).
    pub async fn handle(&self, body: &str, worker_id: &str) -> Result<FinalizeDone, FinalizeError> {
        self.handle_until(body, worker_id, None).await
    }

    /// Handles one finalize message within an invocation that must have returned by
    /// `deadline` (see the module documentation).
    pub async fn handle_until(
        &self,
        body: &str,
        worker_id: &str,
        deadline: Option<Instant>,
    ) -> Result<FinalizeDone, FinalizeError> {
        let hard = deadline.map(|d| crate::settings::hard_deadline(d, self.settings.safety_margin));
        let msg: FinalizeMessage = serde_json::from_str(body)
            .map_err(|e| FinalizeError::Poison(format!("malformed finalize message: {e}")))?;
        let request_id = match msg {
            FinalizeMessage::Finalize { request_id } => request_id,
            FinalizeMessage::DeleteProject { project_id } => {
                return self.run_operation(Kind::Delete, &project_id, hard).await;
            }
            FinalizeMessage::RollbackProject { project_id } => {
                return self.run_operation(Kind::Rollback, &project_id, hard).await;
            }
        };
        let Some(mut rec) = self.store.load(&request_id).await? else {
            return Err(FinalizeError::Poison(format!("no request {request_id}")));
        };
        if rec.phase.is_terminal() && (self.owes_callback(&rec) || rec.holds_slot) {
            crate::ports::give_back_slot(self.store.as_ref(), &mut rec).await;
            // Finished earlier, but the callback was not sent (the finalizer died after the
            // final commit): send it now.
            self.notify(&mut rec).await;
            return Ok(FinalizeDone::Finished {
                phase: rec.phase,
                failure: rec.failure.clone(),
            });
        }
        if rec.phase != Phase::Finalizing {
            return Ok(FinalizeDone::Stale(
                "the request is not waiting for the finalizer",
            ));
        }
        if rec.leased_by_other(worker_id, now_ms()) {
            return Ok(FinalizeDone::Stale("another finalizer holds the request"));
        }
        rec.lease = Some(self.lease(worker_id));
        match self.save(&mut rec).await {
            Err(PortError::Conflict(_)) => {
                return Ok(FinalizeDone::Stale("another finalizer claimed it first"));
            }
            other => other?,
        }

        let agent_finished = rec.agent.outcome.as_ref().is_some_and(Outcome::is_success);
        let plan: &[Step] =
            if crate::project_ops::deleting(self.records.as_ref(), &rec.project).await? {
                // Nothing may be archived, pushed or deployed again for a deleted project.
                rec.push_activity(
                    "the project is deleted: nothing is archived, pushed or deployed".into(),
                );
                if agent_finished && rec.failure.is_none() {
                    rec.failure = Some(Failure {
                        step: "project".into(),
                        reason: "the project was deleted before the request finished".into(),
                    });
                }
                &[]
            } else if agent_finished {
                &Step::ALL
            } else {
                &Step::ALL[..1]
            };
        // Steps and sub-steps recorded before this invocation.
        let recorded = rec.steps.len();
        for &step in plan {
            if rec.steps.done(step) {
                // A verification that failed, recorded by an invocation that ended before
                // it handed the request back or failed it, is dealt with now.
                if step == Step::Verify
                    && let Some(reason) = rec.steps.verified().and_then(crate::verify::failure_of)
                {
                    match self
                        .verification_failed(&mut rec, reason, worker_id, hard)
                        .await?
                    {
                        Some(done) => return Ok(done),
                        None => break,
                    }
                }
                continue;
            }
            tracing::info!(request_id = %rec.id, step = step.name(), "finalizer step");
            let started = std::time::Instant::now();
            match self.run_with_retries(step, &mut rec, worker_id, hard).await {
                Ok(result) => {
                    let ms = started.elapsed().as_millis() as u64;
                    let note = result.note().map(|n| format!("; {n}"));
                    let failed = match &result {
                        StepResult::Verify(v) => crate::verify::failure_of(v),
                        _ => None,
                    };
                    rec.steps.record(result, ms);
                    rec.push_activity(format!(
                        "{step}: done in {:.1} s{}",
                        ms as f64 / 1000.0,
                        note.unwrap_or_default()
                    ));
                    rec.lease = Some(self.lease(worker_id));
                    self.save(&mut rec).await?;
                    if let Some(reason) = failed {
                        tracing::warn!(request_id = %rec.id, step = step.name(), "{reason}");
                        match self
                            .verification_failed(&mut rec, reason, worker_id, hard)
                            .await?
                        {
                            Some(done) => return Ok(done),
                            None => break,
                        }
                    }
                }
                // Progress was recorded (a step, a sub-step, an outage being waited out).
                Err(StepError::OutOfTime) if rec.steps.len() > recorded || rec.outage.is_some() => {
                    rec.lease = None;
                    rec.push_activity(format!("{step}: continues in the next invocation"));
                    self.save(&mut rec).await?;
                    tracing::info!(request_id = %rec.id, step = step.name(), "the invocation's time ran out; continuing in the next");
                    return Ok(FinalizeDone::Continue);
                }
                Err(e) => {
                    let reason = match e {
                        StepError::OutOfTime => {
                            let secs = hard
                                .map(|h| h.saturating_duration_since(started).as_secs())
                                .unwrap_or(0);
                            format!(
                                "it takes longer than one invocation of the finalizer allows ({secs} s)"
                            )
                        }
                        StepError::Transient(m) | StepError::Permanent(m) => m,
                    };
                    tracing::warn!(request_id = %rec.id, step = step.name(), "finalizer step failed: {reason}");
                    rec.failure = Some(Failure {
                        step: step.name().to_string(),
                        reason,
                    });
                    break;
                }
            }
        }
        self.cleanup(&mut rec).await?;
        crate::ports::give_back_slot(self.store.as_ref(), &mut rec).await;
        // After the final commit: a slow or failing receiver never holds the request up.
        self.notify(&mut rec).await;
        Ok(FinalizeDone::Finished {
            phase: rec.phase,
            failure: rec.failure.clone(),
        })
    }

    /// The live app failed its checks (`reason` names them): back to the agent while a repair
    /// round is left (`Some(Repairing)`); after the last one, the `restore` step (the last
    /// verified version runs again, or the app stays up unverified), and the request fails
    /// at `verify` (`None`: go on to the cleanup). `Some(Continue)`: the invocation's time
    /// ran out before `restore` was done.
    async fn verification_failed(
        &self,
        rec: &mut RequestRecord,
        reason: String,
        worker_id: &str,
        hard: Option<Instant>,
    ) -> Result<Option<FinalizeDone>, FinalizeError> {
        let logs = match self.deployer.recent_logs(&rec.project).await {
            Ok(logs) => logs,
            Err(e) => {
                tracing::warn!(request_id = %rec.id, "reading the app's log failed: {e}");
                None
            }
        };
        if let Some(round) = crate::repair::hand_back(
            self.store.as_ref(),
            self.queue.as_ref(),
            rec,
            &reason,
            logs.as_deref(),
            self.settings.repair_rounds,
        )
        .await?
        {
            return Ok(Some(FinalizeDone::Repairing { round }));
        }
        let outcome = if rec.steps.done(Step::Restore) {
            Ok(())
        } else {
            let started = Instant::now();
            match self
                .run_with_retries(Step::Restore, rec, worker_id, hard)
                .await
            {
                Ok(result) => {
                    let ms = started.elapsed().as_millis() as u64;
                    let note = result.note().unwrap_or_default().to_string();
                    rec.steps.record(result, ms);
                    rec.push_activity(format!(
                        "{}: done in {:.1} s; {note}",
                        Step::Restore,
                        ms as f64 / 1000.0
                    ));
                    rec.lease = Some(self.lease(worker_id));
                    self.save(rec).await?;
                    Ok(())
                }
                Err(StepError::OutOfTime) => {
                    rec.lease = None;
                    rec.push_activity(format!(
                        "{}: continues in the next invocation",
                        Step::Restore
                    ));
                    self.save(rec).await?;
                    return Ok(Some(FinalizeDone::Continue));
                }
                Err(StepError::Transient(m) | StepError::Permanent(m)) => Err(m),
            }
        };
        let after = match (outcome, rec.steps.restored()) {
            (Ok(()), Some(r)) => r.note().to_string(),
            (Ok(()), None) => String::new(),
            (Err(m), _) => {
                tracing::warn!(request_id = %rec.id, "going back to the last verified version failed: {m}");
                format!(
                    "going back to the last verified version failed ({m}); the version that failed its checks stays deployed, unverified"
                )
            }
        };
        rec.failure = Some(Failure {
            step: Step::Verify.to_string(),
            reason: format!("{reason}\n\n{after}").trim_end().to_string(),
        });
        Ok(None)
    }

    /// Runs `step`, retrying transient failures; `Err` is `Permanent` (with the reason to
    /// fail with) or `OutOfTime`.
    async fn run_with_retries(
        &self,
        step: Step,
        rec: &mut RequestRecord,
        worker_id: &str,
        hard: Option<Instant>,
    ) -> Result<StepResult, StepError> {
        let s = &self.settings;
        let backoff = tb_core::backoff::Backoff::new(s.base_delay, s.max_delay);
        let mut attempt = 0;
        let mut began_ms = now_ms();
        loop {
            attempt += 1;
            // The build bounds its own commands by `hard` (dropping a running command would
            // leave it running); every other step is cut off there.
            let result = match hard {
                Some(h) if step != Step::Build => {
                    tokio::time::timeout_at(h.into(), self.run_step(step, rec, worker_id, hard))
                        .await
                        .unwrap_or(Err(StepError::OutOfTime))
                }
                _ => self.run_step(step, rec, worker_id, hard).await,
            };
            match result {
                Ok(v) => {
                    rec.outage_over();
                    return Ok(v);
                }
                // The step's attempts are used up: an outage, waited out up to its bound.
                Err(StepError::Transient(m)) if attempt >= s.attempts => {
                    let cause = format!("{m} (after {attempt} attempts)");
                    let wait = rec
                        .note_outage(step.service(), &cause, began_ms, s.outage_retry)
                        .map_err(StepError::Permanent)?;
                    rec.lease = Some(self.lease(worker_id));
                    self.save(rec).await?;
                    if hard.is_some_and(|h| Instant::now() + wait >= h) {
                        return Err(StepError::OutOfTime);
                    }
                    tokio::time::sleep(wait).await;
                    attempt = 0;
                    began_ms = now_ms();
                }
                Err(StepError::Transient(m)) => {
                    let wait = backoff.full_jitter(attempt);
                    if hard.is_some_and(|h| Instant::now() + wait >= h) {
                        return Err(StepError::OutOfTime);
                    }
                    tracing::info!(
                        step = step.name(),
                        attempt,
                        "transient failure, retrying in {wait:?}: {m}"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run_step(
        &self,
        step: Step,
        rec: &mut RequestRecord,
        worker_id: &str,
        hard: Option<Instant>,
    ) -> Result<StepResult, StepError> {
        let source_key = format!("projects/{}/requests/{}/source.tar.gz", rec.project, rec.id);
        match step {
            Step::Restore => self.restore(rec).await.map(StepResult::Restore),
            Step::Archive => {
                let Some(sandbox) = self.sandbox(rec).await? else {
                    return Ok(StepResult::Archive(Archived::Skipped {
                        skipped: "the request never had a sandbox".into(),
                    }));
                };
                let snap = snapshot::take(sandbox.as_ref()).await?;
                let (bytes, sha) = snapshot::pack(&snap)
                    .map_err(|e| StepError::Permanent(format!("packing the snapshot: {e}")))?;
                self.archive.put(&source_key, &bytes, &sha).await?;
                Ok(StepResult::Archive(Archived::Source {
                    key: source_key,
                    sha256: sha,
                    files: snap.files.len(),
                    bytes: bytes.len(),
                }))
            }
            Step::Repository => {
                let snap = self.source(&source_key).await?;
                let message = format!(
                    "{}\n\nturbobackend request {}",
                    first_line(rec.description.as_str()),
                    rec.id
                );
                let (snap, left_out) = snapshot::without_workflows(&snap);
                let pushed = self.code_host.push(&rec.project, &snap, &message).await?;
                let note = (!left_out.is_empty()).then(|| {
                    format!(
                        "{} file(s) under .github/workflows/ left out of the repository (kept in the archive): {}",
                        left_out.len(),
                        left_out.join(", ")
                    )
                });
                Ok(StepResult::Repository(Published {
                    pushed,
                    note,
                    left_out,
                }))
            }
            Step::Database => {
                let Some(dbs) = &self.databases else {
                    return Ok(StepResult::Database(Provisioned::Skipped {
                        skipped: "no database cluster configured (set DB_CLUSTER_HOST)".into(),
                    }));
                };
                let snap = self.source(&source_key).await?;
                let db = dbs.provision(&rec.project, false).await?;
                let applied = dbs.migrate(&db, &snapshot::migrations(&snap)).await?;
                Ok(StepResult::Database(Provisioned::Database {
                    database: db.database,
                    role: db.role,
                    applied,
                }))
            }
            Step::Build => {
                let sandbox = self
                    .sandbox(rec)
                    .await?
                    .ok_or_else(|| StepError::Permanent("the sandbox is gone".into()))?;
                // Without a package.json of its own, npm walks up to the nearest parent
                // project and runs that one's scripts: nothing runs.
                match sandbox
                    .read_file(&WorkspacePath::parse("package.json").expect("valid"))
                    .await
                {
                    Err(SandboxError::NotFound(_)) => {
                        return Err(StepError::Permanent(
                            "the project has no package.json at its root: nothing to install or build".into(),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                    Ok(_) => {}
                }
                for sub in BuildStep::ALL {
                    if rec.steps.build_step(sub).is_some() {
                        continue;
                    }
                    let started = Instant::now();
                    let (t, cut) = bounded(self.settings.build_timeout, hard)?;
                    let out = sandbox.exec(sub.command(), t).await?;
                    if out.timed_out && cut {
                        return Err(StepError::OutOfTime);
                    }
                    check(&out, sub.what())?;
                    let ms = started.elapsed().as_millis() as u64;
                    rec.steps.record_build_step(sub, ms);
                    rec.push_activity(format!(
                        "{}: done in {:.1} s",
                        sub.what(),
                        ms as f64 / 1000.0
                    ));
                    rec.lease = Some(self.lease(worker_id));
                    self.save(rec).await?;
                }
                let (t, cut) = bounded(Duration::from_secs(120), hard)?;
                let pack = sandbox
                    .exec("set -o pipefail; test -f .output/server/index.mjs && mkdir -p .turbobackend && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - .output | gzip -n > .turbobackend/artifact.tar.gz", t)
                    .await?;
                if pack.timed_out && cut {
                    return Err(StepError::OutOfTime);
                }
                if pack.exit_code != Some(0) {
                    return Err(StepError::Permanent(
                        "the build did not produce .output/server/index.mjs".into(),
                    ));
                }
                let bytes = sandbox
                    .read_file(
                        &WorkspacePath::parse(".turbobackend/artifact.tar.gz").expect("valid"),
                    )
                    .await?;
                let sha = sha256_hex(&bytes);
                let key = format!(
                    "projects/{}/requests/{}/artifact.tar.gz",
                    rec.project, rec.id
                );
                self.archive.put(&key, &bytes, &sha).await?;
                Ok(StepResult::Build(Built {
                    key,
                    sha256: sha,
                    bytes: bytes.len(),
                }))
            }
            Step::Deploy => {
                let key = rec
                    .steps
                    .build
                    .as_ref()
                    .map(|b| b.result.key.as_str())
                    .ok_or_else(|| StepError::Permanent("no build artifact".into()))?;
                let tar_gz = self.archive.get(key).await?.ok_or_else(|| {
                    StepError::Permanent(format!("the artifact {key} is missing"))
                })?;
                let artifact = Artifact {
                    sha256: sha256_hex(&tar_gz),
                    tar_gz,
                };
                let mut secrets = BTreeMap::new();
                if let Some(dbs) = &self.databases {
                    // Provisioning again rotates the password: the URL is never stored anywhere
                    // but in the deployment's secrets.
                    secrets.insert(
                        "DATABASE_URL".to_string(),
                        dbs.provision(&rec.project, false).await?.url,
                    );
                }
                let deployment = self
                    .deployer
                    .deploy(&rec.project, &artifact, &secrets)
                    .await?;
                Ok(StepResult::Deploy(deployment))
            }
            Step::Verify => crate::verify::verify(self.prober.as_ref(), rec, &self.settings.verify)
                .await
                .map(StepResult::Verify)
                .map_err(StepError::Permanent),
            Step::Receipt => {
                let snap = self.source(&source_key).await?;
                let receipt = crate::receipt::build(rec, &snapshot::migrations(&snap));
                let Some(signing) = &self.receipt_key else {
                    return Ok(StepResult::Receipt(Receipted::Unsigned {
                        skipped: "no signing key is configured (TB_CALLBACK_SECRET)".into(),
                        receipt,
                    }));
                };
                let document = crate::receipt::sign(signing, receipt);
                let bytes = serde_json::to_vec_pretty(&document).expect("serialisable");
                let sha = sha256_hex(&bytes);
                let key = format!("projects/{}/requests/{}/receipt.json", rec.project, rec.id);
                self.archive.put(&key, &bytes, &sha).await?;
                let (receipt_commit_sha, committed) =
                    crate::receipt::commit(self.code_host.as_ref(), rec, &bytes).await?;
                Ok(StepResult::Receipt(Receipted::Signed {
                    key,
                    sha256: sha,
                    document,
                    receipt_commit_sha,
                    note: format!(
                        "signed; {committed}; check it with `turbobackend receipt verify FILE`"
                    ),
                }))
            }
        }
    }

    /// The `restore` step: the project's last verified version runs again in place of the
    /// one that failed its checks (by its version: the image digest, or the local
    /// version), unless there is none, or it is the one deployed now.
    async fn restore(&self, rec: &RequestRecord) -> Result<Restored, StepError> {
        let failed = rec
            .steps
            .deployment()
            .map(|d| d.version.clone())
            .ok_or_else(|| StepError::Permanent("no deployment to restore from".into()))?;
        let verified = self
            .records
            .project(&rec.project)
            .await?
            .and_then(|p| p.last_verified_version);
        match verified {
            Some(version) if version != failed => {
                let restored = self.deployer.rollback(&rec.project, &version).await?;
                Ok(Restored::Back {
                    note: format!(
                        "the deployment is back on the last verified version {version}; the failed version {failed} is not running"
                    ),
                    restored,
                    failed_version: failed,
                })
            }
            Some(_) => Ok(Restored::StaysUp {
                unverified: failed.clone(),
                note: format!(
                    "the deployed version {failed} passed verification before; it stays up, marked unverified now"
                ),
            }),
            None => Ok(Restored::StaysUp {
                unverified: failed.clone(),
                note: format!(
                    "no earlier version of the project passed verification: version {failed} stays up for you to look at, marked unverified"
                ),
            }),
        }
    }

    /// Releases the sandbox, writes the ledger and the project record, sets the final phase.
    async fn cleanup(&self, rec: &mut RequestRecord) -> Result<(), FinalizeError> {
        if let Some(id) = &rec.sandbox_id
            && let Err(e) = self.sandboxes.destroy(id).await
        {
            // The sweeper deletes it later (it is no longer owned by a live request).
            tracing::warn!(request_id = %rec.id, "releasing the sandbox failed: {e}");
        }
        let (_, calls) = self.store.conversation(rec).await?;
        self.records
            .record_usage(&rec.id, &rec.owner, &rec.project, &calls)
            .await?;
        self.save_project(rec).await?;
        if let (Some(d), Some(true)) = (
            rec.steps.deployment(),
            rec.steps.verified().map(|v| v.passed),
        ) && let Err(e) = self.deployer.retain(&rec.project, &d.version).await
        {
            // The version stays deployed; only a later `restore` may not find it.
            tracing::warn!(request_id = %rec.id, "keeping the verified version failed: {e}");
        }

        let outcome = rec.agent.outcome.clone();
        rec.phase = match (&rec.failure, &outcome) {
            (Some(_), _) => Phase::Failed,
            (None, Some(Outcome::Finished { .. })) => Phase::Succeeded,
            (None, Some(Outcome::Cancelled)) => Phase::Cancelled,
            (None, o) => {
                let reason = o
                    .as_ref()
                    .map(Outcome::describe)
                    .unwrap_or_else(|| "the agent did not finish".into());
                rec.failure = Some(Failure {
                    step: "agent".into(),
                    reason,
                });
                Phase::Failed
            }
        };
        if rec.phase == Phase::Succeeded {
            // The next request on this project starts from this one's source.
            if let Some((key, sha)) = rec.steps.source() {
                let current = crate::base::Current {
                    request_id: rec.id.clone(),
                    source_key: key.to_string(),
                    sha256: sha.to_string(),
                };
                crate::base::set_current(self.archive.as_ref(), &rec.project, &current).await?;
            }
        }
        rec.lease = None;
        rec.push_activity(format!("request {:?}", rec.phase).to_lowercase());
        self.save(rec).await?;
        tracing::info!(request_id = %rec.id, phase = ?rec.phase, "request finished");
        Ok(())
    }

    fn owes_callback(&self, rec: &RequestRecord) -> bool {
        self.notifier.is_some() && rec.callback_url.is_some() && rec.steps.notify.is_none()
    }

    /// Sends the callback once: its outcome is recorded as the `notify` step, so a retried
    /// finalizer does not send it again. Receivers drop repeats by the delivery id.
    async fn notify(&self, rec: &mut RequestRecord) {
        let (Some(notifier), Some(url)) = (&self.notifier, rec.callback_url.clone()) else {
            return;
        };
        if rec.steps.notify.is_some() {
            return;
        }
        let steps = &rec.steps;
        let payload = json!({
            "request_id": rec.id,
            "project_id": rec.project,
            "phase": rec.phase,
            "outcome": rec.agent.outcome.as_ref().map(Outcome::describe),
            "cost_micro_usd": rec.agent.cost.micros(),
            "repository_url": steps.repository_url(),
            "commit_sha": steps.commit_sha(),
            "database": steps.database_name(),
            "deployment_url": steps.live_deployment().map(|d| &d.url),
            "receipt": steps.receipt_document(),
            "receipt_commit_sha": steps.receipt_commit_sha(),
            "error": rec.failure,
        });
        let delivery = format!("{}-final", rec.id);
        let error = match notifier.notify(&url, &delivery, &payload).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(request_id = %rec.id, "callback failed: {e}");
                Some(e.to_string())
            }
        };
        rec.steps.notify = Some(Notified {
            delivered: error.is_none(),
            delivery_id: delivery,
            error,
            at_ms: now_ms(),
        });
        if let Err(e) = self.save(rec).await {
            tracing::warn!(request_id = %rec.id, "recording the callback failed: {e}");
        }
    }

    async fn save_project(&self, rec: &RequestRecord) -> Result<(), PortError> {
        let now = now_ms();
        let mut p = self
            .records
            .project(&rec.project)
            .await?
            .unwrap_or_else(|| ProjectRecord::new(rec.project.clone(), rec.owner.clone(), now));
        if let Some(url) = rec.steps.repository_url() {
            p.repo_url = Some(url.to_string());
        }
        if let Some(db) = rec.steps.database_name() {
            p.database = Some(db.to_string());
        }
        // After a `restore`, the earlier version it went back to.
        if let Some(d) = rec.steps.live_deployment()
            && p.deployed_version.as_deref() != Some(d.version.as_str())
        {
            p.previous_version = p.deployed_version.take();
            p.deployed_version = Some(d.version.clone());
            p.deploy_url = Some(d.url.clone());
        }
        if let Some(verified) = rec.steps.live_verified() {
            p.deployed_verified = Some(verified);
            if let (true, Some(v)) = (verified, &p.deployed_version) {
                p.last_verified_version = Some(v.clone());
            }
        }
        p.last_request = Some(rec.id.clone());
        p.updated_at_ms = now;
        self.records.save_project(&p).await
    }

    async fn sandbox(&self, rec: &RequestRecord) -> Result<Option<Arc<dyn Sandbox>>, StepError> {
        match &rec.sandbox_id {
            None => Ok(None),
            Some(id) => Ok(Some(self.sandboxes.connect(id).await?)),
        }
    }

    async fn source(&self, key: &str) -> Result<tb_core::ports::Snapshot, StepError> {
        let bytes = self
            .archive
            .get(key)
            .await?
            .ok_or_else(|| StepError::Permanent(format!("the snapshot {key} is missing")))?;
        snapshot::unpack(&bytes)
            .map_err(|e| StepError::Permanent(format!("reading the snapshot: {e}")))
    }

    fn lease(&self, owner: &str) -> Lease {
        Lease {
            owner: owner.to_string(),
            until_ms: now_ms() + self.settings.lease.as_millis() as u64,
        }
    }

    async fn save(&self, rec: &mut RequestRecord) -> Result<(), PortError> {
        crate::ports::save_next(self.store.as_ref(), rec, Appended::default()).await
    }
}

/// `timeout`, or less when less is left before `hard` (then `true`); `OutOfTime` when
/// nothing is left.
fn bounded(timeout: Duration, hard: Option<Instant>) -> Result<(Duration, bool), StepError> {
    let Some(hard) = hard else {
        return Ok((timeout, false));
    };
    let left = hard.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(StepError::OutOfTime);
    }
    Ok((timeout.min(left), left < timeout))
}

fn check(out: &tb_core::sandbox::ExecOutput, what: &str) -> Result<(), StepError> {
    match (out.timed_out, out.exit_code) {
        (true, _) => Err(StepError::Permanent(format!("{what} timed out"))),
        (false, Some(0)) => Ok(()),
        (false, code) => {
            let tail: String = out
                .output
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(StepError::Permanent(format!(
                "{what} failed (exit {code:?}):\n{tail}"
            )))
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(72).collect()
}
