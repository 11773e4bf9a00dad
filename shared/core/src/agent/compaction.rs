//! Context compaction: when the conversation nears the model's window, old tool outputs and
//! file bodies are elided from what is *sent*. The stored conversation is never rewritten
//! (it is append-only); compaction is a view over it, decided by one index in the state, so a
//! resumed run sends exactly what an uninterrupted one would.

use std::borrow::Cow;

use serde_json::Value;

use crate::conversation::{Block, Message};

use super::output::{head_tail, prefix};

const KEEP: usize = 240;

/// The messages to send: those before `upto` (except the first, the task) with long tool
/// results, long texts and long tool inputs cut down.
pub fn view(messages: &[Message], upto: usize) -> Cow<'_, [Message]> {
    if upto <= 1 {
        return Cow::Borrowed(messages);
    }
    let mut out = messages.to_vec();
    for m in out.iter_mut().take(upto.min(messages.len())).skip(1) {
        for b in m.content.iter_mut() {
            match b {
                Block::ToolResult { content, .. } if content.len() > KEEP * 2 => {
                    let n = content.len();
                    *content = format!(
                        "{}\n[... {n} bytes elided to save context; re-run or re-read if you need them]",
                        prefix(content, KEEP)
                    );
                }
                Block::Text { text } if text.len() > KEEP * 8 => {
                    *text = head_tail(text, KEEP * 4, KEEP * 2, None)
                }
                Block::ToolUse {
                    input: Value::Object(map),
                    ..
                } => {
                    for v in map.values_mut() {
                        if let Value::String(s) = v
                            && s.len() > KEEP * 2
                        {
                            *s = format!("[{} bytes elided to save context]", s.len());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Cow::Owned(out)
}

/// Where the compaction boundary moves when the last prompt used `prompt_tokens` of a
/// `window`-token context: `None` when below `threshold_percent`, else everything but the
/// last `keep_recent` messages.
///
/// Once set, the boundary moves only in steps of at least `keep_recent` messages. Every move
/// changes the start of the prompt, so the provider's prompt cache is written again from
/// there; when the recent messages alone keep the prompt above the threshold, moving by one
/// iteration's two messages each time would pay that write on every call (measured in
/// docs/benchmarks.md: +27% cost against caching alone).
pub fn next_boundary(
    current: usize,
    messages: usize,
    prompt_tokens: u64,
    window: u64,
    threshold_percent: u8,
    keep_recent: usize,
) -> Option<usize> {
    if prompt_tokens * 100 < window * threshold_percent as u64 {
        return None;
    }
    let b = messages.saturating_sub(keep_recent);
    let step = if current == 0 { 1 } else { keep_recent.max(1) };
    (b >= current + step).then_some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convo() -> Vec<Message> {
        vec![
            Message::user_text("build it"),
            Message::assistant(vec![Block::ToolUse {
                id: "t1".into(),
                name: "write_file".into(),
                input: json!({"path": "a", "content": "x".repeat(5000)}),
            }]),
            Message {
                role: crate::Role::User,
                content: vec![Block::ToolResult {
                    tool_use_id: "t1".into(),
                    content: "y".repeat(5000),
                    is_error: false,
                }],
            },
            Message::assistant(vec![Block::Text {
                text: "recent".into(),
            }]),
        ]
    }

    #[test]
    fn old_outputs_are_elided_and_recent_ones_kept() {
        let c = convo();
        let v = view(&c, 3);
        let sent = serde_json::to_string(&*v).unwrap();
        assert!(sent.len() < 2000, "compacted view is {} bytes", sent.len());
        assert_eq!(v[0], c[0]);
        assert_eq!(v[3], c[3]);
        // Structure (ids, roles) is preserved so the provider still accepts it.
        assert!(
            matches!(&v[2].content[0], Block::ToolResult { tool_use_id, .. } if tool_use_id == "t1")
        );
    }

    #[test]
    fn no_boundary_no_change() {
        let c = convo();
        assert!(matches!(view(&c, 0), Cow::Borrowed(_)));
    }

    #[test]
    fn the_boundary_moves_only_past_the_threshold_and_only_forward() {
        assert_eq!(next_boundary(0, 40, 100_000, 200_000, 75, 10), None);
        assert_eq!(next_boundary(0, 40, 160_000, 200_000, 75, 10), Some(30));
        assert_eq!(next_boundary(30, 40, 160_000, 200_000, 75, 10), None);
        // Once set, it moves in steps of at least `keep_recent`, so the cached prefix
        // survives the iterations in between.
        assert_eq!(next_boundary(30, 48, 160_000, 200_000, 75, 10), None);
        assert_eq!(next_boundary(30, 50, 160_000, 200_000, 75, 10), Some(40));
    }
}
