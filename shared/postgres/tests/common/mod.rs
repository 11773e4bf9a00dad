//! Helpers shared by this crate's integration tests: the local cluster, unique names, and
//! best-effort cleanup that runs even when a test panics.
//!
//! The cluster is `postgres://postgres@127.0.0.1:5432/postgres` (trust auth), or
//! `TB_POSTGRES_TEST_URL` when set.

#![allow(dead_code)]

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use tb_postgres::{PgProvisioner, quote_ident};

pub use tb_postgres::testing::{Cleanup, admin_url, admin_url_for, cluster};

/// A prefix no other test (or run) uses: `t` + 10 hex characters.
pub fn unique_prefix() -> String {
    format!("t{}", tb_core::ids::random_hex(5))
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
