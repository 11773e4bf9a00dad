//! Assembling an app image without Docker, as crane, ko and Jib do: the base image's
//! manifest and config, plus one layer holding the artifact under `/app/`.
//!
//! 1. Resolve the base (an index is narrowed to its `linux/amd64` manifest). The target
//!    repository keeps the base manifest it was built on under a tag of the week
//!    ([`base_cache_tag`]), with the base config, so later pushes that week find the base
//!    there and make no request at all to the base registry (Docker Hub allows a handful of
//!    anonymous pulls per hour per address, ECR Public one pull a second, and Lambda's
//!    outbound addresses are shared). A tag that moved upstream is picked up the next week.
//! 2. Build the app layer ([`crate::layer`]) and a new config: the base config with the
//!    layer's diff_id appended to `rootfs.diff_ids`, `WorkingDir=/app`,
//!    `Cmd=["node","/app/.output/server/index.mjs"]` (no `Entrypoint`: the image runs exactly
//!    that), `PORT=8080` and `NODE_ENV=production` in `Env`, and a history entry. Times are
//!    the epoch, so the same base and artifact always give the same image digest.
//! 3. Make every base layer present in the target repository: already there (`HEAD`),
//!    mounted from the base repository when both live on the same registry (`201`), or
//!    copied (the registry declined the mount with `202`, or the base lives elsewhere).
//! 4. Push the app layer and the config unless present, then the manifest by tag.
//!
//! The manifest keeps the base's format: an OCI base gives an OCI image, a Docker schema 2
//! base a Docker schema 2 image (with the matching layer media type).

use bytes::Bytes;
use serde_json::{Value, json};
use tb_core::ports::Artifact;

use crate::layer::Layer;
use crate::reference::ImageRef;
use crate::registry::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, FetchedManifest, Mount, OCI_INDEX, OCI_MANIFEST,
    RegistryClient,
};
use crate::{DeployError, artifact, layer};

/// The command the image runs.
pub const APP_CMD: [&str; 2] = ["node", "/app/.output/server/index.mjs"];
/// The port the app listens on inside the image.
pub const APP_PORT: u16 = 8080;
/// Every time written into the config.
pub const EPOCH: &str = "1970-01-01T00:00:00Z";

const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How a blob came to be in the target repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// It was there already (`HEAD` answered 200): nothing sent.
    Present,
    /// Linked from the base repository by a cross-repository mount (`201`): nothing sent.
    Mounted,
    /// Downloaded from the base and uploaded (mount declined or another registry).
    Copied,
    /// Uploaded from here (the app layer, the config).
    Uploaded,
}

/// What [`push_app_image`] did.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `registry/repository@sha256:…`: what a machine runs.
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
    pub tag: String,
    pub manifest_media_type: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub layer_diff_id: String,
    /// The base manifest actually used (the platform manifest of an index).
    pub base_digest: String,
    /// Every blob of the image (base layers, app layer, config) and how it got there.
    pub blobs: Vec<(String, Transfer)>,
}

impl PushedImage {
    /// How `digest` got into the target repository.
    pub fn transfer(&self, digest: &str) -> Option<Transfer> {
        self.blobs
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, t)| *t)
    }
}

/// A resolved platform manifest and its config.
#[derive(Clone, Debug)]
pub struct BaseImage {
    pub digest: String,
    pub media_type: String,
    pub manifest: Value,
    pub config: Value,
    /// The manifest's and the config's bytes as served (their digests are theirs).
    pub manifest_bytes: Vec<u8>,
    pub config_bytes: Vec<u8>,
}

impl BaseImage {
    fn new(
        fetched: FetchedManifest,
        manifest: Value,
        config: Value,
        config_bytes: Vec<u8>,
    ) -> Self {
        BaseImage {
            digest: fetched.digest,
            media_type: fetched.media_type,
            manifest,
            config,
            manifest_bytes: fetched.bytes,
            config_bytes,
        }
    }
}

/// The tag under which a target repository keeps the base manifest `base` resolved to this
/// week: `tb-base-<hash of the reference>-w<weeks since the epoch>`.
pub fn base_cache_tag(base: &ImageRef, unix_secs: u64) -> String {
    let hash = tb_core::encoding::sha256_hex(base.to_string().as_bytes());
    format!("tb-base-{}-w{}", &hash[..12], unix_secs / (7 * 86_400))
}

