//! OAuth 2.1 for remote MCP clients (Claude.ai and Claude Desktop custom connectors,
//! ChatGPT): the MCP endpoint is a resource server, and the same origin is its authorization
//! server. Sources: the MCP specification, `docs/specification/2025-11-25/basic/authorization`
//! and `2026-07-28/basic/authorization` in `modelcontextprotocol/modelcontextprotocol`;
//! RFC 9728 (protected resource metadata), RFC 8414 (authorization server metadata), RFC 7591
//! (dynamic registration), the OAuth client ID metadata document draft
//! (`draft-ietf-oauth-client-id-metadata-document`), RFC 8707 (`resource`), RFC 7636 (PKCE),
//! RFC 7009 (revocation), RFC 9207 (`iss` in the authorization response).
//!
//! ```text
//! GET  /.well-known/oauth-protected-resource[/mcp]   RFC 9728: the resource and its AS
//! GET  /.well-known/oauth-authorization-server        RFC 8414
//! POST /register                                      RFC 7591 (public clients only)
//! GET  /authorize                                     sign-in and consent page
//! POST /authorize                                     the page's form: issues a code
//! POST /token                                         authorization_code, refresh_token
//! POST /revoke                                        RFC 7009
//! ```
//!
//! - The user signs in by pasting one of their API keys into our page (never into the
//!   client); the grant records the key, and revoking the key ends every token granted
//!   through it.
//! - Codes, access and refresh tokens are opaque random strings (256 bits); only their
//!   SHA-256 is stored ([`OAuthStore`]). Codes live minutes and are single-use; access
//!   tokens an hour, bound to the resource `<origin>/mcp`; refresh tokens rotate at every
//!   use, and a refresh token (or code) used twice revokes its whole family.
//! - Clients are public (`token_endpoint_auth_method: none`) and identified either by a
//!   registered `client_id` or by the https URL of their metadata document, fetched at
//!   authorization time from public addresses only ([`tb_pipeline::callback::is_public`]).
//! - Until the client and the redirect URI are known good, errors are shown on a page and
//!   never redirected (no open redirect); after that they go back to the client's
//!   redirect URI with `error`, `state` and `iss`.
//! - Every failure is the OAuth error JSON (`{"error", "error_description"}`), never a 500.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tb_core::clock::now_ms;
use tb_core::encoding::{hex, sha256_hex};
use tb_core::ports::{GrantKind, GrantUse, OAuthClient, OAuthGrant, PortError};

use crate::FrontDoor;
use crate::auth::Caller;
use crate::host::{HostRefusal, ReceivedAt};

/// The one scope we grant: use the MCP tools as the user.
pub const SCOPE: &str = "mcp";
/// Access tokens start with this; API keys with `tb_`.
pub const ACCESS_PREFIX: &str = "tbat_";
const REFRESH_PREFIX: &str = "tbrt_";
const CODE_PREFIX: &str = "tbac_";
/// The largest client ID metadata document we read.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// Settings of the authorization server.
#[derive(Clone, Debug)]
pub struct OAuthSettings {
    /// The origin clients reach us at (`https://api.example.com`). Without it the origin is
    /// the request's (already checked) `Host`, https unless it is a loopback name.
    pub public_url: Option<String>,
    /// Accept client ID metadata documents at `http://` loopback URLs and skip the
    /// public-address check when fetching them (local server, tests). Never in the cloud.
    pub allow_loopback_clients: bool,
    pub code_ttl: Duration,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Token requests a client may make per minute.
    pub token_requests_per_minute: u32,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            public_url: None,
            allow_loopback_clients: false,
            code_ttl: Duration::from_secs(5 * 60),
            access_ttl: Duration::from_secs(60 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            token_requests_per_minute: 30,
        }
    }
}

/// Fixed one-minute windows of token requests, per client (per process: each Lambda
/// instance counts on its own).
#[derive(Default)]
pub struct TokenLimiter {
    windows: Mutex<HashMap<String, (u64, u32)>>,
}

impl TokenLimiter {
    fn admit(&self, client_id: &str, per_minute: u32) -> bool {
        let minute = now_ms() / 60_000;
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() > 10_000 {
            w.retain(|_, (m, _)| *m == minute);
        }
        let entry = w.entry(client_id.to_string()).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 += 1;
        entry.1 <= per_minute
    }
}

