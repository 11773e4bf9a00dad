//! `POST /v1/messages`: Anthropic's Messages API, answered by the scripted model.
//!
//! The body is converted back to our conversation types and validated like the real API;
//! the answer comes from `ScriptedModel::answer`, the same code path as the in-process
//! model, with the cache simulated over the body as received. Each rule names its source:
//!
//! - headers and required fields (`model`, `max_tokens`, `messages`): the API reference,
//!   <https://platform.claude.com/docs/en/api/messages/create>, and `MessageCreateParamsBase`
//!   in `anthropics/anthropic-sdk-python` `src/anthropic/types/message_create_params.py`;
//! - text blocks: an empty one is refused ("text content blocks must be non-empty"), and so
//!   is a whitespace-only one in a message with no other text ("text content blocks must
//!   contain non-whitespace text"), as the API answers (observed and tabulated in
//!   LibreChat-AI/agents#124; the messages as in anthropics/claude-code#23440 and #59812);
//! - every message but an optional final assistant one has content (the API's 400 "all
//!   messages must have non-empty content except for the optional final assistant message");
//! - the first message is a user message (the API's 400 "messages: first message must use
//!   the \"user\" role", as reported in livekit/agents#669; today's reference no longer
//!   states the rule, so this stand-in may be stricter than the API, never laxer);
//! - consecutive turns of one role are combined into one turn before the rules below apply
//!   ("Consecutive `user` or `assistant` turns in your request will be combined into a single
//!   turn", `messages` in `message_create_params.py`);
//! - every `tool_use` is answered by `tool_result` blocks at the start of the next user turn,
//!   and every `tool_result` answers one of the turn before
//!   (<https://platform.claude.com/docs/en/agents-and-tools/tool-use/implement-tool-use>);
//! - no final assistant turn: Claude 4.6 and later models refuse a prefill ("This model does
//!   not support assistant message prefill. The conversation must end with a user message.",
//!   <https://platform.claude.com/docs/en/about-claude/models/migration-guide>), except the
//!   continuation of a turn the server paused (`pause_turn`: "You may provide the response
//!   back as-is in a subsequent request to let the model continue", `stop_reason` in
//!   `src/anthropic/types/message.py`;
//!   <https://platform.claude.com/docs/en/agents-and-tools/tool-use/server-tools>);
//! - thinking blocks go back unmodified, signature included ("a modified block results in a
//!   400 `invalid_request_error`", `src/anthropic/types/thinking_block_param.py`; the data of
//!   `redacted_thinking` likewise, `redacted_thinking_block_param.py`), and those of the
//!   assistant turn whose tool calls the request answers must be there
//!   (<https://platform.claude.com/docs/en/build-with-claude/extended-thinking#preserving-thinking-blocks>);
//! - `tools`: a custom tool has a `name` and an object `input_schema` (`ToolParam`,
//!   `src/anthropic/types/tool_param.py`); the text editor tool is
//!   `{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}` with optional
//!   `max_characters`, `cache_control` and the few other fields of
//!   `ToolTextEditor20250728Param` (`src/anthropic/types/tool_text_editor_20250728_param.py`;
//!   <https://platform.claude.com/docs/en/agents-and-tools/tool-use/text-editor-tool>: "the
//!   schema is built into Claude's model and can't be modified"), so a schema or description
//!   on it is refused as an extra input; tool names are unique.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tb_core::{Block, Message, Role};

use super::{ServerState, stop_reason_name};
use crate::scripted::{
    REFUSAL_EXPLANATION, assistant_turns, redacted_thinking_data, thinking_signature,
};
use tb_core::model::StopReason;

