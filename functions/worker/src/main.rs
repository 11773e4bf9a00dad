//! The worker function's entry point: read the configuration once, build the clients once,
//! then serve events.

use std::sync::Arc;

use anyhow::Context;
use lambda_runtime::{Error, run, service_fn};
use tb_pipeline::{Pipeline, SliceSettings};
use tb_sandbox::{DaytonaConfig, DaytonaProvider};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tb_aws::telemetry::init();
    let var = |k: &str| std::env::var(k).ok();
    let aws = tb_aws::AwsSettings::from_env(var)?;
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
    let clients = aws.clients().await;
    let store = aws.store(&clients);
    // Every invocation starts by loading the request from DynamoDB: open the connection now.
    store.warm().await;
    let pipeline = Arc::new(Pipeline {
        store: Arc::new(store),
        queue: Arc::new(aws.queue(&clients)),
        sandboxes: Arc::new(DaytonaProvider::new(daytona)?),
        model: model.build()?,
        dev_databases: None,
        // A change request's sandbox is seeded from its project's current source.
        archive: Some(Arc::new(aws.archive(&clients))),
        prices,
        agent: tb_core::settings::agent_config(var)?,
        slices: SliceSettings::from_env(var)?,
        allow_private_callbacks: false,
    });
    run(service_fn(move |event| {
        let pipeline = pipeline.clone();
        async move { worker::handle(&pipeline, event).await }
    }))
    .await
}
