//! `turbobackend`: the whole platform on one machine, with no cloud account.
//!
//! `turbobackend demo` runs "Create a simple API with a users endpoint" end to end: the agent
//! builds a Nitro.js project in a local sandbox (a real model if a key is set, else the
//! built-in script, which it says plainly), then the built app is started on a free local
//! port and its endpoints are called.

mod demo;
mod preview;
mod progress;

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
    /// Build a backend from a description and run it locally.
    Demo(demo::DemoArgs),
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
        Command::Demo(args) => demo::run(args).await,
    }
}
