//! Bounded capture of command output: the first half and the last half of the cap are
//! kept, everything in between is counted and dropped.

/// Keeps the first `cap / 2` and the last `cap - cap / 2` bytes of a stream, counting all.
///
/// Memory stays at `cap` bytes whatever the stream's size, and each byte is copied at most
/// once, so a 100 MB stream costs as much as reading it.
#[derive(Debug)]
pub struct OutputCap {
    cap: usize,
    head: Vec<u8>,
    head_cap: usize,
    /// A ring of the most recent bytes; the oldest is at `tail_start` once it is full.
    tail: Vec<u8>,
    tail_cap: usize,
    tail_start: usize,
    total: u64,
}

impl OutputCap {
    pub fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        OutputCap {
            cap,
            head: Vec::new(),
            head_cap,
            tail: Vec::new(),
            tail_cap: cap - head_cap,
            tail_start: 0,
            total: 0,
        }
    }

    /// Captures `bytes` (already complete) with a cap of `cap` bytes.
    pub fn capture(cap: usize, bytes: &[u8]) -> (String, u64) {
        let mut out = OutputCap::new(cap);
        out.push(bytes);
        let total = out.total_bytes();
        (out.finish(), total)
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if !data.is_empty() {
            self.push_tail(data);
        }
    }

    /// Bytes pushed in all.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The kept output as text (lossy UTF-8): all of it when it fits the cap, otherwise its
    /// head, a `... [N bytes omitted] ...` line and its tail. At most `cap` bytes plus the
    /// marker line.
    pub fn finish(self) -> String {
        let mut tail = Vec::with_capacity(self.tail.len());
        tail.extend_from_slice(&self.tail[self.tail_start..]);
        tail.extend_from_slice(&self.tail[..self.tail_start]);
        let omitted = self.total - (self.head.len() + tail.len()) as u64;
        if omitted == 0 {
            let mut all = self.head;
            all.extend_from_slice(&tail);
            let text = String::from_utf8_lossy(&all);
            if text.len() <= self.cap {
                return text.into_owned();
            }
            // Invalid UTF-8 grew when replaced; show the text's head and tail instead.
            let head = prefix_within(&text, self.head_cap);
            let tail = suffix_within(&text, self.tail_cap);
            let omitted = text.len() - head.len() - tail.len();
            return join(head, omitted as u64, tail);
        }
        let head_text = String::from_utf8_lossy(&self.head);
        let tail_text = String::from_utf8_lossy(&tail);
        let head = prefix_within(&head_text, self.head_cap);
        let tail = suffix_within(&tail_text, self.tail_cap);
        join(head, omitted, tail)
    }

    fn push_tail(&mut self, mut data: &[u8]) {
        let cap = self.tail_cap;
        if cap == 0 {
            return;
        }
        if data.len() >= cap {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - cap..]);
            self.tail_start = 0;
            return;
        }
        if self.tail.len() < cap {
            let n = (cap - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        while !data.is_empty() {
            let n = (cap - self.tail_start).min(data.len());
            self.tail[self.tail_start..self.tail_start + n].copy_from_slice(&data[..n]);
            self.tail_start = (self.tail_start + n) % cap;
            data = &data[n..];
        }
    }
}

fn join(head: &str, omitted: u64, tail: &str) -> String {
    format!("{head}\n... [{omitted} bytes omitted] ...\n{tail}")
}

/// The longest prefix of `text` of at most `max` bytes ending on a character boundary.
fn prefix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The longest suffix of `text` of at most `max` bytes starting on a character boundary.
fn suffix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_within_the_cap_is_kept_whole() {
        let (text, total) = OutputCap::capture(10, b"0123456789");
        assert_eq!(text, "0123456789");
        assert_eq!(total, 10);
    }

    #[test]
    fn output_past_the_cap_keeps_its_head_and_tail() {
        let mut cap = OutputCap::new(10);
        for chunk in [&b"abc"[..], b"defgh", b"ijklmnop", b"qrstuvwxyz"] {
            cap.push(chunk);
        }
        assert_eq!(cap.total_bytes(), 26);
        assert_eq!(cap.finish(), "abcde\n... [16 bytes omitted] ...\nvwxyz");
    }

    #[test]
    fn a_chunk_larger_than_the_tail_keeps_only_its_end() {
        let mut cap = OutputCap::new(4);
        cap.push(b"ab");
        cap.push(b"0123456789");
        cap.push(b"X");
        assert_eq!(cap.finish(), "ab\n... [9 bytes omitted] ...\n9X");
    }

    #[test]
    fn byte_at_a_time_pushes_wrap_the_ring_correctly() {
        let mut cap = OutputCap::new(6);
        let data: Vec<u8> = (b'a'..=b'z').collect();
        for b in &data {
            cap.push(std::slice::from_ref(b));
        }
        assert_eq!(cap.finish(), "abc\n... [20 bytes omitted] ...\nxyz");
    }

    #[test]
    fn multibyte_characters_split_at_the_edges_are_dropped_not_garbled() {
        // "é" is two bytes; the head boundary falls inside the second one.
        let input = "aé".repeat(10);
        let (text, _) = OutputCap::capture(4, input.as_bytes());
        let (head, tail) = text.split_once("\n... [").unwrap();
        assert!(!head.contains('\u{FFFD}') && head.len() <= 2, "{head:?}");
        assert!(!tail.contains('\u{FFFD}'), "{tail:?}");
        assert!(text.ends_with("\né"), "{text:?}");
    }

    #[test]
    fn invalid_utf8_that_grows_when_replaced_stays_within_the_cap() {
        let input = vec![0xffu8; 100];
        let (text, total) = OutputCap::capture(100, &input);
        assert_eq!(total, 100);
        assert!(text.len() <= 100 + 40, "{} bytes", text.len());
    }
}
