//! [`AnthropicClient`]: the [`Model`] port over Anthropic's Messages API.
//!
//! `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version: 2023-06-01`.
//! Our [`Block`] enum already serialises to Anthropic's block shapes, so the request body
//! is mostly a direct serialisation; see [`request_body`] for what is left out and where
//! prompt-cache breakpoints go. Retries follow [`RetryPolicy`].

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tb_core::model::{Model, ModelError, ModelRequest, ModelResponse, StopReason};
use tb_core::{Block, TokenUsage};

use crate::http::{self, ConfigError, Endpoint};
use crate::retry::RetryPolicy;

/// The production endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The API version header value this client speaks.
pub const API_VERSION: &str = "2023-06-01";

/// How to reach Anthropic. `Debug` never shows the API key.
#[derive(Clone)]
pub struct AnthropicConfig {
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub context_window: u64,
    pub retry: RetryPolicy,
    /// Timeout of one HTTP attempt.
    pub timeout: Duration,
}

impl AnthropicConfig {
    /// The production endpoint, a 200k context window and default retries.
    pub fn new(api_key: impl Into<String>, model: impl Into<String>) -> Self {
        AnthropicConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_key: api_key.into(),
            model: model.into(),
            context_window: 200_000,
            retry: RetryPolicy::default(),
            timeout: http::DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &tb_core::secret::redacted(&self.api_key))
            .field("model", &self.model)
            .field("context_window", &self.context_window)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Messages API client; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct AnthropicClient {
    config: AnthropicConfig,
    endpoint: Endpoint,
}

impl AnthropicClient {
    pub fn new(config: AnthropicConfig) -> Result<Self, ConfigError> {
        let url = http::endpoint(&config.base_url, "/v1/messages")?;
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", http::secret_header(&config.api_key)?);
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        let endpoint = Endpoint::new(url, headers, config.timeout, config.retry, "anthropic")?;
        Ok(AnthropicClient { config, endpoint })
    }

    pub fn config(&self) -> &AnthropicConfig {
        &self.config
    }
}

#[async_trait]
impl Model for AnthropicClient {
    fn id(&self) -> &str {
        &self.config.model
    }

    fn context_window(&self) -> u64 {
        self.config.context_window
    }

    async fn complete(&self, request: ModelRequest<'_>) -> Result<ModelResponse, ModelError> {
        let body = request_body(&self.config.model, &request);
        let bytes = self.endpoint.post(&body).await?;
        parse_response(&bytes, &self.config.model)
    }
}

/// The Messages API body for `req`.
///
/// The conversation goes out as the API accepts it back: text blocks holding nothing but
/// whitespace are left out (the API refuses them: "text content blocks must be non-empty"),
/// and so is a message left with no content; thinking blocks go out exactly as they came,
/// signatures included. The conversation is sent as the agent built it otherwise: it ends
/// on a user turn, except to continue a turn the model paused (`pause_turn`).
///
/// With `req.prompt_caching`, three `cache_control: {"type":"ephemeral"}` breakpoints are
/// set (the API allows four): on the last tool definition, on the system prompt (sent as
/// a one-block array), and on the last content block of the last message that is not a
/// thinking block. Without it the system prompt is a plain string and no block carries
/// `cache_control`. An empty system prompt and an empty tool list are left out. A tool with
/// an [`ToolSpec::anthropic_type`](tb_core::model::ToolSpec) goes out as that type.
pub fn request_body(model: &str, req: &ModelRequest<'_>) -> Value {
    let cache = || json!({"type": "ephemeral"});
    let messages: Vec<Value> = req
        .messages
        .iter()
        .filter_map(|m| {
            let content: Vec<&Block> = m.content.iter().filter(|b| !b.is_blank_text()).collect();
            (!content.is_empty()).then(|| json!({"role": m.role, "content": content}))
        })
        .collect();
    let mut body = json!({
        "model": model,
        "max_tokens": req.max_tokens,
        "messages": messages,
    });
    if !req.system.is_empty() {
        body["system"] = if req.prompt_caching {
            json!([{"type": "text", "text": req.system, "cache_control": cache()}])
        } else {
            json!(req.system)
        };
    }
    if !req.tools.is_empty() {
        let mut tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| match &t.anthropic_type {
                // An Anthropic-defined tool is declared by its type and name only; the API
                // refuses a schema on it (`ToolTextEditor20250728Param` in
                // `anthropics/anthropic-sdk-python`).
                Some(kind) => json!({"type": kind, "name": t.name}),
                None => json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}),
            })
            .collect();
        if req.prompt_caching
            && let Some(last) = tools.last_mut()
        {
            last["cache_control"] = cache();
        }
        body["tools"] = Value::Array(tools);
    }
    // Thinking blocks cannot carry `cache_control`.
    if req.prompt_caching
        && let Some(block) = body["messages"]
            .as_array_mut()
            .and_then(|m| m.last_mut())
            .and_then(|m| m["content"].as_array_mut())
            .and_then(|c| {
                c.iter_mut()
                    .rev()
                    .find(|b| !matches!(b["type"].as_str(), Some("thinking" | "redacted_thinking")))
            })
    {
        block["cache_control"] = cache();
    }
    body
}

