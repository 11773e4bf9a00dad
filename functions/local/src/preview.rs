//! Runs the built app on a free local port and calls it: the local stand-in for a deploy.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tb_core::sandbox::{Sandbox, WorkspacePath};
use tb_sandbox::LocalSandbox;
use tokio::process::Command;

use crate::progress::Progress;

const ENTRY: &str = ".output/server/index.mjs";

pub async fn run(
    sandbox: &LocalSandbox,
    progress: &Progress,
    keep_running: bool,
) -> anyhow::Result<()> {
    let entry = WorkspacePath::parse(ENTRY)?;
    if sandbox.read_file(&entry).await.is_err() {
        progress.event(
            "\nbuild (the agent left no build output)",
            json!({"event": "build"}),
        );
        let out = sandbox
            .exec(
                "npm install --no-audit --no-fund && npm run build",
                Duration::from_secs(900),
            )
            .await?;
        if out.exit_code != Some(0) {
            bail!("the build failed:\n{}", out.output);
        }
    }
    let port = free_port()?;
    let mut app = Command::new("node")
        .arg(ENTRY)
        .current_dir(sandbox.workspace_dir())
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("NODE_ENV", "production")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting node (is Node.js installed?)")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let started = Instant::now();
    let health = loop {
        if let Ok(r) = http.get(format!("{base}/api/health")).send().await
            && r.status().is_success()
        {
            break r.json::<Value>().await.unwrap_or(Value::Null);
        }
        if let Some(status) = app.try_wait()? {
            bail!("the app exited with {status} before answering /api/health");
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the app did not answer {base}/api/health within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    progress.event(
        &format!(
            "\nlive at {base} (healthy after {} ms)\n  GET  /api/health -> {health}",
            started.elapsed().as_millis()
        ),
        json!({"event": "live", "url": base, "health": health}),
    );
    // The demo's own check of the users endpoint: create one, then list.
    let created = http
        .post(format!("{base}/api/users"))
        .json(&json!({"name": "Ada Lovelace", "email": "ada@example.com"}))
        .send()
        .await;
    if let Ok(r) = created {
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        progress.event(&format!("  POST /api/users -> {status} {body}"), json!({"event": "call", "method": "POST", "path": "/api/users", "status": status, "body": body}));
    }
    let r = http
        .get(format!("{base}/api/users"))
        .send()
        .await
        .context("calling /api/users")?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    progress.event(&format!("  GET  /api/users -> {status} {body}"), json!({"event": "call", "method": "GET", "path": "/api/users", "status": status, "body": body}));
    if status != 200 {
        bail!("GET /api/users answered {status}");
    }
    if keep_running {
        progress.event(
            &format!("\nserving at {base}; Ctrl-C to stop"),
            json!({"event": "serving", "url": base}),
        );
        tokio::signal::ctrl_c().await?;
    }
    app.kill().await.ok();
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
