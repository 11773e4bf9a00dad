//! The HTTP front door: one axum [`Router`] that serves the MCP endpoint (`POST /mcp`), the
//! REST API (`/v1/...`) and `GET /health`, with API-key authentication, per-user tenancy and
//! per-user limits. The same router runs under the Lambda api function (`lambda_http` serves
//! an axum `Router`), in the local all-in-one server, and in the tests.
//!
//! ```text
//! POST /mcp            MCP, stateless Streamable HTTP, JSON responses (both protocol eras)
//! GET|DELETE /mcp      405 (no SSE stream, no sessions)
//! /v1/requests...      REST (create, list, status, cancel)
//! /v1/projects[/{id}]  REST (the caller's projects; DELETE one, POST …/{id}/rollback)
//! GET /health          200, no authentication
//! /.well-known/oauth-*, /register, /authorize, /token, /revoke
//!                      OAuth 2.1 for remote MCP clients ([`oauth`])
//! ```
//!
//! Every route but `/health` and the OAuth ones needs `Authorization: Bearer <key>` or `X-Api-Key: <key>`
//! ([`auth`]); `/mcp` also takes OAuth access tokens ([`oauth`]). Bodies larger than [`Limits::max_body_bytes`] are refused with 413 before
//! they are parsed.

pub mod auth;
pub mod host;
pub mod limits;
pub mod mcp;
pub mod memory;
pub mod oauth;
pub mod rest;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use tb_core::MicroUsd;
use tb_core::ports::{OAuthStore, PlatformRecords};
use tb_pipeline::Pipeline;

pub use auth::Caller;
pub use host::ReceivedAt;
pub use limits::{Admission, CreateRequest, Refusal, admit};
pub use oauth::OAuthSettings;

/// Per-user limits enforced by the front door.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests a user may have in a non-terminal phase at once.
    pub max_concurrent_per_user: usize,
    /// What a user may spend in all: the ledger, plus what running requests may still spend,
    /// plus one request budget for the new request, must stay within this.
    pub spending_cap_per_user: MicroUsd,
    /// Request bodies larger than this are refused (413) before parsing.
    pub max_body_bytes: usize,
}

/// A limit setting that does not parse; the message names the setting and its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(String);

impl Limits {
    /// The per-user limits from environment-style variables (pass `|k| std::env::var(k).ok()`):
    /// `TB_MAX_CONCURRENT_REQUESTS` (requests not yet finished, at least 1; default 3) and
    /// `TB_SPENDING_CAP_USD` (dollars, e.g. `50` or `12.50`, more than zero; default $50).
    /// The body size limit is the standard one.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Limits, LimitsError> {
        let mut limits = Limits::default();
        if let Some(v) = var("TB_MAX_CONCURRENT_REQUESTS") {
            limits.max_concurrent_per_user = v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    LimitsError(format!(
                        "TB_MAX_CONCURRENT_REQUESTS={v} is not a whole number from 1 to {}",
                        u32::MAX
                    ))
                })?;
        }
        if let Some(v) = var("TB_SPENDING_CAP_USD") {
            limits.spending_cap_per_user = MicroUsd::parse_usd(&v)
                .ok()
                .filter(|cap| *cap > MicroUsd::ZERO)
                .ok_or_else(|| {
                    LimitsError(format!(
                        "TB_SPENDING_CAP_USD={v} is not an amount of dollars greater than zero (e.g. 50 or 12.50)"
                    ))
                })?;
        }
        Ok(limits)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_per_user: 3,
            spending_cap_per_user: MicroUsd::from_micros(50_000_000),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// The `Host` values the MCP endpoint accepts by default: loopback only (a guard against DNS
/// rebinding of a local server). Behind API Gateway the domain the request was received at
/// is accepted too ([`host::ReceivedAt`]); other names (e.g. behind a CDN) are listed with
/// [`parse_allowed_hosts`].
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Parses a comma-separated host list (`"api.example.com, api.example.com:8443"`), as read
/// from configuration (e.g. `TB_ALLOWED_HOSTS`). An entry without a port matches any port.
pub fn parse_allowed_hosts(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(String::from)
        .collect()
}

/// Everything the front door needs, shared by all requests.
pub struct FrontDoor {
    pub pipeline: Arc<Pipeline>,
    pub records: Arc<dyn PlatformRecords>,
    pub limits: Limits,
    /// `Host` header values the MCP endpoint accepts besides the domain the request was
    /// received at ([`host`]). Defaults to [`LOOPBACK_HOSTS`].
    pub allowed_hosts: Vec<String>,
    /// The authorization server's state (clients, codes, tokens); in memory by default.
    pub oauth: Arc<dyn OAuthStore>,
    pub oauth_settings: OAuthSettings,
    pub(crate) admission: Admission,
    pub(crate) token_limiter: oauth::TokenLimiter,
}

impl FrontDoor {
    /// A front door with the default [`Limits`] and loopback-only hosts.
    pub fn new(pipeline: Arc<Pipeline>, records: Arc<dyn PlatformRecords>) -> Self {
        FrontDoor {
            pipeline,
            records,
            limits: Limits::default(),
            allowed_hosts: LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect(),
            oauth: Arc::new(memory::MemoryOAuth::new()),
            oauth_settings: OAuthSettings::default(),
            admission: Admission::default(),
            token_limiter: oauth::TokenLimiter::default(),
        }
    }

    /// Keeps the authorization server's state in `store` (Postgres, SQLite).
    pub fn with_oauth(mut self, store: Arc<dyn OAuthStore>, settings: OAuthSettings) -> Self {
        self.oauth = store;
        self.oauth_settings = settings;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_allowed_hosts(mut self, hosts: Vec<String>) -> Self {
        self.allowed_hosts = hosts;
        self
    }
}

/// The front door's routes; see the crate documentation.
pub fn router(state: Arc<FrontDoor>) -> Router {
    let mcp = mcp::McpEndpoint::new(state.clone());
    Router::new()
        .route("/health", get(rest::health))
        .route("/mcp", any(mcp::serve).with_state(mcp))
        .route(
            "/.well-known/oauth-protected-resource",
            get(oauth::protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(oauth::protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::authorization_server),
        )
        .route("/register", post(oauth::register))
        .route(
            "/authorize",
            get(oauth::authorize_page).post(oauth::authorize_decision),
        )
        .route("/token", post(oauth::token))
        .route("/revoke", post(oauth::revoke))
        .route("/v1", any(rest::serve))
        .route("/v1/{*rest}", any(rest::serve))
        .fallback(rest::not_found)
        .with_state(state)
}