/// The base as the target repository kept it under `tag`, if it did. Any failure to read
/// it (a repository that does not exist yet, a registry refusing the read) only means the
/// base is looked up where it lives.
async fn cached_base(target: &RegistryClient, repository: &str, tag: &str) -> Option<BaseImage> {
    let result = async {
        let fetched = target.get_manifest(repository, tag).await?;
        if fetched.media_type != OCI_MANIFEST && fetched.media_type != DOCKER_MANIFEST {
            return Err(DeployError::Image("not an image manifest".into()));
        }
        let manifest: Value = parse(&fetched.bytes, "the kept base manifest")?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| DeployError::Image("no config".into()))?;
        let config_bytes = target.get_blob(repository, config_digest).await?;
        let config: Value = parse(&config_bytes, "the kept base config")?;
        Ok(BaseImage::new(fetched, manifest, config, config_bytes))
    }
    .await;
    match result {
        Ok(base) => Some(base),
        Err(e) => {
            tracing::debug!(repository, tag, "no kept base image: {e}");
            None
        }
    }
}

/// Stores the base's config and manifest in the target repository under `tag` (its
/// layers are there already). A failure only costs a lookup next time, so it is logged.
async fn keep_base(target: &RegistryClient, repository: &str, tag: &str, base: &BaseImage) {
    let result = async {
        let config_digest = base.manifest["config"]["digest"].as_str().unwrap_or("");
        if !target.blob_exists(repository, config_digest).await? {
            target
                .push_blob(
                    repository,
                    config_digest,
                    Bytes::from(base.config_bytes.clone()),
                )
                .await?;
        }
        target
            .put_manifest(
                repository,
                tag,
                &base.media_type,
                base.manifest_bytes.clone(),
            )
            .await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(
            repository,
            tag,
            "keeping the base image in the target repository failed: {e}"
        );
    }
}

/// Fetches the base image's `linux/amd64` manifest and its config.
pub async fn resolve_base(
    client: &RegistryClient,
    base: &ImageRef,
) -> Result<BaseImage, DeployError> {
    let mut fetched = client
        .get_manifest(&base.repository, &base.reference)
        .await?;
    if fetched.media_type == OCI_INDEX || fetched.media_type == DOCKER_MANIFEST_LIST {
        let index: Value = parse(&fetched.bytes, "the base image index")?;
        let digest = linux_amd64(&index)
            .ok_or_else(|| DeployError::Image(format!("{base} has no linux/amd64 manifest")))?;
        fetched = client.get_manifest(&base.repository, &digest).await?;
    }
    if fetched.media_type != OCI_MANIFEST && fetched.media_type != DOCKER_MANIFEST {
        return Err(DeployError::Image(format!(
            "{base} is a {}, not an image manifest",
            fetched.media_type
        )));
    }
    let manifest: Value = parse(&fetched.bytes, "the base manifest")?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| DeployError::Image(format!("{base}: the manifest has no config")))?;
    let config_bytes = client.get_blob(&base.repository, config_digest).await?;
    let config: Value = parse(&config_bytes, "the base config")?;
    let layers = manifest["layers"].as_array().map_or(0, Vec::len);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    if layers != diff_ids {
        return Err(DeployError::Image(format!(
            "{base}: {layers} layers but {diff_ids} diff_ids"
        )));
    }
    Ok(BaseImage::new(fetched, manifest, config, config_bytes))
}

