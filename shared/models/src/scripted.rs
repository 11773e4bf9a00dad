//! [`ScriptedModel`]: a [`Model`] that replays a script of assistant turns, for tests,
//! demos and local runs without a provider.
//!
//! # Script format
//!
//! ```json
//! { "model": "scripted",
//!   "turns": [ { "text": "optional assistant text",
//!                "tool_calls": [ { "name": "write_file", "input": { "path": "a.txt", "content": "hi" } } ],
//!                "stop_reason": "tool_use" } ],
//!   "repeat_last": false }
//! ```
//!
//! - `model` (default `"scripted"`): the model id reported in responses (and priced).
//! - `context_window` (optional, default 200000): what [`Model::context_window`] returns.
//! - `turns`: the assistant turns, in order. In a turn, `text` and `tool_calls` are both
//!   optional; `input` defaults to `{}`, and a string `input` stands for arguments that
//!   are not valid JSON (the OpenAI endpoint of the scripted server sends it verbatim).
//!   `stop_reason` defaults to `tool_use` when there are tool calls, else `end_turn`.
//!   `thinking` (a text) and `redacted_thinking` (true) put signed thinking blocks first.
//! - `repeat_last` (default false): past the end, replay the last turn; otherwise answer
//!   `end_turn` with the text "The script has no more turns."
//!
//! Unknown fields are errors, to catch typos.
//!
//! # Behaviour
//!
//! The turn played is the number of assistant messages in the request, so a call is
//! stateless and deterministic: a retried or resumed call gets the same answer. Tool-use
//! ids are `toolu_<turn:04>_<k>` (turn and call index, both from 0). Usage comes from
//! [`PromptCacheSim`] over the Anthropic body of the request (see
//! [`crate::cache_sim`]); `output` is the approximate tokens of the response content.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_with::skip_serializing_none;
use tb_core::model::{Model, ModelError, ModelRequest, ModelResponse, StopReason};
use tb_core::{Block, Role};

use crate::anthropic;
use crate::cache_sim::{PromptCacheSim, approx_tokens};

/// The text of the turn played past the end of a script without `repeat_last`.
pub const NO_MORE_TURNS: &str = "The script has no more turns.";

/// A script of assistant turns (the JSON file format, see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    pub turns: Vec<ScriptTurn>,
    #[serde(default)]
    pub repeat_last: bool,
}

/// One assistant turn.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptTurn {
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ScriptToolCall>,
    /// Anthropic or OpenAI spelling (`end_turn`, `tool_use`, `max_tokens`, `stop`, …).
    pub stop_reason: Option<String>,
    /// A `thinking` block before the text, signed by the scripted model.
    pub thinking: Option<String>,
    /// A `redacted_thinking` block (opaque data) before the text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted_thinking: bool,
}

/// One tool call of a turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptToolCall {
    pub name: String,
    #[serde(default = "empty_object")]
    pub input: Value,
}

/// A script that cannot be loaded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ScriptError {
    #[error("cannot read script {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("script {origin} is not valid: {reason}")]
    Invalid { origin: String, reason: String },
}

/// The scripted model. Cloning shares the script and the prompt cache.
#[derive(Clone)]
pub struct ScriptedModel {
    script: Arc<Script>,
    cache: Arc<PromptCacheSim>,
}

impl Script {
    /// A script with the default model name.
    pub fn new(turns: Vec<ScriptTurn>) -> Self {
        Script {
            model: default_model(),
            context_window: None,
            turns,
            repeat_last: false,
        }
    }

    /// Parses and checks a script; errors say what and where.
    pub fn from_json(json: &str) -> Result<Self, ScriptError> {
        Script::parse(json, "(inline)")
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ScriptError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| ScriptError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Script::parse(&json, &path.display().to_string())
    }

    fn parse(json: &str, origin: &str) -> Result<Self, ScriptError> {
        let invalid = |reason: String| ScriptError::Invalid {
            origin: origin.to_string(),
            reason,
        };
        let script: Script = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        script.check().map_err(invalid)?;
        Ok(script)
    }

