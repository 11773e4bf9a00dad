//! The embedded default's composition root: every port gets its local adapter, all in one
//! process, state in one SQLite file under the data directory.
//!
//! | port | adapter |
//! |---|---|
//! | state store, platform records | SQLite (`<data>/turbobackend.sqlite`) |
//! | queues | in-process channels; the state store is the truth (a restart re-drives) |
//! | sandbox | a directory per request; commands in a bubblewrap boundary (`<data>/sandboxes`) |
//! | archive | a directory (`<data>/archive`) |
//! | code host | a bare git repository per project (`<data>/git`) |
//! | database | the Postgres cluster of `DB_CLUSTER_*` when set, else skipped |
//! | deployer | a local `node` process on a free port (`<data>/deploy`) |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tb_codehost::LocalGitCodeHost;
use tb_core::ports::{DatabaseProvisioner, DevDatabases, PlatformRecords};
use tb_deploy::{LocalConfig, LocalDeployer};
use tb_local::DirArchive;
use tb_local::{LocalDb, LocalQueue, SqliteRecords, SqliteStore};
use tb_models::ModelSettings;
use tb_pipeline::{Finalizer, Requests, Worker};
use tb_postgres::{ClusterSettings, PgDevDatabases, PgProvisioner};
use tb_sandbox::{Isolation, Limits, LocalSandboxConfig, LocalSandboxProvider};
use tokio::task::JoinHandle;

/// Settings of the local binary, read once at start.
pub struct Settings {
    pub data_dir: PathBuf,
    pub model: ModelSettings,
    pub agent: tb_core::agent::AgentConfig,
    pub prices: tb_core::pricing::PriceTable,
    pub cluster: Option<ClusterSettings>,
    pub port: u16,
    /// npm's cache for the sandboxes (`TB_NPM_CACHE`, default `<data>/npm-cache`).
    pub npm_cache: String,
    pub callback_secret: Option<String>,
    /// The front door's per-user limits (`TB_MAX_CONCURRENT_REQUESTS`, `TB_SPENDING_CAP_USD`).
    pub limits: tb_frontdoor::Limits,
    /// Agent slices run at once (`TB_WORKERS`, default 2); 0 runs none: requests wait queued
    /// in the store until a process with workers starts (its sweeper re-drives them).
    pub workers: usize,
    /// How commands are confined, or why they cannot be here (no bubblewrap, user
    /// namespaces refused).
    pub isolation: Result<Isolation, String>,
    /// `TB_ALLOW_UNISOLATED_COMMANDS`: `serve` starts even where commands cannot be
    /// isolated.
    pub allow_unisolated: bool,
    /// How long an outage of the model, the sandbox or a finalizer step's service is waited
    /// out (`TB_OUTAGE_RETRY_SECS`).
    pub outage_retry: Option<std::time::Duration>,
    /// Repair rounds after a failed verification (`TB_REPAIR_ROUNDS`).
    pub repair_rounds: u32,
}

impl Settings {
    /// From the environment over the configuration file (see `config.rs`); the error names
    /// the setting that is missing or wrong.
    pub fn from_env() -> anyhow::Result<Self> {
        let config = crate::config::Config::load()?;
        let var = |k: &str| config.var(k);
        let data_dir = PathBuf::from(var("TB_DATA_DIR").unwrap_or_else(|| ".turbobackend".into()));
        // Owner only: it holds every user's conversations, the keys and the callback secret.
        tb_local::private::secure_dir(&data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let port = match var("TB_PORT") {
            Some(p) => p
                .parse()
                .with_context(|| format!("TB_PORT={p} is not a port number"))?,
            None => 8787,
        };
        let data_dir = data_dir.canonicalize()?;
        let model = ModelSettings::from_env(var)?;
        let prices = tb_core::settings::price_table_for(var, model.model_id())?;
        Ok(Settings {
            npm_cache: var("TB_NPM_CACHE").unwrap_or_else(|| path(&data_dir, "npm-cache")),
            callback_secret: var("TB_CALLBACK_SECRET"),
            data_dir,
            model,
            agent: tb_core::settings::agent_config(var)?,
            prices,
            cluster: match var("DB_CLUSTER_HOST") {
                Some(_) => Some(ClusterSettings::from_env(var)?),
                None => None,
            },
            port,
            limits: tb_frontdoor::Limits::from_env(var)?,
            workers: workers(var)?,
            isolation: {
                let isolation = isolation(var)?;
                isolation.probe().map(|()| isolation)
            },
            allow_unisolated: flag(var, "TB_ALLOW_UNISOLATED_COMMANDS")?,
            outage_retry: tb_pipeline::settings::seconds(&var, "TB_OUTAGE_RETRY_SECS")?,
            repair_rounds: tb_pipeline::FinalizerSettings::from_env(var)?.repair_rounds,
        })
    }
}

/// `TB_WORKERS`: agent slices run at once, 0 to 64 (default 2).
pub fn workers(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<usize> {
    match var("TB_WORKERS") {
        None => Ok(2),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_WORKERS)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "TB_WORKERS={v} is not a whole number from 0 to {MAX_WORKERS} (0: serve only, run no requests)"
                )
            }),
    }
}

