//! `turbobackend`: the whole platform on one machine, with no cloud account.
//!
//! The same pipeline as on Lambda, with local adapters (see `app.rs`): `demo` builds "Create
//! a simple API with a users endpoint" end to end and calls the live app; `run` does the same
//! for any description; `eval` runs the tasks of `eval/tasks.json` and reports each;
//! `status`, `keys` and `projects` inspect and administer.

mod admin;
mod app;
mod config;
mod demo;
mod eval;
mod progress;
mod projects;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "turbobackend",
    version,
    about = "Backends from a sentence, on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the demo backend ("Create a simple API with a users endpoint") and call it.
    Demo(demo::RunArgs),
    /// Build a backend from a description and call it.
    Run(demo::RunArgs),
    /// Run the one-sentence tasks of eval/tasks.json through the whole local pipeline with
    /// the configured model and print what each cost and whether it worked.
    Eval(eval::EvalArgs),
    /// Serve MCP and REST on 127.0.0.1 (TB_PORT, default 8787), with the workers.
    Serve,
    /// Show a request's status as JSON.
    Status { request_id: String },
    /// Manage API keys.
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// List, show, delete or roll back projects.
    #[command(subcommand)]
    Projects(projects::ProjectsCommand),
    /// Check verification receipts.
    #[command(subcommand)]
    Receipt(admin::ReceiptCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TB_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Reap what commands leave behind (this process may be PID 1 in a container).
    if let Err(e) = tb_sandbox::local::adopt_orphans() {
        tracing::warn!("cannot adopt orphaned processes: {e}");
    }
    match Cli::parse().command {
        Command::Demo(args) | Command::Run(args) => demo::run(args).await,
        Command::Eval(args) => eval::eval(args).await,
        Command::Serve => serve::serve().await,
        Command::Status { request_id } => admin::status(&request_id).await,
        Command::Keys(cmd) => admin::keys(cmd).await,
        Command::Projects(cmd) => projects::projects(cmd).await,
        Command::Receipt(admin::ReceiptCommand::Verify { file }) => admin::verify_receipt(&file),
    }
}
