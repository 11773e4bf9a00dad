//! Quoting of SQL identifiers and string literals, for the statements that cannot take bind
//! parameters (`CREATE ROLE`, `CREATE DATABASE`, `ALTER ROLE … PASSWORD`, `GRANT`).
//!
//! Both follow PostgreSQL's own `quote_ident` / `quote_literal`. Names passed here are already
//! restricted to `[a-z0-9_]` by [`crate::naming`]; quoting is the second line of defence, so
//! it must hold for any input.

/// `s` as a double-quoted identifier: `"` is doubled, so the result is always exactly one
/// identifier, whatever `s` holds. (A NUL byte cannot be sent to Postgres at all: the server
/// rejects the whole message, so it cannot break out either.)
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `s` as a single-quoted string literal: `'` is doubled; if `s` holds a backslash the
/// literal is written in the escape form (`E'…'` with backslashes doubled), so it means the
/// same whatever `standard_conforming_strings` is set to.
pub fn quote_literal(s: &str) -> String {
    let escape_form = s.contains('\\');
    let mut out = String::with_capacity(s.len() + 3);
    if escape_form {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || (c == '\\' && escape_form) {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_double_their_quotes() {
        assert_eq!(quote_ident("tb_proj_1"), "\"tb_proj_1\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("\""), "\"\"\"\"");
        assert_eq!(
            quote_ident("x\"; DROP DATABASE postgres; --"),
            "\"x\"\"; DROP DATABASE postgres; --\""
        );
    }

    #[test]
    fn literals_double_their_quotes_and_escape_backslashes() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_literal("'; DROP ROLE x; --"), "'''; DROP ROLE x; --'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_literal("\\'"), "E'\\\\'''");
    }
}