/// The sandbox boundary's settings: egress allow-list and limits (see README).
pub fn isolation(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Isolation> {
    let d = Limits::default();
    let number = |key: &str, default: u64, unit: u64| -> anyhow::Result<u64> {
        match var(key) {
            None => Ok(default * unit),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .and_then(|n| n.checked_mul(unit))
                .ok_or_else(|| anyhow::anyhow!("{key}={v} is not a whole number above 0")),
        }
    };
    let cpu_millicores = match var("TB_SANDBOX_CPUS") {
        None => d.cpu_millicores,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|c| c.is_finite() && *c >= 0.01 && *c <= 1024.0)
            .map(|c| (c * 1000.0).round() as u64)
            .ok_or_else(|| {
                anyhow::anyhow!("TB_SANDBOX_CPUS={v} is not a number of cores (e.g. 1 or 0.5)")
            })?,
    };
    let mut isolation = Isolation {
        limits: Limits {
            processes: number("TB_SANDBOX_PROCESSES", d.processes, 1)?,
            memory_bytes: number("TB_SANDBOX_MEMORY_MB", d.memory_bytes >> 20, 1 << 20)?,
            cpu_millicores,
            file_size_bytes: number("TB_SANDBOX_FILE_SIZE_MB", d.file_size_bytes >> 20, 1 << 20)?,
            cpu_seconds: number("TB_SANDBOX_CPU_SECONDS", d.cpu_seconds, 1)?,
            disk_bytes: number("TB_SANDBOX_DISK_MB", d.disk_bytes >> 20, 1 << 20)?,
        },
        ..Isolation::new()
    };
    if let Some(hosts) = var("TB_SANDBOX_EGRESS_HOSTS") {
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let name = host.trim_start_matches('.');
            if name.parse::<std::net::IpAddr>().is_ok()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                anyhow::bail!(
                    "TB_SANDBOX_EGRESS_HOSTS: `{host}` is not a host name (names only, like registry.yarnpkg.com or .example.com)"
                );
            }
            isolation.egress.allow_hosts.push(host.to_ascii_lowercase());
        }
    }
    isolation.read_only.extend(Isolation::node_outside_usr());
    Ok(isolation)
}

fn flag(var: impl Fn(&str) -> Option<String>, key: &str) -> anyhow::Result<bool> {
    match var(key).as_deref().map(str::trim) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(v) => anyhow::bail!("{key}={v} is not true or false"),
    }
}

/// Where npm's cache is seen inside the sandbox boundary.
const NPM_CACHE_INSIDE: &str = "/var/cache/npm";

/// Each worker runs an agent and its commands (npm and the like): more than a few per core
/// only queue on the machine.
const MAX_WORKERS: usize = 64;

/// The running platform.
pub struct App {
    pub requests: Arc<Requests>,
    /// The local apps; `serve` starts the recorded ones again at start.
    pub deployer: Arc<LocalDeployer>,
    pub records: Arc<dyn PlatformRecords>,
    /// The OAuth authorization server's state, in the same database as the records.
    pub oauth: Arc<dyn tb_core::ports::OAuthStore>,
    pub data_dir: PathBuf,
    dispatcher: Option<JoinHandle<()>>,
}

