//! A fake Fly.io: the Machines API subset a deployer uses (apps with create / get / delete,
//! IP assignments with list / allocate / release, secrets, machines with create / update /
//! get / list / wait / restart / delete) under `/v1`, and a
//! public proxy standing in for `https://<app>.fly.dev`.
//!
//! It is honest where a deployer's correctness depends on it. A machine created or updated
//! with `image: <registry>/<repository>@<digest>` really pulls that manifest, its config and
//! every layer from the real registry given to [`FakeFly::start`], checking every digest
//! and every `rootfs.diff_ids` entry against the uncompressed layer, and unpacks the layers
//! in order (whiteouts applied) into a temporary root file system. There is no container
//! runtime here, so the image's command runs on the host: its `Entrypoint` + `Cmd` must
//! start with `node` (the host's `node` stands in for the base image's), absolute paths in
//! the arguments and `WorkingDir` are taken inside the unpacked root, and the base layers'
//! programs are not used. The process gets the image's `Env`, then the machine's `env`,
//! then the app's secrets, then `PORT` set to a free loopback port (Fly's proxy would
//! forward to `internal_port`; the image must say `PORT=<internal_port>`, or the machine's
//! check fails) and `HOST=127.0.0.1`.
//!
//! A machine is `started` only once the process answers its service HTTP check (the first
//! `services[].checks[]` of type `http`); a process that exits makes it `stopped`, an image
//! that cannot be pulled or run makes it `failed`. Updates replace the whole config and
//! restart the machine; `POST …/restart` stops its process and boots the same config again
//! (the image pulled again by digest into a fresh root); `DELETE` needs `force=true` while
//! it runs.
//!
//! Every request needs the token as flyctl sends it (fly-go `tokens/tokens.go`,
//! `FlapsHeader`: `FlyV1 <macaroons>`, or `Bearer <user token>`); 401 otherwise. Image pulls
//! send user `x` and the token's `Docker()` form (no scheme) to the registry.
//!
//! New apps and machines are not visible at once: for a random short while after their
//! creation (`set_invisibility`) every call naming them answers 404 as if they did not
//! exist. fly-go waits for a new app (`flaps/flaps_apps.go`, `WaitForApp`, retrying 404 and
//! 401) and flyctl retries a new machine's `wait` (`internal/machine/wait.go`,
//! `WaitForStartOrStop`) for exactly this.
//!
//! App names are one global namespace: a name reserved "by another organization" answers
//! `POST /apps` with 422 and `GET /apps/{name}` with 403 (fly-go `AppNameAvailable`: "a
//! name held by another organization comes back as a 403"). Every app is in a private
//! network: the one named at creation (`network`, fly-go `CreateAppRequest`), else its
//! organization's default network, which all such apps share (Fly docs,
//! `machines/api/apps-resource`: "To segment the app into its own network, you can pass a
//! network argument … Any Machine started in such an app will not be able to access other
//! apps within their organization over the private network"; `reference/private-networking`). [`FakeFly::can_reach`] tells whether two apps' machines
//! could talk over `.internal`. Mutating calls
//! are limited per action and machine (or app) to 1 per second with a burst of 3 (429 with
//! `retry-after`), and 429s can be injected. Requests are recorded without any header
//! values: method, path with query, body and the status answered.

mod api;
mod boot;
mod proxy;
mod throttle;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

/// One request as the fake received it, without header values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub body: String,
    /// The status the fake answered.
    pub status: u16,
    /// Whether the `Authorization` header was the expected one.
    pub authorized: bool,
}

/// What a test sees of a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineView {
    pub id: String,
    pub state: String,
    pub image: String,
    pub instance_id: String,
    /// The host process running the image, while one runs.
    pub pid: Option<u32>,
    /// The image of every boot that pulled and started it, oldest first (each boot pulls
    /// by digest into a fresh root file system).
    pub pulls: Vec<String>,
}

/// A running fake Fly.io; stops (and kills every app process it started) when dropped.
pub struct FakeFly {
    state: Arc<Fly>,
    api_url: String,
    proxy_url: String,
    servers: Vec<crate::Server>,
}

impl FakeFly {
    /// Starts the API and the proxy on free ports of `127.0.0.1`, accepting `token`, and
    /// pulling images from `registry` (`127.0.0.1:5056` or `http://127.0.0.1:5056`).
    /// Panics if it cannot listen.
    pub async fn start(token: &str, registry: &str) -> FakeFly {
        let registry = registry
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let (expected_auth, docker_password) = flyctl_token_forms(token);
        let state = Arc::new(Fly {
            expected_auth,
            docker_password,
            registry,
            inner: Mutex::new(Inner::default()),
            http: reqwest::Client::new(),
        });
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Fly API");
        let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Fly proxy");
        let api_url = format!("http://{}/v1", api_listener.local_addr().expect("address"));
        let proxy_url = format!("http://{}", proxy_listener.local_addr().expect("address"));
        let api = Router::new()
            .nest("/v1", api::routes())
            .layer(middleware::from_fn_with_state(
                state.clone(),
                record_and_authorize,
            ))
            .with_state(state.clone());
        let proxy = proxy::routes().with_state(state.clone());
        let servers = vec![
            crate::serve(api_listener, api, "fake Fly API"),
            crate::serve(proxy_listener, proxy, "fake Fly proxy"),
        ];
        FakeFly {
            state,
            api_url,
            proxy_url,
            servers,
        }
    }

