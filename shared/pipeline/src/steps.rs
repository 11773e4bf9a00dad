//! What a request records of its way through the pipeline: the finalizer's [`Step`]s and
//! each one's result as a type, with the worker's `seed` and `agent` entries and the
//! callback's `notify`, all in [`Steps`] (the request record's `steps`).
//!
//! Stored with serde as one JSON object keyed by step name (`"archive"`, `"build:install"`,
//! …), each result an object with its `duration_ms`: the shape records written before these
//! types existed have, so they read back unchanged. A step a newer version records and this
//! one does not know is kept as it is ([`Steps::other`]). What the status, the callback and
//! the project record show of the steps is read here and only here ([`Steps::repository_url`]
//! and the methods beside it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_with::skip_serializing_none;
use tb_core::agent::ProjectBase;
use tb_core::ports::{Deployment, Pushed};

/// The finalizer's steps, in the order they run. `archive` runs for every request; the
/// rest only when the agent finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Snapshot the sandbox → tar.gz → the archive.
    Archive,
    /// Commit the snapshot to the code host.
    Repository,
    /// Provision the project's database and apply its migrations.
    Database,
    /// `npm install` and `npm run build` in the sandbox → the artifact → the archive.
    Build,
    /// Run the artifact on the deploy target.
    Deploy,
    /// Health and the declared checks against the live URL ([`crate::verify`]).
    Verify,
    /// The signed verification receipt, archived beside the source and committed on top of
    /// the source commit as `.turbobackend/receipt.json` ([`crate::receipt`]).
    Receipt,
    /// Only when `verify` still fails after the last repair round: the deployment goes back
    /// to the project's last verified version, or, with none, the app stays up unverified.
    /// Not in [`Step::ALL`].
    Restore,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Archive,
        Step::Repository,
        Step::Database,
        Step::Build,
        Step::Deploy,
        Step::Verify,
        Step::Receipt,
    ];

    /// The name it is recorded and reported under.
    pub fn name(self) -> &'static str {
        match self {
            Step::Archive => "archive",
            Step::Repository => "repository",
            Step::Database => "database",
            Step::Build => "build",
            Step::Deploy => "deploy",
            Step::Verify => "verify",
            Step::Receipt => "receipt",
            Step::Restore => "restore",
        }
    }

    /// What the step needs from outside, for outage messages.
    pub fn service(self) -> &'static str {
        match self {
            Step::Restore => "the deploy target",
            Step::Archive => "the archive",
            Step::Repository => "the code host",
            Step::Database => "the database cluster",
            Step::Build => "the sandbox provider",
            Step::Deploy => "the deploy target",
            Step::Verify => "the deployed app",
            Step::Receipt => "the archive and the code host",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The build's sub-steps, recorded as they finish so a build longer than one invocation
/// continues where it was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildStep {
    /// `build:install`: `npm install`.
    Install,
    /// `build:compile`: `npm run build`.
    Compile,
}

impl BuildStep {
    pub const ALL: [BuildStep; 2] = [BuildStep::Install, BuildStep::Compile];

    pub fn name(self) -> &'static str {
        match self {
            BuildStep::Install => "build:install",
            BuildStep::Compile => "build:compile",
        }
    }

    /// What it runs, in words.
    pub fn what(self) -> &'static str {
        match self {
            BuildStep::Install => "npm install",
            BuildStep::Compile => "npm run build",
        }
    }

    pub fn command(self) -> &'static str {
        match self {
            BuildStep::Install => "npm ci --no-audit --no-fund || npm install --no-audit --no-fund",
            BuildStep::Compile => "npm run build",
        }
    }
}

/// A step's result with how long the step took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Done<T> {
    #[serde(flatten)]
    pub result: T,
    #[serde(default)]
    pub duration_ms: u64,
}

/// `agent`: how the agent ended, recorded by the worker's hand-over to the finalizer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDone {
    pub duration_ms: u64,
    pub outcome: String,
}

/// `archive`: the request's source in the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Archived {
    Source {
        key: String,
        sha256: String,
        files: usize,
        bytes: usize,
    },
    /// Nothing to archive, and why.
    Skipped { skipped: String },
}

/// `repository`: where the source was pushed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    #[serde(flatten)]
    pub pushed: Pushed,
    /// Said in the step's activity line (files left out of the repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Files under `.github/workflows/`: archived, never pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