impl App {
    /// Opens the data directory; with `run`, starts the workers (and the sweeper, which
    /// re-drives whatever a killed process left unfinished).
    pub async fn open(settings: &Settings, run: bool) -> anyhow::Result<App> {
        let dir = &settings.data_dir;
        let db = LocalDb::open(dir.join("turbobackend.sqlite")).await?;
        let store = Arc::new(SqliteStore::new(db.clone()));
        let sqlite_records = Arc::new(SqliteRecords::new(db));
        let oauth: Arc<dyn tb_core::ports::OAuthStore> = sqlite_records.clone();
        let records: Arc<dyn PlatformRecords> = sqlite_records;
        let (queue, receivers) = LocalQueue::new(dir);
        let queue: Arc<dyn tb_pipeline::Queue> = Arc::new(queue);
        // One npm cache for every project, used before the registry: with it warm,
        // `npm install` does not ask the registry about every package again.
        std::fs::create_dir_all(&settings.npm_cache)
            .with_context(|| format!("creating the npm cache {}", settings.npm_cache))?;
        // New projects start from the template: with its packages in the cache, their first
        // `npm install` asks the registry nothing. Once per lockfile; without the registry,
        // installs simply fetch what they need later.
        if run {
            let cache = Path::new(&settings.npm_cache);
            if !tb_local::npm_cache::marker(cache).exists() {
                eprintln!("preparing the npm cache with the template's packages (once)…");
            }
            if let Err(e) = tb_local::npm_cache::warm(cache).await {
                eprintln!("WARNING: {e}; projects will fetch their packages from the registry");
            }
        }
        let mut isolation = settings.isolation.clone().ok();
        let npm_cache = match &mut isolation {
            Some(iso) => {
                iso.shared
                    .push((PathBuf::from(&settings.npm_cache), NPM_CACHE_INSIDE.into()));
                NPM_CACHE_INSIDE.to_string()
            }
            None => settings.npm_cache.clone(),
        };
        let sandboxes = Arc::new(LocalSandboxProvider::new(LocalSandboxConfig {
            extra_env: BTreeMap::from([
                ("npm_config_cache".to_string(), npm_cache),
                ("npm_config_prefer_offline".to_string(), "true".to_string()),
            ]),
            isolation,
            ..LocalSandboxConfig::new(dir.join("sandboxes"))
        }));
        let databases: Option<Arc<dyn DatabaseProvisioner>> = settings
            .cluster
            .clone()
            .map(|c| Arc::new(PgProvisioner::new(c)) as Arc<dyn DatabaseProvisioner>);
        let dev_databases = databases
            .clone()
            .map(|p| Arc::new(PgDevDatabases::new(p)) as Arc<dyn DevDatabases>);
        let archive: Arc<dyn tb_core::ports::Archive> =
            Arc::new(DirArchive::new(dir.join("archive")));
        let requests = Arc::new(
            Requests::new(
                store.clone(),
                queue.clone(),
                records.clone(),
                settings.agent.clone(),
            )
            .with_limits(settings.limits.clone())
            // Local mode: callbacks to this machine are the point.
            .allowing_private_callbacks(),
        );
        let worker = Arc::new(Worker {
            requests: requests.clone(),
            sandboxes: sandboxes.clone(),
            model: settings.model.build()?,
            dev_databases,
            archive: Some(archive.clone()),
            prices: settings.prices.clone(),
            slices: {
                let mut s = tb_local::dispatch::local_slice_settings();
                if let Some(d) = settings.outage_retry {
                    s.outage_retry = d;
                }
                s
            },
        });
        let deployer = Arc::new(LocalDeployer::new(LocalConfig {
            // Deployed apps run agent-written code: inside the same kind of boundary.
            confine: settings.isolation.clone().ok().map(|iso| {
                Arc::new(move |dir: &Path, app: &[std::ffi::OsString]| iso.app_args(dir, app))
                    as tb_deploy::local::Confine
            }),
            ..LocalConfig::new(dir.join("deploy"))
        }));
        let secret = callback_secret(settings, dir)?;
        let finalizer = Arc::new(Finalizer {
            store,
            sandboxes,
            archive,
            code_host: Arc::new(LocalGitCodeHost::new(dir.join("git"))?),
            databases,
            deployer: deployer.clone(),
            records: records.clone(),
            notifier: Some(Arc::new(tb_notify::HttpNotifier::new(secret.clone(), true))),
            // Local apps answer on loopback.
            prober: Arc::new(tb_notify::HttpProber::new(true)),
            // Receipts are signed with the callbacks' key.
            receipt_key: Some(tb_pipeline::receipt::SigningKey::new(secret)),
            queue,
            settings: {
                let mut s = tb_local::dispatch::local_finalizer_settings();
                if let Some(d) = settings.outage_retry {
                    s.outage_retry = d;
                }
                s.repair_rounds = settings.repair_rounds;
                s
            },
        });
        let dispatcher = match (run, settings.workers) {
            (false, _) => None,
            // Front door only: the store is the truth, so messages are dropped here; the
            // sweeper of the next process with workers re-drives the requests.
            (true, 0) => Some(tokio::spawn(discard(receivers))),
            (true, n) => Some(tb_local::dispatch::run_workers(
                worker, finalizer, receivers, n,
            )),
        };
        Ok(App {
            requests,
            deployer,
            records,
            oauth,
            data_dir: dir.clone(),
            dispatcher,
        })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(d) = self.dispatcher.take() {
            d.abort();
        }
    }
}