    /// The Machines API base, `http://127.0.0.1:PORT/v1`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The public URL of every app with `{app}` for its name, as a deployer's template:
    /// `http://127.0.0.1:PORT/{app}` (the proxy routes by the first path segment, where Fly
    /// routes by host name).
    pub fn public_url_template(&self) -> String {
        format!("{}/{{app}}", self.proxy_url)
    }

    /// Where `app` answers, through the proxy: `http://127.0.0.1:PORT/<app>`. Requests go to
    /// its started machine; 503 while it has none.
    pub fn app_url(&self, app: &str) -> String {
        format!("{}/{app}", self.proxy_url)
    }

    /// Makes `name` look taken by an app of another organization.
    pub fn reserve_app_name_for_other_org(&self, name: &str) {
        self.state.lock().reserved.insert(name.to_owned());
    }

    /// New apps and machines stay invisible (404) for a random time between `min` and
    /// `max` after their creation. The default is 0 to 300 ms.
    pub fn set_invisibility(&self, min: std::time::Duration, max: std::time::Duration) {
        self.state.lock().invisibility = (min, max.max(min));
    }

    /// The private network `app` was created in (`default` when none was named).
    pub fn network(&self, app: &str) -> Option<String> {
        let inner = self.state.lock();
        inner.apps.get(app).map(|a| a.network.clone())
    }

    /// Whether `app` exists (created and not deleted).
    pub fn app_exists(&self, app: &str) -> bool {
        self.state.lock().apps.contains_key(app)
    }

    /// Whether the machines of `a` and `b` could reach each other over Fly's private
    /// network: both exist, in the same organization and the same network.
    pub fn can_reach(&self, a: &str, b: &str) -> bool {
        let inner = self.state.lock();
        match (inner.apps.get(a), inner.apps.get(b)) {
            (Some(a), Some(b)) => a.org_slug == b.org_slug && a.network == b.network,
            _ => false,
        }
    }

    /// How many requests answered 404 because an app or machine was not visible yet.
    pub fn invisible_answers(&self) -> usize {
        self.state.lock().invisible_answers
    }

    /// The next `n` mutating calls answer 429 with `retry-after: 1`.
    pub fn fail_next_mutations_with_429(&self, n: u32) {
        self.state.lock().injected_429 = n;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// The machines of `app` that are not destroyed, oldest first.
    pub fn machines(&self, app: &str) -> Vec<MachineView> {
        self.all_machines(app)
            .into_iter()
            .filter(|m| m.state != "destroyed")
            .collect()
    }

    /// Every machine `app` ever had, destroyed ones included, oldest first.
    pub fn all_machines(&self, app: &str) -> Vec<MachineView> {
        let inner = self.state.lock();
        let mut machines: Vec<_> = inner.machines.values().filter(|m| m.app == app).collect();
        machines.sort_by_key(|m| m.seq);
        machines.into_iter().map(FakeMachine::view).collect()
    }

    /// How many app processes run right now, over all apps.
    pub fn running_processes(&self) -> usize {
        let mut inner = self.state.lock();
        inner
            .machines
            .values_mut()
            .filter_map(|m| m.process.as_mut())
            .filter_map(|p| p.is_running().then_some(()))
            .count()
    }

    /// The secrets `app` has.
    pub fn secrets(&self, app: &str) -> BTreeMap<String, String> {
        self.state
            .lock()
            .apps
            .get(app)
            .map(|a| a.secrets.clone())
            .unwrap_or_default()
    }

    /// The public IPs of `app`, as `(type, address)`.
    pub fn ips(&self, app: &str) -> Vec<(String, String)> {
        self.state
            .lock()
            .apps
            .get(app)
            .map(|a| a.ips.clone())
            .unwrap_or_default()
    }

    /// The output of the current process of `app`'s newest machine, and the events of its
    /// boots (pull failures, exits), for test failure messages.
    pub fn log(&self, app: &str) -> String {
        let inner = self.state.lock();
        let Some(m) = inner
            .machines
            .values()
            .filter(|m| m.app == app)
            .max_by_key(|m| m.seq)
        else {
            return String::new();
        };
        let output = m
            .process
            .as_ref()
            .map(|p| std::fs::read_to_string(p.log_path()).unwrap_or_default())
            .unwrap_or_default();
        format!("events: {:?}\noutput:\n{output}", m.events)
    }
}

impl Drop for FakeFly {
    fn drop(&mut self) {
        self.servers.clear();
        let mut inner = self.state.lock();
        for machine in inner.machines.values_mut() {
            machine.generation += 1;
            if let Some(process) = machine.process.take() {
                process.kill();
            }
        }
    }
}

/// The server's state, shared by the handlers and the handle.
pub(crate) struct Fly {
    expected_auth: String,
    /// The password (user `x`) image pulls send.
    docker_password: String,
    /// `host:port` of the registry images are pulled from.
    registry: String,
    inner: Mutex<Inner>,
    http: reqwest::Client,
}

impl Fly {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }
}

