//! API keys: their format, the part shown in listings, their stored hash, and the one check
//! of a presented key's shape. Every store (Postgres, SQLite, in memory) uses this module,
//! so a key made by one is read the same way by all.
//!
//! A key is `tb_` followed by 40 lowercase hex characters (160 bits from the operating
//! system's random number generator). Stores keep only its SHA-256 and its first
//! [`VISIBLE_CHARS`] characters.
//!
//! A fast, unsalted hash is the right tool here. Slow password hashes (bcrypt, Argon2) and
//! salts exist because passwords are guessable: they make each guess expensive and stop
//! precomputed tables. A key with 160 random bits cannot be guessed at any hash speed (2^159
//! tries on average), and no table covers that space, so a stolen table of hashes gives
//! nothing usable. A deterministic hash also lets a presented key be found by an indexed
//! lookup rather than by checking it against every stored key. Lookup timing can reveal at
//! most something about a hash, which does not help find a key that produces it.

use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use crate::encoding::hex;

/// What every key starts with (so it can be recognised, e.g. by secret scanners).
pub const KEY_PREFIX: &str = "tb_";
/// Random bytes per key: 20 bytes = 160 bits = 40 hex characters.
pub const KEY_BYTES: usize = 20;
/// Characters of a key kept in the clear for listings: `tb_` and 9 hex characters.
pub const VISIBLE_CHARS: usize = 12;
/// The longest key label accepted, in characters.
pub const MAX_LABEL_CHARS: usize = 200;

/// A key label longer than [`MAX_LABEL_CHARS`]; every store refuses it.
#[derive(Debug, thiserror::Error)]
#[error("key labels are at most {MAX_LABEL_CHARS} characters")]
pub struct LabelTooLong;

/// Refuses a label of more than [`MAX_LABEL_CHARS`] characters.
pub fn check_label(label: &str) -> Result<(), LabelTooLong> {
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(LabelTooLong);
    }
    Ok(())
}

/// A freshly generated key: the secret (shown once) and what a store keeps about it.
pub struct NewKey {
    /// The key's record id, `key_` and 24 hex characters.
    pub id: String,
    pub secret: String,
    /// The first [`VISIBLE_CHARS`] characters of the secret.
    pub prefix: String,
}

impl NewKey {
    /// The stored hash of the secret.
    pub fn hash(&self) -> [u8; 32] {
        hash(&self.secret)
    }
}

/// The operating system's random number generator failed; no key was made.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RandomnessUnavailable(String);

/// A new key from the operating system's randomness.
pub fn generate() -> Result<NewKey, RandomnessUnavailable> {
    let mut bytes = [0u8; KEY_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| RandomnessUnavailable(e.to_string()))?;
    let secret = format!("{KEY_PREFIX}{}", hex(&bytes));
    Ok(NewKey {
        id: format!("key_{}", crate::ids::random_hex(12)),
        prefix: secret[..VISIBLE_CHARS].to_string(),
        secret,
    })
}

/// The SHA-256 of a key, as stored.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The SHA-256 of a key as lowercase hex, for stores that keep text.
pub fn hash_hex(key: &str) -> String {
    hex(&hash(key))
}

/// Whether `presented` has the shape of a key: the prefix and 40 lowercase hex characters.
/// Checked before any lookup; anything else (uppercase hex included: no key is ever made
/// with it, and its hash would match none) is not a key.
pub fn well_formed(presented: &str) -> bool {
    presented.len() == KEY_PREFIX.len() + 2 * KEY_BYTES
        && presented.starts_with(KEY_PREFIX)
        && presented[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_prefix_and_forty_hex_characters_and_keys_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(well_formed(&a.secret), "{}", a.secret);
        assert_eq!(a.secret.len(), 43);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        assert_eq!(a.prefix.len(), VISIBLE_CHARS);
        assert!(a.secret.starts_with(&a.prefix));
        assert_eq!(a.hash(), hash(&a.secret));
        assert_eq!(hash_hex(&a.secret), hex(&a.hash()));
        assert!(!hash_hex(&a.secret).contains(&a.secret[KEY_PREFIX.len()..]));
    }

    #[test]
    fn malformed_keys_are_recognised() {
        for bad in [
            "",
            "tb_",
            "tb_XYZ",
            "tb_short",
            "xx_0123456789abcdef0123456789abcdef01234567",
            "tb_0123456789ABCDEF0123456789abcdef01234567",
            "tb_0123456789abcdef0123456789abcdef012345678",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
        assert!(well_formed("tb_0123456789abcdef0123456789abcdef01234567"));
    }
}