/// Takes the queues' messages and drops them (`TB_WORKERS=0`).
async fn discard(receivers: tb_local::Receivers) {
    let tb_local::Receivers {
        mut work,
        mut finalize,
    } = receivers;
    loop {
        tokio::select! {
            Some(_) = work.recv() => {}
            Some(_) = finalize.recv() => {}
            else => return,
        }
    }
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// `TB_CALLBACK_SECRET`, or a random secret kept in the data directory (`callback-secret`),
/// made on first use: receivers verify callbacks with it.
fn callback_secret(settings: &Settings, dir: &Path) -> anyhow::Result<String> {
    if let Some(s) = &settings.callback_secret {
        return Ok(s.clone());
    }
    let file = dir.join("callback-secret");
    if let Ok(s) = std::fs::read_to_string(&file) {
        tb_local::private::secure_file(&file)
            .with_context(|| format!("restricting {} to its owner", file.display()))?;
        return Ok(s.trim().to_string());
    }
    let secret = tb_core::encoding::hex(&rand::random::<[u8; 32]>());
    tb_local::private::write_new_secret(&file, secret.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tb_core::MicroUsd;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn limits_and_workers_default_to_three_fifty_dollars_and_two() {
        let l = tb_frontdoor::Limits::from_env(env(&[])).unwrap();
        assert_eq!(l, tb_frontdoor::Limits::default());
        assert_eq!(l.max_concurrent_per_user, 3);
        assert_eq!(l.spending_cap_per_user, MicroUsd::from_micros(50_000_000));
        assert_eq!(workers(env(&[])).unwrap(), 2);
    }

    #[test]
    fn limits_and_workers_are_read() {
        let l = tb_frontdoor::Limits::from_env(env(&[
            ("TB_MAX_CONCURRENT_REQUESTS", "100000"),
            ("TB_SPENDING_CAP_USD", " 12.50 "),
        ]))
        .unwrap();
        assert_eq!(l.max_concurrent_per_user, 100_000);
        assert_eq!(l.spending_cap_per_user, MicroUsd::from_micros(12_500_000));
        assert_eq!(
            l.max_body_bytes,
            tb_frontdoor::Limits::default().max_body_bytes
        );
        assert_eq!(workers(env(&[("TB_WORKERS", "0")])).unwrap(), 0);
        assert_eq!(workers(env(&[("TB_WORKERS", "8")])).unwrap(), 8);
    }

    #[test]
    fn sandbox_limits_and_egress_hosts_are_read_and_checked() {
        let iso = isolation(env(&[])).unwrap();
        assert_eq!(iso.limits, Limits::default());
        assert_eq!(iso.egress.allow_hosts, ["registry.npmjs.org"]);
        let iso = isolation(env(&[
            ("TB_SANDBOX_MEMORY_MB", "512"),
            ("TB_SANDBOX_CPUS", "0.5"),
            ("TB_SANDBOX_DISK_MB", "100"),
            (
                "TB_SANDBOX_EGRESS_HOSTS",
                "registry.yarnpkg.com, .example.org",
            ),
        ]))
        .unwrap();
        assert_eq!(iso.limits.memory_bytes, 512 << 20);
        assert_eq!(iso.limits.cpu_millicores, 500);
        assert_eq!(iso.limits.disk_bytes, 100 << 20);
        assert_eq!(
            iso.egress.allow_hosts,
            ["registry.npmjs.org", "registry.yarnpkg.com", ".example.org"]
        );
        for (name, bad) in [
            ("TB_SANDBOX_PROCESSES", "0"),
            ("TB_SANDBOX_MEMORY_MB", "lots"),
            ("TB_SANDBOX_CPUS", "-1"),
            ("TB_SANDBOX_EGRESS_HOSTS", "169.254.169.254"),
            ("TB_SANDBOX_EGRESS_HOSTS", "http://x.org/"),
        ] {
            let e = isolation(|k| (k == name).then(|| bad.to_string()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(name), "{e}");
        }
        assert!(flag(env(&[]), "TB_ALLOW_UNISOLATED_COMMANDS").is_ok_and(|f| !f));
        assert!(flag(env(&[("X", "yes")]), "X").is_err());
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (name, bad) in [
            ("TB_MAX_CONCURRENT_REQUESTS", "0"),
            ("TB_MAX_CONCURRENT_REQUESTS", "-1"),
            ("TB_MAX_CONCURRENT_REQUESTS", "three"),
            ("TB_MAX_CONCURRENT_REQUESTS", "99999999999"),
            ("TB_SPENDING_CAP_USD", "0"),
            ("TB_SPENDING_CAP_USD", "-5"),
            ("TB_SPENDING_CAP_USD", "fifty"),
            ("TB_SPENDING_CAP_USD", "1.0000001"),
        ] {
            let e = tb_frontdoor::Limits::from_env(|k| (k == name).then(|| bad.to_string()))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("{name}={bad} ")), "{e}");
        }
        for bad in ["-1", "two", "65", "1.5"] {
            let e = workers(|k| (k == "TB_WORKERS").then(|| bad.to_string()))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("TB_WORKERS={bad} ")), "{e}");
        }
    }
}
