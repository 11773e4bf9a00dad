//! The Anthropic client against the scripted server.

mod common;

use common::*;
use serde_json::Value;
use serde_json::json;
use tb_core::model::{Model, ModelError, StopReason};
use tb_core::{Block, Message};
use tb_models::{
    AnthropicClient, AnthropicConfig, Script, ScriptTurn, ScriptedModel, ScriptedServer,
};

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

/// Turn 0 says only whitespace before its tool call; turn 1 finishes.
fn blank_text_script() -> Script {
    Script::new(vec![
        ScriptTurn::tool_call("write_file", json!({"path": "a.txt", "content": "hi"}))
            .with_text("\n\n"),
        ScriptTurn::text("Done."),
    ])
}

#[tokio::test]
async fn a_whitespace_text_block_from_the_model_is_never_sent_back() {
    let server = ScriptedServer::start(blank_text_script()).await;
    let client = client(&server, "claude-sonnet-4-6");
    let (messages, tools) = (opening(), tools());
    let first = client
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert!(
        !first.content.iter().any(Block::is_blank_text),
        "{:?}",
        first.content
    );
    let second = client
        .complete(request(&answered(&first), &tools, true))
        .await
        .expect("the API accepts the conversation back");
    assert_eq!(
        second.content,
        vec![Block::Text {
            text: "Done.".into()
        }]
    );

    // A conversation stored before, with blank blocks in it, goes out without them.
    let mut stored = answered(&first);
    stored[1]
        .content
        .insert(0, Block::Text { text: " ".into() });
    stored[1].content.push(Block::Text {
        text: String::new(),
    });
    client
        .complete(request(&stored, &tools, true))
        .await
        .expect("blank blocks of a stored conversation are left out");
    let sent = server.last_request().unwrap();
    assert_eq!(sent["messages"][1]["content"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_server_refuses_blank_text_blocks_as_the_api_does() {
    let server = ScriptedServer::start(blank_text_script()).await;
    let post = |messages: Value| {
        let http = reqwest::Client::new();
        let url = format!("{}/v1/messages", server.url());
        async move {
            let r = http
                .post(url)
                .header("x-api-key", "k")
                .header("anthropic-version", "2023-06-01")
                .json(&json!({"model": "m", "max_tokens": 10, "messages": messages}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = post(json!([{"role": "user", "content": ""}])).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        json!({"type": "invalid_request_error", "message": "messages: text content blocks must be non-empty"})
    );
    let (status, body) =
        post(json!([{"role": "user", "content": [{"type": "text", "text": " \n"}]}])).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "messages: text content blocks must contain non-whitespace text"
    );
    let (status, _) = post(json!([{"role": "user", "content": [{"type": "text", "text": " "}, {"type": "text", "text": "hi"}]}])).await;
    assert_eq!(status, 200, "whitespace beside real text is accepted");
}

#[tokio::test]
async fn the_conversation_must_end_on_a_user_turn_unless_a_paused_turn_continues() {
    let paused = Script::new(vec![
        ScriptTurn {
            text: Some("Searching.".into()),
            stop_reason: Some("pause_turn".into()),
            ..ScriptTurn::default()
        },
        ScriptTurn::text("Found it."),
    ]);
    let server = ScriptedServer::start(paused).await;
    let client = client(&server, "claude-sonnet-4-6");
    let (mut messages, tools) = (opening(), tools());
    let first = client
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!(first.stop_reason, StopReason::PauseTurn);
    // Sent back as is, the paused turn continues.
    messages.push(Message::assistant(first.content.clone()));
    let second = client
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!(
        second.content,
        vec![Block::Text {
            text: "Found it.".into()
        }]
    );
    // Any other final assistant turn is a prefill, which Claude 4.6 models refuse.
    messages.push(Message::assistant(second.content.clone()));
    let e = client
        .complete(request(&messages, &tools, true))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ModelError::Rejected { status: 400, message } if message.contains("must end with a user message")),
        "{e}"
    );
}

#[tokio::test]
async fn thinking_blocks_go_back_unchanged_with_their_signatures() {
    let thinking = Script::new(vec![
        ScriptTurn {
            thinking: Some("The user wants a file; write it first.".into()),
            redacted_thinking: true,
            ..ScriptTurn::tool_call("write_file", json!({"path": "a.txt", "content": "hi"}))
        },
        ScriptTurn::text("Done."),
    ]);
    let server = ScriptedServer::start(thinking).await;
    let client = client(&server, "claude-sonnet-4-6");
    let (messages, tools) = (opening(), tools());
    let first = client
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert!(
        matches!(&first.content[..], [Block::Thinking { signature, .. }, Block::RedactedThinking { data }, Block::ToolUse { .. }]
            if !signature.is_empty() && !data.is_empty()),
        "{:?}",
        first.content
    );
    let next = answered(&first);
    client
        .complete(request(&next, &tools, true))
        .await
        .expect("the thinking blocks pass the signature check");
    let sent = server.last_request().unwrap();
    assert_eq!(sent["messages"][1]["content"][0]["type"], "thinking");
    assert!(
        sent["messages"][1]["content"][0]
            .get("cache_control")
            .is_none()
    );

    // A modified block, or none at all, is refused.
    let mut modified = next.clone();
    if let Block::Thinking { thinking, .. } = &mut modified[1].content[0] {
        thinking.push_str(" Or not.");
    }
    let e = client
        .complete(request(&modified, &tools, true))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Invalid `signature` in `thinking` block"),
        "{e}"
    );
    let mut dropped = next;
    dropped[1]
        .content
        .retain(|b| matches!(b, Block::ToolUse { .. }));
    let e = client
        .complete(request(&dropped, &tools, true))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("thinking blocks"), "{e}");
}

#[tokio::test]
async fn a_refusal_carries_its_explanation() {
    let refusing = Script::new(vec![ScriptTurn {
        stop_reason: Some("refusal".into()),
        ..ScriptTurn::default()
    }]);
    let server = ScriptedServer::start(refusing).await;
    let (messages, tools) = (opening(), tools());
    let r = client(&server, "claude-sonnet-4-6")
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!(r.stop_reason, StopReason::Refusal);
    assert_eq!(
        r.refusal.as_deref(),
        Some(tb_models::scripted::REFUSAL_EXPLANATION)
    );
}
