//! `turbobackend projects list|show|delete|rollback`: the same operations as the MCP tools
//! and the REST API, for the local user, carried out by this process's finalizer (the local
//! deployer stops and removes the app, the database and its role are dropped when a cluster
//! is configured, the git repository is kept).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tb_core::domain::{ProjectId, UserId};
use tb_core::ports::ProjectRecord;
use tb_pipeline::RequestError;
use tb_pipeline::lifecycle::OperationAccepted;

use crate::app::{App, Settings};
use crate::demo::LOCAL_USER;

#[derive(clap::Subcommand)]
pub enum ProjectsCommand {
    /// List the projects (deleted ones with --include-deleted).
    List {
        #[arg(long)]
        include_deleted: bool,
    },
    /// Show a project's record as JSON: versions (and which passed verification),
    /// deletion, rollback, history.
    Show { project_id: String },
    /// Delete a project: stop and remove its app, drop its database and role (when a
    /// cluster is configured), remove its archives; its git repository is kept.
    Delete {
        project_id: String,
        /// The project id again: deleting cannot be undone.
        #[arg(long)]
        confirm: String,
    },
    /// Run the previous deployed version of a project again.
    Rollback { project_id: String },
}

pub async fn projects(cmd: ProjectsCommand) -> anyhow::Result<()> {
    let user = UserId::parse(LOCAL_USER)?;
    // With workers for a deletion or a rollback: the finalizer carries it out, and requests
    // being cancelled can reach their end.
    let workers = matches!(
        cmd,
        ProjectsCommand::Delete { .. } | ProjectsCommand::Rollback { .. }
    );
    let app = App::open(&Settings::from_env()?, workers).await?;
    match cmd {
        ProjectsCommand::List { include_deleted } => {
            for p in app.records.projects(&user).await? {
                let state = state(&p);
                if state == "deleted" && !include_deleted {
                    continue;
                }
                let unverified = if p.deployed_verified == Some(false) {
                    "  unverified"
                } else {
                    ""
                };
                println!(
                    "{}  {state}  {}{unverified}",
                    p.id,
                    p.deploy_url.as_deref().unwrap_or("-")
                );
            }
        }
        ProjectsCommand::Show { project_id } => {
            let p = load(&app, &user, &project_id).await?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        ProjectsCommand::Delete {
            project_id,
            confirm,
        } => {
            let asked = tb_pipeline::lifecycle::request_delete(
                &app.requests,
                app.records.as_ref(),
                &user,
                &project_id,
                &confirm,
            )
            .await;
            if accepted(&project_id, asked)?.state != "deleted" {
                let p = wait(&app, &user, &project_id, |p| {
                    p.lifecycle.deleted_at_ms.is_some()
                        || p.lifecycle
                            .deletion
                            .as_ref()
                            .is_some_and(|d| d.failure.is_some())
                })
                .await?;
                report(&p, p.lifecycle.deletion.as_ref())?;
            }
        }
        ProjectsCommand::Rollback { project_id } => {
            let asked = tb_pipeline::lifecycle::request_rollback(
                &app.requests,
                app.records.as_ref(),
                &user,
                &project_id,
            )
            .await;
            accepted(&project_id, asked)?;
            let p = wait(&app, &user, &project_id, |p| {
                p.lifecycle
                    .rollback
                    .as_ref()
                    .is_some_and(|r| !r.under_way())
            })
            .await?;
            report(&p, p.lifecycle.rollback.as_ref())?;
            println!(
                "now running {} at {}",
                p.deployed_version.as_deref().unwrap_or("?"),
                p.deploy_url.as_deref().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn state(p: &ProjectRecord) -> &'static str {
    match (&p.lifecycle.deleted_at_ms, &p.lifecycle.deletion) {
        (Some(_), _) => "deleted",
        (None, Some(d)) if d.failure.is_some() => "deletion_stopped",
        (None, Some(_)) => "deleting",
        (None, None) => "live",
    }
}

/// What asking for a deletion or a rollback of project `id` answered, said; or why it was
/// refused.
fn accepted(
    id: &str,
    asked: Result<OperationAccepted, RequestError>,
) -> anyhow::Result<OperationAccepted> {
    let accepted = asked.map_err(|e| match e {
        RequestError::NotFound(_) => anyhow!("no project {id}"),
        other => anyhow!("{other}"),
    })?;
    println!("{}", accepted.message);
    Ok(accepted)
}

async fn load(app: &App, user: &UserId, id: &str) -> anyhow::Result<ProjectRecord> {
    let project = ProjectId::parse(id).with_context(|| format!("no project {id}"))?;
    match app.records.project(&project).await? {
        Some(p) if &p.owner == user => Ok(p),
        _ => bail!("no project {id}"),
    }
}

/// Reads the project until `done` holds (the operation runs in this process's finalizer).
async fn wait(
    app: &App,
    user: &UserId,
    id: &str,
    done: impl Fn(&ProjectRecord) -> bool,
) -> anyhow::Result<ProjectRecord> {
    loop {
        let p = load(app, user, id).await?;
        if done(&p) {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn report(p: &ProjectRecord, op: Option<&tb_core::ports::Operation>) -> anyhow::Result<()> {
    let Some(op) = op else { return Ok(()) };
    for (step, result) in &op.steps {
        println!("  {step}: {result}");
    }
    if let Some(f) = &op.failure {
        bail!(
            "project {} stopped at step {}: {} (run the command again to retry)",
            p.id,
            f.step,
            f.reason
        );
    }
    Ok(())
}
