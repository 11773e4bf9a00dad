//! A prompt-cache simulation and a token approximation, so that the scripted model and
//! server report cache reads and writes the way real providers do and cost code runs.
//!
//! Tokens are approximated as `ceil(bytes / 4)` of compact JSON ([`approx_tokens`]).
//!
//! **Anthropic bodies** ([`PromptCacheSim::anthropic`]): the prompt is split into
//! segments in prefix order: each tool definition, each system block (or the system
//! string), each content block of each message (or a message's string content). A
//! segment carrying `cache_control` is a breakpoint (a top-level `cache_control` makes the
//! last segment one). Each prefix is identified by a SHA-256 over the model id, the
//! segments (without their `cache_control`, which is not part of the cached content) and
//! the message roles. Like the API, each breakpoint looks back up to
//! [`LOOKBACK_SEGMENTS`] segments for the longest prefix already cached:
//! `cache_read` = tokens of that prefix, `cache_write` = tokens from there to the last
//! breakpoint, `input` = the rest of the body. Then every breakpoint prefix is stored.
//! A body without breakpoints is all `input`. There is no minimum cacheable length
//! and no expiry.
//!
//! **OpenAI bodies** ([`PromptCacheSim::openai`]): caching is automatic and free to
//! write. `cached_tokens` = tokens of the longest previously seen prefix that ends at a
//! message boundary (tools first, then messages); every boundary prefix is then stored.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tb_core::TokenUsage;

/// How many segments before a breakpoint are checked for an earlier cache entry.
pub const LOOKBACK_SEGMENTS: usize = 20;

/// `ceil(bytes of the compact JSON of value / 4)`.
pub fn approx_tokens(value: &Value) -> u64 {
    tokens_for_bytes(compact_len(value))
}

/// `ceil(bytes / 4)`.
pub fn tokens_for_bytes(bytes: usize) -> u64 {
    bytes.div_ceil(4) as u64
}

/// The set of cached prompt prefixes. Share one behind an `Arc` between models and
/// servers that should see each other's cache entries.
#[derive(Debug, Default)]
pub struct PromptCacheSim {
    seen: Mutex<HashSet<[u8; 32]>>,
}

/// The prompt side of an OpenAI-style usage report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenAiPromptUsage {
    /// All prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
}

impl PromptCacheSim {
    pub fn new() -> Self {
        PromptCacheSim::default()
    }

    /// Prompt usage (`output` left at 0) of one Messages API body; stores its breakpoints.
    pub fn anthropic(&self, body: &Value) -> TokenUsage {
        let total = approx_tokens(body);
        let segments = anthropic_segments(body);
        let breakpoints: Vec<usize> = (0..segments.len())
            .filter(|&i| segments[i].breakpoint)
            .collect();
        let Some(&last) = breakpoints.last() else {
            return TokenUsage {
                input: total,
                ..TokenUsage::default()
            };
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let hit = breakpoints
            .iter()
            .flat_map(|&b| (b.saturating_sub(LOOKBACK_SEGMENTS - 1)..=b).rev())
            .filter(|&i| seen.contains(&segments[i].prefix_hash))
            .max();
        let read = hit.map_or(0, |i| tokens_for_bytes(segments[i].prefix_bytes));
        let cached_span = tokens_for_bytes(segments[last].prefix_bytes);
        for &b in &breakpoints {
            seen.insert(segments[b].prefix_hash);
        }
        TokenUsage {
            input: total.saturating_sub(cached_span),
            output: 0,
            cache_write: cached_span - read,
            cache_read: read,
        }
    }

    /// Prompt usage of one chat-completions body; stores its message-boundary prefixes.
    pub fn openai(&self, body: &Value) -> OpenAiPromptUsage {
        let prompt_tokens = approx_tokens(body);
        let mut hasher = seeded("openai", body);
        let mut bytes = 0;
        if let Some(tools) = body.get("tools") {
            bytes += absorb(&mut hasher, tools);
        }
        let mut prefixes: Vec<([u8; 32], usize)> = Vec::new();
        for message in body["messages"].as_array().into_iter().flatten() {
            bytes += absorb(&mut hasher, message);
            prefixes.push((hasher.clone().finalize().into(), bytes));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let cached = prefixes
            .iter()
            .rev()
            .find(|(h, _)| seen.contains(h))
            .map_or(0, |&(_, b)| tokens_for_bytes(b));
        seen.extend(prefixes.iter().map(|(h, _)| *h));
        OpenAiPromptUsage {
            prompt_tokens,
            cached_tokens: cached.min(prompt_tokens),
        }
    }

    /// How many prefixes are stored.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every stored prefix (as if the cache expired).
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

struct Segment {
    breakpoint: bool,
    /// Bytes of all segments up to and including this one.
    prefix_bytes: usize,
    prefix_hash: [u8; 32],
}

fn anthropic_segments(body: &Value) -> Vec<Segment> {
    let mut hasher = seeded("anthropic", body);
    let mut bytes = 0;
    let mut out = Vec::new();
    let mut push = |hasher: &mut Sha256, value: &Value| {
        let breakpoint = value.get("cache_control").is_some();
        let mut stripped = value.clone();
        if let Some(map) = stripped.as_object_mut() {
            map.remove("cache_control");
        }
        bytes += absorb(hasher, &stripped);
        out.push(Segment {
            breakpoint,
            prefix_bytes: bytes,
            prefix_hash: hasher.clone().finalize().into(),
        });
    };
    for tool in body["tools"].as_array().into_iter().flatten() {
        push(&mut hasher, tool);
    }
    match &body["system"] {
        Value::Array(blocks) => blocks.iter().for_each(|b| push(&mut hasher, b)),
        Value::Null => {}
        system => push(&mut hasher, system),
    }
    for message in body["messages"].as_array().into_iter().flatten() {
        absorb(&mut hasher, &message["role"]);
        match &message["content"] {
            Value::Array(blocks) => blocks.iter().for_each(|b| push(&mut hasher, b)),
            content => push(&mut hasher, content),
        }
    }
    if body.get("cache_control").is_some()
        && let Some(last) = out.last_mut()
    {
        last.breakpoint = true;
    }
    out
}

fn seeded(provider: &str, body: &Value) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(provider.as_bytes());
    hasher.update([0]);
    hasher.update(body["model"].as_str().unwrap_or_default().as_bytes());
    hasher.update([0]);
    hasher
}

/// Feeds `value` (length-prefixed, compact JSON) to the hasher; returns its byte length.
fn absorb(hasher: &mut Sha256, value: &Value) -> usize {
    let json = serde_json::to_vec(value).unwrap_or_default();
    hasher.update((json.len() as u64).to_le_bytes());
    hasher.update(&json);
    json.len()
}

fn compact_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(messages: Value, cached: bool) -> Value {
        let cc = |mut v: Value| {
            if cached {
                v["cache_control"] = json!({"type": "ephemeral"});
            }
            v
        };
        let mut messages = messages;
        if let Some(last) = messages
            .as_array_mut()
            .and_then(|m| m.last_mut())
            .and_then(|m| m["content"].as_array_mut())
        {
            let block = last.pop().unwrap();
            last.push(cc(block));
        }
        json!({
            "model": "scripted", "max_tokens": 100,
            "tools": [cc(json!({"name": "t", "description": "a tool", "input_schema": {"type": "object"}}))],
            "system": [cc(json!({"type": "text", "text": "You are a backend builder. ".repeat(20)}))],
            "messages": messages,
        })
    }

    fn turn1() -> Value {
        json!([{"role": "user", "content": [{"type": "text", "text": "build a todo API ".repeat(10)}]}])
    }

    fn turn2() -> Value {
        json!([
            {"role": "user", "content": [{"type": "text", "text": "build a todo API ".repeat(10)}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "ok"}]}
        ])
    }

