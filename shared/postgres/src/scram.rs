//! SCRAM-SHA-256 password verifiers, as Postgres stores them (`pg_authid.rolpassword`).
//!
//! The provisioner sends `ALTER ROLE … PASSWORD '<verifier>'` instead of the password itself,
//! as `psql`'s `\password` does: the plain password then never appears in a statement, so
//! not in the server's statement log nor in `pg_stat_statements`. Postgres stores a verifier
//! as given and checks logins against it (methods `scram-sha-256`, `md5` and `password`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Iterations Postgres uses by default (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with a 32-byte output (a single block, as SCRAM uses it).
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password.as_bytes(), &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &[&u]);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// `(ClientKey, StoredKey, ServerKey)` of RFC 5802 for `password`.
fn keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let salted = salted_password(password, salt, iterations);
    let client_key = hmac(&salted, &[b"Client Key"]);
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(&salted, &[b"Server Key"]);
    (client_key, stored_key, server_key)
}

/// The verifier of `password` with `salt`: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
/// `password` must need no SASLprep normalisation (ASCII, as the generated ones are).
pub fn verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let (_, stored, server) = keys(password, salt, iterations);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored),
        B64.encode(server)
    )
}

/// A verifier of `password` with a fresh random 16-byte salt.
pub fn new_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    verifier(password, &salt, ITERATIONS)
}

/// True if `verifier` (as stored by Postgres) accepts `password`.
pub fn verifier_matches(verifier_text: &str, password: &str) -> bool {
    let parse = || -> Option<bool> {
        let rest = verifier_text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys_part) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys_part.split_once(':')?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| *i > 0 && *i <= 1_000_000)?;
        let salt = B64.decode(salt).ok()?;
        let (_, s, k) = keys(password, &salt, iterations);
        Some(B64.decode(stored).ok()? == s && B64.decode(server).ok()? == k)
    };
    parse().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 exchange of RFC 7677, section 3.
    #[test]
    fn keys_reproduce_the_rfc_7677_exchange() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (client_key, stored_key, server_key) = keys("pencil", &salt, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            B64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_signature = hmac(&server_key, &[auth_message.as_bytes()]);
        assert_eq!(
            B64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn a_verifier_accepts_its_password_only() {
        let v = new_verifier("correct horse");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert!(verifier_matches(&v, "correct horse"));
        assert!(!verifier_matches(&v, "correct horsE"));
        assert!(!verifier_matches("md5abc", "correct horse"));
        assert_ne!(new_verifier("correct horse"), v, "salts differ");
    }
}
