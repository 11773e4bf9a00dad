//! `turbobackend demo`: the agent builds a backend in a local sandbox, then it runs locally.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;
use tb_core::agent::{Agent, AgentState, CancelFlag, Slice, SliceEnd};
use tb_core::domain::{Description, RequestId};
use tb_core::sandbox::SandboxSpec;
use tb_models::ModelSettings;
use tb_sandbox::{LocalSandboxConfig, LocalSandboxProvider};

use crate::preview;
use crate::progress::{Output, Progress};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// What to build.
    #[arg(default_value = "Create a simple API with a users endpoint")]
    description: String,
    /// How to report progress.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Leave the app running until Ctrl-C instead of stopping it after the checks.
    #[arg(long)]
    keep_running: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let var = |k: &str| std::env::var(k).ok();
    let settings = ModelSettings::from_env(var)?;
    let config = tb_core::settings::agent_config(var)?;
    let prices = tb_core::settings::price_table(var)?;
    let description = Description::parse(&args.description).map_err(anyhow::Error::msg)?;
    let data_dir = data_dir()?;
    let model = settings.build()?;
    prices.price_for(model.id())?;

    let progress = Progress {
        output: args.output,
        max_iterations: config.max_iterations,
    };
    let request = RequestId::generate();
    progress.event(
        &format!("turbobackend demo: \"{}\"\n  request: {request}\n  model:   {}", description.as_str(), settings.describe()),
        json!({"event": "start", "request_id": request.as_str(), "description": description.as_str(), "model": model.id(), "scripted": settings.is_scripted()}),
    );

    let provider = LocalSandboxProvider::new(LocalSandboxConfig {
        extra_env: BTreeMap::from([(
            "npm_config_cache".to_string(),
            data_dir.join("npm-cache").display().to_string(),
        )]),
        ..LocalSandboxConfig::new(data_dir.join("sandboxes"))
    });
    let labels = BTreeMap::from([("request".to_string(), request.to_string())]);
    let sandbox = provider
        .create_local(&SandboxSpec {
            name: request.to_string(),
            labels,
        })
        .await?;
    progress.event(
        &format!("  sandbox: {}\n\nagent", sandbox.workspace_dir().display()),
        json!({"event": "sandbox", "path": sandbox.workspace_dir()}),
    );

    let agent = Agent {
        model: model.as_ref(),
        sandbox: &sandbox,
        db: None,
        prices: &prices,
        config: &config,
        cancel: CancelFlag::default(),
    };
    let mut state = AgentState::new(description.as_str());
    let outcome = loop {
        match agent
            .run(
                &mut state,
                Slice {
                    max_iterations: 1,
                    deadline: None,
                },
            )
            .await?
        {
            SliceEnd::Paused => progress.iteration(&state),
            SliceEnd::Done(outcome) => {
                progress.iteration(&state);
                break outcome;
            }
        }
    };
    let u = state.usage;
    progress.event(
        &format!(
            "\n{} after {} iterations\n  cost:   {} ({} model calls)\n  tokens: {} input, {} cache write, {} cache read, {} output{}",
            outcome.describe(),
            state.iteration,
            state.cost,
            state.calls.len(),
            u.input,
            u.cache_write,
            u.cache_read,
            u.output,
            if settings.is_scripted() { "\n  (the model was scripted: these are the script's simulated tokens, priced as Sonnet)" } else { "" }
        ),
        json!({"event": "agent_done", "outcome": outcome, "iterations": state.iteration, "cost_usd": state.cost.as_usd_f64(), "usage": state.usage, "scripted": settings.is_scripted()}),
    );
    if let tb_core::agent::Outcome::Finished { summary } = &outcome {
        progress.event(
            &format!("  summary: {summary}"),
            json!({"event": "summary", "summary": summary}),
        );
    } else {
        bail!("the agent did not finish: {}", outcome.describe());
    }
    preview::run(&sandbox, &progress, args.keep_running).await
}

/// `TB_DATA_DIR` or `./.turbobackend`, created and made absolute.
fn data_dir() -> anyhow::Result<PathBuf> {
    let dir =
        PathBuf::from(std::env::var("TB_DATA_DIR").unwrap_or_else(|_| ".turbobackend".into()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    dir.canonicalize().context("resolving the data directory")
}
