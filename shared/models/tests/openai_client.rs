//! The OpenAI-compatible client against the scripted server.

mod common;

use common::*;
use serde_json::{Value, json};
use tb_core::model::{Model, ModelError, StopReason};
use tb_core::{Block, Message};
use tb_models::cache_sim::approx_tokens;
use tb_models::{
    OpenAiClient, OpenAiConfig, OpenAiDialect, Script, ScriptTurn, ScriptedServer,
    TokenLimitParameter,
};

fn client(server: &ScriptedServer) -> OpenAiClient {
    let mut config = OpenAiConfig::new(server.openai_url(), "qwen3-coder").with_api_key("sk-test");
    config.retry = quick_retries(3);
    OpenAiClient::new(config).unwrap()
}

#[tokio::test]
async fn tool_calls_round_trip_and_role_tool_messages_pass_the_servers_validation() {
    let server = ScriptedServer::start(script()).await;
    let client = client(&server);
    let (messages, tools) = (opening(), tools());
    let first = client
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!(first.stop_reason, StopReason::ToolUse);
    assert_eq!(
        first.content,
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
    assert_eq!(sent["tools"][1]["function"]["name"], "write_file");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": SYSTEM})
    );

    let second = client
        .complete(request(&answered(&first), &tools, true))
        .await
        .unwrap();
    assert_eq!(
        second.content,
        vec![Block::Text {
            text: "Done.".into()
        }]
    );
    assert_eq!(second.stop_reason, StopReason::EndTurn);
    let sent = server.last_request().unwrap();
    assert_eq!(
        sent["messages"][3],
        json!({"role": "tool", "tool_call_id": "toolu_0000_0", "content": "wrote 2 bytes"})
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn cached_prompt_tokens_from_the_server_are_not_double_counted() {
    let server = ScriptedServer::start(script()).await;
    let client = client(&server);
    let (messages, tools) = (opening(), tools());
    let first = client
        .complete(request(&messages, &tools, true))
        .await
        .unwrap();
    assert_eq!((first.usage.cache_read, first.usage.cache_write), (0, 0));
    assert_eq!(
        first.usage.input,
        approx_tokens(&server.last_request().unwrap())
    );

    let second = client
        .complete(request(&answered(&first), &tools, true))
        .await
        .unwrap();
    let prompt_tokens = approx_tokens(&server.last_request().unwrap());
    assert!(second.usage.cache_read > 0);
    assert_eq!(second.usage.cache_write, 0);
    assert_eq!(
        second.usage.input + second.usage.cache_read,
        prompt_tokens,
        "{:?}",
        second.usage
    );
}

#[tokio::test]
async fn arguments_given_as_an_object_parse_and_missing_call_ids_are_synthesized() {
    let server = ScriptedServer::start(script()).await;
    server.set_openai_dialect(OpenAiDialect::OllamaLike);
    let client = client(&server);
    let (messages, tools) = (opening(), tools());
    let first = client
        .complete(request(&messages, &tools, false))
        .await
        .unwrap();
    let raw = server.last_request().unwrap();
    assert_eq!(raw["messages"].as_array().unwrap().len(), 2);
    assert_eq!(
        first.content[1],
        Block::ToolUse {
            id: "call_0".into(),
            name: "write_file".into(),
            input: json!({"path": "a.txt", "content": "hi"})
        }
    );
    assert_eq!(
        first.usage.cache_read, 0,
        "no prompt_tokens_details: nothing cached"
    );
    let second = client
        .complete(request(&answered(&first), &tools, false))
        .await
        .unwrap();
    assert_eq!(
        second.content,
        vec![Block::Text {
            text: "Done.".into()
        }]
    );
}

#[tokio::test]
async fn invalid_json_arguments_become_a_string_value() {
    let broken = r#"{"path": "a.txt", "content": "unterminated"#;
    let script = Script::new(vec![ScriptTurn::tool_call(
        "write_file",
        Value::String(broken.into()),
    )]);
    let server = ScriptedServer::start(script).await;
    let (messages, tools) = (opening(), tools());
    let r = client(&server)
        .complete(request(&messages, &tools, false))
        .await
        .unwrap();
    assert_eq!(
        r.content,
        vec![Block::ToolUse {
            id: "toolu_0000_0".into(),
            name: "write_file".into(),
            input: Value::String(broken.into())
        }]
    );
    assert_eq!(r.stop_reason, StopReason::ToolUse);
}

#[tokio::test]
async fn a_tool_call_without_its_tool_message_is_rejected_without_retrying() {
    let server = ScriptedServer::start(script()).await;
    let messages = vec![
        Message::user_text("go"),
        Message::assistant(vec![Block::ToolUse {
            id: "call_9".into(),
            name: "read_file".into(),
            input: json!({}),
        }]),
        Message::user_text("well?"),
    ];
    let tools = tools();
    let err = client(&server)
        .complete(request(&messages, &tools, false))
        .await
        .unwrap_err();
    match err {
        ModelError::Rejected {
            status: 400,
            message,
        } => {
            assert!(
                message.contains("did not have response messages: call_9"),
                "{message}"
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn rate_limits_are_retried_with_the_shared_policy() {
    let server = ScriptedServer::start(script()).await;
    server.fail_next(1, 429, &[("retry-after-ms", "0")]);
    server.fail_next(1, 500, &[]);
    let (messages, tools) = (opening(), tools());
    client(&server)
        .complete(request(&messages, &tools, false))
        .await
        .unwrap();
    assert_eq!(server.requests(), 3);

    server.fail_next(3, 502, &[]);
    let err = client(&server)
        .complete(request(&messages, &tools, false))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Transient {
                status: Some(502),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.requests(), 6);
}

#[tokio::test]
async fn max_completion_tokens_is_sent_and_max_tokens_only_to_a_server_that_refuses_it() {
    let server = ScriptedServer::start(script()).await;
    let (messages, tools) = (opening(), tools());
    // OpenAI's own models refuse `max_tokens`.
    client(&server)
        .complete(request(&messages, &tools, false))
        .await
        .expect("max_completion_tokens is accepted");
    let sent = server.last_request().unwrap();
    assert_eq!(sent["max_completion_tokens"], 4096);
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    assert_eq!(server.requests(), 1);

    // An older server refuses `max_completion_tokens`: one fallback, then remembered.
    server.set_openai_token_limit(TokenLimitParameter::MaxTokens);
    let client = client(&server);
    let first = client
        .complete(request(&messages, &tools, false))
        .await
        .expect("falls back to max_tokens");
    assert_eq!(server.requests(), 3, "one refused request, one fallback");
    let sent = server.last_request().unwrap();
    assert_eq!(sent["max_tokens"], 4096);
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    client
        .complete(request(&answered(&first), &tools, false))
        .await
        .unwrap();
    assert_eq!(server.requests(), 4, "the fallback is remembered");
}

#[tokio::test]
async fn other_bad_requests_do_not_fall_back() {
    let server = ScriptedServer::start(script()).await;
    server.set_openai_token_limit(TokenLimitParameter::MaxTokens);
    let messages = vec![
        Message::user_text("go"),
        Message::assistant(vec![Block::ToolUse {
            id: "call_9".into(),
            name: "read_file".into(),
            input: json!({}),
        }]),
    ];
    let tools = tools();
    let client = client(&server);
    // Refused for the parameter first, then for the conversation: no second fallback.
    let err = client
        .complete(request(&messages, &tools, false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("call_9"), "{err}");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_refusal_is_surfaced_with_its_message() {
    let refusing = Script::new(vec![ScriptTurn {
        stop_reason: Some("refusal".into()),
        ..ScriptTurn::default()
    }]);
    let server = ScriptedServer::start(refusing).await;
    let (messages, tools) = (opening(), tools());
    let r = client(&server)
        .complete(request(&messages, &tools, false))
        .await
        .unwrap();
    assert_eq!(r.stop_reason, StopReason::Refusal);
    assert_eq!(
        r.refusal.as_deref(),
        Some(tb_models::scripted::REFUSAL_EXPLANATION)
    );
    assert!(r.content.is_empty(), "{:?}", r.content);
}
