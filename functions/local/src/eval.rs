//! `turbobackend eval`: runs one-sentence tasks (`eval/tasks.json`) through the whole local
//! pipeline with the configured model, one after the other, and prints what each cost and
//! whether it worked: finished (the agent called `finish`), deployed (the local deploy
//! answered its health check), health (`GET /api/health` answers 200 when called again
//! afterwards), iterations, tokens by kind, dollars and wall time, per task and in total,
//! with the machine and the model named.
//!
//! With the scripted model (no model key set) only the tasks that name a built-in script
//! run, each with its script; the others are listed as skipped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};
use tb_core::domain::{Description, Phase, UserId};
use tb_models::ModelSettings;
use tb_models::scripted::Script;
use tb_pipeline::{NewRequest, Status};

use crate::app::{App, Settings};
use crate::demo::{LOCAL_USER, watch};
use crate::progress::{Output, Progress};

/// The tasks kept in the repository.
const TASKS: &str = include_str!("../eval/tasks.json");

/// The scripts the scripted model can play, by the name a task gives.
const SCRIPTS: &[(&str, &str)] = &[("users-api", tb_models::USERS_API_SCRIPT)];

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Run only these tasks (by name; repeat the flag for several). All by default.
    #[arg(long = "task")]
    only: Vec<String>,
    /// A tasks file of the same shape as eval/tasks.json, instead of the built-in one.
    #[arg(long)]
    tasks: Option<PathBuf>,
    /// `table` for people; `json` prints one line per task and a last line with the totals.
    #[arg(long, value_enum, default_value = "table")]
    output: EvalOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EvalOutput {
    Table,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    tasks: Vec<Task>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Task {
    name: String,
    description: String,
    /// The built-in script the scripted model plays for this task, if any.
    #[serde(default)]
    script: Option<String>,
}

/// What one task gave.
#[derive(Debug, Default)]
struct Row {
    name: String,
    /// Why it did not run (the scripted model has no script for it).
    skipped: Option<String>,
    finished: bool,
    deployed: bool,
    healthy: bool,
    /// The `verify` step passed: health and every check the agent declared, live.
    verified: bool,
    iterations: u32,
    tokens: tb_core::TokenUsage,
    cost_micro_usd: i64,
    wall_secs: f64,
    /// How it ended, when not as hoped.
    note: String,
}

pub async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    if settings.workers == 0 {
        anyhow::bail!("TB_WORKERS=0 runs no requests; `eval` needs at least 1 worker");
    }
    let text = match &args.tasks {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => TASKS.to_string(),
    };
    let tasks = parse_tasks(&text)?;
    for name in &args.only {
        anyhow::ensure!(
            tasks.iter().any(|t| &t.name == name),
            "no task named {name:?}; the tasks are: {}",
            tasks
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let picked: Vec<Task> = tasks
        .into_iter()
        .filter(|t| args.only.is_empty() || args.only.contains(&t.name))
        .collect();
    let scripted = settings.model.is_scripted();
    let model = settings.model.describe();
    let machine = machine();
    if args.output == EvalOutput::Table {
        println!("turbobackend eval: {} tasks", picked.len());
        println!("model:   {model}");
        println!("machine: {machine}");
        if let Err(why) = &settings.isolation {
            println!("WARNING: commands are NOT isolated: {why}");
        }
    }
    let mut rows = Vec::new();
    for (i, task) in picked.iter().enumerate() {
        let row = if scripted {
            match task.script.as_deref().map(script_named).transpose()? {
                Some(script) => {
                    settings.model = ModelSettings::Scripted(script);
                    run_task(&settings, task, i, picked.len(), args.output).await?
                }
                None => Row {
                    name: task.name.clone(),
                    skipped: Some("no script for the scripted model".into()),
                    ..Row::default()
                },
            }
        } else {
            run_task(&settings, task, i, picked.len(), args.output).await?
        };
        if args.output == EvalOutput::Json {
            println!("{}", row_json(&row));
        }
        rows.push(row);
    }
    let total = total(&rows);
    match args.output {
        EvalOutput::Json => println!(
            "{}",
            json!({"total": row_json(&total), "ran": rows.iter().filter(|r| r.skipped.is_none()).count(),
                   "skipped": rows.iter().filter(|r| r.skipped.is_some()).map(|r| r.name.clone()).collect::<Vec<_>>(),
                   "model": model, "scripted": scripted, "machine": machine})
        ),
        EvalOutput::Table => print_table(&rows, &total, scripted),
    }
    Ok(())
}

fn parse_tasks(text: &str) -> anyhow::Result<Vec<Task>> {
    let file: TaskFile = serde_json::from_str(text).context("reading the tasks")?;
    let mut names = std::collections::HashSet::new();
    for t in &file.tasks {
        anyhow::ensure!(
            names.insert(&t.name),
            "the task {:?} is listed twice",
            t.name
        );
        Description::parse(&t.description)
            .map_err(|e| anyhow::anyhow!("task {:?}: {e}", t.name))?;
        if let Some(s) = &t.script {
            script_named(s).with_context(|| format!("task {:?}", t.name))?;
        }
    }
    Ok(file.tasks)
}

fn script_named(name: &str) -> anyhow::Result<Script> {
    let (_, text) = SCRIPTS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| anyhow::anyhow!("no built-in script named {name:?}"))?;
    Ok(Script::from_json(text)?)
}

/// One task through the whole pipeline, on an app of its own (the scripted model's script
/// is fixed when the app opens); its deployment is stopped afterwards.
async fn run_task(
    settings: &Settings,
    task: &Task,
    i: usize,
    of: usize,
    output: EvalOutput,
) -> anyhow::Result<Row> {
    if output == EvalOutput::Table {
        eprintln!("[{}/{of}] {}: {}", i + 1, task.name, task.description);
    }
    let app = App::open(settings, true).await?;
    let started = Instant::now();
    let accepted = app
        .requests
        .create(NewRequest {
            owner: UserId::parse(LOCAL_USER)?,
            key_id: None,
            description: Description::parse(&task.description).map_err(anyhow::Error::msg)?,
            project: None,
            idempotency_key: None,
            callback_url: None,
        })
        .await?;
    let quiet = Progress {
        output: Output::Quiet,
    };
    let status = watch(&app, &accepted.request_id, &quiet).await?;
    let wall_secs = started.elapsed().as_secs_f64();
    let url = status.result.deployment_url().map(String::from);
    let healthy = match &url {
        Some(url) => health(url).await,
        None => false,
    };
    app.deployer.stop(&accepted.project_id).await;
    Ok(Row {
        name: task.name.clone(),
        skipped: None,
        finished: status.outcome.as_deref() == Some("finished"),
        deployed: url.is_some(),
        healthy,
        verified: status.result.verified().is_some_and(|v| v.passed),
        iterations: status.iteration,
        tokens: status.tokens,
        cost_micro_usd: status.cost_micro_usd,
        wall_secs,
        note: note(&status),
    })
}

async fn health(base: &str) -> bool {
    let Ok(http) = tb_tls::http_client()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        return false;
    };
    matches!(http.get(format!("{base}/api/health")).send().await, Ok(r) if r.status().is_success())
}

