//! `POST /v1/chat/completions`: OpenAI's chat completions, answered by the scripted model.
//!
//! The turn played is the number of assistant messages. Every assistant `tool_calls`
//! entry must be answered by `role: tool` messages (matching `tool_call_id`s) before any
//! other message, as OpenAI requires. Usage: `prompt_tokens` includes the cached tokens,
//! which are the longest previously seen message-boundary prefix (no cache writes).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tb_core::Block;
use tb_core::model::StopReason;

use super::{OpenAiDialect, ServerState, TokenLimitParameter};
use crate::scripted::{REFUSAL_EXPLANATION, output_tokens};

pub(super) async fn chat_completions(
    State(state): State<Arc<ServerState>>,
    body: Bytes,
) -> Response {
    if let Some(injected) = state.begin(error) {
        return injected;
    }
    let body = match state.record(&body, "We could not parse the JSON body") {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if let Some(refused) = refused_token_limit(&body, state.token_limit()) {
        return refused;
    }
    let turn = match check(&body) {
        Ok(turn) => turn,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let dialect = state.dialect();
    let (content, stop_reason) = state.model.turn(turn);
    let prompt = state.model.cache().openai(&body);
    let output = output_tokens(&content);
    let mut usage = json!({
        "prompt_tokens": prompt.prompt_tokens,
        "completion_tokens": output,
        "total_tokens": prompt.prompt_tokens + output,
    });
    if dialect == OpenAiDialect::Standard {
        usage["prompt_tokens_details"] = json!({"cached_tokens": prompt.cached_tokens});
    }
    let n = state.requests.load(std::sync::atomic::Ordering::SeqCst);
    Json(json!({
        "id": format!("chatcmpl-scripted-{n:06}"),
        "object": "chat.completion",
        "created": 0,
        "model": state.model.script().model,
        "choices": [{"index": 0, "message": message(&content, &stop_reason, dialect), "finish_reason": finish_reason(&stop_reason)}],
        "usage": usage,
    }))
    .into_response()
}

/// The 400 a server answers for the output-limit parameter it does not accept.
///
/// OpenAI's reasoning models refuse `max_tokens` naming its replacement (the body of
/// `invalid_request_error`s: `message`, `type`, `param`, `code`, as in `openai/openai-openapi`
/// `openapi.yaml` `Error`); servers from before `max_completion_tokens` refuse it as an
/// unrecognized argument (Azure OpenAI's wording; vLLM and others answer alike).
fn refused_token_limit(body: &Value, accepted: TokenLimitParameter) -> Option<Response> {
    let (refused, message, code) = match accepted {
        TokenLimitParameter::MaxCompletionTokens => (
            "max_tokens",
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            json!("unsupported_parameter"),
        ),
        TokenLimitParameter::MaxTokens => (
            "max_completion_tokens",
            "Unrecognized request argument supplied: max_completion_tokens",
            Value::Null,
        ),
    };
    body.get(refused)?;
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": refused, "code": code}});
    Some((StatusCode::BAD_REQUEST, Json(body)).into_response())
}

/// The assistant message; a refusal is `message.refusal` with no content
/// (`ChatCompletionMessage.refusal`, `src/openai/types/chat/chat_completion_message.py`).
fn message(content: &[Block], stop_reason: &StopReason, dialect: OpenAiDialect) -> Value {
    if *stop_reason == StopReason::Refusal {
        return json!({"role": "assistant", "content": null, "refusal": REFUSAL_EXPLANATION});
    }
    let text: Vec<&str> = content
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = content
        .iter()
        .filter_map(|b| match b {
            Block::ToolUse { id, name, input } => Some(tool_call(id, name, input, dialect)),
            _ => None,
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text.join("\n")) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// A string input is the script's way to send arguments that are not valid JSON.
fn tool_call(id: &str, name: &str, input: &Value, dialect: OpenAiDialect) -> Value {
    match dialect {
        OpenAiDialect::Standard => {
            let arguments = match input {
                Value::String(raw) => raw.clone(),
                other => other.to_string(),
            };
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
        }
        OpenAiDialect::OllamaLike => json!({"function": {"name": name, "arguments": input}}),
    }
}

fn finish_reason(reason: &StopReason) -> &str {
    match reason {
        StopReason::ToolUse => "tool_calls",
        StopReason::MaxTokens | StopReason::ContextWindowExceeded => "length",
        StopReason::Other(other) => other,
        _ => "stop",
    }
}

/// `{"error":{"message","type","param","code"}}` with the API's error type for `status`.
fn error(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}})),
    )
        .into_response()
}

