//! The template a new project starts from: a Nitro + `pg` project kept in the repository
//! (`templates/nitro-pg/`), built into the binaries so the worker needs nothing else to seed
//! a sandbox with it.
//!
//! Its `package-lock.json` pins every package, so its `node_modules` can come from a cache
//! prepared ahead of time: locally the npm cache every sandbox shares is warmed with these
//! packages once (`tb_local::npm_cache`), and on Daytona the sandbox snapshot's image holds
//! a cache made from the same lockfile (`infra/sandbox-image/`). Either way a new project's
//! first `npm install` reads only the cache.

use tb_core::ports::{Snapshot, SnapshotFile};
use tb_core::sandbox::WorkspacePath;

/// The template's name, as the prompt and the request's `seed` step give it.
pub const NAME: &str = "nitro-pg";

macro_rules! template_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../../../templates/nitro-pg/", $path)))),*]
    };
}

/// Every file of the template, by path. A test checks this list against the directory.
pub const FILES: &[(&str, &[u8])] = template_files![
    ".gitignore",
    ".npmrc",
    "README.md",
    "nitro.config.ts",
    "package-lock.json",
    "package.json",
    "server/api/health.get.ts",
    "server/utils/db.ts",
    "tsconfig.json",
];

/// The template as a snapshot, sorted by path.
pub fn snapshot() -> Snapshot {
    let mut files: Vec<SnapshotFile> = FILES
        .iter()
        .map(|(path, contents)| SnapshotFile {
            path: WorkspacePath::parse(path).expect("the template's paths are relative"),
            contents: contents.to_vec(),
            executable: false,
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Snapshot { files }
}

/// One file of the template (`package.json`, `package-lock.json`, …).
pub fn file(path: &str) -> Option<&'static [u8]> {
    FILES.iter().find(|(p, _)| *p == path).map(|(_, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.file_type().unwrap().is_dir() {
                if !crate::snapshot::EXCLUDED_DIRS.contains(&name.as_str()) {
                    walk(root, &entry.path(), out);
                }
            } else {
                let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
                out.push(rel.to_string_lossy().to_string());
            }
        }
    }

    #[test]
    fn the_embedded_files_are_the_template_directory() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../templates/nitro-pg");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let embedded: Vec<String> = snapshot()
            .files
            .iter()
            .map(|f| f.path.as_str().to_string())
            .collect();
        assert_eq!(
            embedded, on_disk,
            "list every file of templates/nitro-pg in template::FILES"
        );
        for (path, contents) in FILES {
            assert_eq!(std::fs::read(root.join(path)).unwrap(), *contents, "{path}");
        }
    }

    #[test]
    fn the_lockfile_pins_what_package_json_asks_for() {
        let pkg: serde_json::Value = serde_json::from_slice(file("package.json").unwrap()).unwrap();
        let lock: serde_json::Value =
            serde_json::from_slice(file("package-lock.json").unwrap()).unwrap();
        assert_eq!(lock["lockfileVersion"], 3);
        for kind in ["dependencies", "devDependencies"] {
            for (name, version) in pkg[kind].as_object().unwrap() {
                let version = version.as_str().unwrap();
                assert!(
                    version.chars().all(|c| c.is_ascii_digit() || c == '.'),
                    "{name}@{version} is not pinned to one version"
                );
                assert_eq!(lock["packages"][""][kind][name], version, "{name}");
                let locked = &lock["packages"][format!("node_modules/{name}")];
                assert_eq!(locked["version"], version, "{name}");
                assert!(
                    locked["integrity"].is_string(),
                    "{name}: the lockfile pins the package's content"
                );
            }
        }
        for script in ["build", "check"] {
            assert!(pkg["scripts"][script].is_string(), "no `{script}` script");
        }
    }
}
