//! `turbobackend demo` / `run`: a request through the whole local pipeline (agent in a
//! local sandbox → archive → git → database → build → local deploy), watched until it ends,
//! and the calls the `verify` step made to the live app are shown.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use tb_core::domain::{Description, Phase, ProjectId, RequestId, UserId};
use tb_pipeline::steps::Provisioned;
use tb_pipeline::{NewRequest, Status};

use crate::app::{App, Settings};
use crate::progress::{Output, Progress};

pub const DEMO_DESCRIPTION: &str = "Create a simple API with a users endpoint";
/// The user of requests made from the command line.
pub const LOCAL_USER: &str = "user_local";

#[derive(clap::Args)]
pub struct RunArgs {
    /// What to build.
    #[arg(default_value = DEMO_DESCRIPTION)]
    description: String,
    /// Change an existing project instead of creating one.
    #[arg(long)]
    project: Option<String>,
    /// Running again with the same key resumes the same request instead of starting another.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// How to report progress.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Leave the app running until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    if settings.workers == 0 {
        bail!("TB_WORKERS=0 runs no requests; `run` and `demo` need at least 1 worker");
    }
    let progress = Progress {
        output: args.output,
    };
    if let Err(why) = &settings.isolation {
        eprintln!(
            "WARNING: commands are NOT isolated: {why}. The agent's commands run as this user and can read what it can; install bubblewrap (apt-get install -y bubblewrap) to confine them."
        );
    }
    let app = App::open(&settings, true).await?;
    let description = Description::parse(&args.description).map_err(anyhow::Error::msg)?;
    let project = args.project.as_deref().map(ProjectId::parse).transpose()?;
    let new = NewRequest {
        owner: UserId::parse(LOCAL_USER)?,
        key_id: None,
        description,
        project,
        idempotency_key: args.idempotency_key,
        callback_url: None,
    };
    let accepted = app.requests.create(new).await?;
    progress.event(
        &format!(
            "turbobackend: \"{}\"\n  request: {}{}\n  project: {}\n  model:   {}\n  data:    {}\n",
            args.description,
            accepted.request_id,
            if accepted.created { "" } else { " (resumed)" },
            accepted.project_id,
            settings.model.describe(),
            app.data_dir.display()
        ),
        json!({"event": "start", "request_id": accepted.request_id, "project_id": accepted.project_id, "resumed": !accepted.created,
               "model": settings.model.describe(), "scripted": settings.model.is_scripted()}),
    );
    let status = watch(&app, &accepted.request_id, &progress).await?;
    report(&status, &progress, settings.model.is_scripted());
    show_calls(&status, &progress);
    if status.phase != Phase::Succeeded {
        bail!(
            "the request ended {:?}: {}",
            status.phase,
            status
                .error
                .map(|e| format!("{}: {}", e.step, e.reason))
                .unwrap_or_default()
        );
    }
    let url = status.result.deployment_url().map(String::from);
    // The request succeeded, so the live app passed its checks: serve it if asked.
    if let (Some(url), true) = (url, args.keep_running) {
        progress.event(
            &format!("\nserving at {url}; Ctrl-C to stop"),
            json!({"event": "serving", "url": url}),
        );
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

/// Polls the request until it ends, printing what is new.
pub(crate) async fn watch(
    app: &App,
    id: &RequestId,
    progress: &Progress,
) -> anyhow::Result<Status> {
    let mut seen: VecDeque<String> = VecDeque::new();
    let mut phase = None;
    loop {
        let Some(record) = app.requests.store.load(id).await? else {
            bail!("request {id} vanished")
        };
        let status = app.requests.status_of(&record);
        for line in &status.activity {
            if !seen.contains(line) {
                seen.push_back(line.clone());
                if seen.len() > 64 {
                    seen.pop_front();
                }
                progress.event(&format!("  {line}"), json!({"event": "activity", "line": line, "iteration": status.iteration, "cost_usd": status.cost_usd}));
            }
        }
        if phase != Some(status.phase) {
            phase = Some(status.phase);
            progress.event(
                &format!("[{:?}]", status.phase).to_lowercase(),
                json!({"event": "phase", "phase": status.phase}),
            );
        }
        if status.phase.is_terminal() {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn report(s: &Status, progress: &Progress, scripted: bool) {
    let steps = &s.result;
    let mut lines = vec![
        format!("\n{:?} after {} iterations", s.phase, s.iteration),
        format!("  agent:      {}", s.outcome.clone().unwrap_or_default()),
        format!(
            "  cost:       ${:.6} ({} input, {} cache write, {} cache read, {} output tokens)",
            s.cost_usd, s.tokens.input, s.tokens.cache_write, s.tokens.cache_read, s.tokens.output
        ),
    ];
    if scripted {
        lines.push("              the model was scripted: no model was called; these are the script's simulated tokens, priced as Sonnet".into());
    }
    if let Some(repo) = steps.repository_url() {
        lines.push(format!(
            "  repository: {repo} @ {}",
            steps.commit_sha().unwrap_or_default()
        ));
    }
    if let Some(commit) = steps.receipt_commit_sha() {
        lines.push(format!(
            "  receipt:    {} @ {commit}",
            tb_pipeline::receipt::RECEIPT_PATH
        ));
    }
    if let Some((archive, sha256)) = steps.source() {
        lines.push(format!("  archive:    {archive} (sha256 {sha256})"));
    }
    match steps.database.as_ref().map(|d| &d.result) {
        Some(Provisioned::Database { database, .. }) => {
            lines.push(format!("  database:   {database}"))
        }
        Some(Provisioned::Skipped { skipped }) => {
            lines.push(format!("  database:   skipped: {skipped}"))
        }
        None => {}
    }
    if let Some(url) = steps.deployment_url() {
        lines.push(format!("  live at:    {url}"));
    }
    if let Some(e) = &s.error {
        lines.push(format!("  failed at:  {}: {}", e.step, e.reason));
    }
    let peak_kb = peak_rss_kb();
    lines.push(format!(
        "  peak memory of this process: {:.1} MiB",
        peak_kb as f64 / 1024.0
    ));
    progress.event(
        &lines.join("\n"),
        json!({"event": "done", "status": s, "peak_rss_kb": peak_kb}),
    );
}

/// The calls the `verify` step made to the live app: `/api/health`, then the checks the
/// agent declared with `finish`.
fn show_calls(s: &Status, progress: &Progress) {
    let Some(verify) = s.result.verified() else {
        return;
    };
    progress.event(
        &format!("\nverified against the live app: {}", verify.note),
        json!({"event": "calls", "passed": verify.passed, "note": verify.note}),
    );
    for call in &verify.calls {
        let status = call
            .status
            .map_or("no answer".to_string(), |s| s.to_string());
        let mut line = format!(
            "  {:<6} {} -> {status} ({} ms)",
            call.method, call.path, call.latency_ms
        );
        match &call.error {
            Some(e) => line.push_str(&format!(" FAILED: {e}")),
            None => line.push_str(&format!(" {}", call.excerpt)),
        }
        let mut event = serde_json::to_value(call).expect("serialisable");
        event["event"] = json!("call");
        progress.event(&line, event);
    }
}

/// The process's peak resident memory (Linux `VmHWM`), 0 where unknown.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