/// Builds the app image from `base` and `artifact` and pushes it to
/// `target`/`repository`:`tag`. `base_client` serves the base image; it may be `target`
/// itself (then base layers are mounted) or a client for another registry (then copied).
pub async fn push_app_image(
    base_client: &RegistryClient,
    base: &ImageRef,
    target: &RegistryClient,
    repository: &str,
    tag: &str,
    artifact: &Artifact,
) -> Result<PushedImage, DeployError> {
    artifact::verify(artifact)?;
    let tar_gz = artifact.tar_gz.clone();
    let layer = tokio::task::spawn_blocking(move || layer::app_layer(&artifact::read(&tar_gz)?))
        .await
        .map_err(|e| DeployError::Local(format!("building the layer: {e}")))??;
    let cache_tag = base_cache_tag(base, tb_core::clock::now_secs());
    let kept = cached_base(target, repository, &cache_tag).await;
    let from_cache = kept.is_some();
    let resolved = match kept {
        Some(kept) => kept,
        None => resolve_base(base_client, base).await?,
    };
    let config = app_config(&resolved.config, &layer, &artifact.sha256)?;
    let config_bytes = serde_json::to_vec(&config).expect("JSON values serialise");
    let config_digest = format!("sha256:{}", tb_core::encoding::sha256_hex(&config_bytes));

    let same_registry = base_client.registry() == target.registry();
    let mut blobs = Vec::new();
    let base_layers = resolved.manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for descriptor in &base_layers {
        let digest = descriptor["digest"]
            .as_str()
            .ok_or_else(|| DeployError::Image("a base layer without a digest".into()))?;
        let transfer = if target.blob_exists(repository, digest).await? {
            Transfer::Present
        } else if same_registry && base.repository != repository {
            match target
                .mount_blob(repository, digest, &base.repository)
                .await?
            {
                Mount::Mounted => Transfer::Mounted,
                Mount::Refused { upload_url } => {
                    let data = base_client.get_blob(&base.repository, digest).await?;
                    target
                        .push_blob_to(repository, &upload_url, digest, Bytes::from(data))
                        .await?;
                    Transfer::Copied
                }
            }
        } else {
            let data = base_client.get_blob(&base.repository, digest).await?;
            target
                .push_blob(repository, digest, Bytes::from(data))
                .await?;
            Transfer::Copied
        };
        tracing::debug!(%digest, ?transfer, "base layer");
        blobs.push((digest.to_owned(), transfer));
    }
    if !from_cache {
        keep_base(target, repository, &cache_tag, &resolved).await;
    }
    for (digest, data) in [
        (layer.digest.clone(), Bytes::from(layer.blob.clone())),
        (config_digest.clone(), Bytes::from(config_bytes.clone())),
    ] {
        let transfer = if target.blob_exists(repository, &digest).await? {
            Transfer::Present
        } else {
            target.push_blob(repository, &digest, data).await?;
            Transfer::Uploaded
        };
        blobs.push((digest, transfer));
    }

    let media_type = resolved.media_type.clone();
    let manifest = app_manifest(&resolved, base, &layer, &config_digest, config_bytes.len())?;
    let manifest_bytes = serde_json::to_vec(&manifest).expect("JSON values serialise");
    let digest = target
        .put_manifest(repository, tag, &media_type, manifest_bytes)
        .await?;
    tracing::info!(repository, tag, %digest, "pushed the app image");
    Ok(PushedImage {
        reference: format!("{}/{repository}@{digest}", target.registry()),
        digest,
        tag: tag.to_owned(),
        manifest_media_type: media_type,
        config_digest,
        layer_digest: layer.digest,
        layer_diff_id: layer.diff_id,
        base_digest: resolved.digest,
        blobs,
    })
}

/// The base config turned into the app's.
pub fn app_config(
    base: &Value,
    layer: &Layer,
    artifact_sha256: &str,
) -> Result<Value, DeployError> {
    let mut config = base.clone();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| DeployError::Image("the base config is not a JSON object".into()))?;
    obj.insert("created".into(), json!(EPOCH));

    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers"}));
    match rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
        Some(ids) => ids.push(json!(layer.diff_id)),
        None => rootfs["diff_ids"] = json!([layer.diff_id]),
    }

    let history = obj.entry("history").or_insert_with(|| json!([]));
    if let Some(entries) = history.as_array_mut() {
        entries.push(json!({
            "created": EPOCH,
            "created_by": "turbobackend: COPY .output /app/.output",
            "comment": format!("artifact sha256:{artifact_sha256}"),
        }));
    }

    let run = obj.entry("config").or_insert_with(|| json!({}));
    if !run.is_object() {
        *run = json!({});
    }
    let run = run.as_object_mut().expect("an object");
    let mut env: Vec<Value> = run
        .get("Env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            let key = e.as_str().and_then(|s| s.split_once('=')).map(|(k, _)| k);
            !matches!(key, Some("PORT") | Some("NODE_ENV"))
        })
        .collect();
    env.push(json!(format!("PORT={APP_PORT}")));
    env.push(json!("NODE_ENV=production"));
    run.insert("Env".into(), Value::Array(env));
    run.insert("WorkingDir".into(), json!("/app"));
    run.insert("Cmd".into(), json!(APP_CMD));
    run.remove("Entrypoint");
    let ports = run.entry("ExposedPorts").or_insert_with(|| json!({}));
    if let Some(ports) = ports.as_object_mut() {
        ports.insert(format!("{APP_PORT}/tcp"), json!({}));
    } else {
        *ports = json!({ format!("{APP_PORT}/tcp"): {} });
    }
    Ok(config)
}

