//! What a request starts from: for a change request, the project as its last successful
//! request left it; for a new project, the platform's template.
//!
//! The worker seeds the sandbox with that snapshot before the first iteration and records a
//! [`ProjectBase`]; the agent is told about it in its prompt, and the tools keep the
//! migrations already applied to the project's database as they are (append-only).

use serde::{Deserialize, Serialize};

use crate::sandbox::{Sandbox, SandboxError, WorkspacePath};

/// Where the applied migrations' original text is kept in the sandbox (never part of the
/// snapshot: `.turbobackend/` is left out), so the model can restore one it changed.
pub const APPLIED_COPY_DIR: &str = ".turbobackend/applied";

/// The project a request starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectBase {
    /// The request whose snapshot the sandbox was seeded from (empty for a template).
    pub from_request: String,
    /// The template a new project was seeded from (`nitro-pg`), instead of a request's
    /// snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Every file of the project, sorted.
    pub files: Vec<String>,
    /// The migrations applied to the project's database, in name order.
    pub applied_migrations: Vec<AppliedMigration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMigration {
    /// The file name under `migrations/` (`001_users.sql`).
    pub name: String,
    pub sha256: String,
}

impl ProjectBase {
    /// The file name a new migration should start with (`002_`): one past the highest
    /// number applied.
    pub fn next_migration_prefix(&self) -> String {
        let highest = self
            .applied_migrations
            .iter()
            .filter_map(|m| number_of(&m.name))
            .max()
            .unwrap_or(0);
        format!("{:03}_", highest + 1)
    }

    /// What the model is told, after the system prompt.
    pub fn prompt(&self) -> String {
        if let Some(name) = &self.template {
            return template_prompt(name, &self.files);
        }
        let mut s = String::from(
            "## This is a change to an existing project\nThe working directory already holds the project as it is deployed now (dependencies are not installed: run `npm install` before building). Read the files you need before changing them, keep what works, and change only what the request asks for. The platform commits your changes on top of the project's history and updates the same deployment.\n\nThe project's files:\n",
        );
        for f in &self.files {
            s.push_str(&format!("- {f}\n"));
        }
        if self.applied_migrations.is_empty() {
            s.push_str("\nNo migration has been applied to the project's database yet.\n");
        } else {
            s.push_str("\nMigrations already applied to the project's database (append-only: never edit, rename or delete these; `finish` is refused while one differs):\n");
            for m in &self.applied_migrations {
                s.push_str(&format!("- migrations/{}\n", m.name));
            }
            s.push_str(&format!(
                "Put any schema change in a new migration named `migrations/{}<what>.sql` (then the next number, and so on).\n",
                self.next_migration_prefix()
            ));
        }
        s
    }

    fn applied(&self, path: &str) -> Option<&AppliedMigration> {
        let name = path.strip_prefix("migrations/")?;
        self.applied_migrations.iter().find(|m| m.name == name)
    }

    /// Why writing or deleting `path` is refused: it is (or holds) an applied migration.
    pub fn refuse_change(&self, path: &WorkspacePath, deleting: bool) -> Option<String> {
        let p = path.as_str();
        let hit = if let Some(m) = self.applied(p) {
            Some(m.name.clone())
        } else if deleting {
            self.applied_migrations
                .iter()
                .find(|m| {
                    let full = format!("migrations/{}", m.name);
                    p.is_empty() || full.starts_with(&format!("{p}/"))
                })
                .map(|m| m.name.clone())
        } else {
            None
        };
        hit.map(|name| {
            format!(
                "migrations/{name} is already applied to the project's database, so it cannot be {}: migrations are append-only. Put the change in a new migration, migrations/{}<what>.sql.",
                if deleting { "deleted" } else { "changed" },
                self.next_migration_prefix()
            )
        })
    }

    /// Why `finish` is refused: an applied migration was changed or deleted (by a command),
    /// or a new migration is not numbered after the applied ones (its number is taken).
    pub async fn refuse_finish(
        &self,
        sandbox: &dyn Sandbox,
    ) -> Result<Option<String>, SandboxError> {
        let mut problems = Vec::new();
        for m in &self.applied_migrations {
            let path = WorkspacePath::parse(&format!("migrations/{}", m.name))
                .map_err(|e| SandboxError::Invalid(e.to_string()))?;
            let restore = format!(
                "restore it with `mkdir -p migrations && cp {APPLIED_COPY_DIR}/{} migrations/`",
                m.name
            );
            match sandbox.read_file(&path).await {
                Ok(bytes) if crate::ids::sha256_hex(&bytes) == m.sha256 => {}
                Ok(_) => problems.push(format!("migrations/{} was edited; {restore}", m.name)),
                Err(SandboxError::NotFound(_)) => {
                    problems.push(format!("migrations/{} was deleted; {restore}", m.name))
                }
                Err(e) => return Err(e),
            }
        }
        if !self.applied_migrations.is_empty() {
            let dir = WorkspacePath::parse("migrations").expect("valid");
            let listed = match sandbox.list(&dir).await {
                Ok(l) => l,
                Err(SandboxError::NotFound(_)) => Vec::new(),
                Err(e) => return Err(e),
            };
            let next = self.next_migration_prefix();
            for entry in listed {
                let Some(name) = entry.path.strip_prefix("migrations/") else {
                    continue;
                };
                if !entry.is_dir
                    && name.ends_with(".sql")
                    && self.applied(&entry.path).is_none()
                    && number_of(name).is_none_or(|n| n < number_of(&next).unwrap_or(0))
                {
                    problems.push(format!(
                        "migrations/{name} is new but is not numbered after the applied ones; rename it to migrations/{next}…"
                    ));
                }
            }
        }
        Ok((!problems.is_empty()).then(|| {
            format!(
                "Not finished: migrations are append-only (the applied ones are in the project's database).\n- {}\nFix this, then call `finish` again.",
                problems.join("\n- ")
            )
        }))
    }
}