// ---------------------------------------------------------------------------------------
// Errors

/// An OAuth error response (RFC 6749 section 5.2; RFC 7591 section 3.2.2).
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

fn oauth_error(
    status: StatusCode,
    code: &'static str,
    description: impl Into<String>,
) -> OAuthError {
    OAuthError {
        status,
        code,
        description: description.into(),
    }
}

fn invalid_request(d: impl Into<String>) -> OAuthError {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", d)
}

fn invalid_grant(d: impl Into<String>) -> OAuthError {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", d)
}

fn unavailable(e: PortError) -> OAuthError {
    tracing::warn!("OAuth state unavailable: {e}");
    oauth_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the authorization server is temporarily unavailable; retry shortly",
    )
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": self.code, "error_description": self.description})),
        )
            .into_response();
        no_store(r.headers_mut());
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        r
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

// ---------------------------------------------------------------------------------------
// Origin, resource, metadata

/// The origin of this server as the client sees it, after the `Host` check.
pub fn origin(
    fd: &FrontDoor,
    req_headers: &HeaderMap,
    uri: &axum::http::Uri,
    received_at: Option<&ReceivedAt>,
) -> Result<String, HostRefusal> {
    crate::host::check(uri, req_headers, received_at, &fd.allowed_hosts)?;
    if let Some(url) = &fd.oauth_settings.public_url {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let host = req_headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let name = axum::http::uri::Authority::try_from(host.as_str())
        .map(|a| a.host().trim_matches(['[', ']']).to_ascii_lowercase())
        .unwrap_or_default();
    let scheme = if is_loopback_name(&name) {
        "http"
    } else {
        "https"
    };
    Ok(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The resource (audience) of our access tokens: the MCP endpoint's URL.
pub fn resource_of(origin: &str) -> String {
    format!("{origin}/mcp")
}

/// Where the protected resource metadata is, for `WWW-Authenticate`.
pub fn resource_metadata_url(origin: &str) -> String {
    format!("{origin}/.well-known/oauth-protected-resource")
}

fn same_resource(asked: &str, ours: &str) -> bool {
    asked.trim_end_matches('/') == ours
}

/// The response to a refused `Host`.
pub fn refused(r: HostRefusal) -> Response {
    (r.status(), r.message()).into_response()
}

fn request_origin(fd: &FrontDoor, req: &Request) -> Result<String, HostRefusal> {
    origin(
        fd,
        req.headers(),
        req.uri(),
        req.extensions().get::<ReceivedAt>(),
    )
}

/// RFC 9728 protected resource metadata.
pub async fn protected_resource(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let origin = match request_origin(&fd, &req) {
        Ok(o) => o,
        Err(r) => return refused(r),
    };
    axum::Json(json!({
        "resource": resource_of(&origin),
        "authorization_servers": [origin],
        "scopes_supported": [SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": "turbobackend",
    }))
    .into_response()
}

/// RFC 8414 authorization server metadata.
pub async fn authorization_server(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let origin = match request_origin(&fd, &req) {
        Ok(o) => o,
        Err(r) => return refused(r),
    };
    axum::Json(json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/authorize"),
        "token_endpoint": format!("{origin}/token"),
        "registration_endpoint": format!("{origin}/register"),
        "revocation_endpoint": format!("{origin}/revoke"),
        "scopes_supported": [SCOPE],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------
// Access tokens at the resource server

/// Why an access token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    Invalid(&'static str),
    Unavailable,
}

/// Checks an access token presented to the MCP endpoint at `origin`: known, an access token,
/// unexpired, unrevoked, for this resource, and the API key it was granted through is live.
pub async fn check_access_token(
    fd: &FrontDoor,
    token: &str,
    origin: &str,
) -> Result<Caller, TokenRefusal> {
    let grant = match fd.oauth.grant(&sha256_hex(token.as_bytes())).await {
        Ok(Some(g)) => g,
        Ok(None) => return Err(TokenRefusal::Invalid("unknown access token")),
        Err(e) => {
            tracing::warn!("OAuth state unavailable: {e}");
            return Err(TokenRefusal::Unavailable);
        }
    };
    if grant.kind != GrantKind::Access || grant.revoked_at_ms.is_some() {
        return Err(TokenRefusal::Invalid("the access token was revoked"));
    }
    if grant.expires_at_ms <= now_ms() {
        return Err(TokenRefusal::Invalid("the access token expired"));
    }
    if grant.resource != resource_of(origin) {
        return Err(TokenRefusal::Invalid(
            "the access token is for another resource",
        ));
    }
    match key_is_live(fd, &grant).await {
        Ok(true) => Ok(Caller {
            user: grant.user,
            key_id: Some(grant.key_id),
        }),
        Ok(false) => Err(TokenRefusal::Invalid(
            "the API key this token was granted through was revoked",
        )),
        Err(e) => {
            tracing::warn!("records unavailable: {e}");
            Err(TokenRefusal::Unavailable)
        }
    }
}

async fn key_is_live(fd: &FrontDoor, grant: &OAuthGrant) -> Result<bool, PortError> {
    Ok(fd
        .records
        .list_keys(&grant.user)
        .await?
        .iter()
        .any(|k| k.id == grant.key_id && k.revoked_at_ms.is_none()))
}

/// The 401 of the MCP endpoint: RFC 9728 section 5.1 `resource_metadata` in
/// `WWW-Authenticate`, and RFC 6750 `error="invalid_token"` when a token was refused.
pub fn unauthorized(origin: &str, message: &str, invalid_token: bool) -> Response {
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\", scope=\"{SCOPE}\"",
        resource_metadata_url(origin)
    );
    if invalid_token {
        challenge.push_str(", error=\"invalid_token\"");
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": if invalid_token { "invalid_token" } else { "unauthorized" }, "message": message})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

// ---------------------------------------------------------------------------------------
// Random values and hashes

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex(&bytes))
}

/// RFC 7636 section 4.2: `BASE64URL(SHA256(verifier))`.
fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 section 4.1: 43 to 128 unreserved characters.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

// ---------------------------------------------------------------------------------------
// Form bodies and parameters

/// Parameters of a form body or query string; a parameter sent twice is refused
/// (RFC 6749 section 3.1).
fn params(raw: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(invalid_request(format!("the parameter {k} is repeated")));
        }
    }
    Ok(out)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

async fn form_body(
    fd: &FrontDoor,
    req: Request,
) -> Result<(HeaderMap, HashMap<String, String>), OAuthError> {
    let (parts, body) = req.into_parts();
    if !is_form(&parts.headers) {
        return Err(invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let bytes = crate::rest::read_body(&parts.headers, body, fd.requests.limits.max_body_bytes)
        .await
        .map_err(|e| invalid_request(e.message()))?;
    Ok((parts.headers, params(&bytes)?))
}

/// The `client_id` of a token or revocation request: in the body, or in HTTP Basic
/// credentials (RFC 6749 section 2.3.1) for clients that send one anyway.
fn client_id_of(headers: &HeaderMap, p: &HashMap<String, String>) -> Option<String> {
    if let Some(id) = p.get("client_id").filter(|s| !s.is_empty()) {
        return Some(id.clone());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let id = text.split(':').next()?;
    let id: String = url::form_urlencoded::parse(format!("x={id}").as_bytes())
        .next()
        .map(|(_, v)| v.to_string())?;
    (!id.is_empty()).then_some(id)
}

// ---------------------------------------------------------------------------------------
// Clients: registration and metadata documents

/// Whether a redirect URI may be registered: https, or http to a loopback host (RFC 8252
/// section 7.3), with no fragment.
fn acceptable_redirect(uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    if u.fragment().is_some() || !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    match u.scheme() {
        "https" => u.host_str().is_some(),
        "http" => u
            .host_str()
            .is_some_and(|h| is_loopback_name(h.trim_matches(['[', ']']))),
        _ => false,
    }
}

fn str_list(v: &Value, field: &str) -> Result<Option<Vec<String>>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{field} must be an array of strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("{field} must be an array of strings")),
    }
}

/// Checks client metadata (RFC 7591 section 2; the same fields in a metadata document):
/// returns the client's name and redirect URIs.
fn check_metadata(v: &Value) -> Result<(Option<String>, Vec<String>), OAuthError> {
    let bad = |d: String| oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", d);
    if !v.is_object() {
        return Err(bad("the client metadata must be a JSON object".into()));
    }
    let redirect_uris = str_list(v, "redirect_uris")
        .map_err(bad)?
        .unwrap_or_default();
    if redirect_uris.is_empty() {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "redirect_uris must name at least one redirect URI",
        ));
    }
    if let Some(u) = redirect_uris.iter().find(|u| !acceptable_redirect(u)) {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            format!("{u:?} is not an https URL (or http on a loopback address) without a fragment"),
        ));
    }
    if let Some(g) = str_list(v, "grant_types").map_err(bad)?
        && let Some(x) = g
            .iter()
            .find(|g| !["authorization_code", "refresh_token"].contains(&g.as_str()))
    {
        return Err(bad(format!(
            "grant type {x:?} is not supported (authorization_code, refresh_token)"
        )));
    }
    if let Some(r) = str_list(v, "response_types").map_err(bad)?
        && r.iter().any(|r| r != "code")
    {
        return Err(bad("only the response type \"code\" is supported".into()));
    }
    let name = match v.get("client_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.chars().take(200).collect()),
        Some(_) => return Err(bad("client_name must be a string".into())),
    };
    Ok((name, redirect_uris))
}

