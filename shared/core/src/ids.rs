//! Random identifiers and stable digests.

use sha2::{Digest, Sha256};

/// `bytes` random bytes as lowercase hex, from the OS's randomness (via std's hasher keys
/// and the clock, mixed through SHA-256; unique, not for secrets).
pub fn random_hex(bytes: usize) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{}:{nanos}:{}", h.finish(), std::process::id());
    let digest = Sha256::digest(seed.as_bytes());
    hex(&digest[..bytes.min(32)])
}

/// SHA-256 of `data` as lowercase hex. Stable across processes and versions.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
