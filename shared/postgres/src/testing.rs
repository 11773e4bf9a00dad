//! Test support (feature `testing`): the local cluster, and a guard that drops the databases
//! and roles a test made, however the test ends.
//!
//! The cluster is `postgres://postgres@127.0.0.1:5432/postgres` (trust auth), or
//! `TB_POSTGRES_TEST_URL` (and `TB_POSTGRES_TEST_PASSWORD`) when set.

use std::str::FromStr;
use std::sync::Mutex;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};

use crate::{ClusterSettings, quote_ident};

/// The test cluster's admin URL.
pub fn admin_url() -> String {
    std::env::var("TB_POSTGRES_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The admin URL with another database.
pub fn admin_url_for(database: &str) -> String {
    let url = admin_url();
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
    format!("{base}/{database}")
}

/// The test cluster as the provisioner's settings.
pub fn cluster() -> ClusterSettings {
    let o = PgConnectOptions::from_str(&admin_url()).expect("admin url");
    let password = std::env::var("TB_POSTGRES_TEST_PASSWORD").ok();
    ClusterSettings::new(
        o.get_host(),
        o.get_port(),
        o.get_username(),
        password.as_deref(),
    )
}

/// Databases and roles to drop when the test ends, however it ends.
#[derive(Default)]
pub struct Cleanup {
    databases: Mutex<Vec<String>>,
    roles: Mutex<Vec<String>>,
}

impl Cleanup {
    pub fn database(&self, name: &str) {
        self.databases.lock().unwrap().push(name.to_string());
    }

    pub fn role(&self, name: &str) {
        self.roles.lock().unwrap().push(name.to_string());
    }

    /// Both the database and the role of `names`.
    pub fn names(&self, names: &crate::DatabaseNames) {
        self.database(&names.database);
        self.role(&names.role);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let databases = std::mem::take(&mut *self.databases.lock().unwrap());
        let roles = std::mem::take(&mut *self.roles.lock().unwrap());
        if databases.is_empty() && roles.is_empty() {
            return;
        }
        // A runtime of its own on a thread of its own: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let Ok(mut c) = PgConnection::connect(&admin_url()).await else {
                    return;
                };
                for d in databases {
                    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&d));
                    let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut c).await;
                }
                for r in roles {
                    let sql = format!("DROP ROLE IF EXISTS {}", quote_ident(&r));
                    let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut c).await;
                }
                let _ = c.close().await;
            });
        })
        .join();
    }
}
