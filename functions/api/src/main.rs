//! The api function: the front door (MCP at `/mcp`, REST under `/v1`, `/health`) served by
//! the Lambda runtime behind API Gateway. The router is `tb_frontdoor::router`, the same one
//! the local server and the tests serve.

use std::sync::Arc;

use anyhow::Context;
use lambda_http::request::RequestContext;
use lambda_http::tower::ServiceExt;
use lambda_http::{Error, Request, RequestExt, run, service_fn};
use tb_frontdoor::{FrontDoor, Limits, OAuthSettings, ReceivedAt, parse_allowed_hosts, router};
use tb_pipeline::Requests;
use tb_postgres::PgPlatformRecords;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tb_aws::telemetry::init();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let aws = tb_aws::AwsSettings::from_env(var)?;
    let limits = Limits::from_env(var)?;
    let records_url =
        var("TB_RECORDS_DATABASE_URL").context("TB_RECORDS_DATABASE_URL is not set")?;
    // Every invocation checks a key in Postgres and reads or writes DynamoDB: open both
    // connections now, while init runs at full CPU. Postgres first, on a task of its own:
    // its connection and schema check go on while the AWS clients load.
    let records = tokio::spawn(async move { PgPlatformRecords::connect(&records_url).await });
    let clients = aws.clients().await;
    let store = aws.store(&clients);
    let (records, ()) = tokio::join!(records, store.warm());
    let records = records??;
    // The price table is not used here, but a bad TB_MODEL_PRICES stops every function at
    // start-up alike.
    tb_core::settings::price_table(var)?;
    let records = Arc::new(records);
    let requests = Requests::new(
        Arc::new(store),
        Arc::new(aws.queue(&clients)),
        records.clone(),
        tb_core::settings::agent_config(var)?,
    )
    .with_limits(limits);
    // OAuth for remote MCP clients keeps its state beside the records. TB_PUBLIC_URL names
    // the origin clients use when it is not the domain API Gateway received the request at.
    let oauth = OAuthSettings {
        public_url: var("TB_PUBLIC_URL").filter(|u| !u.trim().is_empty()),
        ..OAuthSettings::default()
    };
    let mut door = FrontDoor::new(Arc::new(requests)).with_oauth(records, oauth);
    // MCP answers the domain API Gateway received each request at (its execute-api domain or
    // a custom domain); TB_ALLOWED_HOSTS adds names that reach it otherwise (e.g. a CDN).
    if let Some(extra) = var("TB_ALLOWED_HOSTS") {
        door.allowed_hosts.extend(parse_allowed_hosts(&extra));
    }
    let app = router(Arc::new(door));
    run(service_fn(move |mut req: Request| {
        if let Some(domain) = received_at(&req) {
            req.extensions_mut().insert(domain);
        }
        app.clone().oneshot(req)
    }))
    .await
}

/// The domain API Gateway reports it received the request at (`requestContext.domainName`).
fn received_at(req: &Request) -> Option<ReceivedAt> {
    let domain = match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.domain_name.clone(),
        #[allow(unreachable_patterns)]
        _ => None,
    }?;
    Some(ReceivedAt(domain))
}
