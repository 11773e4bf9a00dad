//! [`PgProvisioner`]: project roles and databases on a Postgres cluster.
//!
//! For a project it ensures, in this order and idempotently:
//!
//! 1. a login role with no special attributes (`CREATE ROLE … LOGIN NOSUPERUSER NOCREATEDB
//!    NOCREATEROLE NOREPLICATION NOBYPASSRLS`), refusing to touch an existing role that has
//!    any of them, or is the admin itself;
//! 2. a fresh random password (32 bytes, hex), sent as a SCRAM-SHA-256 verifier so the
//!    password itself never appears in a statement (see [`crate::scram`]);
//! 3. a database owned by that role (`CREATE DATABASE … OWNER … TEMPLATE template0`),
//!    refusing one that exists with another owner;
//! 4. `REVOKE ALL ON DATABASE … FROM PUBLIC` on it, and `REVOKE CONNECT, TEMPORARY … FROM
//!    PUBLIC` on the admin database (`postgres`) and `template1`, so a project role can
//!    connect to its own database only. (Other databases on the cluster that still grant
//!    `CONNECT` to `PUBLIC` stay reachable: the cluster is meant for project databases only.)
//! 5. inside the database: `REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT ALL ON SCHEMA
//!    public TO role`.
//!
//! Every step runs on each call, so a call that died half-way is completed by the next.
//! Concurrent calls for the same project are serialised by a session advisory lock keyed by
//! the database name (released when the admin connection closes, also on a crash); losing a
//! `CREATE` race anyway (`duplicate_object`, `unique_violation`) is handled by checking
//! again. `CREATE DATABASE` cannot run in a transaction, hence no transaction here.
//!
//! A non-superuser admin (RDS, Cloud SQL) is granted membership in the project role, as
//! Postgres requires for `CREATE DATABASE … OWNER role`.
//!
//! Statements that carry a password verifier are never logged (statement logging is off on
//! admin connections); neither the URL nor the password is logged.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgConnection;
use tb_core::domain::ProjectId;
use tb_core::ports::{DatabaseProvisioner, Migration, PortError, ProjectDatabase};

use crate::connect::{connect, execute_ddl, lock_key};
use crate::error::{PgError, sqlstate};
use crate::naming::{DatabaseNames, database_names, validate_prefix};
use crate::quote::{quote_ident, quote_literal};
use crate::settings::ClusterSettings;
use crate::{migrations, scram, secret, url};

/// Bound on each admin statement and lock wait while provisioning.
pub const ADMIN_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates project roles and databases; applies project migrations as the project role.
#[derive(Clone, Debug)]
pub struct PgProvisioner {
    settings: ClusterSettings,
    prefix: String,
    migration_timeout: Duration,
}

impl PgProvisioner {
    pub const DEFAULT_PREFIX: &'static str = "tb";

    /// A provisioner naming its roles and databases `tb_…`.
    pub fn new(settings: ClusterSettings) -> Self {
        PgProvisioner {
            settings,
            prefix: Self::DEFAULT_PREFIX.into(),
            migration_timeout: migrations::STATEMENT_TIMEOUT,
        }
    }

    /// Names roles and databases `{prefix}_…` instead (1-16 of `[a-z0-9_]`, from a letter).
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, PgError> {
        validate_prefix(prefix)?;
        self.prefix = prefix.into();
        Ok(self)
    }

    /// Bounds each statement of a project migration (default 60 s).
    pub fn with_migration_timeout(mut self, timeout: Duration) -> Self {
        self.migration_timeout = timeout;
        self
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The role and database of `project` (see [`crate::naming`]).
    pub fn names(&self, project: &ProjectId, dev: bool) -> DatabaseNames {
        database_names(&self.prefix, project, dev)
    }

    /// [`DatabaseProvisioner::provision`] with this crate's error type.
    pub async fn provision_database(
        &self,
        project: &ProjectId,
        dev: bool,
    ) -> Result<ProjectDatabase, PgError> {
        let names = self.names(project, dev);
        let options = self
            .settings
            .admin_options(&self.settings.admin_database, ADMIN_STATEMENT_TIMEOUT);
        let mut admin = connect(&options, "connecting to the database cluster as admin").await?;
        let result = self.provision_with(&mut admin, &names).await;
        // Closing the session also releases the advisory lock.
        let _ = sqlx::Connection::close(admin).await;
        let password = result?;
        tracing::info!(database = %names.database, role = %names.role, dev, "project database ready");
        Ok(ProjectDatabase {
            url: url::database_url(&self.settings, &names.role, &password, &names.database),
            database: names.database,
            role: names.role,
        })
    }

    /// Runs every step on `admin`; returns the new password.
    async fn provision_with(
        &self,
        admin: &mut PgConnection,
        names: &DatabaseNames,
    ) -> Result<String, PgError> {
        lock_project(admin, names).await?;

        let role = quote_ident(&names.role);
        let database = quote_ident(&names.database);

        ensure_role(admin, &names.role).await?;
        let password = secret::database_password();
        let verifier = scram::new_verifier(&password);
        execute_ddl(
            admin,
            format!(
                "ALTER ROLE {role} WITH LOGIN PASSWORD {}",
                quote_literal(&verifier)
            ),
            "setting the project role's password",
        )
        .await?;

        let superuser: bool =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&mut *admin)
                .await
                .map_err(PgError::sql("reading the admin's attributes"))?;
        if !superuser {
            execute_ddl(
                admin,
                format!("GRANT {role} TO CURRENT_USER"),
                "letting the admin act for the project role",
            )
            .await?;
        }

        ensure_database(admin, &names.database, &names.role).await?;
        execute_ddl(
            admin,
            format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"),
            "closing the project database to other roles",
        )
        .await?;
        close_maintenance_databases(admin, &self.settings.admin_database).await?;

        let options = self
            .settings
            .admin_options(&names.database, ADMIN_STATEMENT_TIMEOUT);
        let mut inside = connect(&options, "connecting to the project database as admin").await?;
        let schema = execute_ddl(
            &mut inside,
            format!(
                "REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT ALL ON SCHEMA public TO {role}"
            ),
            "restricting the public schema to the project role",
        )
        .await;
        let _ = sqlx::Connection::close(inside).await;
        schema?;
        Ok(password)
    }