    #[test]
    fn tokens_are_a_quarter_of_the_compact_json_bytes_rounded_up() {
        assert_eq!(approx_tokens(&json!("abc")), 2); // "\"abc\"" is 5 bytes
        assert_eq!(approx_tokens(&json!({"a": 1})), 2); // {"a":1} is 7 bytes
        assert_eq!(tokens_for_bytes(8), 2);
        assert_eq!(tokens_for_bytes(0), 0);
    }

    #[test]
    fn the_first_request_writes_the_prefix_and_the_same_request_then_reads_it() {
        let sim = PromptCacheSim::new();
        let b = body(turn1(), true);
        let first = sim.anthropic(&b);
        assert_eq!(first.cache_read, 0);
        assert!(first.cache_write > 0 && first.input > 0);
        assert_eq!(first.prompt_total(), approx_tokens(&b));
        let again = sim.anthropic(&b);
        assert_eq!(
            (again.cache_read, again.cache_write),
            (first.cache_write, 0)
        );
        assert_eq!(again.prompt_total(), first.prompt_total());
    }

    #[test]
    fn a_longer_conversation_reads_the_previous_prefix_and_writes_only_the_new_part() {
        let sim = PromptCacheSim::new();
        let first = sim.anthropic(&body(turn1(), true));
        let second = sim.anthropic(&body(turn2(), true));
        assert_eq!(
            second.cache_read, first.cache_write,
            "the breakpoint moved, but the old prefix is found"
        );
        assert!(second.cache_write > 0 && second.cache_write < first.cache_write);
    }

    #[test]
    fn a_body_without_breakpoints_is_all_uncached_input() {
        let sim = PromptCacheSim::new();
        let b = body(turn1(), false);
        for _ in 0..2 {
            let u = sim.anthropic(&b);
            assert_eq!(
                u,
                TokenUsage {
                    input: approx_tokens(&b),
                    ..TokenUsage::default()
                }
            );
        }
        assert!(sim.is_empty());
    }

    #[test]
    fn a_different_model_or_a_cleared_cache_misses() {
        let sim = PromptCacheSim::new();
        let mut b = body(turn1(), true);
        sim.anthropic(&b);
        b["model"] = json!("other");
        assert_eq!(sim.anthropic(&b).cache_read, 0);
        sim.clear();
        assert_eq!(sim.anthropic(&b).cache_read, 0);
    }

    #[test]
    fn openai_bodies_hit_the_longest_seen_message_boundary_prefix() {
        let sim = PromptCacheSim::new();
        let system = json!({"role": "system", "content": "sys ".repeat(50)});
        let user = json!({"role": "user", "content": "hi"});
        let one = json!({"model": "m", "messages": [system, user]});
        let first = sim.openai(&one);
        assert_eq!(first.cached_tokens, 0);
        let two = json!({"model": "m", "messages": [system, user,
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]});
        let second = sim.openai(&two);
        let prefix_bytes = compact_len(&system) + compact_len(&user);
        assert_eq!(second.cached_tokens, tokens_for_bytes(prefix_bytes));
        assert!(second.cached_tokens < second.prompt_tokens);
    }
}