/// Reads a Messages API response body.
///
/// `text`, `tool_use`, `thinking` and `redacted_thinking` blocks are kept (thinking ones
/// verbatim, to be sent back); a text block of nothing but whitespace is dropped, as the API
/// would refuse it back; other block types (server tools, which we do not declare) are
/// skipped. A refusal's `stop_details` becomes [`ModelResponse::refusal`]. Missing usage
/// counters read as zero.
pub fn parse_response(body: &[u8], requested_model: &str) -> Result<ModelResponse, ModelError> {
    let wire: WireResponse = http::read_json(body)?;
    let mut content = Vec::with_capacity(wire.content.len());
    for (i, block) in wire.content.into_iter().enumerate() {
        let field = |name: &str| {
            block[name].as_str().map(str::to_string).ok_or_else(|| {
                ModelError::Protocol(format!(
                    "content[{i}]: {} block without a string `{name}`",
                    block["type"].as_str().unwrap_or("?")
                ))
            })
        };
        match block["type"].as_str() {
            Some("text") => {
                let text = Block::Text {
                    text: block["text"].as_str().unwrap_or_default().to_string(),
                };
                if !text.is_blank_text() {
                    content.push(text);
                }
            }
            Some("thinking") => content.push(Block::Thinking {
                thinking: field("thinking")?,
                signature: field("signature")?,
            }),
            Some("redacted_thinking") => content.push(Block::RedactedThinking {
                data: field("data")?,
            }),
            Some("tool_use") => {
                let (id, name) = (field("id")?, field("name")?);
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                content.push(Block::ToolUse { id, name, input });
            }
            other => tracing::debug!(
                block_type = other.unwrap_or("?"),
                "skipping a content block"
            ),
        }
    }
    let stop_reason = match wire.stop_reason.as_deref() {
        Some(s) => StopReason::parse(s),
        None if content.iter().any(|b| matches!(b, Block::ToolUse { .. })) => StopReason::ToolUse,
        None => StopReason::EndTurn,
    };
    let u = wire.usage.unwrap_or_default();
    let usage = TokenUsage {
        input: u.input_tokens.unwrap_or(0),
        output: u.output_tokens.unwrap_or(0),
        cache_write: u.cache_creation_input_tokens.unwrap_or(0),
        cache_read: u.cache_read_input_tokens.unwrap_or(0),
    };
    let model = wire
        .model
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| requested_model.to_string());
    let refusal = match (&stop_reason, wire.stop_details) {
        (StopReason::Refusal, Some(details)) => {
            let explanation = details["explanation"].as_str().filter(|e| !e.is_empty());
            let category = details["category"].as_str();
            match (explanation, category) {
                (Some(e), _) => Some(e.to_string()),
                (None, Some(c)) => Some(format!("declined (category `{c}`)")),
                (None, None) => None,
            }
        }
        _ => None,
    };
    Ok(ModelResponse {
        model,
        content,
        stop_reason,
        usage,
        refusal,
    })
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    /// `RefusalStopDetails` (`type`, `category`, `explanation`) with a `refusal`.
    #[serde(default)]
    stop_details: Option<Value>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tb_core::Message;
    use tb_core::model::ToolSpec;

    fn tools() -> Vec<ToolSpec> {
        ["read_file", "write_file"]
            .into_iter()
            .map(|n| ToolSpec {
                name: n.into(),
                description: format!("{n} tool"),
                input_schema: json!({"type": "object"}),
                anthropic_type: None,
            })
            .collect()
    }

    fn conversation() -> Vec<Message> {
        vec![
            Message::user_text("build a todo API"),
            Message::assistant(vec![
                Block::Text {
                    text: "Reading.".into(),
                },
                Block::ToolUse {
                    id: "toolu_1".into(),
                    name: "read_file".into(),
                    input: json!({"path": "a"}),
                },
            ]),
            Message {
                role: tb_core::Role::User,
                content: vec![
                    Block::ToolResult {
                        tool_use_id: "toolu_1".into(),
                        content: "x".into(),
                        is_error: false,
                    },
                    Block::Text {
                        text: "go on".into(),
                    },
                ],
            },
        ]
    }

    fn request<'a>(
        messages: &'a [Message],
        tools: &'a [ToolSpec],
        caching: bool,
    ) -> ModelRequest<'a> {
        ModelRequest {
            system: "You build backends.",
            messages,
            tools,
            max_tokens: 1024,
            prompt_caching: caching,
        }
    }

    /// Every JSON path (as a string) that holds a `cache_control` key.
    fn cache_control_paths(v: &Value, path: String, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if k == "cache_control" {
                        out.push(path.clone());
                    }
                    cache_control_paths(child, format!("{path}.{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    cache_control_paths(child, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn request_body_puts_cache_control_on_the_last_tool_the_system_prompt_and_the_last_block() {
        let (messages, tools) = (conversation(), tools());
        let body = request_body("claude-sonnet-4-5", &request(&messages, &tools, true));
        let mut paths = Vec::new();
        cache_control_paths(&body, String::new(), &mut paths);
        paths.sort();
        assert_eq!(
            paths,
            vec![".messages[2].content[1]", ".system[0]", ".tools[1]"]
        );
        assert_eq!(
            body["system"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
        assert_eq!(body["system"][0]["text"], "You build backends.");
    }

    #[test]
    fn request_body_without_caching_has_no_breakpoints_and_a_plain_system_string() {
        let (messages, tools) = (conversation(), tools());
        let body = request_body("m", &request(&messages, &tools, false));
        let mut paths = Vec::new();
        cache_control_paths(&body, String::new(), &mut paths);
        assert!(paths.is_empty(), "{paths:?}");
        assert_eq!(body["system"], "You build backends.");
        assert_eq!(body["max_tokens"], 1024);
        assert_eq!(body["model"], "m");
    }

    #[test]
    fn request_body_uses_anthropic_block_shapes() {
        let (messages, tools) = (conversation(), tools());
        let body = request_body("m", &request(&messages, &tools, false));
        assert_eq!(
            body["messages"][0],
            json!({"role": "user", "content": [{"type": "text", "text": "build a todo API"}]})
        );
        assert_eq!(
            body["messages"][1]["content"][1],
            json!({"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a"}})
        );
        assert_eq!(
            body["messages"][2]["content"][0],
            json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"})
        );
        assert_eq!(
            body["tools"][0],
            json!({"name": "read_file", "description": "read_file tool", "input_schema": {"type": "object"}})
        );
    }

    #[test]
    fn an_empty_system_prompt_and_tool_list_are_left_out() {
        let messages = vec![Message::user_text("hi")];
        let req = ModelRequest {
            system: "",
            messages: &messages,
            tools: &[],
            max_tokens: 10,
            prompt_caching: true,
        };
        let body = request_body("m", &req);
        assert!(body.get("system").is_none() && body.get("tools").is_none());
        assert_eq!(
            body["messages"][0]["content"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
    }

    #[test]
    fn responses_keep_thinking_skip_unknown_and_blank_blocks_and_map_every_usage_counter() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                {"type": "text", "text": " \n "},
                {"type": "text", "text": "Writing it."},
                {"type": "tool_use", "id": "toolu_9", "name": "write_file", "input": {"path": "a.txt"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 21, "output_tokens": 7, "cache_creation_input_tokens": 188086,
                      "cache_read_input_tokens": 5, "cache_creation": {"ephemeral_5m_input_tokens": 188086}}
        });
        let r = parse_response(body.to_string().as_bytes(), "asked").unwrap();
        assert_eq!(r.model, "claude-sonnet-4-5-20250929");
        assert_eq!(r.stop_reason, StopReason::ToolUse);
        assert_eq!(
            r.content,
            vec![
                Block::Thinking {
                    thinking: "hmm".into(),
                    signature: "s".into()
                },
                Block::RedactedThinking {
                    data: "opaque".into()
                },
                Block::Text {
                    text: "Writing it.".into()
                },
                Block::ToolUse {
                    id: "toolu_9".into(),
                    name: "write_file".into(),
                    input: json!({"path": "a.txt"})
                },
            ]
        );
        assert_eq!(
            r.usage,
            TokenUsage {
                input: 21,
                output: 7,
                cache_write: 188086,
                cache_read: 5
            }
        );
    }

    #[test]
    fn blank_text_blocks_and_messages_left_empty_are_not_sent() {
        let messages = vec![
            Message::user_text("build"),
            Message::assistant(vec![
                Block::Thinking {
                    thinking: "plan".into(),
                    signature: "sig".into(),
                },
                Block::Text { text: "\n".into() },
                Block::ToolUse {
                    id: "toolu_1".into(),
                    name: "read_file".into(),
                    input: json!({}),
                },
            ]),
            Message {
                role: tb_core::Role::User,
                content: vec![Block::ToolResult {
                    tool_use_id: "toolu_1".into(),
                    content: "x".into(),
                    is_error: false,
                }],
            },
            Message::assistant(vec![Block::Text {
                text: String::new(),
            }]),
            Message::user_text("go on"),
        ];
        let body = request_body("m", &request(&messages, &[], false));
        let sent = body["messages"].as_array().unwrap();
        assert_eq!(sent.len(), 4, "{sent:?}");
        assert_eq!(
            sent[1]["content"],
            json!([{"type": "thinking", "thinking": "plan", "signature": "sig"},
                   {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {}}])
        );
        assert_eq!(sent[3]["role"], "user");
    }

    #[test]
    fn the_cache_breakpoint_skips_thinking_blocks() {
        let messages = vec![
            Message::user_text("build"),
            Message::assistant(vec![
                Block::Text {
                    text: "Looking.".into(),
                },
                Block::RedactedThinking {
                    data: "opaque".into(),
                },
            ]),
        ];
        let body = request_body("m", &request(&messages, &[], true));
        assert_eq!(
            body["messages"][1]["content"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
        assert!(
            body["messages"][1]["content"][1]
                .get("cache_control")
                .is_none()
        );
    }

    #[test]
    fn a_refusal_reads_its_stop_details() {
        let body = br#"{"content":[],"stop_reason":"refusal","stop_details":{"type":"refusal","category":"cyber","explanation":null}}"#;
        let r = parse_response(body, "m").unwrap();
        assert_eq!(r.stop_reason, StopReason::Refusal);
        assert_eq!(r.refusal.as_deref(), Some("declined (category `cyber`)"));
        let body = br#"{"content":[],"stop_reason":"refusal","stop_details":{"type":"refusal","explanation":"Not this."}}"#;
        assert_eq!(
            parse_response(body, "m").unwrap().refusal.as_deref(),
            Some("Not this.")
        );
        let body = br#"{"content":[],"stop_reason":"end_turn","stop_details":null}"#;
        assert_eq!(parse_response(body, "m").unwrap().refusal, None);
    }

    #[test]
    fn missing_cache_counters_read_as_zero() {
        let body = br#"{"content":[],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1,"cache_creation_input_tokens":null}}"#;
        let r = parse_response(body, "asked").unwrap();
        assert_eq!(
            r.usage,
            TokenUsage {
                input: 3,
                output: 1,
                cache_write: 0,
                cache_read: 0
            }
        );
        assert_eq!(r.model, "asked");
        assert_eq!(r.stop_reason, StopReason::EndTurn);
    }

    #[test]
    fn an_unreadable_body_is_a_protocol_error() {
        assert!(matches!(
            parse_response(b"<html>oops</html>", "m"),
            Err(ModelError::Protocol(_))
        ));
        assert!(matches!(
            parse_response(br#"{"content": 3}"#, "m"),
            Err(ModelError::Protocol(_))
        ));
        let no_id =
            br#"{"content":[{"type":"tool_use","name":"x","input":{}}],"stop_reason":"tool_use"}"#;
        assert!(matches!(
            parse_response(no_id, "m"),
            Err(ModelError::Protocol(_))
        ));
    }

    #[test]
    fn the_api_key_never_appears_in_debug_output() {
        let config = AnthropicConfig::new("sk-ant-secret-123", "claude-haiku-4-5");
        let client = AnthropicClient::new(config.clone()).unwrap();
        for text in [
            format!("{config:?}"),
            format!("{client:?}"),
            format!("{client:#?}"),
        ] {
            assert!(!text.contains("sk-ant-secret-123"), "{text}");
        }
        assert!(format!("{config:?}").contains("<redacted>"));
    }
}
