//! Cutting long text to its head and tail, so one command cannot flood the context.

/// Returns `text` unchanged if it fits in `head + tail` bytes, else its first `head` and last
/// `tail` bytes around a marker that says how much was left out and where the rest is.
pub fn head_tail(text: &str, head: usize, tail: usize, full_at: Option<&str>) -> String {
    if text.len() <= head + tail {
        return text.to_string();
    }
    let start = floor_char_boundary(text, head);
    let end = ceil_char_boundary(text, text.len() - tail);
    let omitted = end - start;
    let where_ = full_at
        .map(|p| format!("; the full output is in {p}"))
        .unwrap_or_default();
    format!(
        "{}\n... [{omitted} bytes omitted{where_}] ...\n{}",
        &text[..start],
        &text[end..]
    )
}

/// The first `n` bytes of `text`, never splitting a character.
pub fn prefix(text: &str, n: usize) -> &str {
    &text[..floor_char_boundary(text, n.min(text.len()))]
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(head_tail("hello", 3, 3, None), "hello");
    }

    #[test]
    fn long_text_keeps_head_and_tail_and_says_where_the_rest_is() {
        let t = format!("{}{}{}", "a".repeat(10), "b".repeat(100), "c".repeat(10));
        let cut = head_tail(&t, 10, 10, Some(".turbobackend/outputs/1-0.log"));
        assert!(cut.starts_with("aaaaaaaaaa\n"));
        assert!(cut.ends_with("\ncccccccccc"));
        assert!(
            cut.contains(
                "[100 bytes omitted; the full output is in .turbobackend/outputs/1-0.log]"
            )
        );
    }

    #[test]
    fn cuts_never_split_a_character() {
        let t = "é".repeat(100);
        let cut = head_tail(&t, 5, 5, None);
        assert!(cut.starts_with("éé\n"));
    }
}
