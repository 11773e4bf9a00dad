//! A new project starts from the template: its first `npm install` is served by the warmed
//! npm cache without one request to the registry, and its `server/utils/db.ts` follows the
//! `sslmode` of `DATABASE_URL` against a real Postgres that offers TLS with a certificate
//! from no trusted CA (as managed Postgres such as RDS does).
//!
//! npm is configured as in the local sandboxes (the shared cache, preferred to the
//! registry, the default registry) with its proxy set to a loopback listener that counts
//! connections: any request npm made would go there, be counted, and fail.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tb_core::domain::ProjectId;
use tb_core::sandbox::Sandbox;
use tb_local::npm_cache::{Warmed, marker, warm};
use tb_sandbox::{LocalSandbox, LocalSandboxConfig, LocalSandboxProvider};

/// A proxy on loopback that accepts connections, counts them and closes them.
fn counting_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (url, count)
}

/// A sandbox seeded with the template (commands as this user, so loopback is reachable)
/// whose npm uses `cache`, prefers it, and reaches the network only through `proxy`.
async fn sandbox(root: &std::path::Path, cache: &std::path::Path, proxy: &str) -> LocalSandbox {
    let provider = LocalSandboxProvider::new(LocalSandboxConfig {
        extra_env: [
            ("npm_config_cache", cache.display().to_string()),
            ("npm_config_prefer_offline", "true".into()),
            ("npm_config_proxy", proxy.to_string()),
            ("npm_config_https_proxy", proxy.to_string()),
            ("npm_config_noproxy", String::new()),
            ("npm_config_fetch_retries", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        ..LocalSandboxConfig::new(root)
    });
    let sandbox = provider.create_local(&Default::default()).await.unwrap();
    let base = tb_pipeline::base::seed(None, &ProjectId::generate(), &sandbox)
        .await
        .unwrap();
    assert_eq!(base.template.as_deref(), Some(tb_pipeline::template::NAME));
    sandbox
}

async fn sh(sandbox: &LocalSandbox, command: &str) -> (Option<i32>, String) {
    let out = sandbox
        .exec(command, Duration::from_secs(600))
        .await
        .unwrap();
    (out.exit_code, out.output)
}

#[tokio::test]
async fn a_new_projects_first_npm_install_reads_only_the_warmed_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, requests) = counting_proxy();

    // With an empty cache the same install must go to the network: the counter works.
    let cold = dir.path().join("cold-cache");
    let s = sandbox(&dir.path().join("cold"), &cold, &proxy).await;
    let (code, out) = sh(&s, "npm install").await;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        requests.load(Ordering::SeqCst) > 0,
        "npm asked nothing: {out}"
    );

    // Warm a fresh cache from the real registry, once per lockfile.
    let cache = dir.path().join("cache");
    assert_eq!(warm(&cache).await.unwrap(), Warmed::Now);
    assert!(marker(&cache).exists());
    assert_eq!(warm(&cache).await.unwrap(), Warmed::Already);

    let before = requests.load(Ordering::SeqCst);
    let s = sandbox(&dir.path().join("warm"), &cache, &proxy).await;
    let (code, out) = sh(&s, "npm install && npm ls --depth=0").await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        before,
        "the first npm install made a request: {out}"
    );
    for name in ["nitropack@2.13.6", "pg@8.23.1", "typescript@5.9.3"] {
        assert!(out.contains(name), "{name} not installed: {out}");
    }
    // And npm's own offline mode agrees: everything the install needs is in the cache.
    let (code, out) = sh(&s, "rm -rf node_modules && npm install --offline").await;
    assert_eq!(code, Some(0), "{out}");
    // The template as seeded type-checks and builds with what the cache gave.
    let (code, out) = sh(&s, "npm run check && npm run build && ls .output/server").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("index.mjs"), "{out}");
}