/// What a new project is told about the template it starts from.
fn template_prompt(name: &str, files: &[String]) -> String {
    let mut s = format!(
        "## This project starts from the platform's template ({name})\nThe working directory already holds a Nitro + PostgreSQL project that builds and answers `GET /api/health`. Keep its layout and build on it; do not recreate these files:\n"
    );
    for f in files {
        s.push_str(&format!("- {f}\n"));
    }
    s.push_str(
        "\n- `package.json` pins `nitropack`, `pg` and TypeScript, with the scripts `build`, `dev`, `start` and `check` (`npm run check` type-checks). `package-lock.json` pins every package: keep it, and add a package with `npm install <name>` only when you need one.\n\
- Dependencies are not installed yet: run `npm install` first. The template's packages are in a local cache, so it normally takes seconds and asks the registry nothing.\n\
- `server/utils/db.ts` (auto-imported in `server/`) exports `db()`, the pool from `DATABASE_URL` with the platform's TLS settings (a 503 when no database is configured), `hasDatabase()`, and `dbError(e)`, which maps a Postgres error to the HTTP error to throw (`catch (e) { throw dbError(e); }`: 23505 → 409, 23503 → 409, 23502/23514/22P02 → 400, else 500 without the SQL text). Use them rather than a pool of your own, and keep its TLS handling.\n\
- `server/api/health.get.ts` answers `{ status: \"ok\" }` and, when `DATABASE_URL` is set, runs `SELECT 1` first: the deployment's health check is the app's first database call. Keep it.\n\
- There are no migrations yet: the first is `migrations/001_<what>.sql`.\n",
    );
    s
}

/// The number a migration's name starts with (`002_posts.sql` → 2).
fn number_of(name: &str) -> Option<u64> {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ProjectBase {
        ProjectBase {
            from_request: "req_1".into(),
            template: None,
            files: vec!["migrations/001_users.sql".into(), "package.json".into()],
            applied_migrations: vec![AppliedMigration {
                name: "001_users.sql".into(),
                sha256: "x".into(),
            }],
        }
    }

    #[test]
    fn applied_migrations_and_their_folders_are_refused_and_new_ones_get_the_next_number() {
        let b = base();
        assert_eq!(b.next_migration_prefix(), "002_");
        let p = |s| WorkspacePath::parse(s).unwrap();
        assert!(
            b.refuse_change(&p("migrations/001_users.sql"), false)
                .is_some()
        );
        assert!(
            b.refuse_change(&p("./migrations/001_users.sql"), true)
                .is_some()
        );
        assert!(b.refuse_change(&p("migrations"), true).is_some());
        assert!(b.refuse_change(&p(""), true).is_some());
        assert!(b.refuse_change(&p("migrations"), false).is_none());
        assert!(
            b.refuse_change(&p("migrations/002_posts.sql"), false)
                .is_none()
        );
        assert!(
            b.refuse_change(&p("server/api/users.get.ts"), true)
                .is_none()
        );
        let prompt = b.prompt();
        assert!(
            prompt.contains("- migrations/001_users.sql")
                && prompt.contains("migrations/002_<what>.sql"),
            "{prompt}"
        );
    }

    #[test]
    fn a_template_base_says_so_and_lists_its_files() {
        let b = ProjectBase {
            template: Some("nitro-pg".into()),
            files: vec!["package.json".into(), "server/utils/db.ts".into()],
            ..ProjectBase::default()
        };
        let prompt = b.prompt();
        assert!(
            prompt.contains("starts from the platform's template (nitro-pg)")
                && prompt.contains("- server/utils/db.ts")
                && prompt.contains("run `npm install` first")
                && !prompt.contains("change to an existing project"),
            "{prompt}"
        );
        assert_eq!(b.next_migration_prefix(), "001_");
        // Its serialised form, kept on the request, reads back; an older one without the
        // field still does.
        let back: ProjectBase = serde_json::from_value(serde_json::to_value(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        let old: ProjectBase = serde_json::from_value(
            serde_json::json!({"from_request": "req_1", "files": [], "applied_migrations": []}),
        )
        .unwrap();
        assert_eq!(old.template, None);
    }
}