/// `POST /register`: RFC 7591 dynamic client registration, public clients only.
pub async fn register(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    if let Err(r) = request_origin(&fd, &req) {
        return refused(r);
    }
    let (parts, body) = req.into_parts();
    let bytes =
        match crate::rest::read_body(&parts.headers, body, fd.requests.limits.max_body_bytes).await
        {
            Ok(b) => b,
            Err(e) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client_metadata",
                    e.message(),
                )
                .into_response();
            }
        };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                format!("the body is not JSON: {e}"),
            )
            .into_response();
        }
    };
    let (name, redirect_uris) = match check_metadata(&v) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let client = OAuthClient {
        client_id: random_token("tbcl_")[..37].to_string(),
        client_name: name,
        redirect_uris,
        created_at_ms: now_ms(),
    };
    if let Err(e) = fd.oauth.save_client(&client).await {
        return unavailable(e).into_response();
    }
    let mut body = json!({
        "client_id": client.client_id,
        "client_id_issued_at": client.created_at_ms / 1000,
        "redirect_uris": client.redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "scope": SCOPE,
    });
    if let Some(n) = &client.client_name {
        body["client_name"] = json!(n);
    }
    if let Some(t) = v.get("application_type").and_then(Value::as_str) {
        body["application_type"] = json!(t);
    }
    let mut r = (StatusCode::CREATED, axum::Json(body)).into_response();
    no_store(r.headers_mut());
    r
}

