//! The worker function's entry point: read the configuration once, build the clients once,
//! then serve events.

use std::sync::Arc;

use anyhow::Context;
use lambda_runtime::{Error, run, service_fn};
use tb_pipeline::{Limits, Requests, SliceSettings, Worker};
use tb_postgres::PgPlatformRecords;
use tb_sandbox::{DaytonaConfig, DaytonaProvider};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tb_aws::telemetry::init();
    let var = |k: &str| std::env::var(k).ok();
    let aws = tb_aws::AwsSettings::from_env(var)?;
    // The model and Daytona clients share one TLS configuration: its root certificates load
    // on a thread of their own while the AWS clients load and DynamoDB is warmed.
    tb_tls::preload();
    let model = tb_models::ModelSettings::from_env(var)?;
    if model.is_scripted() {
        return Err(
            "no model is configured: set ANTHROPIC_API_KEY (or OPENAI_BASE_URL and TB_MODEL)"
                .into(),
        );
    }
    // A model with no price would fail every request: stop here instead.
    let prices = tb_core::settings::price_table_for(var, model.model_id())?;
    let daytona_key = var("DAYTONA_API_KEY")
        .filter(|k| !k.is_empty())
        .context("DAYTONA_API_KEY is not set")?;
    let mut daytona = DaytonaConfig::new(daytona_key);
    if let Some(url) = var("DAYTONA_API_URL").filter(|u| !u.is_empty()) {
        daytona.api_url = url;
    }
    // The snapshot whose image holds the template's packages in npm's cache
    // (infra/sandbox-image/Dockerfile); without it, Daytona's default snapshot.
    daytona.snapshot = var("DAYTONA_SNAPSHOT").filter(|s| !s.trim().is_empty());
    // Jobs in the original system's shape are admitted like the api's requests: project
    // ownership and the spending ledger are in the platform records. They are rare, so the
    // connection is opened at the first one, not at start-up.
    let records_url = var("TB_RECORDS_DATABASE_URL")
        .filter(|u| !u.trim().is_empty())
        .context("TB_RECORDS_DATABASE_URL is not set")?;
    let records = PgPlatformRecords::connect_lazy(&records_url)?;
    let clients = aws.clients().await;
    let store = aws.store(&clients);
    // Every invocation starts by loading the request from DynamoDB: open the connection now.
    store.warm().await;
    let requests = Requests::new(
        Arc::new(store),
        Arc::new(aws.queue(&clients)),
        Arc::new(records),
        tb_core::settings::agent_config(var)?,
    )
    .with_limits(Limits::from_env(var)?);
    let worker = Arc::new(Worker {
        requests: Arc::new(requests),
        sandboxes: Arc::new(DaytonaProvider::new(daytona)?),
        model: model.build()?,
        dev_databases: None,
        // A change request's sandbox is seeded from its project's current source.
        archive: Some(Arc::new(aws.archive(&clients))),
        prices,
        slices: SliceSettings::from_env(var)?,
    });
    run(service_fn(move |event| {
        let worker = worker.clone();
        async move { worker::handle(&worker, event).await }
    }))
    .await
}
