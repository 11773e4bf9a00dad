//! A client for the few OCI distribution API calls an image push needs: manifests and
//! blobs by `GET`/`HEAD`, cross-repository mounts, monolithic uploads (`POST` then `PUT`),
//! and `PUT` of a manifest by tag.
//!
//! Written over reqwest rather than with the `oci-client` crate: `oci-client` 0.18 treats a
//! refused mount (`202 Accepted` with a fresh upload session) as an error and drops the
//! session, cannot report whether a mount happened, and would add `oci-spec`, `chrono` and a
//! second `sha2` to the build. The calls below are all the distribution spec asks for.
//!
//! Authentication follows the registry's challenge: `Basic` credentials when it asks for
//! Basic, or a token from its `Bearer` realm (fetched with the credentials, or anonymously)
//! covering every repository scope this client has used. Credentials are only ever sent to
//! the registry's own origin and the token realm, never to a redirect target elsewhere, and
//! are scrubbed from any server text that ends up in an error.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tb_core::backoff::{Attempt, Backoff, Jitter, RetryPolicy, retry};
use tb_core::encoding::sha256_hex;

use crate::{DeployError, Secret};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (the Docker counterpart of an index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// How many times a read (`GET`/`HEAD`) is tried when the registry is unreachable or
/// answers 429/5xx.
const READ_ATTEMPTS: u32 = 4;

/// A read's transient answer or error, kept while the read is tried again.
struct Transient(Result<reqwest::Response, DeployError>);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(resp) => write!(f, "the registry answered {}", resp.status()),
            Err(e) => e.fmt(f),
        }
    }
}

/// A user name and password for a registry (`x` and the Fly token for `registry.fly.io`).
#[derive(Clone, Debug)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: Secret,
}

/// A manifest as served, with the digest of its exact bytes.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

/// What a cross-repository mount request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mount {
    /// `201 Created`: the blob is now linked into the target repository.
    Mounted,
    /// `202 Accepted`: the registry declined and opened an upload session instead; the blob
    /// must be sent to `upload_url`.
    Refused { upload_url: String },
}

#[derive(Default)]
struct AuthState {
    /// The `Authorization` value to send (marked sensitive), once a challenge asked for one.
    header: Option<HeaderValue>,
    /// The token realm and service, when the registry uses bearer tokens.
    bearer: Option<(String, Option<String>)>,
    /// Every scope this client has needed, and those the current token was issued for.
    scopes: BTreeSet<String>,
    token_scopes: BTreeSet<String>,
}

