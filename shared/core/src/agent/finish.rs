//! What `finish` checks before it is accepted, in the sandbox: the build passes, the
//! migrations apply to a throwaway database (where the dev database port can rehearse
//! them), the built server starts and answers `GET /api/health`, and the declared checks
//! pass against it. The declared checks run here only when the project has no migrations:
//! the server in the sandbox has no database, so a project that needs one has its checks
//! run after the deployment, against its real database.
//!
//! A failure is the tool's error, labelled by its stage (`[finish refused at build]`) and
//! cut to a few KB; after [`super::AgentConfig::finish_attempts`] refusals the run fails
//! naming the stage.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::checks::{CheckCall, EndpointCheck, ProbeReply, describe_calls, record};
use crate::ports::Migration;
use crate::sandbox::{SandboxError, WorkspacePath};

use super::output::head_tail;
use super::tools::ToolContext;

/// How a refusal's text starts; the loop counts refusals by it.
pub(crate) const REFUSED: &str = "[finish refused at ";
/// The runner of the built server and the checks (plain Node, no dependencies).
const RUNNER: &str = include_str!("check_run.mjs");
const RUNNER_PATH: &str = ".turbobackend/checks/run.mjs";
const INPUT_PATH: &str = ".turbobackend/checks/input.json";
/// How much of an output a refusal shows, head and tail.
const SHOWN: usize = 1_500;