/// Whether `client_id` names a client ID metadata document (an https URL with a path).
fn is_document_id(fd: &FrontDoor, client_id: &str) -> bool {
    let Ok(u) = url::Url::parse(client_id) else {
        return false;
    };
    let loopback_http = fd.oauth_settings.allow_loopback_clients
        && u.scheme() == "http"
        && u.host_str()
            .is_some_and(|h| is_loopback_name(h.trim_matches(['[', ']'])));
    (u.scheme() == "https" || loopback_http) && u.path() != "/" && !u.path().is_empty()
}

/// Fetches and checks a client ID metadata document (its `client_id` must be its own URL).
async fn fetch_document(fd: &FrontDoor, client_id: &str) -> Result<OAuthClient, String> {
    let url = url::Url::parse(client_id).map_err(|e| e.to_string())?;
    let host = url
        .host_str()
        .ok_or("the client_id URL has no host")?
        .to_string();
    let mut builder = tb_tls::http_client()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("turbobackend/", env!("CARGO_PKG_VERSION")));
    if !fd.oauth_settings.allow_loopback_clients {
        // Resolve once, refuse anything but public addresses, and pin the connection to the
        // address checked (no DNS rebinding between check and fetch).
        let port = url.port_or_known_default().unwrap_or(443);
        let bare = host.trim_matches(['[', ']']).to_string();
        let addr = tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|e| format!("{host} does not resolve: {e}"))?
            .find(|a| tb_pipeline::callback::is_public(&a.ip()))
            .ok_or_else(|| format!("{host} does not resolve to a public address"))?;
        builder = builder.resolve(&bare, addr);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let resp = client
        .get(url.clone())
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| {
            format!(
                "fetching the client metadata document failed: {}",
                e.without_url()
            )
        })?;
    if !resp.status().is_success() {
        return Err(format!(
            "the client metadata document answered HTTP {}",
            resp.status()
        ));
    }
    if resp
        .content_length()
        .is_some_and(|n| n as usize > MAX_DOCUMENT_BYTES)
    {
        return Err("the client metadata document is too large".into());
    }
    let bytes = resp.bytes().await.map_err(|e| {
        format!(
            "reading the client metadata document failed: {}",
            e.without_url()
        )
    })?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err("the client metadata document is too large".into());
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the client metadata document is not JSON: {e}"))?;
    if v.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err("the client metadata document's client_id is not its own URL".into());
    }
    let (name, redirect_uris) = check_metadata(&v).map_err(|e| e.description)?;
    Ok(OAuthClient {
        client_id: client_id.to_string(),
        client_name: name,
        redirect_uris,
        created_at_ms: now_ms(),
    })
}

