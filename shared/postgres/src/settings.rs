//! Where the Postgres cluster for project databases is, and how to log in as its admin.
//!
//! Read from the same variables as the original system: `DB_CLUSTER_HOST`,
//! `DB_CLUSTER_PORT` (default 5432), `DB_CLUSTER_USER`, `DB_CLUSTER_PASSWORD` (optional, for
//! clusters that trust the platform's network) and `DB_CLUSTER_SSLMODE` (optional: `disable`,
//! `allow`, `prefer`, `require`, `verify-ca`, `verify-full`; also written into the project
//! URLs). The admin needs `CREATEROLE` and `CREATEDB` (or superuser).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::error::PgError;

pub const HOST_VAR: &str = "DB_CLUSTER_HOST";
pub const PORT_VAR: &str = "DB_CLUSTER_PORT";
pub const USER_VAR: &str = "DB_CLUSTER_USER";
pub const PASSWORD_VAR: &str = "DB_CLUSTER_PASSWORD";
pub const SSLMODE_VAR: &str = "DB_CLUSTER_SSLMODE";

const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The admin's view of the cluster. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    /// One of `disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub ssl_mode: Option<String>,
    /// The database the admin connects to for cluster-wide statements (`postgres`).
    pub admin_database: String,
}

impl fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field(
                "password",
                &self.password.as_ref().map(|_| tb_core::secret::REDACTED),
            )
            .field("ssl_mode", &self.ssl_mode)
            .field("admin_database", &self.admin_database)
            .finish()
    }
}

impl ClusterSettings {
    /// Reads the settings through `var` (for example `|k| std::env::var(k).ok()`). Empty
    /// values count as unset. Errors name the variable, never its value.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, PgError> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let host = get(HOST_VAR).ok_or_else(|| {
            PgError::Settings(format!(
                "{HOST_VAR} is not set: the host name of the Postgres cluster for project databases"
            ))
        })?;
        let port = match get(PORT_VAR) {
            None => 5432,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                PgError::Settings(format!("{PORT_VAR} is not a TCP port (1-65535)"))
            })?,
        };
        let user = get(USER_VAR).ok_or_else(|| {
            PgError::Settings(format!(
                "{USER_VAR} is not set: the cluster's admin role (needs CREATEROLE and CREATEDB)"
            ))
        })?;
        // The password is taken as given (not trimmed): spaces may be part of it.
        let password = var(PASSWORD_VAR).filter(|p| !p.is_empty());
        let ssl_mode = match get(SSLMODE_VAR) {
            None => None,
            Some(m) => {
                let m = m.to_ascii_lowercase();
                if !SSL_MODES.contains(&m.as_str()) {
                    return Err(PgError::Settings(format!(
                        "{SSLMODE_VAR} must be one of {}",
                        SSL_MODES.join(", ")
                    )));
                }
                Some(m)
            }
        };
        Ok(ClusterSettings {
            host,
            port,
            user,
            password,
            ssl_mode,
            admin_database: "postgres".into(),
        })
    }

    /// [`ClusterSettings::from_env`] over the process environment.
    pub fn from_process_env() -> Result<Self, PgError> {
        Self::from_env(|k| std::env::var(k).ok())
    }

    /// Settings given directly (tests, tools).
    pub fn new(host: &str, port: u16, user: &str, password: Option<&str>) -> Self {
        ClusterSettings {
            host: host.into(),
            port,
            user: user.into(),
            password: password.map(str::to_string),
            ssl_mode: None,
            admin_database: "postgres".into(),
        }
    }

    /// Connects the admin to `admin_database` instead of `postgres`.
    pub fn with_admin_database(mut self, database: &str) -> Self {
        self.admin_database = database.into();
        self
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Options for an admin connection to `database`, with statement logging off (the
    /// statements carry password verifiers) and a bound on every statement and lock wait.
    pub(crate) fn admin_options(
        &self,
        database: &str,
        statement_timeout: Duration,
    ) -> PgConnectOptions {
        let mut o = PgConnectOptions::new_without_pgpass()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .database(database)
            .application_name("turbobackend-provisioner")
            .options([
                (
                    "statement_timeout",
                    format!("{}", statement_timeout.as_millis()),
                ),
                ("lock_timeout", format!("{}", statement_timeout.as_millis())),
            ]);
        if let Some(p) = &self.password {
            o = o.password(p);
        }
        if let Some(mode) = &self.ssl_mode
            && let Ok(mode) = PgSslMode::from_str(mode)
        {
            o = o.ssl_mode(mode);
        }
        o.disable_statement_logging()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn settings_are_read_from_the_cluster_variables() {
        let s = ClusterSettings::from_env(env(&[
            (HOST_VAR, "db.internal"),
            (PORT_VAR, "6543"),
            (USER_VAR, "admin"),
            (PASSWORD_VAR, "s3cret"),
            (SSLMODE_VAR, "REQUIRE"),
        ]))
        .unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_str()),
            ("db.internal", 6543, "admin")
        );
        assert!(s.has_password());
        assert_eq!(s.ssl_mode.as_deref(), Some("require"));
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("s3cret") && dbg.contains("<redacted>"),
            "{dbg}"
        );
    }

    #[test]
    fn missing_or_bad_settings_are_named_without_their_values() {
        let e = ClusterSettings::from_env(env(&[(USER_VAR, "admin")])).unwrap_err();
        assert!(e.to_string().contains(HOST_VAR), "{e}");
        let e = ClusterSettings::from_env(env(&[(HOST_VAR, "h")])).unwrap_err();
        assert!(e.to_string().contains(USER_VAR), "{e}");
        let e = ClusterSettings::from_env(env(&[
            (HOST_VAR, "h"),
            (USER_VAR, "u"),
            (PORT_VAR, "70000"),
        ]))
        .unwrap_err();
        assert!(
            e.to_string().contains(PORT_VAR) && !e.to_string().contains("70000"),
            "{e}"
        );
        let e = ClusterSettings::from_env(env(&[
            (HOST_VAR, "h"),
            (USER_VAR, "u"),
            (SSLMODE_VAR, "maybe"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains(SSLMODE_VAR), "{e}");
    }

    #[test]
    fn the_port_defaults_and_the_password_is_optional() {
        let s =
            ClusterSettings::from_env(env(&[(HOST_VAR, "h"), (USER_VAR, "u"), (PASSWORD_VAR, "")]))
                .unwrap();
        assert_eq!(s.port, 5432);
        assert!(!s.has_password());
        assert_eq!(s.ssl_mode, None);
    }
}
