//! The finalizer function's entry point: configuration read once, clients built once.

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use tb_codehost::{GitHubCodeHost, GitHubConfig, GitHubToken};
use tb_core::ports::{DatabaseProvisioner, Notifier};
use tb_deploy::{FlyConfig, FlyDeployer};
use tb_notify::HttpNotifier;
use tb_pipeline::{Finalizer, FinalizerSettings};
use tb_postgres::{ClusterSettings, PgPlatformRecords, PgProvisioner};
use tb_sandbox::{DaytonaConfig, DaytonaProvider};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tb_aws::telemetry::init();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let aws = tb_aws::AwsSettings::from_env(var)?;
    // Every invocation reads and commits the request in DynamoDB and writes the ledger in
    // Postgres: open both connections now, while init runs at full CPU. Postgres first, on a
    // task of its own: its connection and schema check go on while the clients are built.
    let records_url =
        var("TB_RECORDS_DATABASE_URL").context("TB_RECORDS_DATABASE_URL is not set")?;
    let records = tokio::spawn(async move { PgPlatformRecords::connect(&records_url).await });
    // The HTTP clients below share one TLS configuration: its root certificates load on a
    // thread of their own meanwhile.
    tb_tls::preload();
    let clients = aws.clients().await;

    let mut daytona =
        DaytonaConfig::new(var("DAYTONA_API_KEY").context("DAYTONA_API_KEY is not set")?);
    if let Some(url) = var("DAYTONA_API_URL") {
        daytona.api_url = url;
    }
    let mut github = GitHubConfig::new(GitHubToken::new(
        var("GITHUB_ACCESS_TOKEN").context("GITHUB_ACCESS_TOKEN is not set")?,
    ));
    github.owner = var("GITHUB_OWNER");
    let databases: Option<Arc<dyn DatabaseProvisioner>> = match var("DB_CLUSTER_HOST") {
        Some(_) => Some(Arc::new(PgProvisioner::new(ClusterSettings::from_env(
            var,
        )?))),
        None => None,
    };
    let store = aws.store(&clients);
    let (records, ()) = tokio::join!(records, store.warm());
    let records = records??;

    // Where a finalization that outlasts one invocation continues, and where a repair round
    // hands the request back to the agent.
    let queue = Arc::new(aws.queue(&clients));
    let finalizer = Arc::new(Finalizer {
        store: Arc::new(store),
        sandboxes: Arc::new(DaytonaProvider::new(daytona)?),
        archive: Arc::new(aws.archive(&clients)),
        code_host: Arc::new(GitHubCodeHost::new(github)?),
        databases,
        deployer: Arc::new(FlyDeployer::new(FlyConfig::from_env()?)?),
        records: Arc::new(records),
        // Callbacks are signed with TB_CALLBACK_SECRET; without one, none are sent.
        notifier: var("TB_CALLBACK_SECRET")
            .map(|s| Arc::new(HttpNotifier::new(s, false)) as Arc<dyn Notifier>),
        // Deployed apps are called on their public address only, like callbacks.
        prober: Arc::new(tb_notify::HttpProber::new(false)),
        // Receipts are signed with the callbacks' key.
        receipt_key: var("TB_CALLBACK_SECRET").map(tb_pipeline::receipt::SigningKey::new),
        queue: queue.clone(),
        settings: FinalizerSettings::from_env(var)?,
    });
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (finalizer, queue) = (finalizer.clone(), queue.clone());
        async move {
            Ok::<_, Error>(
                finalizer::handle_batch(&finalizer, queue.as_ref(), event.payload, &event.context)
                    .await,
            )
        }
    }))
    .await
}