/// The client named by `client_id`: registered, or described by its metadata document.
async fn find_client(fd: &FrontDoor, client_id: &str) -> Result<Option<OAuthClient>, String> {
    if is_document_id(fd, client_id) {
        return fetch_document(fd, client_id).await.map(Some);
    }
    fd.oauth
        .client(client_id)
        .await
        .map_err(|e| format!("the authorization server is temporarily unavailable: {e}"))
}

// ---------------------------------------------------------------------------------------
// The authorization endpoint

/// An authorization request whose client and redirect URI are known good.
struct Authorization {
    client: OAuthClient,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    resource: String,
    origin: String,
}

/// What goes wrong with an authorization request: shown on a page (before the redirect URI
/// is trusted), or sent back to the client.
enum AuthzFailure {
    Shown(StatusCode, String),
    Redirect(Response),
    Other(Response),
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:34em;margin:3em auto;padding:0 1em;line-height:1.5}}input[type=password]{{width:100%;padding:.5em;font-family:monospace}}button{{padding:.5em 1.2em;margin-right:.5em}}.error{{color:#b00020}}</style>\
</head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    let h = r.headers_mut();
    no_store(h);
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The client's redirect URI with `extra` query parameters (and `state`, `iss`).
fn redirect_to(a: &Authorization, extra: &[(&str, &str)]) -> Response {
    let mut url = match url::Url::parse(&a.redirect_uri) {
        Ok(u) => u,
        Err(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Invalid redirect URI",
                "<p>The client's redirect URI is not a URL.</p>",
            );
        }
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        if let Some(s) = &a.state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &a.origin);
    }
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response();
    no_store(r.headers_mut());
    r
}

