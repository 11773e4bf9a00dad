//! `turbobackend serve`: the front door (MCP and REST) on 127.0.0.1, with the workers and the
//! sweeper in the same process.

use std::sync::Arc;

use tb_core::domain::UserId;
use tb_frontdoor::{FrontDoor, OAuthSettings, router};

use crate::app::{App, Settings};
use crate::demo::LOCAL_USER;

pub async fn serve() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    if let Err(why) = &settings.isolation {
        if !settings.allow_unisolated {
            anyhow::bail!(
                "commands cannot be isolated here ({why}); `serve` is for several users, whose agents' commands must not reach the platform or each other. Install bubblewrap (apt-get install -y bubblewrap) and allow user namespaces, or set TB_ALLOW_UNISOLATED_COMMANDS=true to serve anyway"
            );
        }
        eprintln!(
            "WARNING: commands are NOT isolated ({why}); TB_ALLOW_UNISOLATED_COMMANDS=true accepts that every user's agent runs commands as this user"
        );
    }
    let app = App::open(&settings, true).await?;
    let user = UserId::parse(LOCAL_USER)?;
    // On first start, a key for the local user, shown once.
    let new_key = if app
        .records
        .list_keys(&user)
        .await?
        .iter()
        .all(|k| k.revoked_at_ms.is_some())
    {
        Some(app.records.create_key(&user, "local").await?.1)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", settings.port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let key = new_key
        .clone()
        .unwrap_or_else(|| "<your key: turbobackend keys create>".into());
    println!(
        "turbobackend serving at {base}  (model: {})",
        settings.model.describe()
    );
    println!("  MCP:    {base}/mcp");
    println!("  REST:   {base}/v1/requests");
    if settings.workers == 0 {
        println!(
            "  TB_WORKERS=0: requests are accepted and wait queued; a `serve` with workers runs them"
        );
    }
    match &new_key {
        Some(k) => println!("  API key for {LOCAL_USER} (shown once, store it now): {k}"),
        None => {
            println!("  API keys: `turbobackend keys list`; a new one: `turbobackend keys create`")
        }
    }
    println!(
        "\nConnect Claude Code:\n  claude mcp add --transport http turbobackend {base}/mcp --header \"Authorization: Bearer {key}\""
    );
    println!(
        "Or call it:\n  curl -s -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\\n    -d '{{\"description\": \"Create a simple API with a users endpoint\"}}' {base}/v1/requests"
    );
    // Apps deployed before (whose processes ended with the previous server) serve again.
    let deployer = app.deployer.clone();
    tokio::spawn(async move {
        for (project, result) in deployer.restore().await {
            match result {
                Ok(url) => println!("  app of {project} serving again at {url}"),
                Err(e) => eprintln!("  app of {project} did not start again: {e}"),
            }
        }
    });
    let door = Arc::new(
        FrontDoor::new(app.requests.clone())
            // Locally, connectors' client metadata documents may be served on loopback.
            .with_oauth(
                app.oauth.clone(),
                OAuthSettings {
                    allow_loopback_clients: true,
                    ..OAuthSettings::default()
                },
            ),
    );
    axum::serve(listener, router(door))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
