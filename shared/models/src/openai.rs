//! [`OpenAiClient`]: the [`Model`] port over an OpenAI-compatible chat-completions server
//! (vLLM, Ollama, OpenRouter, OpenAI itself).
//!
//! `POST {base_url}/chat/completions`, with `Authorization: Bearer <key>` when a key is
//! set. The conversation maps to `tool_calls` and `role: tool` messages (see
//! [`request_body`]); responses are read leniently (see [`parse_response`]).
//!
//! The output limit is sent as `max_completion_tokens`, which OpenAI's API reference names
//! the successor of `max_tokens` ("deprecated in favor of `max_completion_tokens`, and is
//! not compatible with o-series models": `openai/openai-python`
//! `src/openai/types/chat/completion_create_params.py`). A server that refuses it with a 400
//! naming the parameter (servers that predate it) gets `max_tokens` instead, once, and from
//! then on.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::Deserialize;
use serde_json::{Value, json};
use tb_core::model::{Model, ModelError, ModelRequest, ModelResponse, StopReason};
use tb_core::{Block, Message, Role, TokenUsage};

use crate::http::{self, ConfigError, Endpoint};
use crate::retry::RetryPolicy;

/// How to reach an OpenAI-compatible server. `Debug` never shows the API key.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Up to and including the version segment, e.g. `http://localhost:11434/v1`.
    pub base_url: String,
    /// Sent as a Bearer token when set (Ollama and vLLM need none).
    pub api_key: Option<String>,
    pub model: String,
    /// The server's real context window; compaction relies on it.
    pub context_window: u64,
    pub retry: RetryPolicy,
    /// Timeout of one HTTP attempt.
    pub timeout: Duration,
}

impl OpenAiConfig {
    /// No key, a 128k context window and default retries.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            context_window: 128_000,
            retry: RetryPolicy::default(),
            timeout: http::DEFAULT_TIMEOUT,
        }
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field(
                "api_key",
                &self.api_key.as_deref().map(tb_core::secret::redacted),
            )
            .field("model", &self.model)
            .field("context_window", &self.context_window)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A chat-completions client; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct OpenAiClient {
    config: OpenAiConfig,
    endpoint: Endpoint,
    /// The server refused `max_completion_tokens`: send `max_tokens`.
    legacy_max_tokens: AtomicBool,
}

/// The name the output limit is sent under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenLimitField {
    /// `max_completion_tokens`, what OpenAI's API defines.
    MaxCompletionTokens,
    /// `max_tokens`, for servers that refuse the former.
    MaxTokens,
}

impl TokenLimitField {
    fn name(self) -> &'static str {
        match self {
            TokenLimitField::MaxCompletionTokens => "max_completion_tokens",
            TokenLimitField::MaxTokens => "max_tokens",
        }
    }
}