    /// [`DatabaseProvisioner::drop_project`] with this crate's error type: for the
    /// production and the development database of `project`, `DROP DATABASE … WITH (FORCE)`
    /// (ending the sessions still connected, Postgres 13+) then `DROP ROLE`, each only if it
    /// exists, under the same advisory lock as provisioning.
    pub async fn drop_databases(&self, project: &ProjectId) -> Result<serde_json::Value, PgError> {
        let options = self
            .settings
            .admin_options(&self.settings.admin_database, ADMIN_STATEMENT_TIMEOUT);
        let mut admin = connect(&options, "connecting to the database cluster as admin").await?;
        let mut dropped = Vec::new();
        let mut absent = Vec::new();
        let mut result = Ok(());
        for dev in [false, true] {
            let names = self.names(project, dev);
            result = drop_one(&mut admin, &names, &mut dropped, &mut absent).await;
            if result.is_err() {
                break;
            }
        }
        // Closing the session also releases the advisory locks.
        let _ = sqlx::Connection::close(admin).await;
        result?;
        tracing::info!(%project, ?dropped, "project databases dropped");
        Ok(serde_json::json!({"dropped": dropped, "already_gone": absent}))
    }

    /// [`DatabaseProvisioner::migrate`] with this crate's error type.
    pub async fn migrate_database(
        &self,
        db: &ProjectDatabase,
        migrations: &[Migration],
    ) -> Result<Vec<String>, PgError> {
        migrations::apply(db, migrations, self.migration_timeout).await
    }
}

/// Creates `role` unless it exists; refuses an existing role with special attributes.
async fn ensure_role(admin: &mut PgConnection, role: &str) -> Result<(), PgError> {
    ensure(admin, Owned::Role(role)).await
}

/// Creates `database` owned by `role` unless it exists; refuses one owned by another role.
async fn ensure_database(
    admin: &mut PgConnection,
    database: &str,
    role: &str,
) -> Result<(), PgError> {
    ensure(admin, Owned::Database { database, role }).await
}

/// What a project owns in the cluster.
enum Owned<'a> {
    Role(&'a str),
    Database { database: &'a str, role: &'a str },
}

impl Owned<'_> {
    /// Whether it exists; an error when it exists but is not fit for the project.
    async fn exists(&self, admin: &mut PgConnection) -> Result<bool, PgError> {
        match *self {
            Owned::Role(role) => {
                let existing = sqlx::query(
                    "SELECT (rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR \
                     rolbypassrls) AS privileged, rolname = current_user AS is_admin \
                     FROM pg_roles WHERE rolname = $1",
                )
                .bind(role)
                .fetch_optional(&mut *admin)
                .await
                .map_err(PgError::sql("looking up the project role"))?;
                let Some(row) = existing else {
                    return Ok(false);
                };
                let privileged: bool = row.get("privileged");
                let is_admin: bool = row.get("is_admin");
                if privileged || is_admin {
                    return Err(PgError::Refused(format!(
                        "role {role} exists with privileges a project role must not have; \
                         refusing to use it for a project"
                    )));
                }
                Ok(true)
            }
            Owned::Database { database, role } => {
                let owner: Option<String> = sqlx::query_scalar(
                    "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
                )
                .bind(database)
                .fetch_optional(&mut *admin)
                .await
                .map_err(PgError::sql("looking up the project database"))?;
                match owner {
                    Some(owner) if owner != role => Err(PgError::Refused(format!(
                        "database {database} exists but is owned by {owner}, not {role}; \
                         refusing to hand it to the project"
                    ))),
                    Some(_) => Ok(true),
                    None => Ok(false),
                }
            }
        }
    }

    /// The statement that creates it, and what it does (for errors).
    fn create(&self) -> (String, &'static str) {
        match *self {
            Owned::Role(role) => (
                format!(
                    "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
                     NOREPLICATION NOBYPASSRLS",
                    quote_ident(role)
                ),
                "creating the project role",
            ),
            Owned::Database { database, role } => (
                format!(
                    "CREATE DATABASE {} OWNER {} TEMPLATE template0",
                    quote_ident(database),
                    quote_ident(role)
                ),
                "creating the project database",
            ),
        }
    }
}

