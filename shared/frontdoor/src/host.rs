//! Which `Host` the MCP endpoint answers: the guard against DNS rebinding.
//!
//! A request is answered when its `Host` (or, without one, the URI's authority) is one of
//! [`FrontDoor::allowed_hosts`](crate::FrontDoor::allowed_hosts) (loopback by default; an
//! entry without a port matches any port) or is the domain the HTTP host reports the request
//! was received at ([`ReceivedAt`]). Behind API Gateway that is the invocation's
//! `requestContext.domainName`: the `execute-api` domain or a custom domain mapped to the API.
//! API Gateway routes a request to the API only for those domains, so the pair
//! Host = domainName is what every genuine request carries, and a client cannot forge the
//! request context. Everything else is `403 Forbidden: Host header is not allowed`.

use axum::http::{HeaderMap, StatusCode, Uri, header};

/// The domain the serving platform received the request at, inserted as a request extension
/// by the host adapter (the api function takes it from API Gateway's
/// `requestContext.domainName`). Never built from a client-supplied header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedAt(pub String);

/// Why a request's host is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRefusal {
    /// No `Host` header and no authority in the URI, or a value that does not parse (400).
    Malformed(&'static str),
    /// A host nobody allowed (403).
    NotAllowed,
}

impl HostRefusal {
    pub fn status(&self) -> StatusCode {
        match self {
            HostRefusal::Malformed(_) => StatusCode::BAD_REQUEST,
            HostRefusal::NotAllowed => StatusCode::FORBIDDEN,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            HostRefusal::Malformed(m) => m,
            HostRefusal::NotAllowed => "Forbidden: Host header is not allowed",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

fn parse(value: &str) -> Option<Authority> {
    let a = axum::http::uri::Authority::try_from(value.trim()).ok()?;
    Some(Authority {
        host: normalize(a.host()),
        port: a.port_u16(),
    })
}

fn normalize(host: &str) -> String {
    host.trim_matches(['[', ']']).to_ascii_lowercase()
}

/// Checks a request's host against `allowed` and the domain it was `received_at`.
pub fn check(
    uri: &Uri,
    headers: &HeaderMap,
    received_at: Option<&ReceivedAt>,
    allowed: &[String],
) -> Result<(), HostRefusal> {
    let host = match headers.get(header::HOST) {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| HostRefusal::Malformed("Bad Request: Invalid Host header encoding"))?;
            parse(v).ok_or(HostRefusal::Malformed("Bad Request: Invalid Host header"))?
        }
        // HTTP/2 carries the host in `:authority` only.
        None => uri
            .authority()
            .and_then(|a| parse(a.as_str()))
            .ok_or(HostRefusal::Malformed("Bad Request: missing Host header"))?,
    };
    // An allowed entry that is not an authority (a bare IPv6 address such as `::1`) is a
    // host without a port.
    let entry = |a: &String| {
        let a = a.trim();
        let bare_ipv6 = a.matches(':').count() > 1 && !a.starts_with('[');
        match parse(a) {
            Some(parsed) if !bare_ipv6 => parsed,
            _ => Authority {
                host: normalize(a),
                port: None,
            },
        }
    };
    let listed = allowed
        .iter()
        .map(entry)
        .any(|a| a.host == host.host && (a.port.is_none() || a.port == host.port));
    let received = received_at.is_some_and(|r| normalize(&r.0) == host.host);
    if listed || received {
        Ok(())
    } else {
        Err(HostRefusal::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    fn loopback() -> Vec<String> {
        crate::LOOPBACK_HOSTS
            .iter()
            .map(|h| h.to_string())
            .collect()
    }

    const API: &str = "a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com";

    #[test]
    fn loopback_is_the_default_and_ports_are_free_when_unlisted() {
        let uri = Uri::from_static("/mcp");
        for h in ["localhost", "127.0.0.1:8787", "[::1]:8787", "LOCALHOST:1"] {
            assert_eq!(check(&uri, &headers(h), None, &loopback()), Ok(()), "{h}");
        }
        let refused = check(&uri, &headers("evil.example.com"), None, &loopback());
        assert_eq!(refused, Err(HostRefusal::NotAllowed));
    }

    #[test]
    fn the_domain_the_request_was_received_at_is_allowed_and_nothing_else() {
        let uri = Uri::from_static("/mcp");
        let at = ReceivedAt(API.into());
        assert_eq!(check(&uri, &headers(API), Some(&at), &loopback()), Ok(()));
        assert_eq!(
            check(&uri, &headers(&API.to_uppercase()), Some(&at), &loopback()),
            Ok(())
        );
        // Rebinding: a name that resolves to the API but is not the one it was reached at.
        assert_eq!(
            check(&uri, &headers("evil.example.com"), Some(&at), &loopback()),
            Err(HostRefusal::NotAllowed)
        );
        // A listed custom domain, with and without a port in the list.
        let listed = vec!["api.example.com".to_string(), "x.example.com:8443".into()];
        assert_eq!(
            check(&uri, &headers("api.example.com:443"), None, &listed),
            Ok(())
        );
        assert_eq!(
            check(&uri, &headers("x.example.com:8443"), None, &listed),
            Ok(())
        );
        assert_eq!(
            check(&uri, &headers("x.example.com:9443"), None, &listed),
            Err(HostRefusal::NotAllowed)
        );
    }

    #[test]
    fn a_missing_or_malformed_host_is_a_bad_request() {
        let r = check(
            &Uri::from_static("/mcp"),
            &HeaderMap::new(),
            None,
            &loopback(),
        );
        assert_eq!(r.unwrap_err().status(), StatusCode::BAD_REQUEST);
        let r = check(
            &Uri::from_static("/mcp"),
            &headers("a b"),
            None,
            &loopback(),
        );
        assert_eq!(r.unwrap_err().status(), StatusCode::BAD_REQUEST);
        // The URI's authority stands in for a missing Host (HTTP/2).
        let uri = Uri::from_static("http://localhost:8787/mcp");
        assert_eq!(check(&uri, &HeaderMap::new(), None, &loopback()), Ok(()));
    }
}
