//! Secrets redaction: a secret string (a token, a password) that never shows in `Debug`,
//! `Display` or error text, and what every adapter's `Debug` prints in a secret's place.

use std::fmt;

/// What is printed in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// What `Debug` shows for a secret held as a plain string: [`REDACTED`], or `<empty>` for
/// an empty one (so a missing key is told from a set one).
pub fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        "<empty>"
    } else {
        REDACTED
    }
}

/// Holds a credential. Its `Debug` and `Display` print `<redacted>`; the value is only
/// reachable through [`Secret::expose`], at the one place that puts it on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself: for building an `Authorization` header, nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret replaced by `<redacted>`: applied to any
    /// text that came back from a server before it goes into an error or a log line.
    pub fn scrub(&self, text: &str) -> String {
        // Short values would blank out ordinary words; real tokens are long.
        if self.0.len() < 8 {
            return text.to_owned();
        }
        let mut out = text.replace(&self.0, REDACTED);
        // A credential with its scheme (`FlyV1 fm2_…`) may come back without it.
        if let Some((_, bare)) = self.0.split_once(' ')
            && bare.len() >= 8
        {
            out = out.replace(bare, REDACTED);
        }
        out
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_as_redacted_and_is_scrubbed_from_text() {
        let s = Secret::new("FlyV1 fm2_abcdefghijkl");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(
            s.scrub("bad token FlyV1 fm2_abcdefghijkl and fm2_abcdefghijkl"),
            "bad token <redacted> and <redacted>"
        );
        assert_eq!(Secret::new("x").scrub("x marks"), "x marks");
    }
}