/// Why `finish` was not accepted.
pub(crate) enum Refusal {
    /// A stage failed: counts as a failed attempt.
    Stage { stage: &'static str, text: String },
    /// The step's time ran out before the checks were done: not the project's fault.
    OutOfTime(String),
}

/// Runs the checks; `Ok(Ok(report))` when they all pass.
pub(crate) async fn check(
    ctx: &ToolContext<'_>,
    checks: Option<&[EndpointCheck]>,
) -> Result<Result<String, Refusal>, SandboxError> {
    let refuse = |stage, text: String| Ok(Err(Refusal::Stage { stage, text }));
    let package = WorkspacePath::parse("package.json")?;
    match ctx.sandbox.read_file(&package).await {
        Err(e) if e.is_model_fault() => {
            return refuse(
                "build",
                "The project has no package.json at its root: nothing to build.".into(),
            );
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let mut report = Vec::new();

    // build
    let Some(timeout) = time_left(ctx, ctx.config.max_command_timeout) else {
        return Ok(Err(out_of_time("build")));
    };
    let out = ctx
        .sandbox
        .exec(
            // Installed first when nothing is installed yet, as the finalizer's build does.
            "export CI=1 NO_COLOR=1; (test -d node_modules || npm install --no-audit --no-fund) 2>&1 && npm run build 2>&1 && test -f .output/server/index.mjs",
            timeout,
        )
        .await?;
    if out.timed_out {
        return match time_left(ctx, Duration::from_secs(1)) {
            None => Ok(Err(out_of_time("build"))),
            Some(_) => refuse(
                "build",
                format!(
                    "`npm run build` did not finish within {} s.",
                    timeout.as_secs()
                ),
            ),
        };
    }
    if out.exit_code != Some(0) {
        return refuse(
            "build",
            format!(
                "`npm install` or `npm run build` failed (or produced no .output/server/index.mjs):\n{}",
                head_tail(&out.output, SHOWN, SHOWN, None)
            ),
        );
    }
    report.push("the build passed".to_string());

    // migrations
    let migrations = migrations(ctx).await?;
    if let (Some(db), false) = (ctx.db, migrations.is_empty()) {
        match db.rehearse_migrations(&migrations).await {
            Ok(true) => report.push(format!(
                "the {} migration(s) applied to a throwaway database",
                migrations.len()
            )),
            Ok(false) => {}
            Err(e) => {
                return refuse(
                    "migrations",
                    format!(
                        "The migrations do not apply to an empty database:\n{}",
                        head_tail(&e, SHOWN, SHOWN, None)
                    ),
                );
            }
        }
    }

    // start, then the checks that need no database
    let run_declared = migrations.is_empty();
    let declared = checks.unwrap_or_default();
    let to_run: &[EndpointCheck] = if run_declared { declared } else { &[] };
    ctx.sandbox
        .write_file(&WorkspacePath::parse(RUNNER_PATH)?, RUNNER.as_bytes())
        .await?;
    let input = json!({ "checks": to_run });
    ctx.sandbox
        .write_file(
            &WorkspacePath::parse(INPUT_PATH)?,
            input.to_string().as_bytes(),
        )
        .await?;
    let Some(timeout) = time_left(ctx, Duration::from_secs(60 + 12 * to_run.len() as u64)) else {
        return Ok(Err(out_of_time("start")));
    };
    let out = ctx
        .sandbox
        .exec(&format!("node {RUNNER_PATH} 2>&1"), timeout)
        .await?;
    let Some(line) = out
        .output
        .lines()
        .find_map(|l| l.strip_prefix("__TB_CHECKS "))
    else {
        if out.timed_out && time_left(ctx, Duration::from_secs(1)).is_none() {
            return Ok(Err(out_of_time("start")));
        }
        return refuse(
            "start",
            format!(
                "Starting the built server (`node .output/server/index.mjs`) and calling it did not complete:\n{}",
                head_tail(&out.output, SHOWN, SHOWN, None)
            ),
        );
    };
    let ran: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let log = ran["log"].as_str().unwrap_or("").to_string();
    let with_log = |text: String| {
        if log.trim().is_empty() {
            text
        } else {
            format!(
                "{text}\nThe server's last output:\n{}",
                head_tail(&log, SHOWN, SHOWN, None)
            )
        }
    };
    let health = EndpointCheck::health();
    let health_call = call_of(&health, &health.path, &ran["health"], &[]).0;
    if !health_call.passed {
        return refuse(
            "start",
            with_log(format!(
                "The built server did not answer GET /api/health with 200 within 30 s:\n{}",
                describe_calls(&[health_call])
            )),
        );
    }
    report.push("the built server answered GET /api/health".into());
    let mut calls = vec![health_call];
    let mut answers = Vec::new();
    let replies = ran["replies"].as_array().cloned().unwrap_or_default();
    for (check, reply) in to_run.iter().zip(replies.iter()) {
        let path = crate::checks::prepare(check, &answers)
            .map(|r| r.path)
            .unwrap_or_else(|_| check.path.clone());
        let (call, json) = call_of(check, &path, reply, &answers);
        calls.push(call);
        answers.push(json);
    }
    if calls.iter().any(|c| !c.passed) || calls.len() != to_run.len() + 1 {
        return refuse(
            "checks",
            with_log(format!(
                "Declared checks failed against the built server (started with no database):\n{}",
                describe_calls(&calls)
            )),
        );
    }
    match (run_declared, declared.len()) {
        (_, 0) => {}
        (true, n) => report.push(format!("the {n} declared check(s) passed")),
        (false, n) => report.push(format!(
            "the {n} declared check(s) need the database, so they run after the deployment"
        )),
    }
    Ok(Ok(report.join("; ")))
}

/// A reply of the runner as a recorded call, with its JSON answer.
fn call_of(
    check: &EndpointCheck,
    path: &str,
    reply: &Value,
    answers: &[Option<Value>],
) -> (CheckCall, Option<Value>) {
    let sent = match reply["status"].as_u64() {
        Some(status) => Ok(ProbeReply {
            status: status as u16,
            body: reply["body"].as_str().unwrap_or("").to_string(),
        }),
        None => Err(reply["error"].as_str().unwrap_or("not run")),
    };
    let latency_ms = reply["ms"].as_u64().unwrap_or(0);
    record(check, path, sent, latency_ms, answers)
}

/// `want`, or less when the step's time is shorter; `None` when (almost) none is left.
fn time_left(ctx: &ToolContext<'_>, want: Duration) -> Option<Duration> {
    match ctx.deadline {
        None => Some(want),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            (left > Duration::from_secs(1)).then(|| want.min(left))
        }
    }
}

fn out_of_time(stage: &str) -> Refusal {
    Refusal::OutOfTime(format!(
        "`finish` ran out of this step's time at its {stage} stage (each step of the platform runs within a time limit); nothing is wrong with the project. Call `finish` again."
    ))
}

/// `migrations/*.sql`, in name order.
async fn migrations(ctx: &ToolContext<'_>) -> Result<Vec<Migration>, SandboxError> {
    let dir = WorkspacePath::parse("migrations")?;
    let entries = match ctx.sandbox.list(&dir).await {
        Ok(e) => e,
        Err(e) if e.is_model_fault() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
        if entry.is_dir || !name.ends_with(".sql") {
            continue;
        }
        let sql = ctx
            .sandbox
            .read_file(&WorkspacePath::parse(&entry.path)?)
            .await?;
        out.push(Migration {
            name: name.to_string(),
            sql: String::from_utf8_lossy(&sql).into_owned(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