/// Validates the body; returns the turn to play (the number of assistant messages).
fn check(body: &Value) -> Result<usize, String> {
    if body["model"].as_str().is_none_or(str::is_empty) {
        return Err("you must provide a model parameter".into());
    }
    let messages = body["messages"]
        .as_array()
        .ok_or("'messages' is a required property")?;
    if messages.is_empty() {
        return Err("'messages' must contain at least one message".into());
    }
    let mut pending: Vec<String> = Vec::new();
    let mut turns = 0;
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if role != "tool" && !pending.is_empty() {
            return Err(unanswered(&pending));
        }
        match role {
            "system" | "developer" | "user" => {}
            "assistant" => {
                turns += 1;
                pending = assistant_call_ids(i, m)?;
            }
            "tool" => {
                let id = m["tool_call_id"]
                    .as_str()
                    .ok_or(format!("messages[{i}].tool_call_id is required"))?;
                let Some(at) = pending.iter().position(|p| p == id) else {
                    return Err("Invalid parameter: messages with role 'tool' must be a response to a preceeding \
                                message with 'tool_calls'."
                        .into());
                };
                pending.remove(at);
            }
            other => return Err(format!("messages[{i}].role: invalid value '{other}'")),
        }
    }
    if !pending.is_empty() {
        return Err(unanswered(&pending));
    }
    Ok(turns)
}

fn assistant_call_ids(i: usize, m: &Value) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    for (k, call) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let at = |field: &str| format!("messages[{i}].tool_calls[{k}].{field}");
        let id = call["id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or(format!("{} is required", at("id")))?;
        if !call["function"]["name"].is_string() {
            return Err(format!("{} is required", at("function.name")));
        }
        if !call["function"]["arguments"].is_string() {
            return Err(format!("{} must be a string", at("function.arguments")));
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

fn unanswered(pending: &[String]) -> String {
    format!(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each \
         'tool_call_id'. The following tool_call_ids did not have response messages: {}",
        pending.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(messages: Value) -> Value {
        json!({"model": "m", "messages": messages})
    }

    fn call(id: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": "run", "arguments": "{}"}})
    }

    #[test]
    fn tool_messages_answering_every_call_pass_and_count_turns() {
        let b = body(json!([
            {"role": "system", "content": "s"}, {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [call("a"), call("b")]},
            {"role": "tool", "tool_call_id": "b", "content": "1"}, {"role": "tool", "tool_call_id": "a", "content": "2"},
            {"role": "user", "content": "more"}
        ]));
        assert_eq!(check(&b), Ok(1));
    }

    #[test]
    fn unanswered_or_stray_tool_calls_are_refused() {
        let missing = body(json!([
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [call("a"), call("b")]},
            {"role": "tool", "tool_call_id": "a", "content": "1"}, {"role": "user", "content": "x"}
        ]));
        assert!(
            check(&missing)
                .unwrap_err()
                .ends_with("did not have response messages: b")
        );
        let stray = body(
            json!([{"role": "user", "content": "go"}, {"role": "tool", "tool_call_id": "a", "content": "1"}]),
        );
        assert!(
            check(&stray)
                .unwrap_err()
                .contains("must be a response to a preceeding message")
        );
        let object_args = body(json!([
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "run", "arguments": {}}}]},
            {"role": "tool", "tool_call_id": "a", "content": "1"}
        ]));
        assert!(
            check(&object_args)
                .unwrap_err()
                .contains("arguments must be a string")
        );
    }
}