    fn check(&self) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err("`model` is empty".into());
        }
        for (t, turn) in self.turns.iter().enumerate() {
            if turn
                .stop_reason
                .as_deref()
                .is_some_and(|s| s.trim().is_empty())
            {
                return Err(format!("turns[{t}].stop_reason is empty"));
            }
            for (k, call) in turn.tool_calls.iter().enumerate() {
                if call.name.trim().is_empty() {
                    return Err(format!("turns[{t}].tool_calls[{k}].name is empty"));
                }
                if !(call.input.is_object() || call.input.is_string()) {
                    return Err(format!(
                        "turns[{t}].tool_calls[{k}].input must be an object (or a string)"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ScriptTurn {
    /// A turn that only says `text`.
    pub fn text(text: impl Into<String>) -> Self {
        ScriptTurn {
            text: Some(text.into()),
            ..ScriptTurn::default()
        }
    }

    /// A turn with one tool call.
    pub fn tool_call(name: impl Into<String>, input: Value) -> Self {
        ScriptTurn::default().and_tool_call(name, input)
    }

    /// Sets this turn's text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Adds a tool call to this turn.
    pub fn and_tool_call(mut self, name: impl Into<String>, input: Value) -> Self {
        self.tool_calls.push(ScriptToolCall {
            name: name.into(),
            input,
        });
        self
    }
}

impl ScriptedModel {
    /// With a prompt cache of its own.
    pub fn new(script: Script) -> Self {
        ScriptedModel {
            script: Arc::new(script),
            cache: Arc::new(PromptCacheSim::new()),
        }
    }

    pub fn from_json(json: &str) -> Result<Self, ScriptError> {
        Script::from_json(json).map(ScriptedModel::new)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ScriptError> {
        Script::from_file(path).map(ScriptedModel::new)
    }

    /// Shares `cache` (e.g. with another model or a `ScriptedServer` (feature `server`)).
    pub fn with_cache(mut self, cache: Arc<PromptCacheSim>) -> Self {
        self.cache = cache;
        self
    }

    pub fn cache(&self) -> &Arc<PromptCacheSim> {
        &self.cache
    }

    pub fn script(&self) -> &Script {
        &self.script
    }

    /// The content and stop reason of turn `index` (0-based), past-the-end rules applied.
    pub fn turn(&self, index: usize) -> (Vec<Block>, StopReason) {
        let turns = &self.script.turns;
        let turn = match turns.get(index) {
            Some(turn) => turn,
            None if self.script.repeat_last && !turns.is_empty() => &turns[turns.len() - 1],
            None => {
                return (
                    vec![Block::Text {
                        text: NO_MORE_TURNS.to_string(),
                    }],
                    StopReason::EndTurn,
                );
            }
        };
        let mut content = Vec::with_capacity(turn.tool_calls.len() + 3);
        if let Some(thinking) = &turn.thinking {
            content.push(Block::Thinking {
                thinking: thinking.clone(),
                signature: thinking_signature(thinking),
            });
        }
        if turn.redacted_thinking {
            content.push(Block::RedactedThinking {
                data: redacted_thinking_data(index),
            });
        }
        if let Some(text) = turn.text.as_deref().filter(|t| !t.is_empty()) {
            content.push(Block::Text {
                text: text.to_string(),
            });
        }
        for (k, call) in turn.tool_calls.iter().enumerate() {
            let id = format!("toolu_{index:04}_{k}");
            content.push(Block::ToolUse {
                id,
                name: call.name.clone(),
                input: call.input.clone(),
            });
        }
        let stop_reason = match (&turn.stop_reason, turn.tool_calls.is_empty()) {
            (Some(s), _) => StopReason::parse(s),
            (None, false) => StopReason::ToolUse,
            (None, true) => StopReason::EndTurn,
        };
        (content, stop_reason)
    }

    /// The full answer to an Anthropic Messages body whose conversation has `turn`
    /// assistant messages; the prompt cache is updated. Shared with the scripted server.
    pub(crate) fn answer(&self, turn: usize, anthropic_body: &Value) -> ModelResponse {
        let (content, stop_reason) = self.turn(turn);
        let mut usage = self.cache.anthropic(anthropic_body);
        usage.output = output_tokens(&content);
        let refusal = (stop_reason == StopReason::Refusal).then(|| REFUSAL_EXPLANATION.to_string());
        ModelResponse {
            model: self.script.model.clone(),
            content,
            stop_reason,
            usage,
            refusal,
        }
    }
}

impl fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("model", &self.script.model)
            .field("turns", &self.script.turns.len())
            .field("repeat_last", &self.script.repeat_last)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Model for ScriptedModel {
    fn id(&self) -> &str {
        &self.script.model
    }

    fn context_window(&self) -> u64 {
        self.script.context_window.unwrap_or(200_000)
    }

    async fn complete(&self, request: ModelRequest<'_>) -> Result<ModelResponse, ModelError> {
        let body = anthropic::request_body(&self.script.model, &request);
        Ok(self.answer(assistant_turns(request.messages), &body))
    }
}

/// Why the scripted model declines, in a turn whose `stop_reason` is `refusal`.
pub const REFUSAL_EXPLANATION: &str = "The scripted model declined this request.";

/// The signature of a scripted `thinking` block: a digest of its text, so that a block sent
/// back modified is recognised (as the Messages API recognises one by its signature).
pub fn thinking_signature(thinking: &str) -> String {
    digest(&format!("scripted thinking\n{thinking}"))
}

/// The opaque data of the scripted `redacted_thinking` block of turn `turn`.
pub fn redacted_thinking_data(turn: usize) -> String {
    digest(&format!("scripted redacted thinking\n{turn}"))
}

fn digest(text: &str) -> String {
    tb_core::encoding::sha256_hex(text.as_bytes())
}

/// The approximate output tokens of a response's content.
pub(crate) fn output_tokens(content: &[Block]) -> u64 {
    serde_json::to_value(content).map_or(0, |v| approx_tokens(&v))
}

/// The number of assistant messages: the index of the turn to play.
pub(crate) fn assistant_turns(messages: &[tb_core::Message]) -> usize {
    messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count()
}

fn default_model() -> String {
    "scripted".to_string()
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tb_core::Message;
    use tb_core::model::ToolSpec;

    const SCRIPT: &str = r#"{
        "model": "scripted-demo",
        "turns": [
            {"text": "Writing the file.", "tool_calls": [{"name": "write_file", "input": {"path": "a.txt", "content": "hi"}},
                                                         {"name": "run"}]},
            {"text": "Done."}
        ]
    }"#;

    fn request(messages: &[Message], caching: bool) -> ModelRequest<'_> {
        ModelRequest {
            system: "You build backends.",
            messages,
            tools: &[],
            max_tokens: 100,
            prompt_caching: caching,
        }
    }

    fn after_first_turn(first: &ModelResponse) -> Vec<Message> {
        let results = first
            .content
            .iter()
            .filter_map(|b| match b {
                Block::ToolUse { id, .. } => Some(Block::ToolResult {
                    tool_use_id: id.clone(),
                    content: "ok".into(),
                    is_error: false,
                }),
                _ => None,
            })
            .collect();
        vec![
            Message::user_text("build"),
            Message::assistant(first.content.clone()),
            Message {
                role: Role::User,
                content: results,
            },
        ]
    }

    #[tokio::test]
    async fn the_turn_played_is_the_number_of_assistant_messages() {
        let model = ScriptedModel::from_json(SCRIPT).unwrap();
        let start = vec![Message::user_text("build")];
        let first = model.complete(request(&start, false)).await.unwrap();
        assert_eq!(first.model, "scripted-demo");
        assert_eq!(first.stop_reason, StopReason::ToolUse);
        assert_eq!(
            first.content,
            vec![
                Block::Text {
                    text: "Writing the file.".into()
                },
                Block::ToolUse {
                    id: "toolu_0000_0".into(),
                    name: "write_file".into(),
                    input: json!({"path": "a.txt", "content": "hi"})
                },
                Block::ToolUse {
                    id: "toolu_0000_1".into(),
                    name: "run".into(),
                    input: json!({})
                },
            ]
        );
        let again = model.complete(request(&start, false)).await.unwrap();
        assert_eq!(again, first, "a retried call gets the same answer");
        let second = model
            .complete(request(&after_first_turn(&first), false))
            .await
            .unwrap();
        assert_eq!(
            second.content,
            vec![Block::Text {
                text: "Done.".into()
            }]
        );
        assert_eq!(second.stop_reason, StopReason::EndTurn);
    }

    #[test]
    fn past_the_end_the_script_says_so_or_repeats_its_last_turn() {
        let model = ScriptedModel::from_json(SCRIPT).unwrap();
        assert_eq!(
            model.turn(2),
            (
                vec![Block::Text {
                    text: NO_MORE_TURNS.into()
                }],
                StopReason::EndTurn
            )
        );
        let mut script = Script::from_json(SCRIPT).unwrap();
        script.repeat_last = true;
        script.turns[1] = ScriptTurn::tool_call("run", json!({"cmd": "ls"}));
        let (content, stop) = ScriptedModel::new(script).turn(7);
        assert_eq!(
            content,
            vec![Block::ToolUse {
                id: "toolu_0007_0".into(),
                name: "run".into(),
                input: json!({"cmd": "ls"})
            }]
        );
        assert_eq!(stop, StopReason::ToolUse);
        assert_eq!(
            ScriptedModel::new(Script::new(vec![])).turn(0).0,
            vec![Block::Text {
                text: NO_MORE_TURNS.into()
            }]
        );
    }

    #[test]
    fn an_explicit_stop_reason_is_parsed_in_either_spelling() {
        let script = Script::from_json(
            r#"{"turns": [{"text": "cut", "stop_reason": "max_tokens"}, {"text": "x", "stop_reason": "length"}]}"#,
        )
        .unwrap();
        assert_eq!(script.model, "scripted");
        let model = ScriptedModel::new(script);
        assert_eq!(model.turn(0).1, StopReason::MaxTokens);
        assert_eq!(model.turn(1).1, StopReason::MaxTokens);
    }

    #[test]
    fn bad_scripts_are_refused_with_the_reason() {
        let err = |json: &str| Script::from_json(json).unwrap_err().to_string();
        assert!(err("{").contains("EOF"), "{}", err("{"));
        assert!(err(r#"{"turns": [{"txt": "typo"}]}"#).contains("unknown field `txt`"));
        assert!(
            err(r#"{"turns": [{"tool_calls": [{"name": " "}]}]}"#)
                .contains("turns[0].tool_calls[0].name is empty")
        );
        assert!(
            err(r#"{"turns": [{"tool_calls": [{"name": "x", "input": 3}]}]}"#)
                .contains("must be an object")
        );
        assert!(err(r#"{"model": "m"}"#).contains("missing field `turns`"));
        let missing = ScriptedModel::from_file("no/such/script.json").unwrap_err();
        assert!(matches!(missing, ScriptError::Read { .. }), "{missing}");
    }

    #[test]
    fn the_bundled_users_api_script_parses() {
        let script = Script::from_json(include_str!("../scripts/users-api.json")).unwrap();
        assert!(!script.turns.is_empty());
        assert_eq!(script.model, "scripted");
    }

    #[test]
    fn scripts_load_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.json");
        std::fs::write(&path, SCRIPT).unwrap();
        let model = ScriptedModel::from_file(&path).unwrap();
        assert_eq!(model.id(), "scripted-demo");
        assert_eq!(model.context_window(), 200_000);
    }

    #[tokio::test]
    async fn usage_simulates_the_prompt_cache_when_caching_is_on() {
        let model = ScriptedModel::from_json(SCRIPT).unwrap();
        let tools = [ToolSpec {
            name: "write_file".into(),
            description: "w".into(),
            input_schema: json!({"type": "object"}),
            anthropic_type: None,
        }];
        let start = vec![Message::user_text("build")];
        let first = model
            .complete(ModelRequest {
                tools: &tools,
                ..request(&start, true)
            })
            .await
            .unwrap();
        assert_eq!(first.usage.cache_read, 0);
        assert!(first.usage.cache_write > 0);
        assert_eq!(first.usage.output, output_tokens(&first.content));
        let next = after_first_turn(&first);
        let second = model
            .complete(ModelRequest {
                tools: &tools,
                ..request(&next, true)
            })
            .await
            .unwrap();
        assert_eq!(second.usage.cache_read, first.usage.cache_write);

        let uncached = ScriptedModel::from_json(SCRIPT).unwrap();
        for messages in [&start, &next] {
            let u = uncached
                .complete(request(messages, false))
                .await
                .unwrap()
                .usage;
            assert_eq!((u.cache_read, u.cache_write), (0, 0));
            assert!(u.input > 0);
        }
    }

    #[tokio::test]
    async fn models_sharing_a_cache_see_each_others_entries() {
        let cache = Arc::new(PromptCacheSim::new());
        let a = ScriptedModel::from_json(SCRIPT)
            .unwrap()
            .with_cache(cache.clone());
        let b = ScriptedModel::from_json(SCRIPT).unwrap().with_cache(cache);
        let start = vec![Message::user_text("build")];
        let written = a
            .complete(request(&start, true))
            .await
            .unwrap()
            .usage
            .cache_write;
        assert_eq!(
            b.complete(request(&start, true))
                .await
                .unwrap()
                .usage
                .cache_read,
            written
        );
    }
}