async fn check_authorization(
    fd: &FrontDoor,
    origin: &str,
    p: &HashMap<String, String>,
) -> Result<Authorization, AuthzFailure> {
    let shown = |m: String| AuthzFailure::Shown(StatusCode::BAD_REQUEST, m);
    let client_id = p
        .get("client_id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| shown("The request names no client (client_id is missing).".into()))?;
    let client = match find_client(fd, client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(shown(
                "The client is not registered here. Ask it to register again.".into(),
            ));
        }
        Err(m) if m.contains("temporarily unavailable") => {
            return Err(AuthzFailure::Shown(StatusCode::SERVICE_UNAVAILABLE, m));
        }
        Err(m) => {
            return Err(shown(format!(
                "The client's metadata document could not be used: {m}"
            )));
        }
    };
    let redirect_uri = p
        .get("redirect_uri")
        .ok_or_else(|| shown("The request names no redirect_uri.".into()))?;
    // Exact string comparison with a registered URI (OAuth 2.1 section 7.5.3).
    if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        return Err(shown(
            "The redirect_uri is not one the client registered.".into(),
        ));
    }
    let mut a = Authorization {
        client,
        redirect_uri: redirect_uri.clone(),
        state: p.get("state").cloned(),
        code_challenge: String::new(),
        resource: resource_of(origin),
        origin: origin.to_string(),
    };
    let back = |a: &Authorization, code: &str, d: &str| {
        AuthzFailure::Redirect(redirect_to(a, &[("error", code), ("error_description", d)]))
    };
    if p.get("response_type").map(String::as_str) != Some("code") {
        return Err(back(
            &a,
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    match (
        p.get("code_challenge"),
        p.get("code_challenge_method").map(String::as_str),
    ) {
        (Some(c), Some("S256"))
            if c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            a.code_challenge = c.clone()
        }
        (Some(_), Some("S256")) => {
            return Err(back(
                &a,
                "invalid_request",
                "code_challenge is not a base64url SHA-256",
            ));
        }
        (None, _) => {
            return Err(back(
                &a,
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            ));
        }
        (Some(_), _) => {
            return Err(back(
                &a,
                "invalid_request",
                "code_challenge_method must be S256",
            ));
        }
    }
    if let Some(r) = p.get("resource")
        && !same_resource(r, &a.resource)
    {
        return Err(back(
            &a,
            "invalid_target",
            "resource is not this server's MCP endpoint",
        ));
    }
    Ok(a)
}

const CARRIED: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "code_challenge",
    "code_challenge_method",
    "state",
    "resource",
    "scope",
];

/// The sign-in and consent page: names the client and where it sends the user back, asks
/// for an API key, and posts the authorization request back to `/authorize`.
fn consent_page(a: &Authorization, p: &HashMap<String, String>, error: Option<&str>) -> Response {
    let name = a
        .client
        .client_name
        .clone()
        .unwrap_or_else(|| a.client.client_id.clone());
    let back_host = url::Url::parse(&a.redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let hidden: String = CARRIED
        .iter()
        .filter_map(|k| p.get(*k).map(|v| (k, v)))
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(v)
            )
        })
        .collect();
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<p><strong>{name}</strong> (client <code>{id}</code>) asks to use turbobackend as you: \
to build, change, deploy and list your backends, and to spend from your budget doing so.</p>\
<p>After you decide you go back to <strong>{host}</strong>.</p>{error}\
<form method=\"post\" action=\"/authorize\">{hidden}\
<p><label for=\"api_key\">Sign in with one of your API keys (it stays here; {name} never sees it):</label><br>\
<input type=\"password\" id=\"api_key\" name=\"api_key\" autocomplete=\"off\" placeholder=\"tb_…\"></p>\
<p><button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></p></form>",
        name = escape(&name),
        id = escape(&a.client.client_id),
        host = escape(&back_host),
    );
    let status = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    page(status, &format!("Connect {name} to turbobackend"), &body)
}

/// `GET /authorize`: checks the request and shows the sign-in and consent page.
pub async fn authorize_page(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let origin = match request_origin(&fd, &req) {
        Ok(o) => o,
        Err(r) => return refused(r),
    };
    let p = match params(req.uri().query().unwrap_or_default().as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Invalid authorization request",
                &format!("<p>{}</p>", escape(&e.description)),
            );
        }
    };
    match check_authorization(&fd, &origin, &p).await {
        Ok(a) => consent_page(&a, &p, None),
        Err(f) => failure(f),
    }
}

fn failure(f: AuthzFailure) -> Response {
    match f {
        AuthzFailure::Shown(status, m) => page(
            status,
            "Invalid authorization request",
            &format!("<p>{}</p>", escape(&m)),
        ),
        AuthzFailure::Redirect(r) | AuthzFailure::Other(r) => r,
    }
}

