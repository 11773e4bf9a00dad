//! `turbobackend status <id>` and `turbobackend keys create|list|revoke`.

use anyhow::bail;
use tb_core::domain::{RequestId, UserId};

use crate::app::{App, Settings};
use crate::demo::LOCAL_USER;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create an API key (shown once).
    Create {
        #[arg(long, default_value = LOCAL_USER)]
        user: String,
        #[arg(long, default_value = "local")]
        label: String,
    },
    /// List a user's keys (prefixes only).
    List {
        #[arg(long, default_value = LOCAL_USER)]
        user: String,
    },
    /// Revoke a key by its id.
    Revoke {
        id: String,
        #[arg(long, default_value = LOCAL_USER)]
        user: String,
    },
}

pub async fn status(id: &str) -> anyhow::Result<()> {
    let app = App::open(&Settings::from_env()?, false).await?;
    let id = RequestId::parse(id)?;
    let Some(record) = app.requests.store.load(&id).await? else {
        bail!("no request {id}")
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&app.requests.status_of(&record))?
    );
    Ok(())
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    let app = App::open(&Settings::from_env()?, false).await?;
    match cmd {
        KeysCommand::Create { user, label } => {
            let (key, secret) = app
                .records
                .create_key(&UserId::parse(&user)?, &label)
                .await?;
            println!(
                "created key {} for {} (shown once; store it now):\n{secret}",
                key.id, key.user
            );
        }
        KeysCommand::List { user } => {
            for k in app.records.list_keys(&UserId::parse(&user)?).await? {
                let state = if k.revoked_at_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{}  {}…  {}  {state}", k.id, k.prefix, k.label);
            }
        }
        KeysCommand::Revoke { id, user } => {
            if !app.records.revoke_key(&UserId::parse(&user)?, &id).await? {
                bail!("no active key {id} of {user}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