/// Starts the built app with `env`, calls `path` and stops the app: (status, body).
async fn call(sandbox: &LocalSandbox, env: &str, path: &str) -> (u16, Value) {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let script = format!(
        "{env} PORT={port} node .output/server/index.mjs > app.log 2>&1 & app=$!\n\
         for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:{port}/ && break; sleep 0.1; done\n\
         curl -s -w '\\n%{{http_code}}' http://127.0.0.1:{port}{path}; kill $app"
    );
    let (code, out) = sh(sandbox, &script).await;
    assert_eq!(code, Some(0), "{out}");
    let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (
        status
            .parse()
            .unwrap_or_else(|_| panic!("no status: {out}")),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_templates_database_connection_follows_the_urls_sslmode() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // The test suite's shared cache makes this fast when warm; any cache works here.
    let shared = std::env::var("HOME").map(|h| format!("{h}/.cache/turbobackend/npm-cache"));
    let cache = shared.map(std::path::PathBuf::from).unwrap_or(cache);
    warm(&cache).await.unwrap();
    let (proxy, _) = counting_proxy();
    let s = sandbox(&dir.path().join("app"), &cache, &proxy).await;
    // A route that reports whether the app's own connection uses TLS.
    s.write_file(
        &tb_core::sandbox::WorkspacePath::parse("server/api/tls.get.ts").unwrap(),
        b"export default defineEventHandler(async () => (await db().query(\"SELECT ssl, current_setting('ssl') AS server FROM pg_stat_ssl WHERE pid = pg_backend_pid()\")).rows[0]);\n",
    )
    .await
    .unwrap();
    let (code, out) = sh(&s, "npm install && npm run build").await;
    assert_eq!(code, Some(0), "{out}");

    let url = "postgres://postgres@127.0.0.1:5432/postgres";
    let (status, body) = call(&s, "", "/api/health").await;
    assert_eq!(
        (status, &body["database"]),
        (200, &Value::from("not configured"))
    );
    let (status, body) = call(&s, &format!("DATABASE_URL='{url}'"), "/api/health").await;
    assert_eq!(
        (status, &body["database"]),
        (200, &Value::from("ok")),
        "{body}"
    );
    let (_, body) = call(
        &s,
        &format!("DATABASE_URL='{url}?sslmode=disable'"),
        "/api/tls",
    )
    .await;
    assert_eq!(body["ssl"], false, "{body}");
    if body["server"] != "on" {
        eprintln!(
            "the local Postgres does not offer TLS (ssl = {}): the TLS cases are not run",
            body["server"]
        );
        return;
    }
    // `require`: encrypted, the certificate (self-signed here, a provider's CA on RDS) not
    // verified, so the connection works.
    let (status, body) = call(
        &s,
        &format!("DATABASE_URL='{url}?sslmode=require'"),
        "/api/tls",
    )
    .await;
    assert_eq!((status, &body["ssl"]), (200, &Value::Bool(true)), "{body}");
    let (status, body) = call(
        &s,
        &format!("DATABASE_URL='{url}?sslmode=require'"),
        "/api/health",
    )
    .await;
    assert_eq!(
        (status, &body["database"]),
        (200, &Value::from("ok")),
        "{body}"
    );
    // `verify-full` and `verify-ca` check the certificate against Node's trusted CAs: refused,
    // and the health check says so (503), so such a deployment fails its health check.
    for mode in ["verify-full", "verify-ca"] {
        let (status, body) = call(
            &s,
            &format!("DATABASE_URL='{url}?sslmode={mode}'"),
            "/api/health",
        )
        .await;
        assert_eq!(status, 503, "{mode}: {body}");
        assert!(
            body["code"].as_str().is_some_and(|c| c.contains("CERT")),
            "{mode}: {body}"
        );
    }
    // The URL the provisioner builds for a project on a cluster set to `require` (its own
    // role, a generated password, percent-encoded) connects through db.ts, encrypted.
    let mut cluster = tb_postgres::testing::cluster();
    cluster.ssl_mode = Some("require".into());
    let provisioner = tb_postgres::PgProvisioner::new(cluster);
    let cleanup = tb_postgres::testing::Cleanup::default();
    let project = ProjectId::generate();
    cleanup.names(&provisioner.names(&project, false));
    let db = tb_core::ports::DatabaseProvisioner::provision(&provisioner, &project, false)
        .await
        .unwrap();
    assert!(
        db.url.ends_with("?sslmode=require"),
        "the URL carries the mode"
    );
    let (status, body) = call(&s, &format!("DATABASE_URL='{}'", db.url), "/api/tls").await;
    assert_eq!((status, &body["ssl"]), (200, &Value::Bool(true)), "{body}");
    let (status, body) = call(&s, &format!("DATABASE_URL='{}'", db.url), "/api/health").await;
    assert_eq!(
        (status, &body["database"]),
        (200, &Value::from("ok")),
        "{body}"
    );
    // An unknown mode is an error, not a silent downgrade.
    let (status, _) = call(
        &s,
        &format!("DATABASE_URL='{url}?sslmode=on'"),
        "/api/health",
    )
    .await;
    assert_eq!(status, 503);
    // Why db.ts reads the mode itself: node-postgres given the same URL verifies the
    // certificate for `require`, and is refused by this server.
    let (code, out) = sh(
        &s,
        &format!(
            "node -e \"const pg = require('pg'); const c = new pg.Client({{ connectionString: '{url}?sslmode=require' }}); c.connect().then(() => {{ console.log('connected'); return c.end(); }}, (e) => {{ console.log('refused: ' + e.code); }})\" 2>/dev/null"
        ),
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("refused:") && out.contains("CERT"), "{out}");
}
