//! Connection URLs for project databases (`postgres://role:password@host:port/db`).
//!
//! A URL holds a password: it is built here, handed to the caller, and never logged.

use crate::settings::ClusterSettings;

/// Percent-encodes everything but RFC 3986's unreserved characters, so any role, password
/// or database name fits in the userinfo or path of a URL.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL a project uses to reach `database` as `role`, on the cluster of `settings`
/// (same host, port and `sslmode`). The mode keeps libpq's meaning for every client: the
/// migrator's sqlx reads it so, and the project template's `server/utils/db.ts` takes it out
/// of the URL and gives node-postgres the matching TLS options, since node-postgres alone
/// would verify the certificate for `require` (docs/template.md).
pub fn database_url(
    settings: &ClusterSettings,
    role: &str,
    password: &str,
    database: &str,
) -> String {
    let host = if settings.host.contains(':') && !settings.host.starts_with('[') {
        format!("[{}]", settings.host)
    } else {
        settings.host.clone()
    };
    let mut url = format!(
        "postgres://{}:{}@{host}:{}/{}",
        percent_encode(role),
        percent_encode(password),
        settings.port,
        percent_encode(database)
    );
    if let Some(mode) = &settings.ssl_mode {
        url.push_str("?sslmode=");
        url.push_str(mode);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_their_parts() {
        let s = ClusterSettings::new("db.internal", 5433, "admin", None);
        assert_eq!(
            database_url(&s, "tb_p", "ab12", "tb_p"),
            "postgres://tb_p:ab12@db.internal:5433/tb_p"
        );
        assert_eq!(
            database_url(&s, "a b", "p@ss:/w?d#%", "d/b"),
            "postgres://a%20b:p%40ss%3A%2Fw%3Fd%23%25@db.internal:5433/d%2Fb"
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed_and_sslmode_carried() {
        let mut s = ClusterSettings::new("::1", 5432, "admin", None);
        s.ssl_mode = Some("require".into());
        assert_eq!(
            database_url(&s, "r", "p", "d"),
            "postgres://r:p@[::1]:5432/d?sslmode=require"
        );
    }
}
