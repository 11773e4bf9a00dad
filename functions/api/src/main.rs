//! The api function: the front door (MCP at `/mcp`, REST under `/v1`, `/health`) served by
//! the Lambda runtime behind API Gateway. The router is `tb_frontdoor::router`, the same one
//! the local server and the tests serve.

use std::sync::Arc;

use anyhow::Context;
use lambda_http::{Error, run};
use tb_frontdoor::{FrontDoor, Limits, parse_allowed_hosts, router};
use tb_pipeline::Pipeline;
use tb_postgres::PgPlatformRecords;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tb_aws::telemetry::init();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let aws = tb_aws::AwsSettings::from_env(var)?;
    let limits = Limits::from_env(var)?;
    let records_url =
        var("TB_RECORDS_DATABASE_URL").context("TB_RECORDS_DATABASE_URL is not set")?;
    let clients = aws.clients().await;
    let store = aws.store(&clients);
    // Every invocation checks a key in Postgres and reads or writes DynamoDB: open both
    // connections now, together, while init runs at full CPU.
    let (records, ()) = tokio::join!(PgPlatformRecords::connect(&records_url), store.warm());
    let records = records?;
    let pipeline = Pipeline::front_only(
        Arc::new(store),
        Arc::new(aws.queue(&clients)),
        tb_core::settings::price_table(var)?,
        tb_core::settings::agent_config(var)?,
    );
    // MCP refuses Host headers it does not know: set TB_ALLOWED_HOSTS to the API's domain.
    // API Gateway's own domain cannot be passed in by the template (it would be a circular
    // reference), so after the first deploy set the TbAllowedHosts parameter to it.
    let door = FrontDoor::new(Arc::new(pipeline), Arc::new(records)).with_limits(limits);
    let door = match var("TB_ALLOWED_HOSTS") {
        Some(h) => door.with_allowed_hosts(parse_allowed_hosts(&h)),
        None => {
            tracing::warn!("TB_ALLOWED_HOSTS is not set: MCP answers only loopback Host headers");
            door
        }
    };
    run(router(Arc::new(door))).await
}
