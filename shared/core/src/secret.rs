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

/// `text` with every value of `secrets` (an app's environment secrets) replaced by
/// [`REDACTED`], and, of a value that is a URL with a password (`DATABASE_URL`), the
/// password alone too (an app may print the parts it connects with). Values shorter than
/// four characters are left alone: they would blank out ordinary words.
pub fn scrub_values<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut values: Vec<&str> = Vec::new();
    for value in secrets {
        values.push(value);
        // scheme://user:password@host…
        if let Some((_, rest)) = value.split_once("://")
            && let Some((userinfo, _)) = rest.split_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            values.push(password);
        }
    }
    // Longest first, so a password inside a replaced URL does not leave part of it.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_owned();
    for value in values.into_iter().filter(|v| v.len() >= 4) {
        out = out.replace(value, REDACTED);
    }
    out
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
    fn an_apps_secret_values_and_a_urls_password_are_scrubbed_from_its_output() {
        let url = "postgres://proj_p:s3cretPassw0rd@127.0.0.1:5432/proj_p";
        let text =
            format!("connecting to {url}\npassword s3cretPassw0rd rejected\ntoken tok_123456 ok");
        let out = scrub_values(&text, [url, "tok_123456", "ab"]);
        assert!(!out.contains("s3cretPassw0rd"), "{out}");
        assert!(!out.contains("tok_123456"), "{out}");
        assert_eq!(
            out,
            "connecting to <redacted>\npassword <redacted> rejected\ntoken <redacted> ok"
        );
    }

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
