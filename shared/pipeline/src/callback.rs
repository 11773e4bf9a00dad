//! Callback URLs: refused at request time unless they are https and resolve only to public
//! addresses (no loopback, private, link-local, e.g. the cloud metadata endpoint), unless the
//! operator allows it (local mode, tests). The notifier checks again when it sends.

use std::net::IpAddr;

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

/// Whether an address is reachable on the public internet (and so a safe callback target).
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 224)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_metadata_addresses_are_not_public() {
        for a in [
            "10.0.0.1",
            "172.16.3.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(&a.parse().unwrap()), "{a}");
        }
        for a in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(&a.parse().unwrap()), "{a}");
        }
    }

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
        // Allowed by the operator (local mode, tests).
        assert!(check("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check("not a url", true).await.is_err());
    }
}
