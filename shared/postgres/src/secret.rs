//! Random secrets from the operating system's randomness: database passwords and API keys.
//!
//! `rand::rng()` is a ChaCha-based generator seeded from the OS and reseeded periodically;
//! its output is suitable for secrets.

use tb_core::ids::random_hex;

/// A fresh database password: 32 random bytes as 64 hex characters. Hex needs no escaping in
/// a URL, a shell or a SQL literal.
pub fn database_password() -> String {
    random_hex(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_64_hex_characters_and_differ() {
        let (a, b) = (database_password(), database_password());
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