/// `POST /authorize`: the page's form. Signs the user in with the API key and, when they
/// allow, redirects back with a single-use code.
pub async fn authorize_decision(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let origin = match request_origin(&fd, &req) {
        Ok(o) => o,
        Err(r) => return refused(r),
    };
    let p = match form_body(&fd, req).await {
        Ok((_, p)) => p,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Invalid authorization request",
                &format!("<p>{}</p>", escape(&e.description)),
            );
        }
    };
    let a = match check_authorization(&fd, &origin, &p).await {
        Ok(a) => a,
        Err(f) => return failure(f),
    };
    if p.get("decision").map(String::as_str) != Some("allow") {
        return redirect_to(
            &a,
            &[
                ("error", "access_denied"),
                ("error_description", "the user denied access"),
            ],
        );
    }
    let key = p.get("api_key").map(|k| k.trim()).unwrap_or_default();
    if key.is_empty() || key.len() > crate::auth::MAX_KEY_LEN {
        return consent_page(&a, &p, Some("Paste one of your API keys to sign in."));
    }
    let key = match fd.records.authenticate(key).await {
        Ok(Some(k)) if k.revoked_at_ms.is_none() => k,
        Ok(_) => {
            tracing::info!("OAuth sign-in refused: invalid or revoked API key");
            return consent_page(
                &a,
                &p,
                Some("That API key is not valid (unknown or revoked)."),
            );
        }
        Err(e) => return failure(AuthzFailure::Other(unavailable(e).into_response())),
    };
    let code = random_token(CODE_PREFIX);
    let grant = OAuthGrant {
        hash: sha256_hex(code.as_bytes()),
        kind: GrantKind::Code,
        family: random_token("fam_"),
        client_id: a.client.client_id.clone(),
        user: key.user,
        key_id: key.id,
        resource: a.resource.clone(),
        scope: SCOPE.into(),
        redirect_uri: Some(a.redirect_uri.clone()),
        code_challenge: Some(a.code_challenge.clone()),
        expires_at_ms: now_ms() + fd.oauth_settings.code_ttl.as_millis() as u64,
        used_at_ms: None,
        revoked_at_ms: None,
    };
    if let Err(e) = fd.oauth.save_grant(&grant).await {
        return unavailable(e).into_response();
    }
    tracing::info!(client = %a.client.client_id, "OAuth authorization granted");
    redirect_to(&a, &[("code", &code)])
}

// ---------------------------------------------------------------------------------------
// The token and revocation endpoints

/// `POST /token`.
pub async fn token(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    match token_inner(&fd, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn token_inner(fd: &FrontDoor, req: Request) -> Result<Response, OAuthError> {
    let origin =
        request_origin(fd, &req).map_err(|_| invalid_request("this host is not served"))?;
    let (headers, p) = form_body(fd, req).await?;
    let client_id =
        client_id_of(&headers, &p).ok_or_else(|| invalid_request("client_id is required"))?;
    if !fd
        .token_limiter
        .admit(&client_id, fd.oauth_settings.token_requests_per_minute)
    {
        return Err(oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            "too many token requests from this client; retry in a minute",
        ));
    }
    // A registered client must still exist (an unknown one re-registers on invalid_client).
    if !is_document_id(fd, &client_id)
        && fd
            .oauth
            .client(&client_id)
            .await
            .map_err(unavailable)?
            .is_none()
    {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the client is not registered",
        ));
    }
    let resource = resource_of(&origin);
    if let Some(r) = p.get("resource")
        && !same_resource(r, &resource)
    {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource is not this server's MCP endpoint",
        ));
    }
    let need = |k: &str| {
        p.get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid_request(format!("{k} is required")))
    };
    let grant = match p.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let g = use_once(fd, need("code")?, GrantKind::Code, &client_id).await?;
            // OAuth 2.0 clients send the redirect URI again (RFC 6749 section 4.1.3); OAuth
            // 2.1 drops it, PKCE binding the code to its client. When sent, it must match.
            if let Some(r) = p.get("redirect_uri")
                && g.redirect_uri.as_deref() != Some(r.as_str())
            {
                return Err(invalid_grant(
                    "redirect_uri differs from the authorization request's",
                ));
            }
            let verifier = need("code_verifier")?;
            if !valid_verifier(verifier)
                || g.code_challenge.as_deref() != Some(s256(verifier).as_str())
            {
                return Err(invalid_grant(
                    "the code_verifier does not match the code_challenge",
                ));
            }
            g
        }
        Some("refresh_token") => {
            use_once(fd, need("refresh_token")?, GrantKind::Refresh, &client_id).await?
        }
        Some(_) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            ));
        }
        None => return Err(invalid_request("grant_type is required")),
    };
    if grant.resource != resource {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "the grant is for another resource",
        ));
    }
    if !key_is_live(fd, &grant).await.map_err(unavailable)? {
        fd.oauth
            .revoke_family(&grant.family)
            .await
            .map_err(unavailable)?;
        return Err(invalid_grant(
            "the API key this grant was made with was revoked",
        ));
    }
    issue(fd, &grant).await
}

