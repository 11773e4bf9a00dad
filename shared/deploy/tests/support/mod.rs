//! Helpers shared by the deploy tests: the test registry, artifacts holding a small real
//! Node app, and a synthetic base image (Docker Hub is out of reach here).

#![allow(dead_code)] // Each test file uses its own subset.

use bytes::Bytes;
use tb_core::encoding::sha256_hex;
use tb_core::ports::Artifact;
use tb_deploy::ImageRef;
use tb_deploy::registry::{OCI_INDEX, OCI_MANIFEST, RegistryClient};

/// `host:port` of the real registry the tests push to, from `TB_TEST_REGISTRY`.
pub fn test_registry() -> String {
    match std::env::var("TB_TEST_REGISTRY") {
        Ok(r) if !r.trim().is_empty() => r.trim().trim_start_matches("http://").to_owned(),
        _ => panic!(
            "TB_TEST_REGISTRY is not set: these tests push images to a real OCI registry. \
             From the repository root run `infra/registry.sh start` and \
             `eval \"$(infra/registry.sh env)\"`, then run the tests again."
        ),
    }
}

/// The same registry under another name (`127.0.0.1` ↔ `localhost`): to the client, a
/// different registry, so nothing can be mounted across.
pub fn registry_alias(registry: &str) -> String {
    if let Some(port) = registry.strip_prefix("127.0.0.1:") {
        format!("localhost:{port}")
    } else if let Some(port) = registry.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        panic!("TB_TEST_REGISTRY must be 127.0.0.1:<port> or localhost:<port>, not {registry}")
    }
}

/// A name no earlier run used: `<prefix>-<random hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", tb_core::ids::random_hex(5))
}

/// One entry of a hand-made artifact tar.
pub struct File<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
    pub mtime: u64,
    pub uid: u64,
}

/// A tar.gz of `files` in the order given, with their times and owners.
pub fn tar_gz(files: &[File<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(f.data.len() as u64);
        h.set_mode(0o640);
        h.set_mtime(f.mtime);
        h.set_uid(f.uid);
        h.set_gid(f.uid);
        h.set_username("builder").unwrap();
        b.append_data(&mut h, f.path, f.data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

pub fn artifact(tar_gz: Vec<u8>) -> Artifact {
    Artifact {
        sha256: sha256_hex(&tar_gz),
        tar_gz,
    }
}

/// How the test app behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `/api/health` answers 200.
    Healthy,
    /// It runs, but `/api/health` answers 503 forever.
    Unhealthy,
    /// It exits at once with status 3.
    Crashes,
}

/// A Nitro-like build output: `.output/server/index.mjs` (a plain `node:http` server, no
/// npm needed) importing `.output/server/chunks/users.mjs`. `/api/users` answers the
/// version, the users, whether `DATABASE_URL` is set (never its value), `NODE_ENV` and the
/// working directory.
pub fn node_app(version: &str, health: Health) -> Artifact {
    let index = format!(
        r#"import http from 'node:http';
import {{ users }} from './chunks/users.mjs';
const VERSION = {version:?};
if ({crash}) {{ console.error('crashing on purpose'); process.exit(3); }}
const send = (res, status, body) => {{
  res.writeHead(status, {{ 'content-type': 'application/json' }});
  res.end(JSON.stringify(body));
}};
const server = http.createServer((req, res) => {{
  const path = new URL(req.url, 'http://app').pathname;
  if (path === '/api/health') return {healthy} ? send(res, 200, {{ ok: true, version: VERSION }}) : send(res, 503, {{ ok: false }});
  if (path === '/api/users') return send(res, 200, {{
    version: VERSION,
    users,
    database_url_set: Boolean(process.env.DATABASE_URL),
    node_env: process.env.NODE_ENV ?? null,
    cwd: process.cwd(),
  }});
  // An app that prints what it connects with: its log must come back redacted.
  console.error('no route for', path, 'with database', process.env.DATABASE_URL);
  send(res, 404, {{ error: 'not found' }});
}});
server.listen(Number(process.env.PORT), process.env.HOST || '0.0.0.0', () => console.log('listening', process.env.PORT));
"#,
        crash = health == Health::Crashes,
        healthy = health == Health::Healthy,
    );
    let users = b"export const users = [{ id: 1, name: 'Ada' }, { id: 2, name: 'Grace' }];\n";
    artifact(tar_gz(&[
        File {
            path: ".output/server/index.mjs",
            data: index.as_bytes(),
            mtime: 1_700_000_000,
            uid: 1000,
        },
        File {
            path: ".output/server/chunks/users.mjs",
            data: users,
            mtime: 1_700_000_000,
            uid: 1000,
        },
        File {
            path: ".output/nitro.json",
            data: b"{\"preset\":\"node-server\"}",
            mtime: 1_700_000_000,
            uid: 1000,
        },
    ]))
}

/// What [`push_synthetic_base`] pushed.
pub struct SyntheticBase {
    pub reference: ImageRef,
    /// The `linux/amd64` manifest's digest (the index's other entry is `linux/arm64`).
    pub amd64_digest: String,
    pub layer_digest: String,
    pub layer_diff_id: String,
}

/// Pushes the synthetic "Node base image" ([`tb_testkit::oci::synthetic_node_base`]) to
/// `registry`/`repository`:`20-slim`.
pub async fn push_synthetic_base(registry: &str, repository: &str) -> SyntheticBase {
    let base = tb_testkit::oci::synthetic_node_base();
    let client = RegistryClient::new(registry, None).unwrap();
    for blob in std::iter::once(&base.layer).chain(&base.configs) {
        client
            .push_blob(repository, &blob.digest, Bytes::from(blob.bytes.clone()))
            .await
            .unwrap();
    }
    let mut amd64_digest = String::new();
    for (arch, manifest) in &base.manifests {
        client
            .put_manifest(
                repository,
                &manifest.digest,
                OCI_MANIFEST,
                manifest.bytes.clone(),
            )
            .await
            .unwrap();
        if arch == "amd64" {
            amd64_digest = manifest.digest.clone();
        }
    }
    client
        .put_manifest(repository, "20-slim", OCI_INDEX, base.index.bytes.clone())
        .await
        .unwrap();
    SyntheticBase {
        reference: ImageRef::new(registry, repository, "20-slim").unwrap(),
        amd64_digest,
        layer_digest: base.layer.digest,
        layer_diff_id: base.layer_diff_id,
    }
}

/// GETs `url` and parses the JSON answer; panics on anything else.
pub async fn get_json(url: &str) -> serde_json::Value {
    let resp = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "GET {url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {e}: {text}"))
}