/// One registry (`registry.fly.io`, `127.0.0.1:5056`, `docker.io`) with its credentials.
pub struct RegistryClient {
    http: reqwest::Client,
    registry: String,
    base_url: Url,
    credentials: Option<RegistryCredentials>,
    auth: Mutex<AuthState>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registry", &self.registry)
            .field("base_url", &self.base_url.as_str())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// A request that can be rebuilt for a retry (after an auth challenge, or a transient error).
struct Req {
    method: Method,
    url: Url,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
}

impl RegistryClient {
    /// A client for `registry` as written in image references. Loopback registries
    /// (`127.0.0.1`, `localhost`, `[::1]`) are spoken to over plain HTTP, all others over
    /// HTTPS; `docker.io` is served by `registry-1.docker.io`.
    pub fn new(
        registry: &str,
        credentials: Option<RegistryCredentials>,
    ) -> Result<Self, DeployError> {
        let host = registry.rsplit_once(':').map_or(registry, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                registry
            }
        });
        let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
        let api_host = if registry == crate::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if loopback { "http" } else { "https" };
        let base_url = Url::parse(&format!("{scheme}://{api_host}/"))
            .map_err(|e| DeployError::Config(format!("registry {registry}: {e}")))?;
        let http = crate::http_client(Some(Duration::from_secs(300)))?;
        Ok(RegistryClient {
            http,
            registry: registry.to_owned(),
            base_url,
            credentials,
            auth: Mutex::new(AuthState::default()),
        })
    }

    /// The registry as written in image references.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Fetches a manifest (or an index) by tag or digest. When `reference` is a digest, the
    /// bytes are checked against it.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, DeployError> {
        let op = format!("GET manifest {repository}:{reference}");
        let accept = [
            OCI_INDEX,
            DOCKER_MANIFEST_LIST,
            OCI_MANIFEST,
            DOCKER_MANIFEST,
        ]
        .join(", ");
        let req = Req {
            method: Method::GET,
            url: self.url(&format!("v2/{repository}/manifests/{reference}"))?,
            headers: vec![(
                header::ACCEPT,
                HeaderValue::from_str(&accept).expect("ascii"),
            )],
            body: None,
        };
        let resp = self.read(&op, &pull_scope(repository), &req).await?;
        let resp = self.expect(&op, resp, &[StatusCode::OK]).await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.net_error(&op, &e))?
            .to_vec();
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(DeployError::Image(format!(
                "{op}: the registry served bytes with digest {digest}"
            )));
        }
        let declared = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
        let media_type = declared
            .or(content_type)
            .ok_or_else(|| DeployError::Image(format!("{op}: no media type")))?;
        Ok(FetchedManifest {
            media_type,
            bytes,
            digest,
        })
    }

    /// `method` (`HEAD` or `GET`) on a blob, as a read.
    async fn read_blob(
        &self,
        op: &str,
        method: Method,
        repository: &str,
        digest: &str,
    ) -> Result<reqwest::Response, DeployError> {
        let req = Req {
            method,
            url: self.url(&format!("v2/{repository}/blobs/{digest}"))?,
            headers: vec![],
            body: None,
        };
        self.read(op, &pull_scope(repository), &req).await
    }

    /// True when `repository` has the blob (`HEAD` answers 200).
    pub async fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool, DeployError> {
        let op = format!("HEAD blob {repository}@{digest}");
        let resp = self
            .read_blob(&op, Method::HEAD, repository, digest)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&op, resp).await),
        }
    }

    /// Downloads a blob and checks it against `digest`.
    pub async fn get_blob(&self, repository: &str, digest: &str) -> Result<Vec<u8>, DeployError> {
        let op = format!("GET blob {repository}@{digest}");
        let resp = self.read_blob(&op, Method::GET, repository, digest).await?;
        let resp = self.expect(&op, resp, &[StatusCode::OK]).await?;
        let bytes = resp.bytes().await.map_err(|e| self.net_error(&op, &e))?;
        let got = format!("sha256:{}", sha256_hex(&bytes));
        if got != digest {
            return Err(DeployError::Image(format!(
                "{op}: the content has digest {got}"
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Asks the registry to link `digest` from `from` (a repository of this registry) into
    /// `repository` without sending it.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<Mount, DeployError> {
        let op = format!("mount blob {digest} from {from} into {repository}");
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let req = Req {
            method: Method::POST,
            url,
            headers: vec![(header::CONTENT_LENGTH, HeaderValue::from_static("0"))],
            body: Some(Bytes::new()),
        };
        let mut scopes = push_scope(repository);
        scopes.extend(pull_scope(from));
        let resp = self.send(&op, &scopes, &req).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Refused {
                upload_url: self.location(&op, &resp)?.to_string(),
            }),
            _ => Err(self.status_error(&op, resp).await),
        }
    }

    /// Uploads a blob in one piece: opens an upload session, then `PUT`s the bytes.
    pub async fn push_blob(
        &self,
        repository: &str,
        digest: &str,
        data: Bytes,
    ) -> Result<(), DeployError> {
        let op = format!("start upload to {repository}");
        let req = Req {
            method: Method::POST,
            url: self.url(&format!("v2/{repository}/blobs/uploads/"))?,
            headers: vec![(header::CONTENT_LENGTH, HeaderValue::from_static("0"))],
            body: Some(Bytes::new()),
        };
        let resp = self.send(&op, &push_scope(repository), &req).await?;
        let resp = self.expect(&op, resp, &[StatusCode::ACCEPTED]).await?;
        let upload_url = self.location(&op, &resp)?;
        self.finish_upload(repository, upload_url, digest, data)
            .await
    }

    /// Sends a blob to an upload session the registry opened (as after a refused mount).
    pub async fn push_blob_to(
        &self,
        repository: &str,
        upload_url: &str,
        digest: &str,
        data: Bytes,
    ) -> Result<(), DeployError> {
        let url = Url::parse(upload_url)
            .map_err(|e| DeployError::Image(format!("upload URL {upload_url}: {e}")))?;
        self.finish_upload(repository, url, digest, data).await
    }

    async fn finish_upload(
        &self,
        repository: &str,
        mut url: Url,
        digest: &str,
        data: Bytes,
    ) -> Result<(), DeployError> {
        let op = format!("upload blob {digest} to {repository}");
        url.query_pairs_mut().append_pair("digest", digest);
        let req = Req {
            method: Method::PUT,
            url,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            body: Some(data),
        };
        let resp = self.send(&op, &push_scope(repository), &req).await?;
        self.expect(&op, resp, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Stores a manifest under `tag` and returns its digest (of the exact bytes sent,
    /// cross-checked with the registry's `Docker-Content-Digest` when it reports one).
    pub async fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<String, DeployError> {
        let op = format!("PUT manifest {repository}:{tag}");
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        let req = Req {
            method: Method::PUT,
            url: self.url(&format!("v2/{repository}/manifests/{tag}"))?,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_str(media_type)
                    .map_err(|_| DeployError::Image(format!("media type {media_type:?}")))?,
            )],
            body: Some(Bytes::from(bytes)),
        };
        let resp = self.send(&op, &push_scope(repository), &req).await?;
        let resp = self.expect(&op, resp, &[StatusCode::CREATED]).await?;
        if let Some(reported) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && reported != digest
        {
            return Err(DeployError::Image(format!(
                "{op}: the registry stored digest {reported}, the manifest sent has {digest}"
            )));
        }
        Ok(digest)
    }

    fn url(&self, path: &str) -> Result<Url, DeployError> {
        self.base_url
            .join(path)
            .map_err(|e| DeployError::Config(format!("registry path {path}: {e}")))
    }

    fn location(&self, op: &str, resp: &reqwest::Response) -> Result<Url, DeployError> {
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.error(op, Some(resp.status().as_u16()), "no Location header"))?;
        self.base_url
            .join(location)
            .map_err(|e| self.error(op, None, &format!("bad Location {location}: {e}")))
    }

    /// [`RegistryClient::send`], retried a few times on network errors, 429 and 5xx.
    async fn read(
        &self,
        op: &str,
        scopes: &[String],
        req: &Req,
    ) -> Result<reqwest::Response, DeployError> {
        // A 429 waits for its `retry-after` (at most 10 s), else a second per attempt:
        // anonymous pulls from ECR Public are limited to one a second per address
        // (docs.aws.amazon.com/AmazonECR/latest/public/public-service-quotas.html); other
        // failures wait 250 ms per attempt.
        let policy = RetryPolicy::new(
            "registry",
            READ_ATTEMPTS,
            Backoff::new(Duration::from_millis(250), Duration::from_secs(10)),
            Jitter::None,
        );
        let read = retry(&policy, move |attempt| async move {
            let result = self.send(op, scopes, req).await;
            let after = match &result {
                Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| tb_core::backoff::parse_retry_after(v.to_str().ok()?))
                    .unwrap_or(Duration::from_secs(u64::from(attempt))),
                Ok(resp) if resp.status().is_server_error() => {
                    Duration::from_millis(250 * u64::from(attempt))
                }
                Err(DeployError::Registry { status: None, .. }) => {
                    Duration::from_millis(250 * u64::from(attempt))
                }
                _ => return Attempt::Done(result),
            };
            Attempt::Retry {
                after: Some(after),
                error: Transient(result),
            }
        })
        .await;
        read.unwrap_or_else(|gave_up| gave_up.error.0)
    }

    /// Sends `req` with the current authorization; on a `401` challenge, authenticates as
    /// it asks and sends once more.
    async fn send(
        &self,
        op: &str,
        scopes: &[String],
        req: &Req,
    ) -> Result<reqwest::Response, DeployError> {
        let same_origin = req.url.origin() == self.base_url.origin();
        if same_origin {
            let stale = {
                let mut auth = self.auth.lock().expect("auth lock");
                auth.scopes.extend(scopes.iter().cloned());
                auth.bearer.is_some() && !auth.scopes.is_subset(&auth.token_scopes)
            };
            if stale {
                self.fetch_token(op).await?;
            }
        }
        for attempt in 0..2 {
            let mut builder = self.http.request(req.method.clone(), req.url.clone());
            for (name, value) in &req.headers {
                builder = builder.header(name, value);
            }
            if let Some(body) = &req.body {
                builder = builder.body(body.clone());
            }
            let current = self.auth.lock().expect("auth lock").header.clone();
            if same_origin && let Some(value) = current {
                builder = builder.header(header::AUTHORIZATION, value);
            }
            let resp = builder.send().await.map_err(|e| self.net_error(op, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt > 0 || !same_origin {
                return Ok(resp);
            }
            self.answer_challenge(op, resp.headers()).await?;
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn answer_challenge(&self, op: &str, headers: &HeaderMap) -> Result<(), DeployError> {
        let challenge = headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(creds) = &self.credentials else {
                return Err(self.error(op, Some(401), "the registry wants credentials"));
            };
            let raw = format!("{}:{}", creds.username, creds.password.expose());
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            );
            self.auth.lock().expect("auth lock").header = Some(sensitive(&value)?);
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.error(op, Some(401), "unsupported authentication challenge"));
        }
        let params = challenge_params(params);
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        let realm = get("realm")
            .ok_or_else(|| self.error(op, Some(401), "a bearer challenge without a realm"))?;
        {
            let mut auth = self.auth.lock().expect("auth lock");
            if let Some(scope) = get("scope") {
                auth.scopes.extend(scope.split(' ').map(str::to_owned));
            }
            auth.bearer = Some((realm, get("service")));
        }
        self.fetch_token(op).await
    }

    /// Gets a token from the bearer realm for every scope needed so far.
    async fn fetch_token(&self, op: &str) -> Result<(), DeployError> {
        let (realm, service, scopes) = {
            let auth = self.auth.lock().expect("auth lock");
            let Some((realm, service)) = auth.bearer.clone() else {
                return Ok(());
            };
            (realm, service, auth.scopes.clone())
        };
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(service) = &service {
            query.push(("service", service));
        }
        let mut builder = self.http.get(&realm).query(&query);
        if let Some(creds) = &self.credentials {
            builder = builder.basic_auth(&creds.username, Some(creds.password.expose()));
        }
        let token_op = format!("{op} (token)");
        let resp = builder
            .send()
            .await
            .map_err(|e| self.net_error(&token_op, &e))?;
        let resp = self.expect(&token_op, resp, &[StatusCode::OK]).await?;
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| self.error(&token_op, None, &format!("bad token response: {e}")))?;
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .ok_or_else(|| self.error(&token_op, Some(200), "no token in the response"))?;
        let value = sensitive(&format!("Bearer {token}"))?;
        let mut auth = self.auth.lock().expect("auth lock");
        auth.header = Some(value);
        auth.token_scopes = scopes;
        Ok(())
    }

    async fn expect(
        &self,
        op: &str,
        resp: reqwest::Response,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response, DeployError> {
        if ok.contains(&resp.status()) {
            Ok(resp)
        } else {
            Err(self.status_error(op, resp).await)
        }
    }

    async fn status_error(&self, op: &str, resp: reqwest::Response) -> DeployError {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        // The distribution spec's error body: {"errors":[{"code","message","detail"}]}.
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let errors = v["errors"].as_array()?;
                Some(
                    errors
                        .iter()
                        .map(|e| {
                            format!(
                                "{} {}",
                                e["code"].as_str().unwrap_or(""),
                                e["message"].as_str().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })
            .unwrap_or_else(|| text.chars().take(300).collect());
        self.error(op, Some(status), &message)
    }

    fn net_error(&self, op: &str, e: &reqwest::Error) -> DeployError {
        // reqwest's error text names the URL, which holds no credentials.
        self.error(op, None, &e.to_string())
    }

    fn error(&self, op: &str, status: Option<u16>, message: &str) -> DeployError {
        let scrub = |s: &str| match &self.credentials {
            Some(c) => c.password.scrub(s),
            None => s.to_owned(),
        };
        DeployError::Registry {
            operation: format!("{} {}", self.registry, scrub(op)),
            status,
            message: scrub(message),
        }
    }
}

fn pull_scope(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull")]
}

fn push_scope(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull,push")]
}

fn sensitive(value: &str) -> Result<HeaderValue, DeployError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        DeployError::Config("a credential holds characters not allowed in a header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `realm="https://auth",service="registry",scope="repository:a:pull"` as key/value pairs.
fn challenge_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_owned(), &quoted[end + 1..]),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_owned(), &after[end..]),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.push((key, value));
        rest = after.trim_start_matches([',', ' ']);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed_with_quoted_commas() {
        let params = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/node:pull,push""#,
        );
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:library/node:pull,push".into()),
            ]
        );
    }

    #[test]
    fn loopback_registries_use_http_and_docker_hub_its_api_host() {
        let local = RegistryClient::new("127.0.0.1:5056", None).unwrap();
        assert_eq!(local.base_url.as_str(), "http://127.0.0.1:5056/");
        let hub = RegistryClient::new("docker.io", None).unwrap();
        assert_eq!(hub.base_url.as_str(), "https://registry-1.docker.io/");
        let fly = RegistryClient::new(
            "registry.fly.io",
            Some(RegistryCredentials {
                username: "x".into(),
                password: Secret::new("FlyV1 fm2_supersecret"),
            }),
        )
        .unwrap();
        assert!(!format!("{fly:?}").contains("supersecret"));
        assert_eq!(fly.base_url.as_str(), "https://registry.fly.io/");
    }
}