/// Uses a code or refresh token once. A second use is a replay: the whole family is revoked.
async fn use_once(
    fd: &FrontDoor,
    value: &str,
    kind: GrantKind,
    client_id: &str,
) -> Result<OAuthGrant, OAuthError> {
    let what = if kind == GrantKind::Code {
        "authorization code"
    } else {
        "refresh token"
    };
    let g = match fd
        .oauth
        .use_grant(&sha256_hex(value.as_bytes()))
        .await
        .map_err(unavailable)?
    {
        GrantUse::Unknown => return Err(invalid_grant(format!("unknown {what}"))),
        GrantUse::Again(g) => {
            if g.kind == kind && g.client_id == client_id {
                fd.oauth
                    .revoke_family(&g.family)
                    .await
                    .map_err(unavailable)?;
                tracing::warn!(client = %client_id, "OAuth {what} reused: its grant is revoked");
            }
            return Err(invalid_grant(format!(
                "the {what} was already used; every token of this grant is revoked"
            )));
        }
        GrantUse::First(g) => g,
    };
    if g.kind != kind {
        return Err(invalid_grant(format!("not an {what}")));
    }
    if g.client_id != client_id {
        return Err(invalid_grant(format!(
            "the {what} was issued to another client"
        )));
    }
    if g.revoked_at_ms.is_some() {
        return Err(invalid_grant(format!("the {what} was revoked")));
    }
    if g.expires_at_ms <= now_ms() {
        return Err(invalid_grant(format!("the {what} expired")));
    }
    Ok(g)
}

/// Issues an access token and a refresh token in `from`'s family.
async fn issue(fd: &FrontDoor, from: &OAuthGrant) -> Result<Response, OAuthError> {
    let s = &fd.oauth_settings;
    let now = now_ms();
    let access = random_token(ACCESS_PREFIX);
    let refresh = random_token(REFRESH_PREFIX);
    for (value, kind, ttl) in [
        (&access, GrantKind::Access, s.access_ttl),
        (&refresh, GrantKind::Refresh, s.refresh_ttl),
    ] {
        let g = OAuthGrant {
            hash: sha256_hex(value.as_bytes()),
            kind,
            redirect_uri: None,
            code_challenge: None,
            expires_at_ms: now + ttl.as_millis() as u64,
            used_at_ms: None,
            revoked_at_ms: None,
            ..from.clone()
        };
        fd.oauth.save_grant(&g).await.map_err(unavailable)?;
    }
    let mut r = axum::Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": s.access_ttl.as_secs(),
        "refresh_token": refresh,
        "scope": from.scope,
    }))
    .into_response();
    no_store(r.headers_mut());
    Ok(r)
}

/// `POST /revoke` (RFC 7009): revokes the token's whole grant. Unknown tokens are not an
/// error (section 2.2).
pub async fn revoke(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let result: Result<(), OAuthError> = async {
        request_origin(&fd, &req).map_err(|_| invalid_request("this host is not served"))?;
        let (headers, p) = form_body(&fd, req).await?;
        let token = p
            .get("token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid_request("token is required"))?;
        let client_id = client_id_of(&headers, &p);
        let grant = fd
            .oauth
            .grant(&sha256_hex(token.as_bytes()))
            .await
            .map_err(unavailable)?;
        // A client may revoke only its own tokens; codes are not revocable here.
        if let Some(g) = grant
            && g.kind != GrantKind::Code
            && client_id.as_deref().is_none_or(|c| c == g.client_id)
        {
            fd.oauth
                .revoke_family(&g.family)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut r = StatusCode::OK.into_response();
            no_store(r.headers_mut());
            r
        }
        Err(e) => e.into_response(),
    }
}