struct Inner {
    apps: BTreeMap<String, FakeApp>,
    reserved: HashSet<String>,
    machines: HashMap<String, FakeMachine>,
    next_seq: u64,
    requests: Vec<RecordedRequest>,
    injected_429: u32,
    buckets: throttle::Buckets,
    invisibility: (Duration, Duration),
    invisible_answers: usize,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            apps: BTreeMap::new(),
            reserved: HashSet::new(),
            machines: HashMap::new(),
            next_seq: 0,
            requests: Vec::new(),
            injected_429: 0,
            buckets: throttle::Buckets::default(),
            invisibility: (Duration::ZERO, Duration::from_millis(300)),
            invisible_answers: 0,
        }
    }
}

impl Inner {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// When something created now becomes visible.
    fn visible_from_now(&self) -> Instant {
        let (min, max) = self.invisibility;
        let spread = (max - min).as_millis() as u64;
        let extra = if spread == 0 {
            0
        } else {
            rand::random::<u64>() % (spread + 1)
        };
        Instant::now() + min + Duration::from_millis(extra)
    }
}

/// The `Authorization` value and the registry password flyctl derives from `token`
/// (fly-go `tokens/tokens.go`: `Parse` strips a `FlyV1`/`Bearer` scheme and sorts the
/// comma-separated tokens into macaroons, `fm1r_`/`fm1a_`/`fm2_`, and user tokens;
/// `FlapsHeader` is `FlyV1 <macaroons>` or `Bearer <user tokens>`, `Docker` the same
/// without a scheme).
fn flyctl_token_forms(token: &str) -> (String, String) {
    let mut rest = token.trim();
    while let Some((scheme, after)) = rest.split_once(' ')
        && (scheme.eq_ignore_ascii_case("flyv1") || scheme.eq_ignore_ascii_case("bearer"))
    {
        rest = after.trim();
    }
    let (mut macaroons, mut users) = (Vec::new(), Vec::new());
    for tok in rest.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match tok.split_once('_').map(|(p, _)| p) {
            Some("fm1r" | "fm1a" | "fm2") => macaroons.push(tok),
            _ => users.push(tok),
        }
    }
    if macaroons.is_empty() {
        let joined = users.join(",");
        (format!("Bearer {joined}"), joined)
    } else {
        let joined = macaroons.join(",");
        (format!("FlyV1 {joined}"), joined)
    }
}

struct FakeApp {
    org_slug: String,
    /// The private network: named at creation, else `default`.
    network: String,
    visible_at: Instant,
    ips: Vec<(String, String)>,
    secrets: BTreeMap<String, String>,
    secrets_version: u64,
}

struct FakeMachine {
    id: String,
    app: String,
    name: String,
    region: String,
    seq: u64,
    state: String,
    instance_id: String,
    config: serde_json::Value,
    created_at: String,
    updated_at: String,
    /// Bumped by every update and delete: a boot of an older generation gives up.
    generation: u64,
    process: Option<boot::Process>,
    check_status: String,
    events: Vec<String>,
    /// The image of every boot that got as far as starting its process.
    pulls: Vec<String>,
    visible_at: Instant,
}

impl FakeMachine {
    /// Kills its process (a boot still under way sees the new generation and stops) and
    /// moves it to `state`.
    fn stop(&mut self, state: &str) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
        self.generation += 1;
        self.state = state.into();
        self.updated_at = now_rfc3339();
    }

    fn view(&self) -> MachineView {
        MachineView {
            id: self.id.clone(),
            state: self.state.clone(),
            image: self.config["image"].as_str().unwrap_or("").to_owned(),
            instance_id: self.instance_id.clone(),
            pid: self.process.as_ref().map(boot::Process::pid),
            pulls: self.pulls.clone(),
        }
    }
}

/// Checks the `Authorization` header (401 otherwise) and records the request and the
/// status answered, with no header values.
async fn record_and_authorize(
    State(fly): State<Arc<Fly>>,
    request: Request,
    next: Next,
) -> Response {
    let authorized = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .is_some_and(|v| {
            // What flyctl sends, or the documented `Bearer <token>` (the Machines API docs,
            // `machines/api/working-with-machines-api`).
            v == HeaderValue::from_str(&fly.expected_auth).expect("ascii")
                || v == HeaderValue::from_str(&format!("Bearer {}", fly.docker_password))
                    .expect("ascii")
        });
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let body_text = String::from_utf8_lossy(&bytes).into_owned();
    let response = if authorized {
        next.run(Request::from_parts(parts, Body::from(bytes)))
            .await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "unauthorized"})),
        )
            .into_response()
    };
    fly.lock().requests.push(RecordedRequest {
        method,
        path,
        body: body_text,
        status: response.status().as_u16(),
        authorized,
    });
    response
}

fn now_rfc3339() -> String {
    // Seconds since the epoch are enough for a fake; Fly answers RFC 3339 timestamps.
    tb_core::clock::format_rfc3339(tb_core::clock::now_secs())
}