impl OpenAiClient {
    pub fn new(config: OpenAiConfig) -> Result<Self, ConfigError> {
        let url = http::endpoint(&config.base_url, "/chat/completions")?;
        let mut headers = HeaderMap::new();
        if let Some(key) = config.api_key.as_deref().filter(|k| !k.is_empty()) {
            headers.insert(
                AUTHORIZATION,
                http::secret_header(&format!("Bearer {key}"))?,
            );
        }
        let endpoint = Endpoint::new(url, headers, config.timeout, config.retry, "openai")?;
        Ok(OpenAiClient {
            config,
            endpoint,
            legacy_max_tokens: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }
}

#[async_trait]
impl Model for OpenAiClient {
    fn id(&self) -> &str {
        &self.config.model
    }

    fn context_window(&self) -> u64 {
        self.config.context_window
    }

    async fn complete(&self, request: ModelRequest<'_>) -> Result<ModelResponse, ModelError> {
        let field = if self.legacy_max_tokens.load(Ordering::Relaxed) {
            TokenLimitField::MaxTokens
        } else {
            TokenLimitField::MaxCompletionTokens
        };
        let bytes = match self.post(&request, field).await {
            Err(ModelError::Rejected {
                status: 400,
                message,
            }) if field == TokenLimitField::MaxCompletionTokens
                && message.contains("max_completion_tokens") =>
            {
                tracing::warn!(
                    base_url = %self.config.base_url,
                    refusal = %message,
                    "the server refuses max_completion_tokens; sending max_tokens from now on"
                );
                self.legacy_max_tokens.store(true, Ordering::Relaxed);
                self.post(&request, TokenLimitField::MaxTokens).await?
            }
            other => other?,
        };
        parse_response(&bytes, &self.config.model)
    }
}

impl OpenAiClient {
    async fn post(
        &self,
        request: &ModelRequest<'_>,
        field: TokenLimitField,
    ) -> Result<Vec<u8>, ModelError> {
        let body = request_body(&self.config.model, request, field);
        self.endpoint.post(&body).await
    }
}

/// The chat-completions body for `req`.
///
/// The system prompt becomes the first message. An assistant message becomes one message
/// with its text (or `null`) and `tool_calls` whose `arguments` are JSON strings. Each
/// tool result becomes a `role: tool` message, in order; an error result's content is
/// prefixed with `Error: ` (the format has no error flag). User text in the same message
/// follows as one user message. `prompt_caching` is ignored: these servers cache
/// automatically. `max_tokens` goes out under the name `field` says.
pub fn request_body(model: &str, req: &ModelRequest<'_>, field: TokenLimitField) -> Value {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system}));
    }
    for message in req.messages {
        match message.role {
            Role::Assistant => messages.push(assistant_message(message)),
            Role::User => push_user_message(message, &mut messages),
        }
    }
    let mut body = json!({"model": model, "messages": messages, "stream": false});
    body[field.name()] = json!(req.max_tokens);
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function",
                       "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}})
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    body
}

/// Reads a chat-completions response body.
///
/// `content` may be a string, `null` or an array of text parts. Tool-call `arguments` may
/// be a JSON string or an object; a string that is not valid JSON is kept as
/// `Value::String` so the agent can report a tool error. Missing call ids become
/// `call_<index>`. Tool calls make the stop reason `ToolUse` whatever `finish_reason`
/// says, except `length` (a reply cut at the output limit, its last call maybe with it); a `message.refusal` makes it `Refusal`, with the refusal's text. Text that is
/// only whitespace is dropped. `prompt_tokens` includes cached tokens, which are
/// subtracted from `input`.
pub fn parse_response(body: &[u8], requested_model: &str) -> Result<ModelResponse, ModelError> {
    let wire: WireResponse = http::read_json(body)?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ModelError::Protocol("the response has no choices".to_string()))?;
    let message = choice.message.unwrap_or_default();
    let mut content = Vec::new();
    let text = Block::Text {
        text: message_text(&message.content),
    };
    if !text.is_blank_text() {
        content.push(text);
    }
    for (index, call) in message.tool_calls.unwrap_or_default().iter().enumerate() {
        content.push(tool_use(index, call)?);
    }
    let has_calls = content.iter().any(|b| matches!(b, Block::ToolUse { .. }));
    let refusal = message.refusal.filter(|r| !r.trim().is_empty());
    let stop_reason = match choice.finish_reason.as_deref() {
        // Cut at the output limit (`length`: "the maximum number of tokens specified in the
        // request was reached", `finish_reason` in `openai/openai-python`
        // `src/openai/types/chat/chat_completion.py`): the last call may be incomplete.
        Some("length") => StopReason::MaxTokens,
        _ if has_calls => StopReason::ToolUse,
        _ if refusal.is_some() => StopReason::Refusal,
        Some(reason) => StopReason::parse(reason),
        None => StopReason::EndTurn,
    };
    let usage = wire.usage.map(normalise_usage).unwrap_or_default();
    let model = wire
        .model
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| requested_model.to_string());
    Ok(ModelResponse {
        model,
        content,
        stop_reason,
        usage,
        refusal,
    })
}

fn assistant_message(message: &Message) -> Value {
    let text = message.text();
    let calls: Vec<Value> = message
        .tool_uses()
        .map(|(id, name, input)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}})
        })
        .collect();
    if calls.is_empty() {
        return json!({"role": "assistant", "content": text});
    }
    let content = if text.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    json!({"role": "assistant", "content": content, "tool_calls": calls})
}

fn push_user_message(message: &Message, out: &mut Vec<Value>) {
    for block in &message.content {
        if let Block::ToolResult {
            tool_use_id,
            content,
            is_error,
        } = block
        {
            let content = if *is_error {
                format!("Error: {content}")
            } else {
                content.clone()
            };
            out.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}));
        }
    }
    let has_text = message
        .content
        .iter()
        .any(|b| matches!(b, Block::Text { .. }));
    if has_text {
        out.push(json!({"role": "user", "content": message.text()}));
    }
}