/// `database`: the project's database and the migrations applied now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Provisioned {
    Database {
        database: String,
        role: String,
        applied: Vec<String>,
    },
    /// No database cluster, and what to set.
    Skipped { skipped: String },
}

/// `build`: the built app in the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Built {
    pub key: String,
    pub sha256: String,
    pub bytes: usize,
}

/// A finished sub-step of the build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubStep {
    pub duration_ms: u64,
}

/// `notify`: the request's callback, sent once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notified {
    pub delivered: bool,
    pub delivery_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at_ms: u64,
}

/// `verify`: every call made to the live app, kept whether the checks passed or not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verified {
    pub url: String,
    /// How many checks `finish` declared (`None`: none, so only health was checked).
    pub declared: Option<usize>,
    pub passed: bool,
    pub at_ms: u64,
    pub calls: Vec<tb_core::checks::CheckCall>,
    pub note: String,
}

/// `receipt`: the signed receipt in the archive and in the repository, or why it is
/// unsigned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Receipted {
    Signed {
        key: String,
        sha256: String,
        document: Value,
        /// The commit on `main` that holds it as `.turbobackend/receipt.json` (on top of
        /// the source commit it names); `None` when it was not committed (the note says
        /// why: `main` had moved on to a newer request's commit). Records made before
        /// receipts were committed have none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt_commit_sha: Option<String>,
        note: String,
    },
    /// No signing key: the receipt is kept on the record only.
    Unsigned { skipped: String, receipt: Value },
}

/// `restore`: what became of a deployment whose checks still failed after the last repair
/// round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Restored {
    /// The deployment went back to the project's last verified version.
    Back {
        /// The earlier version running again, where.
        restored: Deployment,
        /// The version that failed its checks.
        failed_version: String,
        note: String,
    },
    /// The failed version stays deployed, marked unverified: no earlier version of the
    /// project passed verification (or the one that did is this very version).
    StaysUp { unverified: String, note: String },
}

impl Restored {
    /// The version deployed after the step, if it went back.
    pub fn restored(&self) -> Option<&Deployment> {
        match self {
            Restored::Back { restored, .. } => Some(restored),
            Restored::StaysUp { .. } => None,
        }
    }

    pub fn note(&self) -> &str {
        match self {
            Restored::Back { note, .. } | Restored::StaysUp { note, .. } => note,
        }
    }
}

/// `repairs`: one entry per repair round begun (the failed verification handed back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Repair {
    pub round: u32,
    /// The `verify` result that failed.
    pub verify: Option<Verified>,
    /// The request's cost when the round began.
    pub cost_micro_usd_before: i64,
}

/// The result of one finalizer step, as the step returns it.
#[derive(Clone, Debug, PartialEq)]
pub enum StepResult {
    Archive(Archived),
    Repository(Published),
    Database(Provisioned),
    Build(Built),
    Deploy(Deployment),
    Verify(Verified),
    Receipt(Receipted),
    Restore(Restored),
}

impl StepResult {
    /// What the step's activity line adds after "done in …".
    pub fn note(&self) -> Option<&str> {
        match self {
            StepResult::Repository(p) => p.note.as_deref(),
            StepResult::Verify(v) => Some(&v.note),
            StepResult::Receipt(Receipted::Signed { note, .. }) => Some(note),
            StepResult::Receipt(Receipted::Unsigned { skipped, .. }) => Some(skipped),
            StepResult::Restore(r) => Some(r.note()),
            _ => None,
        }
    }
}

