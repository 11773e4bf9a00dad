//! The api bootstrap behind API Gateway, as Lambda runs it: the function's binary is started
//! as a process against a local Lambda Runtime API server and given HTTP API (payload format
//! 2.0) events shaped as API Gateway delivers them, with the table and queues on moto and the
//! platform records in the local Postgres.
//!
//! Event shape: "Working with AWS Lambda proxy integrations for HTTP APIs", payload format
//! version 2.0 (docs.aws.amazon.com/apigateway/latest/developerguide/
//! http-api-develop-integrations-lambda.html): the `host` header and
//! `requestContext.domainName` both carry `<api-id>.execute-api.<region>.amazonaws.com`, the
//! client's address and scheme arrive as `x-forwarded-for`, `x-forwarded-port` and
//! `x-forwarded-proto`, and header names are lower-case.

use std::time::Duration;

use serde_json::{Value, json};
use tb_aws::testing::TestAws;
use tb_core::domain::UserId;
use tb_core::ports::PlatformRecords;
use tb_postgres::PgPlatformRecords;
use tb_postgres::testing::Cleanup;
use tb_tests::runtime_api::{Answer, RuntimeApi};
use tokio::process::{Child, Command};

const API_ID: &str = "a1b2c3d4e5";
const REGION: &str = "eu-west-1";

fn domain() -> String {
    format!("{API_ID}.execute-api.{REGION}.amazonaws.com")
}

/// An HTTP API event for `POST /mcp` received at `domain`, with `host` as the Host header.
fn event(host: &str, key: &str, protocol: Option<&str>, rpc: &Value) -> Value {
    let body = rpc.to_string();
    let mut headers = json!({
        "accept": "application/json, text/event-stream",
        "authorization": format!("Bearer {key}"),
        "content-length": body.len().to_string(),
        "content-type": "application/json",
        "host": host,
        "user-agent": "claude-code/2.1.0",
        "x-amzn-trace-id": "Root=1-67891233-abcdef012345678912345678",
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https"
    });
    if let Some(p) = protocol {
        headers["mcp-protocol-version"] = json!(p);
    }
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/mcp",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": API_ID,
            "domainName": domain(),
            "domainPrefix": API_ID,
            "http": {"method": "POST", "path": "/mcp", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "claude-code/2.1.0"},
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "05/Dec/2026:19:03:58 +0000",
            "timeEpoch": 1796497438000u64
        },
        "body": body,
        "isBase64Encoded": false
    })
}

struct Rig {
    aws: TestAws,
    key: String,
    runtime: RuntimeApi,
    _child: Child,
    _cleanup: Cleanup,
}

impl Rig {
    async fn start() -> Rig {
        let aws = TestAws::new().await;
        let cleanup = Cleanup::default();
        let records_url = tb_tests::finalize::fresh_database(&cleanup).await;
        let records = PgPlatformRecords::connect(&records_url).await.unwrap();
        let user = UserId::parse("user_gateway").unwrap();
        let (_, key) = records.create_key(&user, "gateway").await.unwrap();
        let runtime = RuntimeApi::start(Duration::from_secs(30)).await.unwrap();
        let s = &aws.settings;
        // The environment the template gives the api function: no TB_ALLOWED_HOSTS.
        let child = Command::new(env!("CARGO_BIN_EXE_api"))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("AWS_LAMBDA_RUNTIME_API", runtime.host())
            .env("AWS_LAMBDA_FUNCTION_NAME", "api")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/api")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_ENDPOINT_URL", &aws.endpoint)
            .env("TB_TABLE", &s.table)
            .env("TB_WORK_QUEUE_URL", &s.work_queue_url)
            .env("TB_FINALIZE_QUEUE_URL", &s.finalize_queue_url)
            .env("TB_WORK_DLQ_URL", &s.work_dlq_url)
            .env("S3_PROJECTS_BUCKET", &s.bucket)
            .env("TB_RECORDS_DATABASE_URL", &records_url)
            .kill_on_drop(true)
            .spawn()
            .expect("the api bootstrap starts");
        runtime
            .first_next(Duration::from_secs(30))
            .await
            .expect("the api function initialises");
        Rig {
            aws,
            key,
            runtime,
            _child: child,
            _cleanup: cleanup,
        }
    }

    /// Invokes the function with `event`; returns the HTTP status and the parsed body.
    async fn call(&self, event: Value) -> (u64, Value) {
        let (_, answer) = self.runtime.invoke(event).await.unwrap();
        let Answer::Response(r) = answer else {
            panic!("the invocation failed: {answer:?}")
        };
        let status = r["statusCode"].as_u64().expect("a statusCode");
        let body = r["body"].as_str().unwrap_or_default();
        let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
        (status, body)
    }
}

#[tokio::test]
async fn mcp_answers_at_the_domain_api_gateway_received_it_and_refuses_a_foreign_host() {
    let rig = Rig::start().await;
    let host = domain();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "claude-code", "version": "2.1.0"}}});
    let (status, body) = rig.call(event(&host, &rig.key, None, &init)).await;
    assert_eq!(status, 200, "initialize: {body}");
    assert!(body["result"]["serverInfo"]["name"].is_string(), "{body}");

    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, body) = rig
        .call(event(&host, &rig.key, Some("2025-06-18"), &list))
        .await;
    assert_eq!(status, 200, "tools/list: {body}");
    let tools: Vec<&str> = body["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(tools.contains(&"execute_request"), "{tools:?}");

    let execute = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "execute_request",
        "arguments": {"description": "Create a simple API with a users endpoint"}}});
    let (status, body) = rig
        .call(event(&host, &rig.key, Some("2025-06-18"), &execute))
        .await;
    assert_eq!(status, 200, "execute_request: {body}");
    assert_ne!(body["result"]["isError"], true, "{body}");
    let id = body["result"]["structuredContent"]["request_id"]
        .as_str()
        .expect("a request id")
        .to_string();
    // The request really was enqueued.
    let work = rig
        .aws
        .receive(&rig.aws.settings.work_queue_url, Duration::from_secs(5))
        .await;
    assert!(
        work.iter().any(|m| m.body.contains(&id)),
        "no work message for {id}"
    );

    // DNS rebinding: a Host that is not the domain the request was received at is refused.
    for foreign in ["evil.example.com", "localhost.evil.example.com:443"] {
        let (status, body) = rig.call(event(foreign, &rig.key, None, &init)).await;
        assert_eq!(status, 403, "{foreign}: {body}");
    }
}
