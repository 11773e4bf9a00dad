//! Errors of this crate, and how they map onto [`PortError`] (how the caller must react).
//!
//! Messages never contain a connection string or a password: settings errors name the
//! variable, not its value, and SQL errors carry the server's message only.

use tb_core::ports::PortError;

/// What went wrong talking to Postgres, or before.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A required setting is missing or malformed (names the variable, never its value).
    #[error("{0}")]
    Settings(String),
    /// A statement or a connection failed; `context` says what was being done.
    #[error("{context}: {}", describe(source))]
    Sql {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The platform's own schema migrations failed.
    #[error("platform schema migration failed: {0}")]
    Schema(#[source] sqlx::migrate::MigrateError),
    /// A project migration was changed after it had been applied.
    #[error(
        "migration `{name}` was applied with sha256 {applied}, but its content now hashes to \
         {now}: applied migrations must not be edited; add a new migration instead"
    )]
    EditedMigration {
        name: String,
        applied: String,
        now: String,
    },
    /// A project migration's SQL failed; it was rolled back, earlier ones stay applied.
    #[error(
        "migration `{name}` failed and was rolled back (applied before it in this run: \
         {applied_before:?}): {}",
        describe(source)
    )]
    MigrationFailed {
        name: String,
        applied_before: Vec<String>,
        #[source]
        source: sqlx::Error,
    },
    /// The request is malformed (bad migration names, an over-long label, ...).
    #[error("{0}")]
    Invalid(String),
    /// Something exists that this crate must not take over (a privileged role, a database
    /// owned by someone else, a project of another user).
    #[error("{0}")]
    Refused(String),
    /// A value read back from the database does not parse (a corrupt or foreign row).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl PgError {
    pub(crate) fn sql(context: &'static str) -> impl FnOnce(sqlx::Error) -> PgError {
        move |source| PgError::Sql { context, source }
    }
}

/// How an error should be handled, by its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Transient,
    Conflict,
    NotFound,
    Permanent,
}

/// Classifies a sqlx error: connection trouble, timeouts, lock and serialization failures
/// are transient; a missing database is "not found"; a unique violation is a conflict;
/// everything else (syntax, permissions, bad data) is permanent.
pub(crate) fn classify(e: &sqlx::Error) -> Kind {
    match e {
        sqlx::Error::Database(db) => classify_code(db.code().as_deref().unwrap_or("")),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Kind::Transient,
        sqlx::Error::RowNotFound => Kind::NotFound,
        _ => Kind::Permanent,
    }
}

/// Classifies a SQLSTATE code.
pub(crate) fn classify_code(code: &str) -> Kind {
    match code {
        // deadlock, serialization failure, lock not available, statement timeout / cancel,
        // admin shutdown, crash shutdown, cannot connect now
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" => Kind::Transient,
        "3D000" => Kind::NotFound,
        "23505" => Kind::Conflict,
        // connection exceptions, insufficient resources
        c if c.starts_with("08") || c.starts_with("53") => Kind::Transient,
        _ => Kind::Permanent,
    }
}

impl From<PgError> for PortError {
    fn from(e: PgError) -> PortError {
        let kind = match &e {
            PgError::Sql { source, .. } => classify(source),
            PgError::MigrationFailed { source, .. } => match classify(source) {
                // A migration that violates a constraint will do so again.
                Kind::Conflict => Kind::Permanent,
                k => k,
            },
            PgError::Schema(sqlx::migrate::MigrateError::Execute(source)) => classify(source),
            PgError::Schema(_)
            | PgError::Settings(_)
            | PgError::EditedMigration { .. }
            | PgError::Invalid(_)
            | PgError::Refused(_)
            | PgError::Corrupt(_) => Kind::Permanent,
        };
        let text = e.to_string();
        match kind {
            Kind::Transient => PortError::Transient(text),
            Kind::Conflict => PortError::Conflict(text),
            Kind::NotFound => PortError::NotFound(text),
            Kind::Permanent => PortError::Permanent(text),
        }
    }
}

/// The server's own words for a failed statement, as plain text for a person or a model:
/// message, detail, hint and position, no connection details.
pub(crate) fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let mut text = String::from("ERROR");
            if let Some(code) = db.code() {
                text.push_str(&format!(" {code}"));
            }
            text.push_str(": ");
            text.push_str(db.message());
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    text.push_str(&format!("\nDETAIL: {detail}"));
                }
                if let Some(hint) = pg.hint() {
                    text.push_str(&format!("\nHINT: {hint}"));
                }
                if let Some(sqlx::postgres::PgErrorPosition::Original(pos)) = pg.position() {
                    text.push_str(&format!("\nPOSITION: character {pos}"));
                }
            }
            text
        }
        other => other.to_string(),
    }
}

/// The SQLSTATE of a database error, if it is one.
pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_how_the_caller_must_react() {
        assert_eq!(classify_code("08006"), Kind::Transient);
        assert_eq!(classify_code("57014"), Kind::Transient);
        assert_eq!(classify_code("40001"), Kind::Transient);
        assert_eq!(classify_code("53300"), Kind::Transient);
        assert_eq!(classify_code("3D000"), Kind::NotFound);
        assert_eq!(classify_code("23505"), Kind::Conflict);
        assert_eq!(classify_code("42601"), Kind::Permanent);
        assert_eq!(classify_code("42501"), Kind::Permanent);
    }

    #[test]
    fn connection_failures_are_transient_and_settings_errors_permanent() {
        let io = PgError::Sql {
            context: "connect",
            source: sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            )),
        };
        assert!(matches!(PortError::from(io), PortError::Transient(_)));
        let settings = PgError::Settings("DB_CLUSTER_HOST is not set".into());
        assert!(matches!(PortError::from(settings), PortError::Permanent(_)));
    }
}