/// Everything recorded of a request's steps (see the module documentation).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Steps {
    /// What a change request's sandbox was seeded with (the worker, before the first
    /// iteration).
    pub seed: Option<ProjectBase>,
    pub agent: Option<AgentDone>,
    pub archive: Option<Done<Archived>>,
    pub repository: Option<Done<Published>>,
    pub database: Option<Done<Provisioned>>,
    #[serde(rename = "build:install")]
    pub build_install: Option<SubStep>,
    #[serde(rename = "build:compile")]
    pub build_compile: Option<SubStep>,
    pub build: Option<Done<Built>>,
    pub deploy: Option<Done<Deployment>>,
    pub verify: Option<Done<Verified>>,
    pub receipt: Option<Done<Receipted>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<Repair>,
    pub restore: Option<Done<Restored>>,
    pub notify: Option<Notified>,
    /// Steps this version does not know (recorded by a newer one), kept as they are.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Steps {
    /// Whether `step` has recorded its result (a redelivery skips it).
    pub fn done(&self, step: Step) -> bool {
        match step {
            Step::Archive => self.archive.is_some(),
            Step::Repository => self.repository.is_some(),
            Step::Database => self.database.is_some(),
            Step::Build => self.build.is_some(),
            Step::Deploy => self.deploy.is_some(),
            Step::Verify => self.verify.is_some(),
            Step::Receipt => self.receipt.is_some(),
            Step::Restore => self.restore.is_some(),
        }
    }

    /// Forgets what `step` recorded, so it runs again (a repair round redoes the build).
    pub fn clear(&mut self, step: Step) {
        match step {
            Step::Archive => self.archive = None,
            Step::Repository => self.repository = None,
            Step::Database => self.database = None,
            Step::Build => {
                self.build = None;
                self.build_install = None;
                self.build_compile = None;
            }
            Step::Deploy => self.deploy = None,
            Step::Verify => self.verify = None,
            Step::Receipt => self.receipt = None,
            Step::Restore => self.restore = None,
        }
    }

    /// Records `result` of the step it belongs to.
    pub fn record(&mut self, result: StepResult, duration_ms: u64) {
        fn done<T>(result: T, duration_ms: u64) -> Option<Done<T>> {
            Some(Done {
                result,
                duration_ms,
            })
        }
        match result {
            StepResult::Archive(r) => self.archive = done(r, duration_ms),
            StepResult::Repository(r) => self.repository = done(r, duration_ms),
            StepResult::Database(r) => self.database = done(r, duration_ms),
            StepResult::Build(r) => self.build = done(r, duration_ms),
            StepResult::Deploy(r) => self.deploy = done(r, duration_ms),
            StepResult::Verify(r) => self.verify = done(r, duration_ms),
            StepResult::Receipt(r) => self.receipt = done(r, duration_ms),
            StepResult::Restore(r) => self.restore = done(r, duration_ms),
        }
    }

    pub fn build_step(&self, step: BuildStep) -> Option<&SubStep> {
        match step {
            BuildStep::Install => self.build_install.as_ref(),
            BuildStep::Compile => self.build_compile.as_ref(),
        }
    }

    pub fn record_build_step(&mut self, step: BuildStep, duration_ms: u64) {
        let done = Some(SubStep { duration_ms });
        match step {
            BuildStep::Install => self.build_install = done,
            BuildStep::Compile => self.build_compile = done,
        }
    }

    /// The names of the entries recorded, in the stored (name) order.
    pub fn names(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// How many entries are recorded.
    pub fn len(&self) -> usize {
        self.names().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One entry as stored, by name (for reports and tests).
    pub fn get(&self, name: &str) -> Option<Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut map)) => map.remove(name),
            _ => None,
        }
    }

    /// The archived source: its key and SHA-256.
    pub fn source(&self) -> Option<(&str, &str)> {
        match &self.archive.as_ref()?.result {
            Archived::Source { key, sha256, .. } => Some((key, sha256)),
            Archived::Skipped { .. } => None,
        }
    }

    /// The project's repository, once pushed.
    pub fn repository_url(&self) -> Option<&str> {
        Some(&self.repository.as_ref()?.result.pushed.repo_url)
    }

    /// The commit pushed.
    pub fn commit_sha(&self) -> Option<&str> {
        Some(&self.repository.as_ref()?.result.pushed.commit_sha)
    }

    /// The project's database name, once provisioned.
    pub fn database_name(&self) -> Option<&str> {
        match &self.database.as_ref()?.result {
            Provisioned::Database { database, .. } => Some(database),
            Provisioned::Skipped { .. } => None,
        }
    }

    /// Where the app runs, once deployed.
    pub fn deployment(&self) -> Option<&Deployment> {
        Some(&self.deploy.as_ref()?.result)
    }

    /// The deployment's URL.
    pub fn deployment_url(&self) -> Option<&str> {
        Some(&self.deployment()?.url)
    }

    /// The live app's verification, once run.
    pub fn verified(&self) -> Option<&Verified> {
        Some(&self.verify.as_ref()?.result)
    }

    /// What became of a deployment that failed its checks for good, once decided.
    pub fn restored(&self) -> Option<&Restored> {
        Some(&self.restore.as_ref()?.result)
    }

    /// Where the project runs now: the earlier version the `restore` step went back to, or
    /// the `deploy` step's deployment.
    pub fn live_deployment(&self) -> Option<&Deployment> {
        self.restored()
            .and_then(Restored::restored)
            .or_else(|| self.deployment())
    }

    /// Whether the version running now passed verification: `None` before `verify` ran.
    pub fn live_verified(&self) -> Option<bool> {
        let verified = self.verified()?;
        Some(verified.passed || self.restored().and_then(Restored::restored).is_some())
    }

    /// The migrations the `database` step applied now.
    pub fn applied_now(&self) -> &[String] {
        match self.database.as_ref().map(|d| &d.result) {
            Some(Provisioned::Database { applied, .. }) => applied,
            _ => &[],
        }
    }

    /// Whether the `database` step was skipped (no cluster).
    pub fn database_skipped(&self) -> bool {
        matches!(
            self.database.as_ref().map(|d| &d.result),
            Some(Provisioned::Skipped { .. })
        )
    }

    /// The commit holding the signed receipt as `.turbobackend/receipt.json`, once made.
    pub fn receipt_commit_sha(&self) -> Option<&str> {
        match &self.receipt.as_ref()?.result {
            Receipted::Signed {
                receipt_commit_sha, ..
            } => receipt_commit_sha.as_deref(),
            Receipted::Unsigned { .. } => None,
        }
    }

    /// The signed receipt document (or the unsigned receipt), once made.
    pub fn receipt_document(&self) -> Option<&Value> {
        match &self.receipt.as_ref()?.result {
            Receipted::Signed { document, .. } => Some(document),
            Receipted::Unsigned { receipt, .. } => Some(receipt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record's `steps` as written before the steps had types (untyped JSON per step).
    fn old_shape() -> Value {
        json!({
            "seed": {"from_request": "req_1", "files": ["package.json"], "applied_migrations": []},
            "agent": {"duration_ms": 1200, "outcome": "finished: done"},
            "archive": {"key": "projects/p/requests/r/source.tar.gz", "sha256": "ab", "files": 3, "bytes": 120, "duration_ms": 40},
            "repository": {"repo_url": "https://github.com/acme/p", "commit_sha": "c0ffee", "committed": true,
                           "note": "1 file(s) under .github/workflows/ left out", "left_out": [".github/workflows/ci.yml"], "duration_ms": 300},
            "database": {"database": "proj_p", "role": "proj_p_owner", "applied": ["001_users.sql"], "duration_ms": 80},
            "build:install": {"duration_ms": 9000},
            "build:compile": {"duration_ms": 4000},
            "build": {"key": "projects/p/requests/r/artifact.tar.gz", "sha256": "cd", "bytes": 5000, "duration_ms": 13100},
            "deploy": {"url": "https://p.fly.dev", "version": "sha256:1", "details": {"app": "p"}, "duration_ms": 20000},
            "notify": {"delivered": false, "delivery_id": "r-final", "error": "HTTP 500", "at_ms": 7}
        })
    }

    #[test]
    fn steps_recorded_before_the_types_read_back_and_write_the_same_json() {
        let steps: Steps = serde_json::from_value(old_shape()).unwrap();
        assert_eq!(steps.repository_url(), Some("https://github.com/acme/p"));
        assert_eq!(steps.commit_sha(), Some("c0ffee"));
        assert_eq!(steps.database_name(), Some("proj_p"));
        assert_eq!(steps.deployment_url(), Some("https://p.fly.dev"));
        assert_eq!(
            steps.source(),
            Some(("projects/p/requests/r/source.tar.gz", "ab"))
        );
        assert_eq!(steps.build.as_ref().unwrap().duration_ms, 13100);
        assert_eq!(
            steps.build_step(BuildStep::Install).unwrap().duration_ms,
            9000
        );
        assert_eq!(
            steps.notify.as_ref().unwrap().error.as_deref(),
            Some("HTTP 500")
        );
        assert_eq!(steps.seed.as_ref().unwrap().from_request, "req_1");
        assert!(steps.other.is_empty(), "{:?}", steps.other);
        // Verification and receipts came later: records of that time have neither.
        for step in &Step::ALL[..5] {
            assert!(steps.done(*step), "{step}");
        }
        assert!(!steps.done(Step::Verify) && !steps.done(Step::Receipt));
        assert_eq!(serde_json::to_value(&steps).unwrap(), old_shape());
    }

    #[test]
    fn a_whole_record_stored_before_the_types_reads_back_unchanged() {
        use tb_core::domain::{Description, ProjectId, RequestId, UserId};
        let (rec, _) = crate::RequestRecord::new(
            RequestId::generate(),
            UserId::parse("user_1").unwrap(),
            ProjectId::generate(),
            Description::parse("An API").unwrap(),
            1,
        );
        let mut stored = serde_json::to_value(&rec).unwrap();
        stored["steps"] = old_shape();
        let back: crate::RequestRecord = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(back.steps.deployment_url(), Some("https://p.fly.dev"));
        assert_eq!(serde_json::to_value(&back).unwrap(), stored);
    }

    #[test]
    fn skipped_steps_and_unknown_steps_read_back() {
        let stored = json!({
            "archive": {"skipped": "the request never had a sandbox", "duration_ms": 1},
            "database": {"skipped": "no database cluster configured (set DB_CLUSTER_HOST)", "duration_ms": 0},
            "preview": {"passed": true, "duration_ms": 5}
        });
        let steps: Steps = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(steps.source(), None);
        assert_eq!(steps.database_name(), None);
        assert!(steps.done(Step::Archive) && !steps.done(Step::Repository));
        assert_eq!(steps.other["preview"]["passed"], true);
        assert_eq!(steps.names(), ["archive", "database", "preview"]);
        assert_eq!(serde_json::to_value(&steps).unwrap(), stored);
    }

    #[test]
    fn a_restore_reads_back_as_its_kind_and_says_where_the_project_runs() {
        let verify = json!({"url": "http://127.0.0.1:4001", "declared": 1, "passed": false,
                            "at_ms": 5, "calls": [], "note": "1 of 2 call(s) failed"});
        let deploy = json!({"url": "http://127.0.0.1:4001", "version": "bb", "details": {}});
        let back: Steps = serde_json::from_value(json!({
            "deploy": deploy, "verify": verify,
            "restore": {"restored": {"url": "http://127.0.0.1:4002", "version": "aa", "details": {}},
                        "failed_version": "bb", "note": "back on aa", "duration_ms": 900}
        }))
        .unwrap();
        assert!(back.done(Step::Restore));
        assert_eq!(
            back.live_deployment().map(|d| d.version.as_str()),
            Some("aa")
        );
        assert_eq!(
            back.live_deployment().map(|d| d.url.as_str()),
            Some("http://127.0.0.1:4002")
        );
        assert_eq!(back.deployment_url(), Some("http://127.0.0.1:4001"));
        assert_eq!(back.live_verified(), Some(true));

        let stays: Steps = serde_json::from_value(json!({
            "deploy": deploy, "verify": verify,
            "restore": {"unverified": "bb", "note": "stays up", "duration_ms": 3}
        }))
        .unwrap();
        assert_eq!(
            stays.live_deployment().map(|d| d.version.as_str()),
            Some("bb")
        );
        assert_eq!(stays.live_verified(), Some(false));
        assert!(matches!(stays.restored(), Some(Restored::StaysUp { .. })));
        // Not verified yet: nothing is said.
        let deployed: Steps = serde_json::from_value(json!({"deploy": deploy})).unwrap();
        assert_eq!(deployed.live_verified(), None);
    }

    #[test]
    fn a_renamed_field_is_refused_rather_than_read_as_nothing() {
        // A deploy result without its URL does not silently blank the status: it does not
        // read as a deployment at all.
        let stored =
            json!({"deploy": {"address": "https://p.fly.dev", "version": "1", "details": {}}});
        assert!(serde_json::from_value::<Steps>(stored).is_err());
    }

    #[test]
    fn a_receipt_step_reads_back_with_or_without_its_commit() {
        let before = json!({"key": "k", "sha256": "ab", "document": {"receipt": {}}, "note": "signed", "duration_ms": 3});
        let steps: Steps = serde_json::from_value(json!({"receipt": before})).unwrap();
        assert_eq!(steps.receipt_commit_sha(), None);
        assert!(steps.receipt_document().is_some());
        assert_eq!(serde_json::to_value(&steps).unwrap()["receipt"], before);
        let mut now = before.clone();
        now["receipt_commit_sha"] = json!("c0ffee");
        let steps: Steps = serde_json::from_value(json!({"receipt": now})).unwrap();
        assert_eq!(steps.receipt_commit_sha(), Some("c0ffee"));
        assert_eq!(serde_json::to_value(&steps).unwrap()["receipt"], now);
        let unsigned: Steps = serde_json::from_value(
            json!({"receipt": {"skipped": "no key", "receipt": {}, "duration_ms": 1}}),
        )
        .unwrap();
        assert_eq!(unsigned.receipt_commit_sha(), None);
    }
}
