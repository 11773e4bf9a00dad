//! The platform's schema: the numbered SQL files of the workspace's top-level `migrations/`
//! directory (`0001_platform.sql`, …), embedded at build time so a Lambda binary needs no
//! files beside it, and applied with sqlx's [`Migrator`] (tracked in `_sqlx_migrations`,
//! each file in its own transaction, under an advisory lock, refusing edited files).
//!
//! Adding a migration: add the file there and a line to [`FILES`]; a test checks that the
//! two agree.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::error::PgError;

/// `(file name, SQL)` of every platform migration, in order.
pub const FILES: &[(&str, &str)] = &[
    (
        "0001_platform.sql",
        include_str!("../../../migrations/0001_platform.sql"),
    ),
    (
        "0002_platform_more.sql",
        include_str!("../../../migrations/0002_platform_more.sql"),
    ),
    (
        "0003_oauth.sql",
        include_str!("../../../migrations/0003_oauth.sql"),
    ),
    (
        "0004_spending_totals.sql",
        include_str!("../../../migrations/0004_spending_totals.sql"),
    ),
    (
        "0005_project_lifecycle.sql",
        include_str!("../../../migrations/0005_project_lifecycle.sql"),
    ),
    (
        "0006_project_verification.sql",
        include_str!("../../../migrations/0006_project_verification.sql"),
    ),
];

/// The migrator for [`FILES`]. A file is `<version>_<description>.sql`.
pub fn migrator() -> Result<Migrator, PgError> {
    let mut migrations = Vec::with_capacity(FILES.len());
    for (file, sql) in FILES {
        let stem = file.strip_suffix(".sql").unwrap_or(file);
        let (version, description) = stem
            .split_once('_')
            .and_then(|(v, d)| Some((v.parse::<i64>().ok()?, d)))
            .ok_or_else(|| {
                PgError::Invalid(format!(
                    "migration file `{file}` is not `<number>_<name>.sql`"
                ))
            })?;
        migrations.push(Migration::new(
            version,
            Cow::Owned(description.replace('_', " ")),
            MigrationType::Simple,
            SqlStr::from_static(sql),
            false,
        ));
    }
    Ok(Migrator::with_migrations(migrations))
}

/// Brings the platform schema up to date. A function's cold start connects and calls this,
/// so the common case costs one query and no lock: when every migration is already
/// applied with an unchanged checksum, nothing more happens. Otherwise the migrator runs
/// (under its advisory lock), applying what is missing and refusing edited files.
pub async fn bring_up_to_date(pool: &sqlx::PgPool) -> Result<(), PgError> {
    let migrator = migrator()?;
    if up_to_date(pool, &migrator).await {
        return Ok(());
    }
    migrator.run(pool).await.map_err(PgError::Schema)
}

/// Whether every migration of `migrator` is recorded as applied with its checksum.
async fn up_to_date(pool: &sqlx::PgPool, migrator: &Migrator) -> bool {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            // No table yet, or no access: let the migrator decide.
            Err(_) => return false,
        };
    migrator.iter().all(|m| {
        applied
            .iter()
            .any(|(v, sum)| *v == m.version && sum.as_slice() == m.checksum.as_ref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_list_matches_the_migrations_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(embedded, on_disk);
        for (name, sql) in FILES {
            assert_eq!(
                std::fs::read_to_string(format!("{dir}/{name}")).unwrap(),
                *sql
            );
        }
    }

    #[test]
    fn versions_are_unique_and_increasing() {
        let m = migrator().unwrap();
        let versions: Vec<i64> = m.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(versions.len(), FILES.len());
    }
}
