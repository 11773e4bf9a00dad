//! The real git repositories behind the fake: one bare repository per GitHub repository,
//! read and written with git plumbing (`hash-object`, `update-index`, `write-tree`,
//! `commit-tree`, `update-ref`), so whatever the fake accepts a real `git clone` sees.
//!
//! Everything here is blocking; the handlers call it from `spawn_blocking`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// A failed `git` command: its stderr.
#[derive(Debug)]
pub(crate) struct GitFailed(pub String);

/// Runs git against bare repositories with a clean environment.
pub(crate) struct GitStore {
    home: PathBuf,
}

/// A commit as GitHub shows it.
pub(crate) struct CommitInfo {
    pub sha: String,
    pub tree: String,
    pub parents: Vec<String>,
    pub author: Person,
    pub committer: Person,
    pub message: String,
}

pub(crate) struct Person {
    pub name: String,
    pub email: String,
    /// ISO 8601.
    pub date: String,
}

/// One entry of `ls-tree`.
pub(crate) struct TreeItem {
    pub mode: String,
    pub kind: String,
    pub sha: String,
    pub size: Option<u64>,
    pub path: String,
}

impl GitStore {
    /// `home` must be an empty directory.
    pub fn new(home: PathBuf) -> Self {
        GitStore { home }
    }