fn message_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
            texts.join("")
        }
        _ => String::new(),
    }
}

fn tool_use(index: usize, call: &Value) -> Result<Block, ModelError> {
    // Some servers leak their native shape: `name`/`arguments` without a `function` wrapper.
    let function = call
        .get("function")
        .filter(|f| f.is_object())
        .unwrap_or(call);
    let name = function["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ModelError::Protocol(format!("tool_calls[{index}] has no function name")))?
        .to_string();
    let input = match &function["arguments"] {
        Value::String(raw) if raw.trim().is_empty() => json!({}),
        Value::String(raw) => {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()))
        }
        Value::Null => json!({}),
        other => other.clone(),
    };
    let id = match call["id"].as_str() {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("call_{index}"),
    };
    Ok(Block::ToolUse { id, name, input })
}

fn normalise_usage(u: WireUsage) -> TokenUsage {
    let details = u.prompt_tokens_details.unwrap_or_default();
    let cache_read = details.cached_tokens.unwrap_or(0);
    let cache_write = details.cache_write_tokens.unwrap_or(0);
    let prompt = u.prompt_tokens.unwrap_or(0);
    TokenUsage {
        input: prompt
            .saturating_sub(cache_read)
            .saturating_sub(cache_write),
        output: u.completion_tokens.unwrap_or(0),
        cache_write,
        cache_read,
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    /// Set when the model declined (`ChatCompletionMessage.refusal`).
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<WireDetails>,
}

#[derive(Default, Deserialize)]
struct WireDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tb_core::model::ToolSpec;

    fn parse(v: Value) -> ModelResponse {
        parse_response(v.to_string().as_bytes(), "asked").unwrap()
    }

    fn reply(message: Value, finish: Value, usage: Value) -> Value {
        json!({"id": "c", "object": "chat.completion", "model": "qwen3-coder",
               "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage})
    }

    #[test]
    fn cached_tokens_are_not_double_counted() {
        let r = parse(reply(
            json!({"role": "assistant", "content": "ok"}),
            json!("stop"),
            json!({"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
                   "prompt_tokens_details": {"cached_tokens": 800}}),
        ));
        assert_eq!(
            r.usage,
            TokenUsage {
                input: 200,
                output: 50,
                cache_write: 0,
                cache_read: 800
            }
        );
        assert_eq!(r.usage.prompt_total(), 1000);
    }

    #[test]
    fn cache_writes_are_subtracted_from_input_too_and_nothing_goes_negative() {
        let r = parse(reply(
            json!({"role": "assistant", "content": "ok"}),
            json!("stop"),
            json!({"prompt_tokens": 1000, "completion_tokens": 1,
                   "prompt_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 600}}),
        ));
        assert_eq!(
            r.usage,
            TokenUsage {
                input: 100,
                output: 1,
                cache_write: 600,
                cache_read: 300
            }
        );
        let odd = parse(reply(
            json!({"content": "ok"}),
            json!("stop"),
            json!({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}}),
        ));
        assert_eq!(odd.usage.input, 0);
    }

    #[test]
    fn usage_without_details_is_all_uncached_input() {
        let r = parse(reply(
            json!({"content": "ok"}),
            json!("stop"),
            json!({"prompt_tokens": 42, "completion_tokens": 3}),
        ));
        assert_eq!(
            r.usage,
            TokenUsage {
                input: 42,
                output: 3,
                cache_write: 0,
                cache_read: 0
            }
        );
        assert_eq!(r.model, "qwen3-coder");
    }

    #[test]
    fn tool_call_arguments_may_be_a_string_an_object_or_broken_json() {
        let r = parse(reply(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}},
                {"function": {"name": "write_file", "arguments": {"path": "b"}}},
                {"id": "", "type": "function", "function": {"name": "run", "arguments": "{\"cmd\": \"ls"}},
                {"type": "function", "function": {"name": "list", "arguments": ""}}
            ]}),
            json!("stop"),
            json!(null),
        ));
        assert_eq!(
            r.content,
            vec![
                Block::ToolUse {
                    id: "call_a".into(),
                    name: "read_file".into(),
                    input: json!({"path": "a"})
                },
                Block::ToolUse {
                    id: "call_1".into(),
                    name: "write_file".into(),
                    input: json!({"path": "b"})
                },
                Block::ToolUse {
                    id: "call_2".into(),
                    name: "run".into(),
                    input: Value::String("{\"cmd\": \"ls".into())
                },
                Block::ToolUse {
                    id: "call_3".into(),
                    name: "list".into(),
                    input: json!({})
                },
            ]
        );
        assert_eq!(
            r.stop_reason,
            StopReason::ToolUse,
            "tool calls win over finish_reason `stop`"
        );
        assert_eq!(r.usage, TokenUsage::default());
    }

    #[test]
    fn content_may_be_an_array_of_text_parts_and_finish_reasons_map() {
        let r = parse(reply(
            json!({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            json!("length"),
            json!(null),
        ));
        assert_eq!(r.content, vec![Block::Text { text: "ab".into() }]);
        assert_eq!(r.stop_reason, StopReason::MaxTokens);
    }

    #[test]
    fn a_response_without_choices_is_a_protocol_error() {
        assert!(matches!(
            parse_response(br#"{"choices": []}"#, "m"),
            Err(ModelError::Protocol(_))
        ));
        assert!(matches!(
            parse_response(b"not json", "m"),
            Err(ModelError::Protocol(_))
        ));
    }

    #[test]
    fn tool_results_become_role_tool_messages_before_the_users_text() {
        let messages = vec![
            Message::user_text("build it"),
            Message::assistant(vec![
                Block::ToolUse {
                    id: "c1".into(),
                    name: "read_file".into(),
                    input: json!({"path": "a"}),
                },
                Block::ToolUse {
                    id: "c2".into(),
                    name: "run".into(),
                    input: json!({}),
                },
            ]),
            Message {
                role: Role::User,
                content: vec![
                    Block::Text {
                        text: "also this".into(),
                    },
                    Block::ToolResult {
                        tool_use_id: "c1".into(),
                        content: "A".into(),
                        is_error: false,
                    },
                    Block::ToolResult {
                        tool_use_id: "c2".into(),
                        content: "boom".into(),
                        is_error: true,
                    },
                ],
            },
        ];
        let tools = [ToolSpec {
            name: "run".into(),
            description: "d".into(),
            input_schema: json!({"type": "object"}),
            anthropic_type: None,
        }];
        let req = ModelRequest {
            system: "sys",
            messages: &messages,
            tools: &tools,
            max_tokens: 99,
            prompt_caching: true,
        };
        let body = request_body("qwen", &req, TokenLimitField::MaxCompletionTokens);
        assert_eq!(
            body["messages"],
            json!([
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "build it"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "run", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "A"},
                {"role": "tool", "tool_call_id": "c2", "content": "Error: boom"},
                {"role": "user", "content": "also this"}
            ])
        );
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {"name": "run", "description": "d", "parameters": {"type": "object"}}}])
        );
        assert_eq!(body["max_completion_tokens"], 99);
        assert!(body.get("max_tokens").is_none());
        let legacy = request_body("qwen", &req, TokenLimitField::MaxTokens);
        assert_eq!(legacy["max_tokens"], 99);
        assert!(legacy.get("max_completion_tokens").is_none());
    }

    #[test]
    fn a_refusal_is_the_stop_reason_with_its_text() {
        let r = parse(reply(
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
            json!("stop"),
            json!(null),
        ));
        assert_eq!(r.stop_reason, StopReason::Refusal);
        assert_eq!(r.refusal.as_deref(), Some("I can't help with that."));
        assert!(r.content.is_empty());
        let r = parse(reply(
            json!({"content": "  \n", "refusal": null}),
            json!("stop"),
            json!(null),
        ));
        assert_eq!(
            (r.stop_reason, r.content, r.refusal),
            (StopReason::EndTurn, vec![], None)
        );
    }

    #[test]
    fn the_api_key_never_appears_in_debug_output() {
        let config =
            OpenAiConfig::new("http://localhost:11434/v1", "qwen").with_api_key("sk-or-secret");
        let client = OpenAiClient::new(config.clone()).unwrap();
        for text in [format!("{config:?}"), format!("{client:?}")] {
            assert!(!text.contains("sk-or-secret"), "{text}");
        }
    }
}
