//! The Fly.io deployer: one app per project, one web machine per app, running the app image
//! by digest.
//!
//! A deploy: ensure the app (`GET /apps/{app}`; on 404 create it in its own private network
//! `<app>-net`, then wait until it is visible, as fly-go's `WaitForApp` does; a 422 means
//! the name is taken: the app is reused when it belongs to our organization, anything else
//! fails naming it), its public IPs (one `shared_v4`, one `v6`) and its secrets (the
//! returned version becomes `min_secrets_version`); push the image ([`crate::image`]) to
//! `<registry>/<app>`; then update the project's web machine (found by metadata
//! `turbobackend=web`; an update replaces the whole config) or create it; wait until it is
//! `started`, then until `<public url>/api/health` answers 200, all within the health
//! timeout.
//!
//! Fly is eventually consistent: a just-created app or machine answers 404 (or 401) for a
//! moment. Calls on the app are retried on those for up to `visibility_timeout` with
//! fly-go's backoff, and a machine's `wait` answering 404 is tried again as flyctl does,
//! until the health timeout; neither is taken as a failure of the machine.
//!
//! Nothing half-done stays running: a new machine that does not get healthy is destroyed,
//! and an updated one is rolled back to the configuration it had before (its previous image
//! digest). The Fly token is used for the API (`FlyV1 <macaroons>` or `Bearer <token>`)
//! and, without its scheme, as the password of user `x` for the registry, exactly as
//! flyctl sends them (see `token.rs`); it never appears in logs, errors or the returned
//! details.
//!
//! Rolling back ([`Deployer::rollback`]) runs an earlier image by digest; the app's
//! repository keeps every image pushed, so [`Deployer::retain`] keeps the default (nothing
//! to do). An app's log lines are not read ([`Deployer::recent_logs`] keeps the default,
//! `None`): the Machines API (<https://fly.io/docs/machines/api/>) documents no logs
//! endpoint; flyctl reads logs from an undocumented endpoint of `api.fly.io`
//! (`/api/v1/apps/{app}/logs`, fly-go's `GetAppLogs`) or from NATS, neither a published
//! API to build on.

mod api;
pub mod machine_config;
pub mod naming;
mod spacing;
mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tb_core::domain::ProjectId;
use tb_core::ports::{Artifact, Deployer, Deployment, PortError};
use tokio::time::Instant;

use self::api::{AppLookup, Created, Machine, MachinesApi, Waited, fly_go, flyctl_wait};
use self::machine_config::{HEALTH_PATH, ROLE_KEY, ROLE_WEB};
use crate::error::answer;
use crate::registry::{RegistryClient, RegistryCredentials};
use crate::{DeployError, ImageRef, Secret, artifact, image};
use tb_core::backoff::{Attempt, Stop, retry};

/// Where and how to deploy.
#[derive(Clone, Debug)]
pub struct FlyConfig {
    /// `https://api.machines.dev/v1`.
    pub api_base: String,
    /// An org token (`fly tokens create org`): creating apps needs one. Sent as
    /// `Authorization: FlyV1 …` when it starts with `FlyV1 `, else as a bearer token.
    pub token: Secret,
    pub org_slug: String,
    /// Where machines run (`iad`).
    pub region: String,
    /// The registry images are pushed to: `registry.fly.io`.
    pub registry: String,
    /// App names are `<app_prefix><project id>`.
    pub app_prefix: String,
    /// The Node base image: by default the official `node:20-slim` from its mirror on ECR
    /// Public, which does not throttle anonymous pulls the way Docker Hub does. On
    /// `registry` itself its layers are mounted, elsewhere they are copied (once per app);
    /// each app's repository keeps the base for a week (see [`crate::image`]).
    pub base_image: ImageRef,
    /// The app's public URL, `{app}` replaced by the app name: `https://{app}.fly.dev`.
    pub public_url_template: String,
    /// How long a machine may take to start and answer its health check.
    pub health_timeout: Duration,
    pub health_poll_interval: Duration,
    /// The least time between two mutating calls on the same machine.
    pub mutation_spacing: Duration,
    /// How many 429 answers in a row a call absorbs before failing.
    pub max_429_retries: u32,
    /// How long a just-created app or machine may answer 404 (or 401) before that counts
    /// as an error (fly-go's `flaps.Retry` gives up after one minute).
    pub visibility_timeout: Duration,
}