    /// `git args…` with `GIT_DIR=repo`; stdout on success.
    pub fn git(
        &self,
        repo: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Result<String, GitFailed> {
        let mut command = Command::new("git");
        command
            .args(args)
            .env_clear()
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .current_dir(&self.home)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        if let Some(repo) = repo {
            command.env("GIT_DIR", repo);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .map_err(|e| GitFailed(format!("running git: {e}")))?;
        let writer = stdin.zip(child.stdin.take()).map(|(bytes, mut pipe)| {
            let bytes = bytes.to_vec();
            std::thread::spawn(move || pipe.write_all(&bytes))
        });
        let output = child
            .wait_with_output()
            .map_err(|e| GitFailed(format!("waiting for git: {e}")))?;
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        if !output.status.success() {
            return Err(GitFailed(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn init_bare(&self, repo: &Path) -> Result<(), GitFailed> {
        if let Some(parent) = repo.parent() {
            std::fs::create_dir_all(parent).map_err(|e| GitFailed(e.to_string()))?;
        }
        let path = repo.to_string_lossy();
        self.git(
            None,
            &["init", "--bare", "-q", "-b", "main", &path],
            &[],
            None,
        )?;
        Ok(())
    }

    /// True when the repository has no ref at all (GitHub: "Git Repository is empty.").
    pub fn is_empty(&self, repo: &Path) -> Result<bool, GitFailed> {
        Ok(self
            .git(Some(repo), &["for-each-ref", "--count=1"], &[], None)?
            .trim()
            .is_empty())
    }

    /// `blob`, `tree`, `commit`, `tag`, or `None` if there is no such object.
    pub fn object_type(&self, repo: &Path, sha: &str) -> Option<String> {
        if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.git(Some(repo), &["cat-file", "-t", sha], &[], None)
            .ok()
            .map(|t| t.trim().to_owned())
    }

    pub fn write_blob(&self, repo: &Path, contents: &[u8]) -> Result<String, GitFailed> {
        Ok(self
            .git(
                Some(repo),
                &["hash-object", "-w", "--stdin"],
                &[],
                Some(contents),
            )?
            .trim()
            .to_owned())
    }

    /// The commit a full ref name (`refs/heads/main`) points at.
    pub fn resolve(&self, repo: &Path, reference: &str) -> Option<String> {
        self.git(
            Some(repo),
            &[
                "rev-parse",
                "-q",
                "--verify",
                &format!("{reference}^{{commit}}"),
            ],
            &[],
            None,
        )
        .ok()
        .map(|s| s.trim().to_owned())
    }

    /// Moves (or creates, with `old` = `None`) a ref, only if it still has `old`.
    pub fn update_ref(
        &self,
        repo: &Path,
        reference: &str,
        new: &str,
        old: Option<&str>,
    ) -> Result<(), GitFailed> {
        let old = old.unwrap_or("0000000000000000000000000000000000000000");
        self.git(Some(repo), &["update-ref", reference, new, old], &[], None)?;
        Ok(())
    }

    pub fn is_ancestor(&self, repo: &Path, ancestor: &str, descendant: &str) -> bool {
        self.git(
            Some(repo),
            &["merge-base", "--is-ancestor", ancestor, descendant],
            &[],
            None,
        )
        .is_ok()
    }

    /// Builds a tree in a temporary index: starting from `base` (a tree), then running
    /// `edit` (which receives the index path for `GIT_INDEX_FILE`), then `write-tree`.
    pub fn build_tree(
        &self,
        repo: &Path,
        base: Option<&str>,
        edit: impl FnOnce(&str) -> Result<(), GitFailed>,
    ) -> Result<String, GitFailed> {
        let scratch = tempfile::tempdir().map_err(|e| GitFailed(e.to_string()))?;
        let index = scratch.path().join("index");
        let index = index.to_string_lossy().into_owned();
        let env = [("GIT_INDEX_FILE", index.as_str())];
        if let Some(base) = base {
            self.git(Some(repo), &["read-tree", base], &env, None)?;
        }
        edit(&index)?;
        Ok(self
            .git(Some(repo), &["write-tree"], &env, None)?
            .trim()
            .to_owned())
    }

    /// Runs `git args…` against the temporary index `index`. Some index commands
    /// (`read-tree --prefix`, `ls-files`, `update-index --stdin`) refuse to run without a
    /// work tree: the empty home stands in (none of them reads or writes it); pathspecs
    /// are literal.
    pub fn with_index(
        &self,
        repo: &Path,
        index: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<String, GitFailed> {
        let home = self.home.to_string_lossy();
        let env = [
            ("GIT_INDEX_FILE", index),
            ("GIT_WORK_TREE", home.as_ref()),
            ("GIT_LITERAL_PATHSPECS", "1"),
        ];
        self.git(Some(repo), args, &env, stdin)
    }

    /// Removes `path` (a file, or a directory with everything in it) from the temporary
    /// index `index`, if it is there.
    pub fn remove_from_index(&self, repo: &Path, index: &str, path: &str) -> Result<(), GitFailed> {
        let listed = self.with_index(
            repo,
            index,
            &["ls-files", "-z", "--cached", "--", path],
            None,
        )?;
        if !listed.is_empty() {
            self.with_index(
                repo,
                index,
                &["update-index", "--force-remove", "-z", "--stdin"],
                Some(listed.as_bytes()),
            )?;
        }
        Ok(())
    }

    /// `git commit-tree`; dates are ISO 8601 (or git's own formats), `None` = now.
    pub fn commit_tree(
        &self,
        repo: &Path,
        tree: &str,
        parents: &[String],
        message: &str,
        author: &Person,
        committer: &Person,
    ) -> Result<String, GitFailed> {
        let mut args = vec!["commit-tree".to_owned(), tree.to_owned()];
        for parent in parents {
            args.push("-p".into());
            args.push(parent.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env = vec![
            ("GIT_AUTHOR_NAME", author.name.as_str()),
            ("GIT_AUTHOR_EMAIL", author.email.as_str()),
            ("GIT_COMMITTER_NAME", committer.name.as_str()),
            ("GIT_COMMITTER_EMAIL", committer.email.as_str()),
        ];
        if !author.date.is_empty() {
            env.push(("GIT_AUTHOR_DATE", author.date.as_str()));
        }
        if !committer.date.is_empty() {
            env.push(("GIT_COMMITTER_DATE", committer.date.as_str()));
        }
        Ok(self
            .git(Some(repo), &args, &env, Some(message.as_bytes()))?
            .trim()
            .to_owned())
    }

    pub fn commit(&self, repo: &Path, sha: &str) -> Result<CommitInfo, GitFailed> {
        let out = self.git(
            Some(repo),
            &[
                "show",
                "-s",
                "--format=%H%n%T%n%P%n%an%n%ae%n%aI%n%cn%n%ce%n%cI%n%B",
                sha,
            ],
            &[],
            None,
        )?;
        let mut lines = out.splitn(10, '\n');
        let mut next = || lines.next().unwrap_or("").to_owned();
        let sha = next();
        let tree = next();
        let parents = next().split_whitespace().map(str::to_owned).collect();
        let author = Person {
            name: next(),
            email: next(),
            date: next(),
        };
        let committer = Person {
            name: next(),
            email: next(),
            date: next(),
        };
        // GitHub shows the message without the newlines git keeps at its end.
        let message = next().trim_end_matches('\n').to_owned();
        Ok(CommitInfo {
            sha,
            tree,
            parents,
            author,
            committer,
            message,
        })
    }

    /// The entries of a tree: top level, or every level (trees included) if `recursive`.
    pub fn ls_tree(
        &self,
        repo: &Path,
        tree: &str,
        recursive: bool,
    ) -> Result<Vec<TreeItem>, GitFailed> {
        let mut args = vec!["ls-tree", "-z", "-l", "--full-tree"];
        if recursive {
            args.extend(["-r", "-t"]);
        }
        args.push(tree);
        let out = self.git(Some(repo), &args, &[], None)?;
        let mut items = Vec::new();
        for record in out.split('\0').filter(|r| !r.is_empty()) {
            let Some((meta, path)) = record.split_once('\t') else {
                continue;
            };
            let mut fields = meta.split_whitespace();
            let (Some(mode), Some(kind), Some(sha), Some(size)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            items.push(TreeItem {
                mode: mode.to_owned(),
                kind: kind.to_owned(),
                sha: sha.to_owned(),
                size: size.parse().ok(),
                path: path.to_owned(),
            });
        }
        Ok(items)
    }
}

impl CommitInfo {
    /// GitHub's JSON for a Git Data commit.
    pub fn to_json(&self, repo_url: &str) -> Value {
        let person = |p: &Person| json!({ "name": p.name, "email": p.email, "date": p.date });
        json!({
            "sha": self.sha,
            "node_id": format!("C_{}", self.sha),
            "url": format!("{repo_url}/git/commits/{}", self.sha),
            "author": person(&self.author),
            "committer": person(&self.committer),
            "message": self.message,
            "tree": { "sha": self.tree, "url": format!("{repo_url}/git/trees/{}", self.tree) },
            "parents": self.parents.iter().map(|p| json!({
                "sha": p,
                "url": format!("{repo_url}/git/commits/{p}"),
            })).collect::<Vec<_>>(),
            "verification": { "verified": false, "reason": "unsigned", "signature": null, "payload": null },
        })
    }
}

impl TreeItem {
    pub fn to_json(&self, repo_url: &str) -> Value {
        let mut item = json!({
            "path": self.path,
            "mode": self.mode,
            "type": self.kind,
            "sha": self.sha,
            "url": format!("{repo_url}/git/{}s/{}", self.kind, self.sha),
        });
        if let Some(size) = self.size {
            item["size"] = json!(size);
        }
        item
    }
}
