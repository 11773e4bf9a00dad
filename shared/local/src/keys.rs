//! API key material: `tb_` followed by 40 hex characters (160 bits from the operating
//! system's random number generator), stored only as its SHA-256 and a visible prefix.
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
use tb_core::encoding::{hex, sha256_hex};
use tb_core::ports::PortError;

/// What every key starts with (so it can be recognised, e.g. by secret scanners).
pub const KEY_PREFIX: &str = "tb_";
/// Random bytes per key: 20 bytes = 160 bits = 40 hex characters.
const KEY_BYTES: usize = 20;
/// Characters of the key kept in the clear for listings: `tb_` and 9 hex characters.
pub const VISIBLE_CHARS: usize = 12;

/// A freshly generated key: the secret (shown once) and what is stored about it.
pub(crate) struct NewKey {
    pub secret: String,
    pub sha256: String,
    pub prefix: String,
}

pub(crate) fn generate() -> Result<NewKey, PortError> {
    let mut bytes = [0u8; KEY_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| PortError::Transient(format!("the OS random number generator failed: {e}")))?;
    let secret = format!("{KEY_PREFIX}{}", hex(&bytes));
    Ok(NewKey {
        sha256: hash(&secret),
        prefix: secret[..VISIBLE_CHARS].to_string(),
        secret,
    })
}

/// The stored form of a key.
pub(crate) fn hash(key: &str) -> String {
    sha256_hex(key.as_bytes())
}

/// Whether `presented` has the shape of a key (checked before any lookup).
pub(crate) fn well_formed(presented: &str) -> bool {
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
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.prefix.len(), VISIBLE_CHARS);
        assert!(a.secret.starts_with(&a.prefix));
        assert_eq!(a.sha256, hash(&a.secret));
        assert!(!a.sha256.contains(&a.secret[KEY_PREFIX.len()..]));
    }

    #[test]
    fn malformed_keys_are_recognised() {
        for bad in [
            "",
            "tb_",
            "tb_XYZ",
            "xx_0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
        assert!(well_formed("tb_0123456789abcdef0123456789abcdef01234567"));
        assert!(!well_formed("tb_0123456789ABCDEF0123456789abcdef01234567"));
    }
}