impl FlyConfig {
    pub const DEFAULT_API_BASE: &'static str = "https://api.machines.dev/v1";
    pub const DEFAULT_REGISTRY: &'static str = "registry.fly.io";
    pub const DEFAULT_BASE_IMAGE: &'static str = "public.ecr.aws/docker/library/node:20-slim";

    /// The defaults, for `token` and `org_slug`.
    pub fn new(token: Secret, org_slug: impl Into<String>) -> Self {
        FlyConfig {
            api_base: Self::DEFAULT_API_BASE.into(),
            token,
            org_slug: org_slug.into(),
            region: "iad".into(),
            registry: Self::DEFAULT_REGISTRY.into(),
            app_prefix: "turbobackend-".into(),
            base_image: Self::DEFAULT_BASE_IMAGE.parse().expect("a valid reference"),
            public_url_template: "https://{app}.fly.dev".into(),
            health_timeout: Duration::from_secs(180),
            health_poll_interval: Duration::from_secs(2),
            mutation_spacing: Duration::from_secs(1),
            max_429_retries: 5,
            visibility_timeout: Duration::from_secs(60),
        }
    }

    /// From `FLY_API_TOKEN` and `FLY_ORG` (required), and optionally `FLY_REGION`,
    /// `FLY_API_BASE`, `FLY_REGISTRY`, `TB_BASE_IMAGE` (formerly `TB_FLY_BASE_IMAGE`, still
    /// read), `TB_FLY_APP_PREFIX`, `TB_FLY_HEALTH_TIMEOUT_SECS`.
    pub fn from_env() -> Result<Self, DeployError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let token = var("FLY_API_TOKEN")
            .ok_or_else(|| DeployError::Config("FLY_API_TOKEN is not set".into()))?;
        let org = var("FLY_ORG_SLUG")
            .or_else(|| var("FLY_ORG"))
            .ok_or_else(|| DeployError::Config("FLY_ORG_SLUG is not set".into()))?;
        let mut config = FlyConfig::new(Secret::new(token), org);
        if let Some(v) = var("FLY_REGION") {
            config.region = v;
        }
        if let Some(v) = var("FLY_API_BASE") {
            config.api_base = v;
        }
        if let Some(v) = var("FLY_REGISTRY") {
            config.registry = v;
        }
        if let Some(v) = var("TB_BASE_IMAGE").or_else(|| var("TB_FLY_BASE_IMAGE")) {
            config.base_image = v
                .parse()
                .map_err(|e| DeployError::Config(format!("TB_BASE_IMAGE={v}: {e}")))?;
        }
        if let Some(v) = var("TB_FLY_APP_PREFIX") {
            config.app_prefix = v;
        }
        if let Some(v) = var("TB_FLY_HEALTH_TIMEOUT_SECS") {
            let secs = v
                .parse()
                .map_err(|_| DeployError::Config(format!("TB_FLY_HEALTH_TIMEOUT_SECS={v}")))?;
            config.health_timeout = Duration::from_secs(secs);
        }
        Ok(config)
    }
}

