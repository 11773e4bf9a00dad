//! Random identifiers.

use rand::RngCore;

/// `bytes` random bytes as lowercase hex (`2 * bytes` characters), from a generator seeded
/// by the operating system (`rand::rng()`: ChaCha12, reseeded periodically), so the result
/// is fit for secrets as well as for identifiers.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    crate::encoding::hex(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_has_two_lowercase_digits_a_byte_and_values_differ() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