/// How the request ended, when it did not succeed (cut to fit a table cell).
fn note(status: &Status) -> String {
    if status.phase == Phase::Succeeded && status.outcome.as_deref() == Some("finished") {
        return String::new();
    }
    let text = match &status.error {
        Some(e) => format!("{}: {}", e.step, e.reason),
        None => status.outcome.clone().unwrap_or_default(),
    };
    let text = text.replace('\n', " ");
    match text.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn total(rows: &[Row]) -> Row {
    let ran: Vec<&Row> = rows.iter().filter(|r| r.skipped.is_none()).collect();
    let mut t = Row {
        name: "total".into(),
        ..Row::default()
    };
    for r in &ran {
        t.iterations += r.iterations;
        t.tokens += r.tokens;
        t.cost_micro_usd += r.cost_micro_usd;
        t.wall_secs += r.wall_secs;
    }
    let count = |f: fn(&Row) -> bool| ran.iter().filter(|r| f(r)).count();
    t.note = format!(
        "{} ran: {} finished, {} deployed, {} healthy, {} verified",
        ran.len(),
        count(|r| r.finished),
        count(|r| r.deployed),
        count(|r| r.healthy),
        count(|r| r.verified)
    );
    t
}

fn row_json(r: &Row) -> Value {
    json!({
        "task": r.name,
        "skipped": r.skipped,
        "finished": r.finished,
        "deployed": r.deployed,
        "health_verified": r.healthy,
        "verified": r.verified,
        "iterations": r.iterations,
        "tokens": r.tokens,
        "cost_usd": r.cost_micro_usd as f64 / 1e6,
        "cost_micro_usd": r.cost_micro_usd,
        "wall_secs": (r.wall_secs * 10.0).round() / 10.0,
        "note": r.note,
    })
}

fn print_table(rows: &[Row], total: &Row, scripted: bool) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!();
    println!(
        "| task | finished | deployed | health verified | verified | iterations | input | cache write | cache read | output | cost $ | wall s | note |"
    );
    println!("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let line = |r: &Row, counts: bool| {
        let (f, d, h, v) = if counts {
            (String::new(), String::new(), String::new(), String::new())
        } else {
            (
                yes(r.finished).into(),
                yes(r.deployed).into(),
                yes(r.healthy).into(),
                yes(r.verified).into(),
            )
        };
        println!(
            "| {} | {f} | {d} | {h} | {v} | {} | {} | {} | {} | {} | {:.4} | {:.1} | {} |",
            r.name,
            r.iterations,
            r.tokens.input,
            r.tokens.cache_write,
            r.tokens.cache_read,
            r.tokens.output,
            r.cost_micro_usd as f64 / 1e6,
            r.wall_secs,
            r.note
        );
    };
    for r in rows.iter().filter(|r| r.skipped.is_none()) {
        line(r, false);
    }
    line(total, true);
    let skipped: Vec<&str> = rows
        .iter()
        .filter(|r| r.skipped.is_some())
        .map(|r| r.name.as_str())
        .collect();
    if !skipped.is_empty() {
        println!(
            "\nskipped ({}): {} (no script for the scripted model; set ANTHROPIC_API_KEY or OPENAI_BASE_URL to run them)",
            skipped.len(),
            skipped.join(", ")
        );
    }
    println!(
        "\nhealth verified: GET /api/health answered 200 when called again after the run (with a database, after one query). verified: the pipeline's verify step passed: health and every endpoint check the agent declared with `finish`, against the live app."
    );
    if scripted {
        println!(
            "The model was scripted: no model was called; tokens are the script's simulated ones, priced as Sonnet."
        );
    }
}

