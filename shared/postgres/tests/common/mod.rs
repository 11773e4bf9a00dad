//! Helpers shared by this crate's integration tests: the local cluster, unique names, and
//! best-effort cleanup that runs even when a test panics.
//!
//! The cluster is `postgres://postgres@127.0.0.1:5432/postgres` (trust auth), or
//! `TB_POSTGRES_TEST_URL` when set.

#![allow(dead_code)]

use std::str::FromStr;
use std::sync::Mutex;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use tb_postgres::{ClusterSettings, PgProvisioner, quote_ident};

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

/// A prefix no other test (or run) uses: `t` + 10 hex characters.
pub fn unique_prefix() -> String {
    format!("t{}", tb_postgres::secret::random_hex(5))
}

pub async fn admin() -> PgConnection {
    PgConnection::connect(&admin_url())
        .await
        .expect("admin connection")
}

pub async fn connect(url: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnectOptions::from_str(url)?.connect().await
}

/// A provisioner with a unique prefix, and a guard that drops everything it names.
pub fn provisioner() -> (PgProvisioner, Cleanup) {
    let prefix = unique_prefix();
    let p = PgProvisioner::new(cluster()).with_prefix(&prefix).unwrap();
    (p, Cleanup::default())
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
    pub fn names(&self, names: &tb_postgres::DatabaseNames) {
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

/// A new empty database owned by the admin, dropped with `cleanup`; returns its URL.
pub async fn fresh_database(cleanup: &Cleanup) -> String {
    let name = format!("{}_records", unique_prefix());
    cleanup.database(&name);
    let mut c = admin().await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        quote_ident(&name)
    )))
    .execute(&mut c)
    .await
    .expect("create database");
    let _ = c.close().await;
    admin_url_for(&name)
}

/// The SQLSTATE of a failed connection or statement.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}