/// Deploys to Fly.io Machines. See the module documentation.
pub struct FlyDeployer {
    config: FlyConfig,
    api: MachinesApi,
    http: reqwest::Client,
    /// One deploy per app at a time in this process.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for FlyDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlyDeployer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FlyDeployer {
    pub fn new(config: FlyConfig) -> Result<Self, DeployError> {
        let api = MachinesApi::new(
            &config.api_base,
            &config.token,
            config.mutation_spacing,
            config.max_429_retries,
            config.visibility_timeout,
        )?;
        let http = crate::http_client(None)?;
        Ok(FlyDeployer {
            config,
            api,
            http,
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &FlyConfig {
        &self.config
    }

    /// The Fly app of `project`.
    pub fn app_name(&self, project: &ProjectId) -> String {
        naming::app_name(&self.config.app_prefix, project)
    }

    /// The private network of `app`: its own, named after it, so one project's machines
    /// cannot reach another's over `.internal` (apps created without `network` share their
    /// organization's default network).
    pub fn network_name(app: &str) -> String {
        format!("{app}-net")
    }

    /// The public URL of `app`.
    pub fn public_url(&self, app: &str) -> String {
        self.config.public_url_template.replace("{app}", app)
    }

    async fn run(
        &self,
        project: &ProjectId,
        artifact: &Artifact,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Deployment, DeployError> {
        artifact::verify(artifact)?;
        let app = self.app_name(project);
        let _one_at_a_time = self.one_at_a_time(&app).await;

        self.ensure_app(&app).await?;
        self.ensure_ips(&app).await?;
        let secrets_version = if secrets.is_empty() {
            None
        } else {
            self.api.set_secrets(&app, secrets).await?
        };
        let pushed = self.push_image(&app, artifact).await?;
        let config = machine_config::web_machine(&pushed.reference);

        let existing = self.api.machines(&app, ROLE_KEY, ROLE_WEB).await?;
        let mut live: Vec<_> = existing
            .into_iter()
            .filter(|m| {
                m.config["metadata"][ROLE_KEY] == ROLE_WEB
                    && !matches!(
                        m.state.as_str(),
                        "destroyed" | "destroying" | "replaced" | "migrated"
                    )
            })
            .collect();
        live.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        if live.len() > 1 {
            tracing::warn!(
                app,
                count = live.len(),
                "several web machines; updating the oldest"
            );
        }
        let deadline = Instant::now() + self.config.health_timeout;
        let (machine_id, previous_image) = match live.into_iter().next() {
            None => {
                let machine = self
                    .api
                    .create_machine(&app, &config, &self.config.region, secrets_version)
                    .await?;
                tracing::info!(app, machine = %machine.id, "created the web machine");
                if let Err(e) = self.until_healthy(&app, &machine.id, deadline).await {
                    let note = match self.api.destroy_machine(&app, &machine.id).await {
                        Ok(()) => format!("the new machine {} was destroyed", machine.id),
                        Err(d) => {
                            format!("destroying the new machine {} failed too: {d}", machine.id)
                        }
                    };
                    return Err(annotate(e, &note));
                }
                (machine.id, None)
            }
            Some(current) => {
                let previous_image = current.config["image"].as_str().map(str::to_owned);
                self.update_healthy(&app, &current, &config, secrets_version, deadline)
                    .await?;
                (current.id, previous_image)
            }
        };
        let url = self.public_url(&app);
        Ok(Deployment {
            url,
            version: pushed.digest.clone(),
            details: json!({
                "app": app,
                "machine_id": machine_id,
                "image": pushed.reference,
                "previous_image": previous_image,
            }),
        })
    }

    /// Finds the app or creates it in its own network. A 422 on creation means the name is
    /// taken: the app is looked up again (it may be ours, created by a deploy whose answer
    /// was lost, and not visible yet) and reused when it belongs to our organization.
    async fn ensure_app(&self, app: &str) -> Result<(), DeployError> {
        let network = Self::network_name(app);
        match self.api.app(app).await? {
            AppLookup::Found { org, network: has } => return self.ours(app, &org, &has, &network),
            AppLookup::OtherOrganization => return Err(self.taken(app, "")),
            AppLookup::NotVisible => {}
        }
        match self
            .api
            .create_app(app, &self.config.org_slug, &network)
            .await?
        {
            Created::Created => {
                tracing::info!(app, network, "created the Fly app");
                self.api.wait_for_app(app).await
            }
            Created::Refused(message) => {
                let policy = fly_go(Instant::now() + self.api.visibility_timeout());
                let found = retry(&policy, move |_| async move {
                    match self.api.app(app).await {
                        Ok(AppLookup::Found { org, network: has }) => {
                            Attempt::Done(Ok(Some((org, has))))
                        }
                        Ok(AppLookup::OtherOrganization) => Attempt::Done(Ok(None)),
                        Ok(AppLookup::NotVisible) => Attempt::Retry {
                            after: None,
                            error: format!("app {app} not visible yet"),
                        },
                        Err(e) => Attempt::Done(Err(e)),
                    }
                })
                .await;
                match found {
                    Ok(Ok(Some((org, has)))) => {
                        tracing::info!(app, "the app exists already; reusing it");
                        self.ours(app, &org, &has, &network)
                    }
                    Ok(Ok(None)) | Err(_) => Err(self.taken(app, &message)),
                    Ok(Err(e)) => Err(e),
                }
            }
        }
    }

    /// Accepts an existing app when it belongs to the configured organization (an answer
    /// without an organization is taken as ours: another organization's app reads as 403).
    fn ours(&self, app: &str, org: &str, has: &str, network: &str) -> Result<(), DeployError> {
        if !org.is_empty() && org != self.config.org_slug {
            return Err(DeployError::Fly {
                operation: format!("create app {app}"),
                status: Some(422),
                message: format!(
                    "the app name {app} is taken by organization {org}, not {}",
                    self.config.org_slug
                ),
            });
        }
        if !has.is_empty() && has != network {
            tracing::warn!(
                app,
                network = has,
                "the app was created in another private network (it cannot be moved)"
            );
        }
        Ok(())
    }

    fn taken(&self, app: &str, message: &str) -> DeployError {
        let detail = if message.is_empty() {
            String::new()
        } else {
            format!(" ({message})")
        };
        DeployError::Fly {
            operation: format!("create app {app}"),
            status: Some(422),
            message: format!(
                "the app name {app} is taken by an organization this token cannot see{detail}; \
                 choose another TB_FLY_APP_PREFIX"
            ),
        }
    }

    async fn ensure_ips(&self, app: &str) -> Result<(), DeployError> {
        let ips = self.api.ips(app).await?;
        let has_v4 = ips.iter().any(|i| !i.ip.contains(':') && i.shared);
        let has_v6 = ips
            .iter()
            .any(|i| i.ip.contains(':') && !i.ip.to_ascii_lowercase().starts_with("fdaa"));
        if !has_v4 {
            self.api.allocate_ip(app, "shared_v4").await?;
        }
        if !has_v6 {
            self.api.allocate_ip(app, "v6").await?;
        }
        Ok(())
    }

    async fn push_image(
        &self,
        app: &str,
        artifact: &Artifact,
    ) -> Result<image::PushedImage, DeployError> {
        // User `x` and the token without its scheme, as flyctl gives them to Docker.
        let target = RegistryClient::new(
            &self.config.registry,
            Some(RegistryCredentials {
                username: "x".into(),
                password: Secret::new(token::FlyTokens::parse(self.config.token.expose()).docker()),
            }),
        )?;
        let base = &self.config.base_image;
        let other;
        let base_client = if base.registry == self.config.registry {
            &target
        } else {
            other = RegistryClient::new(&base.registry, None)?;
            &other
        };
        let tag = format!("tb-{}", &artifact.sha256[..artifact.sha256.len().min(16)]);
        image::push_app_image(base_client, base, &target, app, &tag, artifact).await
    }

    /// Waits until the machine is `started` (its checks pass) and the public health URL
    /// answers 200, both before `deadline`.
    async fn until_healthy(
        &self,
        app: &str,
        id: &str,
        deadline: Instant,
    ) -> Result<(), DeployError> {
        // flyctl `internal/machine/wait.go` (`WaitForStartOrStop`): a failed wait call is
        // tried again after 500 ms doubling to 2 s until the timeout; a just-created machine
        // answers 404 for a moment, which is not a reason to give up on it.
        let started = retry(&flyctl_wait(deadline), move |_| async move {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Attempt::Fail(String::from("out of time"));
            }
            let waited = self
                .api
                .wait(app, id, "started", remaining.as_secs().max(1))
                .await;
            match waited {
                Ok(Waited::Reached) => Attempt::Done(Ok(())),
                Ok(Waited::NotVisible) => Attempt::Retry {
                    after: None,
                    error: format!("machine {id} of {app} is not visible yet"),
                },
                // Asked again at once unless it ended.
                Ok(Waited::TimedOut) => match self.api.machine(app, id).await {
                    Ok(Some(m))
                        if matches!(
                            m.state.as_str(),
                            "failed" | "destroyed" | "stopped" | "launch_failed"
                        ) =>
                    {
                        Attempt::Done(Err(DeployError::Unhealthy(format!(
                            "machine {id} is {} instead of started",
                            m.state
                        ))))
                    }
                    Ok(_) => Attempt::Retry {
                        after: Some(Duration::ZERO),
                        error: format!("machine {id} of {app} is not started yet"),
                    },
                    Err(e) => Attempt::Done(Err(e)),
                },
                Err(e) => Attempt::Done(Err(e)),
            }
        })
        .await;
        match started {
            Ok(result) => result?,
            Err(gave_up) => {
                if gave_up.stop == Stop::Deadline {
                    tokio::time::sleep_until(deadline).await;
                }
                let state = match self.api.machine(app, id).await {
                    Ok(Some(m)) => m.state,
                    Ok(None) => "not visible".into(),
                    Err(_) => String::new(),
                };
                return Err(DeployError::Unhealthy(format!(
                    "machine {id} was not started within {:?} (state {state:?})",
                    self.config.health_timeout
                )));
            }
        }
        let url = format!("{}{HEALTH_PATH}", self.public_url(app));
        crate::health::wait_healthy(
            &self.http,
            &url,
            deadline,
            self.config.health_poll_interval,
            || None,
        )
        .await
        .map_err(DeployError::Unhealthy)
    }

    /// Holds `app`'s deploys and rollbacks to one at a time (in this process).
    async fn one_at_a_time(&self, app: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .expect("locks")
            .entry(app.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Updates the web machine `current` to `config` and waits until it is healthy before
    /// `deadline`; when it is not, puts `current`'s configuration back and says so in the
    /// error.
    async fn update_healthy(
        &self,
        app: &str,
        current: &Machine,
        config: &Value,
        secrets_version: Option<u64>,
        deadline: Instant,
    ) -> Result<(), DeployError> {
        let updated = self
            .api
            .update_machine(
                app,
                &current.id,
                config,
                secrets_version,
                &current.instance_id,
            )
            .await?;
        let image = config["image"].as_str().unwrap_or("?");
        tracing::info!(app, machine = %current.id, image, "updated the web machine");
        if let Err(e) = self.until_healthy(app, &current.id, deadline).await {
            let note = self
                .roll_back(
                    app,
                    &current.id,
                    &current.config,
                    secrets_version,
                    &updated.instance_id,
                )
                .await;
            return Err(annotate(e, &note));
        }
        Ok(())
    }

    /// Puts the configuration the machine had before back, and waits for it to serve again.
    /// Returns what happened, for the error message.
    async fn roll_back(
        &self,
        app: &str,
        id: &str,
        previous_config: &Value,
        secrets_version: Option<u64>,
        instance_id: &str,
    ) -> String {
        let previous_image = previous_config["image"].as_str().unwrap_or("?").to_owned();
        let result = async {
            self.api
                .update_machine(app, id, previous_config, secrets_version, instance_id)
                .await?;
            let deadline = Instant::now() + self.config.health_timeout;
            self.until_healthy(app, id, deadline).await
        }
        .await;
        match result {
            Ok(()) => format!("machine {id} was rolled back to {previous_image}"),
            Err(e) => {
                tracing::error!(app, machine = id, "rolling back failed: {e}");
                format!("rolling machine {id} back to {previous_image} failed: {e}")
            }
        }
    }
}

impl FlyDeployer {
    /// Updates the web machine to `<registry>/<app>@<digest>` (an image this app ran
    /// before, kept in its repository), waits until it is healthy; on failure the machine
    /// goes back to the configuration it had.
    async fn roll_back_to(
        &self,
        project: &ProjectId,
        digest: &str,
    ) -> Result<Deployment, DeployError> {
        if !digest.starts_with("sha256:") {
            return Err(DeployError::Config(format!(
                "{digest} is not an image digest this deployer recorded"
            )));
        }
        let app = self.app_name(project);
        let _one_at_a_time = self.one_at_a_time(&app).await;
        let registry = RegistryClient::new(&self.config.registry, None)?;
        let reference = format!("{}/{app}@{digest}", registry.registry());
        let mut live: Vec<_> = self
            .api
            .machines(&app, ROLE_KEY, ROLE_WEB)
            .await?
            .into_iter()
            .filter(|m| {
                !matches!(
                    m.state.as_str(),
                    "destroyed" | "destroying" | "replaced" | "migrated"
                )
            })
            .collect();
        live.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        let Some(current) = live.into_iter().next() else {
            return Err(DeployError::Unhealthy(format!(
                "{app} has no web machine to roll back"
            )));
        };
        let previous_image = current.config["image"].as_str().map(str::to_owned);
        let deadline = Instant::now() + self.config.health_timeout;
        if previous_image.as_deref() != Some(reference.as_str()) {
            // The same configuration as a deploy, with the earlier image.
            let config = machine_config::web_machine(&reference);
            self.update_healthy(&app, &current, &config, None, deadline)
                .await?;
        } else {
            // A redelivery: the machine runs it already; check it answers.
            self.until_healthy(&app, &current.id, deadline).await?;
        }
        Ok(Deployment {
            url: self.public_url(&app),
            version: digest.to_string(),
            details: json!({
                "app": app,
                "machine_id": current.id,
                "image": reference,
                "previous_image": previous_image,
            }),
        })
    }

    /// Destroys every machine of the app, releases its public IPs, then deletes the app
    /// (`DELETE /apps/{app}?force=true`). What is already gone is skipped.
    async fn remove(&self, project: &ProjectId) -> Result<Value, DeployError> {
        let app = self.app_name(project);
        match self.api.app(&app).await? {
            AppLookup::Found { org, .. } if !org.is_empty() && org != self.config.org_slug => {
                return Err(DeployError::Fly {
                    operation: format!("delete app {app}"),
                    status: Some(403),
                    message: format!(
                        "the app {app} belongs to organization {org}, not {}; it is left alone",
                        self.config.org_slug
                    ),
                });
            }
            AppLookup::Found { .. } => {}
            AppLookup::NotVisible => {
                return Ok(json!({"app": app, "already_gone": true}));
            }
            AppLookup::OtherOrganization => {
                return Err(self.taken(&app, "it is left alone"));
            }
        }
        let mut machines = Vec::new();
        for m in self.api.all_machines(&app).await? {
            if matches!(m.state.as_str(), "destroyed" | "replaced" | "migrated") {
                continue;
            }
            self.api.destroy_machine(&app, &m.id).await?;
            machines.push(m.id);
        }
        let mut ips = Vec::new();
        for ip in self.api.ips(&app).await? {
            self.api.release_ip(&app, &ip.ip).await?;
            ips.push(ip.ip);
        }
        let deleted = self.api.delete_app(&app).await?;
        tracing::info!(app, ?machines, ?ips, "the Fly app was deleted");
        Ok(json!({
            "app": app,
            "machines_destroyed": machines,
            "ips_released": ips,
            "app_deleted": deleted,
        }))
    }
}

/// `e` with `note` added to its message, keeping how callers must react to it.
fn annotate(e: DeployError, note: &str) -> DeployError {
    match e {
        DeployError::Unhealthy(m) => DeployError::Unhealthy(format!("{m}; {note}")),
        DeployError::Fly {
            operation,
            status,
            message,
        } => DeployError::Fly {
            operation,
            status,
            message: format!("{message}; {note}"),
        },
        DeployError::Registry {
            operation,
            status,
            message,
        } => DeployError::Registry {
            operation,
            status,
            message: format!("{message}; {note}"),
        },
        other => DeployError::Local(format!("{other}; {note}")),
    }
}

#[async_trait]
impl Deployer for FlyDeployer {
    async fn deploy(
        &self,
        project: &ProjectId,
        artifact: &Artifact,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Deployment, PortError> {
        answer(
            project,
            "deploy",
            self.run(project, artifact, secrets).await,
        )
    }

    async fn rollback(&self, project: &ProjectId, version: &str) -> Result<Deployment, PortError> {
        answer(
            project,
            "rollback",
            self.roll_back_to(project, version).await,
        )
    }

    async fn destroy(&self, project: &ProjectId) -> Result<Value, PortError> {
        answer(project, "removing the app", self.remove(project).await)
    }
}