/// This machine, for the report: host name, cores, processor, memory, OS.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let host = read("/proc/sys/kernel/hostname").trim().to_string();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| format!(", {:.0} GiB", kb as f64 / (1024.0 * 1024.0)))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!(
        "{host}: {cores} cores, {cpu}{mem_gib}, {}",
        std::env::consts::OS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_tasks_parse_and_range_from_users_to_multi_table_apis() {
        let tasks = parse_tasks(TASKS).unwrap();
        assert!(tasks.len() >= 20, "{}", tasks.len());
        assert_eq!(tasks[0].description, crate::demo::DEMO_DESCRIPTION);
        assert!(
            tasks
                .iter()
                .any(|t| t.description.contains("paginated") && t.description.contains("filtered"))
        );
        assert!(tasks.iter().any(|t| t.script.is_some()));
    }

    #[test]
    fn bad_task_files_are_refused_with_the_reason() {
        let err = |s: &str| parse_tasks(s).unwrap_err().to_string();
        assert!(
            err(r#"{"tasks": [{"name": "a", "description": "x y", "script": "nope"}]}"#)
                .contains("task \"a\"")
        );
        assert!(err(r#"{"tasks": [{"name": "a", "description": "An API"}, {"name": "a", "description": "An API"}]}"#).contains("twice"));
        assert!(parse_tasks(r#"{"tasks": [{"name": "a", "descr": "x"}]}"#).is_err());
    }

    #[test]
    fn totals_count_only_the_tasks_that_ran() {
        let ran = Row {
            name: "a".into(),
            finished: true,
            deployed: true,
            healthy: false,
            iterations: 3,
            cost_micro_usd: 10,
            ..Row::default()
        };
        let skipped = Row {
            name: "b".into(),
            skipped: Some("no script".into()),
            iterations: 99,
            ..Row::default()
        };
        let t = total(&[ran, skipped]);
        assert_eq!((t.iterations, t.cost_micro_usd), (3, 10));
        assert_eq!(
            t.note,
            "1 ran: 1 finished, 1 deployed, 0 healthy, 0 verified"
        );
    }
}
