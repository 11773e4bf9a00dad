//! The one TLS client configuration of a process, shared by every HTTP client it builds
//! (the model clients, Daytona, Fly and the registry, callbacks, OAuth metadata fetches).
//!
//! It is what reqwest builds by itself for each client (rustls with the aws-lc-rs provider,
//! TLS 1.2 and 1.3, the operating system's root certificates verified through
//! `rustls-platform-verifier`, ALPN `http/1.1`), built once: each reqwest client would
//! otherwise load and parse the system's root certificates again at its construction,
//! which is most of a Lambda init's TLS cost.
//!
//! Not covered, because their crates take no rustls configuration: the AWS SDK (its HTTP
//! client builds its own from a `TlsContext`; it loads the system's roots once per process
//! and offers no way to hand it a `ClientConfig`) and sqlx (`PgConnectOptions` takes root
//! certificates as files only). octocrab accepts a whole hyper service instead of its
//! default one, which would mean rebuilding its middleware; the GitHub client keeps its own.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;

/// Why the shared configuration could not be built (no usable root certificate).
#[derive(Clone, Debug, thiserror::Error)]
#[error("no TLS configuration: {0}")]
pub struct TlsUnavailable(pub String);

/// The process's TLS client configuration, built on first use. Clones share the verifier,
/// the root store, the crypto provider and the session cache.
pub fn client_config() -> Result<ClientConfig, TlsUnavailable> {
    static CONFIG: OnceLock<Result<ClientConfig, TlsUnavailable>> = OnceLock::new();
    CONFIG.get_or_init(build).clone()
}

/// Starts building [`client_config`] on a thread of its own and returns at once: a start-up
/// calls it first, so that loading the system's root certificates overlaps with the rest of
/// its work (connections being opened), and the first client built waits only for what is
/// left of it (the configuration is built once, whoever asks first).
pub fn preload() {
    std::thread::spawn(|| {
        let _ = client_config();
    });
}

fn build() -> Result<ClientConfig, TlsUnavailable> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| TlsUnavailable(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| TlsUnavailable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A reqwest client builder that uses [`client_config`]. When that cannot be built, the
/// builder is left as it is, and reqwest reports the same failure when it builds.
pub fn http_client() -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match client_config() {
        Ok(config) => builder.tls_backend_preconfigured(config),
        Err(_) => builder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_built_once_and_shared() {
        let a = client_config().expect("the system has root certificates");
        let b = client_config().unwrap();
        assert!(Arc::ptr_eq(a.crypto_provider(), b.crypto_provider()));
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn reqwest_accepts_the_shared_configuration() {
        // A configuration reqwest does not recognise (another rustls version) fails here.
        http_client()
            .build()
            .expect("reqwest takes the shared TLS configuration");
    }
}
