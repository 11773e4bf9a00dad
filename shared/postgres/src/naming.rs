//! The role and database names of a project, derived from its [`ProjectId`] only.
//!
//! A project `P` gets role and database `{prefix}_{p}`, its dev database `{prefix}_{p}_dev`
//! (role `{prefix}_{p}_dev`), where `p` is the id lower-cased with `-` replaced by `_`.
//!
//! That mapping alone would let two projects share a database (`Shop` and `shop`, `a-b` and
//! `a_b`, or `x_dev` in production and `x` in development), and Postgres silently truncates
//! names longer than 63 bytes. So when `p` is not the id itself, ends in `_dev`, ends in
//! something that looks like our hash suffix, or would be too long, the name becomes
//! `{prefix}_{p, shortened}_{16 hex chars of SHA-256(id)}`. Plain names never end in `_dev`
//! nor in `_<16 hex>`; hashed ones always end in `_<16 hex>`; so distinct (project, dev)
//! pairs get distinct names unless SHA-256 collides in 64 bits.

use sha2::{Digest, Sha256};
use tb_core::domain::ProjectId;

use crate::error::PgError;

/// Longest identifier Postgres keeps (NAMEDATALEN - 1).
pub const MAX_NAME_LEN: usize = 63;
const DEV_SUFFIX: &str = "_dev";
const HASH_HEX: usize = 16;
const MAX_PREFIX_LEN: usize = 16;

/// Where a project's database lives on the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseNames {
    pub role: String,
    pub database: String,
}

/// Checks a name prefix: 1-16 characters of `[a-z0-9_]`, starting with a letter.
pub fn validate_prefix(prefix: &str) -> Result<(), PgError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.as_bytes()[0].is_ascii_lowercase()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PgError::Settings(format!(
            "invalid database name prefix `{}`: use 1-{MAX_PREFIX_LEN} characters of a-z, 0-9 \
             and `_`, starting with a letter",
            prefix.chars().take(40).collect::<String>()
        )))
    }
}

/// The names of `project`'s production (`dev = false`) or development database. `prefix`
/// must have passed [`validate_prefix`].
pub fn database_names(prefix: &str, project: &ProjectId, dev: bool) -> DatabaseNames {
    let id = project.as_str();
    let canonical: String = id
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    // Plain names are sized so the dev suffix always fits too.
    let fits = prefix.len() + 1 + canonical.len() + DEV_SUFFIX.len() <= MAX_NAME_LEN;
    let plain =
        canonical == id && fits && !canonical.ends_with(DEV_SUFFIX) && !ends_with_hash(&canonical);
    let base = if plain {
        format!("{prefix}_{canonical}")
    } else {
        let digest = Sha256::digest(id.as_bytes());
        let hash = &tb_core::encoding::hex(&digest)[..HASH_HEX];
        let room = MAX_NAME_LEN - DEV_SUFFIX.len() - (1 + HASH_HEX) - (prefix.len() + 1);
        let short = &canonical[..canonical.len().min(room)];
        format!("{prefix}_{short}_{hash}")
    };
    let name = if dev {
        format!("{base}{DEV_SUFFIX}")
    } else {
        base
    };
    debug_assert!(name.len() <= MAX_NAME_LEN);
    DatabaseNames {
        role: name.clone(),
        database: name,
    }
}

/// True if `s` ends in `_` and 16 lowercase hex digits, the shape of a hash suffix.
fn ends_with_hash(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > HASH_HEX
        && b[b.len() - HASH_HEX - 1] == b'_'
        && b[b.len() - HASH_HEX..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(id: &str, dev: bool) -> String {
        database_names("tb", &ProjectId::parse(id).unwrap(), dev).database
    }

    #[test]
    fn plain_ids_map_to_readable_names() {
        assert_eq!(names("proj_1a2b", false), "tb_proj_1a2b");
        assert_eq!(names("proj_1a2b", true), "tb_proj_1a2b_dev");
        let n = database_names("tb", &ProjectId::parse("proj_x").unwrap(), true);
        assert_eq!(n.role, n.database);
    }

    #[test]
    fn ids_that_would_collide_get_distinct_hashed_names() {
        let all = [
            names("shop", false),
            names("Shop", false),
            names("SHOP", false),
            names("a-b", false),
            names("a_b", false),
            names("x_dev", false),
            names("x", true),
            names("x_dev", true),
            names("x", false),
        ];
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "{all:?}");
        assert!(names("Shop", false).starts_with("tb_shop_"));
        assert!(names("x_dev", false).starts_with("tb_x_dev_"));
    }

    #[test]
    fn a_plain_id_cannot_imitate_a_hashed_name() {
        let hashed = names("Shop", false);
        let imitation = hashed.strip_prefix("tb_").unwrap();
        assert_ne!(names(imitation, false), hashed);
    }

    #[test]
    fn long_ids_stay_within_postgres_limits_and_distinct() {
        let a = format!("{}a", "p".repeat(63));
        let b = format!("{}b", "p".repeat(63));
        for dev in [false, true] {
            let (na, nb) = (names(&a, dev), names(&b, dev));
            assert!(na.len() <= MAX_NAME_LEN && nb.len() <= MAX_NAME_LEN);
            assert_ne!(na, nb);
        }
        let long_prefix = "abcdefghijklmnop";
        validate_prefix(long_prefix).unwrap();
        let n = database_names(long_prefix, &ProjectId::parse(&a).unwrap(), true);
        assert!(n.database.len() <= MAX_NAME_LEN);
    }

    #[test]
    fn prefixes_are_restricted() {
        assert!(validate_prefix("tb").is_ok());
        assert!(validate_prefix("t_9").is_ok());
        for bad in ["", "9tb", "Tb", "t-b", "t\"b", "abcdefghijklmnopq"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_hostile_project_id_cannot_be_built_at_all() {
        for hostile in [
            "x\"; DROP DATABASE postgres; --",
            "x'; DROP ROLE postgres; --",
            "a b",
            "a\"b",
            "a'b",
            "",
        ] {
            assert!(ProjectId::parse(hostile).is_err(), "{hostile}");
        }
    }
}
