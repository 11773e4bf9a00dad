//! Callback URLs: refused at request time unless they are https and resolve only to public
//! addresses (no loopback, private, link-local, e.g. the cloud metadata endpoint), unless the
//! operator allows it (local mode, tests). The notifier checks again when it sends. Both
//! ask the one classifier, [`tb_core::net::is_public`].

use std::net::IpAddr;

pub use tb_core::net::is_public;

/// Checks `url` as a callback target.
pub async fn check(url: &str, allow_private: bool) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("callback_url is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err("callback_url must be an https URL".into()),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("callback_url must not carry credentials".into());
    }
    let host = parsed
        .host_str()
        .ok_or("callback_url has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    if allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("callback_url host {host} does not resolve: {e}"))?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        return Err(format!("callback_url host {host} does not resolve"));
    }
    if let Some(bad) = addrs.iter().find(|ip| !is_public(ip)) {
        return Err(format!(
            "callback_url host {host} resolves to {bad}, which is not a public address"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_https_urls_to_public_hosts_are_accepted() {
        assert!(
            check("http://example.com/hook", false)
                .await
                .unwrap_err()
                .contains("https")
        );
        assert!(check("ftp://example.com", false).await.is_err());
        assert!(
            check("https://user:pw@example.com/", false)
                .await
                .unwrap_err()
                .contains("credentials")
        );
        assert!(
            check("https://127.0.0.1/hook", false)
                .await
                .unwrap_err()
                .contains("not a public address")
        );
        assert!(
            check("https://169.254.169.254/latest/meta-data", false)
                .await
                .unwrap_err()
                .contains("not a public")
        );
        assert!(check("https://localhost:8443/hook", false).await.is_err());
        assert!(check("https://[::1]/hook", false).await.is_err());
        // IPv6 literals that carry loopback or the metadata address (no traffic: a literal
        // resolves to itself).
        for literal in [
            "[::ffff:127.0.0.1]",
            "[::127.0.0.1]",
            "[64:ff9b::a9fe:a9fe]",
            "[2002:a9fe:a9fe::1]",
            "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        ] {
            let err = check(&format!("https://{literal}/hook"), false)
                .await
                .unwrap_err();
            assert!(err.contains("not a public address"), "{literal}: {err}");
        }
        // Allowed by the operator (local mode, tests).
        assert!(check("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check("not a url", true).await.is_err());
    }
}