fn app_manifest(
    base: &BaseImage,
    base_ref: &ImageRef,
    layer: &Layer,
    config_digest: &str,
    config_size: usize,
) -> Result<Value, DeployError> {
    let oci = base.media_type == OCI_MANIFEST;
    let mut layers = base.manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    layers.push(json!({
        "mediaType": if oci { OCI_LAYER } else { DOCKER_LAYER },
        "digest": layer.digest,
        "size": layer.blob.len(),
    }));
    let config_media_type = base.manifest["config"]["mediaType"]
        .as_str()
        .ok_or_else(|| DeployError::Image("the base config has no media type".into()))?;
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": base.media_type,
        "config": {
            "mediaType": config_media_type,
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    });
    if oci {
        manifest["annotations"] = json!({
            "org.opencontainers.image.base.name": base_ref.to_string(),
            "org.opencontainers.image.base.digest": base.digest,
        });
    }
    Ok(manifest)
}

/// The digest of the `linux/amd64` entry of an index.
fn linux_amd64(index: &Value) -> Option<String> {
    index["manifests"].as_array()?.iter().find_map(|m| {
        let platform = &m["platform"];
        (platform["os"] == "linux" && platform["architecture"] == "amd64")
            .then(|| m["digest"].as_str().map(str::to_owned))
            .flatten()
    })
}

fn parse(bytes: &[u8], what: &str) -> Result<Value, DeployError> {
    serde_json::from_slice(bytes).map_err(|e| DeployError::Image(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> Layer {
        Layer {
            blob: vec![1, 2, 3],
            digest: "sha256:aa".into(),
            diff_id: "sha256:bb".into(),
        }
    }

    #[test]
    fn the_app_config_extends_the_base_config() {
        let base = json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin", "PORT=3000"], "Entrypoint": ["docker-entrypoint.sh"],
                       "Cmd": ["node"], "Labels": {"a": "b"}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:base"]},
            "history": [{"created_by": "base"}],
            "unknown": 1,
        });
        let c = app_config(&base, &layer(), "cafe").unwrap();
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:base", "sha256:bb"]));
        assert_eq!(
            c["config"]["Env"],
            json!(["PATH=/usr/bin", "PORT=8080", "NODE_ENV=production"])
        );
        assert_eq!(c["config"]["Cmd"], json!(APP_CMD));
        assert_eq!(c["config"]["WorkingDir"], "/app");
        assert!(c["config"].get("Entrypoint").is_none());
        assert_eq!(c["config"]["Labels"], json!({"a": "b"}));
        assert_eq!(c["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(c["unknown"], 1);
        assert_eq!(c["created"], EPOCH);
    }

    #[test]
    fn the_base_is_kept_under_a_tag_per_reference_and_week() {
        let a: ImageRef = "public.ecr.aws/docker/library/node:20-slim"
            .parse()
            .unwrap();
        let b: ImageRef = "node:20-slim".parse().unwrap();
        let week = 7 * 86_400;
        let tag = base_cache_tag(&a, 3 * week + 5);
        assert!(tag.starts_with("tb-base-") && tag.ends_with("-w3"), "{tag}");
        assert_eq!(tag, base_cache_tag(&a, 4 * week - 1));
        assert_ne!(tag, base_cache_tag(&a, 4 * week));
        assert_ne!(tag, base_cache_tag(&b, 3 * week));
        // A valid tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
        assert!(tag.len() <= 128 && tag.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
    }

    #[test]
    fn an_index_is_narrowed_to_linux_amd64() {
        let index = json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(linux_amd64(&index).as_deref(), Some("sha256:amd"));
        assert_eq!(linux_amd64(&json!({"manifests": []})), None);
    }

    #[test]
    fn a_docker_base_gives_a_docker_manifest() {
        let base = BaseImage {
            digest: "sha256:base".into(),
            media_type: DOCKER_MANIFEST.into(),
            manifest: json!({"config": {"mediaType": "application/vnd.docker.container.image.v1+json"},
                             "layers": [{"mediaType": DOCKER_LAYER, "digest": "sha256:l1", "size": 5}]}),
            config: json!({}),
            manifest_bytes: Vec::new(),
            config_bytes: Vec::new(),
        };
        let base_ref: ImageRef = "node:20-slim".parse().unwrap();
        let m = app_manifest(&base, &base_ref, &layer(), "sha256:cfg", 10).unwrap();
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(m["layers"][1]["mediaType"], DOCKER_LAYER);
        assert_eq!(m["layers"][0]["digest"], "sha256:l1");
        assert!(m.get("annotations").is_none());
    }
}
