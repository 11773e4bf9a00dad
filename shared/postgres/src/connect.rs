//! Opening single connections with a bound on how long it may take, and running the
//! dynamic (quoted) DDL statements that cannot take bind parameters.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions};

use crate::error::PgError;

/// How long opening a connection may take before it counts as a (transient) failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens one connection, failing after [`CONNECT_TIMEOUT`].
pub(crate) async fn connect(
    options: &PgConnectOptions,
    context: &'static str,
) -> Result<PgConnection, PgError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(result) => result.map_err(PgError::sql(context)),
        Err(_) => Err(PgError::Sql {
            context,
            source: sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
            )),
        }),
    }
}

/// Runs `sql` with the simple query protocol. Every name and literal in it must have gone
/// through [`crate::quote`].
pub(crate) async fn execute_ddl(
    conn: &mut PgConnection,
    sql: String,
    context: &'static str,
) -> Result<(), PgError> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(PgError::sql(context))
}

/// A 64-bit advisory lock key for `what`, from its SHA-256.
pub(crate) fn lock_key(what: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(what.as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}