pub(super) async fn messages(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(injected) = state.begin(error) {
        return injected;
    }
    if headers.get("x-api-key").is_none_or(|k| k.is_empty()) {
        return error(StatusCode::UNAUTHORIZED, "x-api-key header is required");
    }
    if headers
        .get("anthropic-version")
        .is_none_or(|v| v.is_empty())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    let body = match state.record(&body, "The request body is not valid JSON") {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let messages = match check_fields(&body)
        .and_then(|()| check_tools(&body["tools"]))
        .and_then(|()| conversation(&body["messages"]))
    {
        Ok(m) => m,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let turn = assistant_turns(&messages);
    let paused = |t: usize| state.model.turn(t).1 == StopReason::PauseTurn;
    let checks = check_text_blocks(&messages)
        .and_then(|()| check_non_empty(&messages))
        .and_then(|()| check_thinking(&messages, |t| state.model.turn(t).0))
        .and_then(|()| check_tool_pairing(&combined(&messages)))
        .and_then(|()| check_final_turn(&messages, turn, paused));
    if let Err(message) = checks {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    let n = state.requests.load(std::sync::atomic::Ordering::SeqCst);
    let answer = state.model.answer(turn, &body);
    let u = answer.usage;
    // A refusal says why in `stop_details` (`RefusalStopDetails`,
    // `src/anthropic/types/refusal_stop_details.py`).
    let stop_details = match answer.stop_reason {
        StopReason::Refusal => {
            json!({"type": "refusal", "category": null, "explanation": REFUSAL_EXPLANATION})
        }
        _ => Value::Null,
    };
    Json(json!({
        "id": format!("msg_scripted_{n:06}"),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": answer.content,
        "stop_reason": stop_reason_name(&answer.stop_reason),
        "stop_details": stop_details,
        "stop_sequence": null,
        "usage": {
            "input_tokens": u.input,
            "output_tokens": u.output,
            "cache_creation_input_tokens": u.cache_write,
            "cache_read_input_tokens": u.cache_read,
        },
    }))
    .into_response()
}

/// `{"type":"error","error":{"type","message"}}` with the API's error type for `status`.
fn error(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    (
        status,
        Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

fn check_fields(body: &Value) -> Result<(), String> {
    if !body.is_object() {
        return Err("The request body must be a JSON object".into());
    }
    if body["model"].as_str().is_none_or(str::is_empty) {
        return Err("model: Field required".into());
    }
    if body["max_tokens"].as_u64().is_none_or(|n| n == 0) {
        return Err("max_tokens: Field required (an integer of at least 1)".into());
    }
    Ok(())
}

/// The text editor tool type of Claude 4 models, and the one name it may have.
const TEXT_EDITOR_TYPE: &str = "text_editor_20250728";
const TEXT_EDITOR_NAME: &str = "str_replace_based_edit_tool";
/// The fields of `ToolTextEditor20250728Param`.
const TEXT_EDITOR_FIELDS: [&str; 8] = [
    "type",
    "name",
    "max_characters",
    "cache_control",
    "allowed_callers",
    "defer_loading",
    "input_examples",
    "strict",
];

/// The `tools` array, when present (see the module docs for the sources).
fn check_tools(tools: &Value) -> Result<(), String> {
    let items = match tools {
        Value::Null => return Ok(()),
        Value::Array(items) => items,
        _ => return Err("tools: Input should be a valid list".into()),
    };
    let mut names = std::collections::HashSet::new();
    for (i, t) in items.iter().enumerate() {
        let name = t["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("tools.{i}.name: Field required"))?;
        match t["type"].as_str() {
            None | Some("custom") => {
                if !t["input_schema"].is_object() {
                    return Err(format!("tools.{i}.custom.input_schema: Field required"));
                }
                if t["input_schema"]["type"] != "object" {
                    return Err(format!(
                        "tools.{i}.custom.input_schema.type: Input should be 'object'"
                    ));
                }
            }
            Some(TEXT_EDITOR_TYPE) => {
                if name != TEXT_EDITOR_NAME {
                    return Err(format!(
                        "tools.{i}.{TEXT_EDITOR_TYPE}.name: Input should be '{TEXT_EDITOR_NAME}'"
                    ));
                }
                if let Some(extra) = t
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .find(|k| !TEXT_EDITOR_FIELDS.contains(&k.as_str()))
                {
                    return Err(format!(
                        "tools.{i}.{TEXT_EDITOR_TYPE}.{extra}: Extra inputs are not permitted"
                    ));
                }
                let max = &t["max_characters"];
                if !max.is_null() && max.as_u64().is_none_or(|n| n == 0) {
                    return Err(format!(
                        "tools.{i}.{TEXT_EDITOR_TYPE}.max_characters: Input should be an integer of at least 1"
                    ));
                }
            }
            Some(other) => {
                return Err(format!(
                    "tools.{i}: Input tag '{other}' found using 'type' does not match any of the expected tags"
                ));
            }
        }
        if !names.insert(name) {
            return Err("tools: Tool names must be unique.".into());
        }
    }
    Ok(())
}

/// The `messages` array as our types.
fn conversation(messages: &Value) -> Result<Vec<Message>, String> {
    let items = messages
        .as_array()
        .ok_or("messages: Field required (an array)")?;
    if items.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect()
}

fn message(i: usize, m: &Value) -> Result<Message, String> {
    let role = match m["role"].as_str() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
    };
    let content = match &m["content"] {
        Value::String(text) => vec![Block::Text { text: text.clone() }],
        Value::Array(blocks) => blocks
            .iter()
            .enumerate()
            .map(|(k, b)| block(b).map_err(|e| format!("messages.{i}.content.{k}: {e}")))
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(format!(
                "messages.{i}.content: Field required (a string or an array of blocks)"
            ));
        }
    };
    Ok(Message { role, content })
}

fn block(b: &Value) -> Result<Block, String> {
    let text_field = |name: &str| {
        b[name]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("`{name}` must be a string"))
    };
    match b["type"].as_str() {
        Some("text") => Ok(Block::Text {
            text: text_field("text")?,
        }),
        Some("tool_use") => Ok(Block::ToolUse {
            id: text_field("id")?,
            name: text_field("name")?,
            input: b
                .get("input")
                .filter(|i| i.is_object())
                .cloned()
                .ok_or("`input` must be an object")?,
        }),
        Some("thinking") => Ok(Block::Thinking {
            thinking: text_field("thinking")?,
            signature: text_field("signature")?,
        }),
        Some("redacted_thinking") => Ok(Block::RedactedThinking {
            data: text_field("data")?,
        }),
        Some("tool_result") => {
            let content = match &b["content"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => return Err("`content` must be a string or an array of blocks".into()),
            };
            let is_error = b["is_error"].as_bool().unwrap_or(false);
            Ok(Block::ToolResult {
                tool_use_id: text_field("tool_use_id")?,
                content,
                is_error,
            })
        }
        Some(other) => Err(format!(
            "the scripted server does not support `{other}` blocks"
        )),
        None => Err("`type` is required".into()),
    }
}

/// No empty text block anywhere, and no whitespace-only one in a message without other text.
fn check_text_blocks(messages: &[Message]) -> Result<(), String> {
    for m in messages {
        let texts = m.content.iter().filter_map(|b| match b {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        });
        let mut blank = false;
        let mut some_text = false;
        for text in texts {
            if text.is_empty() {
                return Err("messages: text content blocks must be non-empty".into());
            }
            blank |= text.trim().is_empty();
            some_text |= !text.trim().is_empty();
        }
        if blank && !some_text {
            return Err("messages: text content blocks must contain non-whitespace text".into());
        }
    }
    Ok(())
}

/// Every message has content, except an optional final assistant message; the first is
/// the user's.
fn check_non_empty(messages: &[Message]) -> Result<(), String> {
    if messages[0].role != Role::User {
        return Err(r#"messages: first message must use the "user" role"#.into());
    }
    let last = messages.len() - 1;
    for (i, m) in messages.iter().enumerate() {
        if m.content.is_empty() && !(i == last && m.role == Role::Assistant) {
            return Err(format!(
                "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
            ));
        }
    }
    Ok(())
}

/// Thinking blocks carry the signature (or data) the server gave them; the assistant
/// message whose tool calls the last user message answers keeps the thinking blocks it
/// was answered with, in order. `issued(t)` is the content the server answered turn `t`.
fn check_thinking(
    messages: &[Message],
    issued: impl Fn(usize) -> Vec<Block>,
) -> Result<(), String> {
    let mut turn = 0;
    let mut last_assistant = None;
    for (i, m) in messages.iter().enumerate() {
        if m.role != Role::Assistant {
            continue;
        }
        for (k, b) in m.content.iter().enumerate() {
            let valid = match b {
                Block::Thinking {
                    thinking,
                    signature,
                } => *signature == thinking_signature(thinking),
                Block::RedactedThinking { data } => *data == redacted_thinking_data(turn),
                _ => true,
            };
            if !valid {
                let kind = if matches!(b, Block::Thinking { .. }) {
                    "`signature` in `thinking`"
                } else {
                    "`data` in `redacted_thinking`"
                };
                return Err(format!("messages.{i}.content.{k}: Invalid {kind} block"));
            }
        }
        last_assistant = Some((i, turn));
        turn += 1;
    }
    let Some((i, turn)) = last_assistant else {
        return Ok(());
    };
    let answers_it = messages.last().is_some_and(|m| m.role == Role::User);
    let has_calls = messages[i].tool_uses().next().is_some();
    if !(answers_it && has_calls) {
        return Ok(());
    }
    let thinking = |content: &[Block]| -> Vec<Block> {
        content
            .iter()
            .filter(|b| matches!(b, Block::Thinking { .. } | Block::RedactedThinking { .. }))
            .cloned()
            .collect()
    };
    let expected = thinking(&issued(turn));
    if !expected.is_empty() && thinking(&messages[i].content) != expected {
        return Err(format!(
            "messages.{i}.content: the thinking blocks of the assistant turn whose tool calls this request answers \
             must be passed back unmodified and in their original order"
        ));
    }
    Ok(())
}

/// The conversation with consecutive messages of one role combined into one.
fn combined(messages: &[Message]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for m in messages {
        match out.last_mut() {
            Some(last) if last.role == m.role => last.content.extend(m.content.iter().cloned()),
            _ => out.push(m.clone()),
        }
    }
    out
}

/// The request ends on a user turn, unless its final assistant message (turn `turn - 1`)
/// is the continuation of a turn the server paused.
fn check_final_turn(
    messages: &[Message],
    turn: usize,
    paused: impl Fn(usize) -> bool,
) -> Result<(), String> {
    match messages.last() {
        Some(m) if m.role == Role::Assistant && !(turn > 0 && paused(turn - 1)) => Err(
            "This model does not support assistant message prefill. The conversation must end with a user message."
                .into(),
        ),
        _ => Ok(()),
    }
}

/// Every `tool_use` is answered by `tool_result` blocks at the start of the very next user
/// message, and every `tool_result` answers a `tool_use` of the message before it.
fn check_tool_pairing(messages: &[Message]) -> Result<(), String> {
    for (i, m) in messages.iter().enumerate() {
        let previous_ids: Vec<&str> = match i.checked_sub(1).map(|p| &messages[p]) {
            Some(p) if p.role == Role::Assistant => p.tool_uses().map(|(id, _, _)| id).collect(),
            _ => Vec::new(),
        };
        if m.role == Role::User {
            for (k, b) in m.content.iter().enumerate() {
                if let Block::ToolResult { tool_use_id, .. } = b
                    && !previous_ids.contains(&tool_use_id.as_str())
                {
                    return Err(format!(
                        "messages.{i}.content.{k}: unexpected `tool_use_id` found in `tool_result` blocks: \
                         {tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block in \
                         the previous message."
                    ));
                }
            }
        }
        if m.role != Role::Assistant {
            continue;
        }
        let ids: Vec<&str> = m.tool_uses().map(|(id, _, _)| id).collect();
        if ids.is_empty() {
            continue;
        }
        let next = messages.get(i + 1).filter(|n| n.role == Role::User);
        let leading: Vec<&str> = next
            .map(|n| {
                n.content
                    .iter()
                    .map_while(|b| match b {
                        Block::ToolResult { tool_use_id, .. } => Some(tool_use_id.as_str()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !leading.contains(id))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let results_later = next.is_some_and(|n| {
            n.content
                .iter()
                .skip(leading.len())
                .any(|b| matches!(b, Block::ToolResult { .. }))
        });
        return Err(if results_later {
            format!(
                "messages.{}: Did not find {} `tool_result` block(s) at the beginning of this message. Messages \
                 following `tool_use` blocks must begin with a matching number of `tool_result` blocks.",
                i + 1,
                ids.len()
            )
        } else {
            format!(
                "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each \
                 `tool_use` block must have a corresponding `tool_result` block in the next message.",
                missing.join(", ")
            )
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn use_(id: &str) -> Block {
        Block::ToolUse {
            id: id.into(),
            name: "run".into(),
            input: json!({}),
        }
    }

    fn result(id: &str) -> Block {
        Block::ToolResult {
            tool_use_id: id.into(),
            content: "ok".into(),
            is_error: false,
        }
    }

    fn user(content: Vec<Block>) -> Message {
        Message {
            role: Role::User,
            content,
        }
    }

    #[test]
    fn the_text_editor_tool_is_declared_by_type_and_name_only() {
        let editor = json!({"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": 10000, "cache_control": {"type": "ephemeral"}});
        let custom = json!({"name": "run_command", "input_schema": {"type": "object"}});
        assert_eq!(check_tools(&json!([custom.clone(), editor])), Ok(()));
        assert_eq!(check_tools(&Value::Null), Ok(()));
        let renamed = json!([{"type": "text_editor_20250728", "name": "edit"}]);
        assert!(
            check_tools(&renamed)
                .unwrap_err()
                .contains("Input should be 'str_replace_based_edit_tool'")
        );
        let with_schema = json!([{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "input_schema": {"type": "object"}}]);
        assert!(
            check_tools(&with_schema)
                .unwrap_err()
                .ends_with("input_schema: Extra inputs are not permitted")
        );
        let old = json!([{"type": "text_editor_2099", "name": "str_replace_based_edit_tool"}]);
        assert!(
            check_tools(&old)
                .unwrap_err()
                .contains("does not match any of the expected tags")
        );
        let no_schema = json!([{"name": "run_command"}]);
        assert!(
            check_tools(&no_schema)
                .unwrap_err()
                .contains("input_schema: Field required")
        );
        let twice = json!([custom.clone(), custom]);
        assert!(check_tools(&twice).unwrap_err().contains("unique"));
        let zero = json!([{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": 0}]);
        assert!(check_tools(&zero).is_err());
    }

    #[test]
    fn answered_tool_uses_pass_validation() {
        let m = vec![
            Message::user_text("go"),
            Message::assistant(vec![use_("a"), use_("b")]),
            user(vec![
                result("b"),
                result("a"),
                Block::Text { text: "and".into() },
            ]),
        ];
        assert_eq!(check_tool_pairing(&m), Ok(()));
    }

    #[test]
    fn an_unanswered_tool_use_is_refused_like_the_api_does() {
        let m = vec![
            Message::user_text("go"),
            Message::assistant(vec![use_("a"), use_("b")]),
            user(vec![result("a")]),
        ];
        let e = check_tool_pairing(&m).unwrap_err();
        assert!(
            e.contains(
                "`tool_use` ids were found without `tool_result` blocks immediately after: b"
            ),
            "{e}"
        );
        let m = vec![
            Message::user_text("go"),
            Message::assistant(vec![use_("a")]),
            Message::user_text("hm"),
        ];
        assert!(
            check_tool_pairing(&m)
                .unwrap_err()
                .starts_with("messages.1: `tool_use` ids")
        );
        let m = vec![
            Message::user_text("go"),
            Message::assistant(vec![use_("a")]),
        ];
        assert!(
            check_tool_pairing(&m).is_err(),
            "a trailing tool_use has no answer either"
        );
    }

    #[test]
    fn tool_results_must_come_first_and_answer_the_previous_message() {
        let m = vec![
            Message::user_text("go"),
            Message::assistant(vec![use_("a")]),
            user(vec![
                Block::Text {
                    text: "first".into(),
                },
                result("a"),
            ]),
        ];
        assert!(
            check_tool_pairing(&m)
                .unwrap_err()
                .contains("Did not find 1 `tool_result` block(s) at the beginning")
        );
        let m = vec![Message::user_text("go"), user(vec![result("zzz")])];
        assert!(
            check_tool_pairing(&m)
                .unwrap_err()
                .contains("unexpected `tool_use_id` found in `tool_result` blocks: zzz")
        );
    }

    #[test]
    fn consecutive_turns_of_one_role_are_combined_before_the_pairing_check() {
        let m = vec![
            Message::user_text("go"),
            Message::assistant(vec![use_("a")]),
            Message::assistant(vec![Block::Text {
                text: "and then".into(),
            }]),
            user(vec![result("a")]),
            Message::user_text("more"),
        ];
        assert_eq!(combined(&m).len(), 3);
        assert_eq!(check_tool_pairing(&combined(&m)), Ok(()));
    }

    #[test]
    fn only_a_final_assistant_message_may_be_empty() {
        let m = vec![Message::user_text("go"), Message::assistant(vec![])];
        assert_eq!(check_non_empty(&m), Ok(()));
        let m = vec![
            Message::user_text("go"),
            user(vec![]),
            Message::user_text("go"),
        ];
        assert!(
            check_non_empty(&m)
                .unwrap_err()
                .starts_with("messages.1: all messages")
        );
        let m = vec![
            Message::assistant(vec![use_("a")]),
            Message::user_text("go"),
        ];
        assert!(
            check_non_empty(&m)
                .unwrap_err()
                .contains(r#"first message must use the "user" role"#)
        );
    }

    #[test]
    fn a_final_assistant_turn_is_a_refused_prefill_unless_the_turn_was_paused() {
        let m = vec![Message::user_text("go"), Message::assistant(vec![])];
        assert!(
            check_final_turn(&m, 1, |_| false)
                .unwrap_err()
                .contains("does not support assistant message prefill")
        );
        assert_eq!(check_final_turn(&m, 1, |t| t == 0), Ok(()));
        assert_eq!(check_final_turn(&m[..1], 0, |_| false), Ok(()));
    }

    #[test]
    fn wire_messages_convert_back_to_our_types() {
        let wire = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "run", "input": {"x": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "is_error": true,
                                          "content": [{"type": "text", "text": "bad"}], "cache_control": {"type": "ephemeral"}}]}
        ]);
        let m = conversation(&wire).unwrap();
        assert_eq!(m[0], Message::user_text("hi"));
        assert_eq!(
            m[1].content[0],
            Block::ToolUse {
                id: "a".into(),
                name: "run".into(),
                input: json!({"x": 1})
            }
        );
        assert_eq!(
            m[2].content[0],
            Block::ToolResult {
                tool_use_id: "a".into(),
                content: "bad".into(),
                is_error: true
            }
        );
        assert!(
            conversation(&json!([{"role": "system", "content": "x"}]))
                .unwrap_err()
                .contains("messages.0.role")
        );
        assert!(
            conversation(&json!([{"role": "user", "content": [{"type": "image"}]}]))
                .unwrap_err()
                .contains("image")
        );
    }
}
