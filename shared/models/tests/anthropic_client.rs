//! The Anthropic client against the scripted server.

mod common;

use common::*;
use serde_json::json;
use tb_core::model::{Model, ModelError, StopReason};
use tb_core::{Block, Message};
use tb_models::{AnthropicClient, AnthropicConfig, ScriptedModel, ScriptedServer};

fn client(server: &ScriptedServer, model: &str) -> AnthropicClient {
    let mut config = AnthropicConfig::new("sk-test-key", model);
    config.base_url = server.url();
    config.retry = quick_retries(3);
    AnthropicClient::new(config).unwrap()
}

#[tokio::test]
async fn a_tool_use_turn_parses_into_a_tool_use_block_with_its_input() {
    let server = ScriptedServer::start(script()).await;
    let (messages, tools) = (opening(), tools());
    let r = client(&server, "claude-sonnet-4-5")
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!(r.model, "scripted");
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(
        r.content,
        vec![
            Block::Text {
                text: "Creating the file.".into()
            },
            Block::ToolUse {
                id: "toolu_0000_0".into(),
                name: "write_file".into(),
                input: json!({"path": "a.txt", "content": "hi"})
            },
        ]
    );
    let sent = server.last_request().unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(
        sent["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
}

#[tokio::test]
async fn usage_maps_cache_fields_and_a_longer_conversation_reads_the_cached_prefix() {
    let server = ScriptedServer::start(script()).await;
    let client = client(&server, "claude-sonnet-4-5");
    let (messages, tools) = (opening(), tools());
    let first = client
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!(first.usage.cache_read, 0);
    assert!(
        first.usage.cache_write > 0 && first.usage.input > 0 && first.usage.output > 0,
        "{:?}",
        first.usage
    );

    let next = answered(&first);
    let second = client.complete(request(&next, &tools, true)).await.unwrap();
    assert_eq!(
        second.content,
        vec![Block::Text {
            text: "Done.".into()
        }]
    );
    assert_eq!(second.stop_reason, StopReason::EndTurn);
    assert!(second.usage.cache_read > 0);
    assert_eq!(
        second.usage.cache_read, first.usage.cache_write,
        "the whole first prompt is read back"
    );
    assert!(second.usage.cache_write > 0, "the new turn is written");
}

#[tokio::test]
async fn nothing_is_cached_when_prompt_caching_is_off() {
    let server = ScriptedServer::start(script()).await;
    let client = client(&server, "claude-sonnet-4-5");
    let (messages, tools) = (opening(), tools());
    let first = client
        .complete(request(&messages, &tools, false))
        .await
        .unwrap();
    let second = client
        .complete(request(&answered(&first), &tools, false))
        .await
        .unwrap();
    for usage in [first.usage, second.usage] {
        assert_eq!((usage.cache_read, usage.cache_write), (0, 0));
        assert!(usage.input > 0);
    }
    assert!(second.usage.input > first.usage.input);
}

#[tokio::test]
async fn the_server_and_the_in_process_model_report_the_same_answer() {
    let server = ScriptedServer::start(script()).await;
    let local = ScriptedModel::new(script());
    let remote = client(&server, "scripted");
    let (messages, tools) = (opening(), tools());
    let a = remote
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    let b = local
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!(a, b);
    let next = answered(&a);
    assert_eq!(
        remote.complete(request(&next, &tools, true)).await.unwrap(),
        local.complete(request(&next, &tools, true)).await.unwrap()
    );
}

#[tokio::test]
async fn rate_limited_and_overloaded_answers_are_retried_until_one_succeeds() {
    let server = ScriptedServer::start(script()).await;
    server.fail_next(1, 429, &[("retry-after", "0")]);
    server.fail_next(1, 529, &[("retry-after", "0")]);
    let (messages, tools) = (opening(), tools());
    let r = client(&server, "claude-sonnet-4-5")
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn exhausted_retries_become_a_transient_error_with_the_last_status() {
    let server = ScriptedServer::start(script()).await;
    server.fail_next(10, 529, &[("retry-after-ms", "1")]);
    let (messages, tools) = (opening(), tools());
    let err = client(&server, "m")
        .complete(request(&messages, &tools, true))
        .await
        .unwrap_err();
    match err {
        ModelError::Transient {
            status: Some(529),
            message,
        } => assert!(message.contains("injected failure"), "{message}"),
        other => panic!("expected a transient 529, got {other:?}"),
    }
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn a_bad_request_is_not_retried_and_is_rejected_with_the_api_message() {
    let server = ScriptedServer::start(script()).await;
    let tools = tools();
    // The assistant's tool call is never answered: the API refuses this conversation.
    let messages = vec![
        Message::user_text("go"),
        Message::assistant(vec![Block::ToolUse {
            id: "toolu_x".into(),
            name: "read_file".into(),
            input: json!({}),
        }]),
        Message::user_text("well?"),
    ];
    let err = client(&server, "m")
        .complete(request(&messages, &tools, true))
        .await
        .unwrap_err();
    match err {
        ModelError::Rejected {
            status: 400,
            message,
        } => {
            assert!(
                message.contains("`tool_use` ids were found without `tool_result` blocks"),
                "{message}"
            );
            assert!(message.contains("toolu_x"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn an_injected_400_is_rejected_after_one_request() {
    let server = ScriptedServer::start(script()).await;
    server.fail_next(1, 400, &[]);
    let (messages, tools) = (opening(), tools());
    let err = client(&server, "m")
        .complete(request(&messages, &tools, false))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ModelError::Rejected {
            status: 400,
            message: "injected failure (HTTP 400)".into()
        }
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_missing_api_key_is_rejected_with_401() {
    let server = ScriptedServer::start(script()).await;
    let mut config = AnthropicConfig::new("", "m");
    config.base_url = server.url();
    config.retry = quick_retries(3);
    let (messages, tools) = (opening(), tools());
    let err = AnthropicClient::new(config)
        .unwrap()
        .complete(request(&messages, &tools, false))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ModelError::Rejected {
            status: 401,
            message: "x-api-key header is required".into()
        }
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn the_servers_x_should_retry_header_overrides_the_status() {
    let server = ScriptedServer::start(script()).await;
    server.fail_next(1, 503, &[("x-should-retry", "false")]);
    let (messages, tools) = (opening(), tools());
    let client = client(&server, "m");
    let err = client
        .complete(request(&messages, &tools, false))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.requests(), 1);

    server.fail_next(1, 400, &[("x-should-retry", "true"), ("retry-after", "0")]);
    client
        .complete(request(&messages, &tools, false))
        .await
        .unwrap();
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut config = AnthropicConfig::new("k", "m");
    config.base_url = format!("http://127.0.0.1:{port}");
    config.retry = quick_retries(2);
    let (messages, tools) = (opening(), tools());
    let err = AnthropicClient::new(config)
        .unwrap()
        .complete(request(&messages, &tools, false))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Transient { status: None, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_server_answers_malformed_requests_with_anthropic_error_bodies() {
    let server = ScriptedServer::start(script()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/messages", server.url());
    let post = |body: &'static str, version: bool| {
        let mut r = http
            .post(&url)
            .header("x-api-key", "k")
            .header("content-type", "application/json")
            .body(body);
        if version {
            r = r.header("anthropic-version", "2023-06-01");
        }
        r.send()
    };
    let r = post("{not json", true).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let r = post(
        r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version")
    );

    let r = post(
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        true,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400, "max_tokens is required");
    let r = post(
        r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        true,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.requests(), 4);
}
