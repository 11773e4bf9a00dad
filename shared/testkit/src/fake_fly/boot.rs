//! Booting a fake machine: pull the image from the real registry (every digest and diff_id
//! checked), unpack its layers into a temporary root, run its command with the host's
//! `node`, and mark the machine `started` once its HTTP check answers.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::Fly;

/// An app process and the directory holding its root file system and output.
pub(crate) struct Process {
    child: Child,
    pid: u32,
    port: u16,
    dir: TempDir,
}

impl Process {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("output.log")
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process group, reaps it and removes its directory (in the background).
    pub(crate) fn kill(mut self) {
        // SAFETY: kill(2) on the process group this fake created; no memory is touched.
        unsafe {
            libc::kill(-(self.pid as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        std::thread::spawn(move || {
            let _ = self.child.wait();
            drop(self.dir);
        });
    }
}

/// Boots machine `id` at `generation` in the background.
pub(super) fn start(fly: Arc<Fly>, id: String, generation: u64) {
    tokio::spawn(async move { run(fly, id, generation).await });
}

/// What is needed to run the image.
struct Prepared {
    dir: TempDir,
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    /// The service check path, if the config has an HTTP check.
    check_path: Option<String>,
    /// Why the check can never pass, though the process runs.
    check_blocked: Option<String>,
}

async fn run(fly: Arc<Fly>, id: String, generation: u64) {
    let current = |fly: &Fly| {
        let inner = fly.lock();
        inner
            .machines
            .get(&id)
            .filter(|m| m.generation == generation)
            .map(|m| (m.config.clone(), m.app.clone()))
    };
    let Some((config, app)) = current(&fly) else {
        return;
    };
    let secrets = fly
        .lock()
        .apps
        .get(&app)
        .map(|a| a.secrets.clone())
        .unwrap_or_default();
    let prepared = match prepare(&fly, &config, &secrets).await {
        Ok(p) => p,
        Err(e) => {
            set_state(&fly, &id, generation, "failed", Some(e));
            return;
        }
    };
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => {
            set_state(
                &fly,
                &id,
                generation,
                "failed",
                Some(format!("no free port: {e}")),
            );
            return;
        }
    };
    let process = match spawn(
        prepared.dir,
        &prepared.program,
        &prepared.args,
        &prepared.cwd,
        &prepared.env,
        port,
    ) {
        Ok(p) => p,
        Err(e) => {
            set_state(&fly, &id, generation, "failed", Some(e));
            return;
        }
    };
    {
        let mut inner = fly.lock();
        match inner
            .machines
            .get_mut(&id)
            .filter(|m| m.generation == generation)
        {
            Some(m) => {
                m.process = Some(process);
                m.pulls
                    .push(config["image"].as_str().unwrap_or("").to_owned());
                m.state = "starting".into();
                if let Some(why) = &prepared.check_blocked {
                    m.events.push(why.clone());
                }
            }
            None => {
                process.kill();
                return;
            }
        }
    }
    let check_url = prepared
        .check_path
        .as_ref()
        .map(|path| format!("http://127.0.0.1:{port}{path}"));
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = {
            let mut inner = fly.lock();
            let Some(m) = inner
                .machines
                .get_mut(&id)
                .filter(|m| m.generation == generation)
            else {
                return; // Updated or destroyed: whoever did it killed the process.
            };
            let exited = match m.process.as_mut().map(|p| p.child.try_wait()) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                m.state = "stopped".into();
                m.check_status = "critical".into();
                m.events.push(format!("the process exited: {status}"));
                return;
            }
            m.state == "started"
        };
        if started || prepared.check_blocked.is_some() {
            continue;
        }
        let passing = match &check_url {
            None => true,
            Some(url) => fly
                .http
                .get(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
        };
        if passing {
            let mut inner = fly.lock();
            if let Some(m) = inner
                .machines
                .get_mut(&id)
                .filter(|m| m.generation == generation)
            {
                m.state = "started".into();
                m.check_status = "passing".into();
            }
        }
    }
}

fn set_state(fly: &Fly, id: &str, generation: u64, state: &str, event: Option<String>) {
    let mut inner = fly.lock();
    if let Some(m) = inner
        .machines
        .get_mut(id)
        .filter(|m| m.generation == generation)
    {
        m.state = state.to_owned();
        if let Some(e) = event {
            tracing::info!(machine = id, "fake Fly: {e}");
            m.events.push(e);
        }
    }
}

async fn prepare(
    fly: &Fly,
    config: &Value,
    secrets: &BTreeMap<String, String>,
) -> Result<Prepared, String> {
    let image = config["image"].as_str().unwrap_or("");
    let (name, reference) = match image.split_once('@') {
        Some((name, digest)) => (name, digest),
        None => image
            .rsplit_once(':')
            .ok_or(format!("no tag or digest in {image}"))?,
    };
    let (registry, repository) = name
        .split_once('/')
        .ok_or(format!("no registry in {image}"))?;
    if registry != fly.registry {
        return Err(format!(
            "cannot pull {image}: only {} is reachable",
            fly.registry
        ));
    }
    let base = format!("http://{registry}/v2/{repository}");
    let manifest_bytes = fetch(
        fly,
        &format!("{base}/manifests/{reference}"),
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
    )
    .await?;
    if reference.starts_with("sha256:") && digest(&manifest_bytes) != reference {
        return Err(format!("the manifest of {image} does not match its digest"));
    }
    let manifest: Value =
        serde_json::from_slice(&manifest_bytes).map_err(|e| format!("manifest: {e}"))?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or("manifest without config")?;
    let config_bytes = fetch(fly, &format!("{base}/blobs/{config_digest}"), "*/*").await?;
    if digest(&config_bytes) != config_digest {
        return Err("the image config does not match its digest".into());
    }
    let image_config: Value =
        serde_json::from_slice(&config_bytes).map_err(|e| format!("config: {e}"))?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let diff_ids = image_config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if layers.len() != diff_ids.len() {
        return Err(format!(
            "{} layers but {} diff_ids",
            layers.len(),
            diff_ids.len()
        ));
    }

    let dir = TempDir::new().map_err(|e| format!("temporary directory: {e}"))?;
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).map_err(|e| e.to_string())?;
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        let layer_digest = layer["digest"].as_str().ok_or("a layer without digest")?;
        let blob = fetch(fly, &format!("{base}/blobs/{layer_digest}"), "*/*").await?;
        if digest(&blob) != layer_digest || layer["size"].as_u64() != Some(blob.len() as u64) {
            return Err(format!(
                "layer {layer_digest} does not match its descriptor"
            ));
        }
        let media_type = layer["mediaType"].as_str().unwrap_or("");
        let tar = if media_type.ends_with("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(blob.as_slice())
                .read_to_end(&mut out)
                .map_err(|e| format!("layer {layer_digest}: {e}"))?;
            out
        } else if media_type.ends_with(".tar") {
            blob
        } else {
            return Err(format!(
                "layer {layer_digest} has media type {media_type:?}"
            ));
        };
        if Some(digest(&tar).as_str()) != diff_id.as_str() {
            return Err(format!(
                "layer {layer_digest}: its uncompressed tar is not diff_id {diff_id}"
            ));
        }
        unpack_layer(&tar, &root).map_err(|e| format!("unpacking {layer_digest}: {e}"))?;
    }

    let run = &image_config["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let init = &config["init"];
    let entrypoint = if init["entrypoint"].is_array() {
        strings(&init["entrypoint"])
    } else {
        strings(&run["Entrypoint"])
    };
    let cmd = if init["cmd"].is_array() {
        strings(&init["cmd"])
    } else {
        strings(&run["Cmd"])
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    let Some(first) = argv.first() else {
        return Err("the image has no command".into());
    };
    if first != "node" && !first.ends_with("/node") {
        return Err(format!("the fake Fly runs node images only, not {first:?}"));
    }
    let program = host_node().ok_or("no node on the host PATH")?;
    let inside = |p: &str| match p.strip_prefix('/') {
        Some(rest) => root.join(rest).display().to_string(),
        None => p.to_owned(),
    };
    let args: Vec<String> = argv[1..].iter().map(|a| inside(a)).collect();
    let cwd = root.join(
        run["WorkingDir"]
            .as_str()
            .unwrap_or("/")
            .trim_start_matches('/'),
    );

    let mut env = BTreeMap::new();
    for entry in strings(&run["Env"]) {
        if let Some((k, v)) = entry.split_once('=') {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    if let Some(vars) = config["env"].as_object() {
        for (k, v) in vars {
            env.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
        }
    }
    env.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));

    let service = &config["services"][0];
    let check_path = service["checks"].as_array().and_then(|checks| {
        checks
            .iter()
            .find(|c| c["type"] == "http")
            .map(|c| c["path"].as_str().unwrap_or("/").to_owned())
    });
    let check_blocked = service["internal_port"].as_u64().and_then(|internal| {
        let port = env.get("PORT").cloned().unwrap_or_default();
        (port != internal.to_string()).then(|| {
            format!("the app listens on PORT={port:?} but the service forwards to internal_port {internal}")
        })
    });
    Ok(Prepared {
        dir,
        program,
        args,
        cwd,
        env,
        check_path,
        check_blocked,
    })
}

async fn fetch(fly: &Fly, url: &str, accept: &str) -> Result<Vec<u8>, String> {
    let resp = fly
        .http
        .get(url)
        .header("accept", accept)
        // Fly pulls from its own registry with the app's credentials; a test registry
        // without auth ignores them.
        .basic_auth("x", Some(&fly.docker_password))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: {}", resp.status()));
    }
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("GET {url}: {e}"))
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", tb_core::encoding::sha256_hex(bytes))
}

/// Unpacks one layer over `root`, applying whiteouts; device files are skipped.
fn unpack_layer(tar: &[u8], root: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(std::io::Error::other(format!(
                "{} leaves the root",
                path.display()
            )));
        }
        if name == ".wh..wh..opq" {
            if let Ok(children) = std::fs::read_dir(root.join(&parent)) {
                for child in children.flatten() {
                    let p = child.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let p = root.join(&parent).join(hidden);
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            continue;
        }
        match entry.header().entry_type() {
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => continue,
            _ => {
                entry.unpack_in(root)?;
            }
        }
    }
    Ok(())
}

fn host_node() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("node"))
            .find(|p| p.is_file())
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(
    dir: TempDir,
    program: &Path,
    args: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
    port: u16,
) -> Result<Process, String> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.path().join("output.log")).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    Ok(Process {
        pid: child.id(),
        child,
        port,
        dir,
    })
}