impl std::fmt::Display for Owned<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owned::Role(role) => write!(f, "role {role}"),
            Owned::Database { database, .. } => write!(f, "database {database}"),
        }
    }
}

/// Creates `owned` unless it exists (refusing one that is not fit). A creation another
/// session won first looks again, three times at most.
async fn ensure(admin: &mut PgConnection, owned: Owned<'_>) -> Result<(), PgError> {
    for _ in 0..3 {
        if owned.exists(admin).await? {
            return Ok(());
        }
        let (sql, doing) = owned.create();
        match execute_ddl(admin, sql, doing).await {
            Ok(()) => return Ok(()),
            // Someone else created it first: look again.
            Err(PgError::Sql { ref source, .. }) if lost_race(source) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(PgError::Refused(format!(
        "{owned} keeps appearing and disappearing; try again"
    )))
}

/// Revokes `CONNECT` and `TEMPORARY` from `PUBLIC` on the admin database and `template1`
/// where `PUBLIC` still has them. Concurrent `GRANT`/`REVOKE` on one object can fail with
/// "tuple concurrently updated", and every provisioning call touches these two, so the
/// check and the change run under a cluster-wide advisory lock of their own.
async fn close_maintenance_databases(
    admin: &mut PgConnection,
    admin_database: &str,
) -> Result<(), PgError> {
    let key = lock_key("turbobackend maintenance databases");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *admin)
        .await
        .map_err(PgError::sql("waiting for the maintenance-database lock"))?;
    let result = async {
        for database in [admin_database, "template1"] {
            let open: bool = sqlx::query_scalar(
                "SELECT has_database_privilege('public', $1, 'CONNECT') \
                     OR has_database_privilege('public', $1, 'TEMPORARY')",
            )
            .bind(database)
            .fetch_one(&mut *admin)
            .await
            .map_err(PgError::sql(
                "reading the maintenance databases' privileges",
            ))?;
            if open {
                execute_ddl(
                    admin,
                    format!(
                        "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                        quote_ident(database)
                    ),
                    "closing the maintenance databases to project roles",
                )
                .await?;
            }
        }
        Ok(())
    }
    .await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *admin)
        .await
        .map_err(PgError::sql("releasing the maintenance-database lock"));
    result.and(unlocked.map(|_| ()))
}

/// Drops the database then the role of `names`, when they exist; notes each as `database
/// <name>` / `role <name>` in `dropped` or `absent`.
async fn drop_one(
    admin: &mut PgConnection,
    names: &DatabaseNames,
    dropped: &mut Vec<String>,
    absent: &mut Vec<String>,
) -> Result<(), PgError> {
    lock_project(admin, names).await?;
    let owned = [
        Owned::Database {
            database: &names.database,
            role: &names.role,
        },
        Owned::Role(&names.role),
    ];
    for owned in owned {
        let (exists, name, drop, looking_up, dropping) = match owned {
            Owned::Database { database, .. } => (
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                database,
                format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(database)
                ),
                "looking up the project database",
                "dropping the project database",
            ),
            Owned::Role(role) => (
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
                role,
                format!("DROP ROLE IF EXISTS {}", quote_ident(role)),
                "looking up the project role",
                "dropping the project role",
            ),
        };
        let exists: bool = sqlx::query_scalar(exists)
            .bind(name)
            .fetch_one(&mut *admin)
            .await
            .map_err(PgError::sql(looking_up))?;
        if exists {
            execute_ddl(admin, drop, dropping).await?;
            dropped.push(owned.to_string());
        } else {
            absent.push(owned.to_string());
        }
    }
    Ok(())
}

/// Takes the project's advisory lock (held until the session ends), which provisioning
/// and dropping its databases share.
async fn lock_project(admin: &mut PgConnection, names: &DatabaseNames) -> Result<(), PgError> {
    let key = lock_key(&format!("turbobackend provision {}", names.database));
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *admin)
        .await
        .map_err(PgError::sql("waiting for the provisioning lock"))?;
    Ok(())
}

/// duplicate_object, duplicate_database, unique_violation: another session created it.
fn lost_race(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("42710" | "42P04" | "23505"))
}

#[async_trait]
impl DatabaseProvisioner for PgProvisioner {
    async fn provision(
        &self,
        project: &ProjectId,
        dev: bool,
    ) -> Result<ProjectDatabase, PortError> {
        Ok(self.provision_database(project, dev).await?)
    }

    async fn migrate(
        &self,
        db: &ProjectDatabase,
        migrations: &[Migration],
    ) -> Result<Vec<String>, PortError> {
        Ok(self.migrate_database(db, migrations).await?)
    }

    async fn drop_project(&self, project: &ProjectId) -> Result<serde_json::Value, PortError> {
        Ok(self.drop_databases(project).await?)
    }
}
