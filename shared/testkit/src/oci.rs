//! A small synthetic "Node base image" as OCI blobs, for tests that deploy images but cannot
//! reach Docker Hub: an OCI index with a `linux/amd64` and a `linux/arm64` manifest sharing
//! one layer (a marker file), and configs with `Env`, `Entrypoint` and `Cmd` as the real
//! `node` images have. Push the parts with any registry client: the layer and the configs
//! as blobs, the manifests by digest, then the index under a tag.

use std::io::Write;

use serde_json::json;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Bytes and their `sha256:` digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn of(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: digest(&bytes),
            bytes,
        }
    }
}

/// The parts of the synthetic base image, in the order they must be pushed.
#[derive(Clone, Debug)]
pub struct SyntheticBase {
    /// The gzip'd layer (shared by both platforms).
    pub layer: Blob,
    /// `sha256:` of the uncompressed layer tar.
    pub layer_diff_id: String,
    /// One config per platform.
    pub configs: Vec<Blob>,
    /// One manifest per platform, `(architecture, manifest)`.
    pub manifests: Vec<(String, Blob)>,
    /// The index naming both manifests; push it under the tag (`20-slim`).
    pub index: Blob,
}

/// Builds the synthetic base image (the same bytes every time).
pub fn synthetic_node_base() -> SyntheticBase {
    let mut layer_tar = tar::Builder::new(Vec::new());
    let marker = b"synthetic node base\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(marker.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    layer_tar
        .append_data(&mut h, "etc/turbobackend-base", marker.as_slice())
        .expect("writing to memory");
    let layer_tar = layer_tar.into_inner().expect("writing to memory");
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar).expect("writing to memory");
    let layer = Blob::of(gz.finish().expect("writing to memory"));
    let layer_diff_id = digest(&layer_tar);

    let mut configs = Vec::new();
    let mut manifests = Vec::new();
    let mut entries = Vec::new();
    // arm64 first: a client that takes the first entry instead of linux/amd64 is caught.
    for arch in ["arm64", "amd64"] {
        let config = Blob::of(
            serde_json::to_vec(&json!({
                "architecture": arch, "os": "linux", "created": "2024-05-01T00:00:00Z",
                "config": {
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "NODE_VERSION=20.0.0-synthetic"],
                    "Entrypoint": ["docker-entrypoint.sh"],
                    "Cmd": ["node"],
                },
                "rootfs": {"type": "layers", "diff_ids": [layer_diff_id]},
                "history": [{"created": "2024-05-01T00:00:00Z", "created_by": "synthetic base layer"}],
            }))
            .expect("JSON"),
        );
        let manifest = Blob::of(
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config.digest, "size": config.bytes.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": layer.digest, "size": layer.bytes.len()}],
            }))
            .expect("JSON"),
        );
        entries.push(json!({
            "mediaType": OCI_MANIFEST, "digest": manifest.digest, "size": manifest.bytes.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
        configs.push(config);
        manifests.push((arch.to_owned(), manifest));
    }
    let index = Blob::of(
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
        }))
        .expect("JSON"),
    );
    SyntheticBase {
        layer,
        layer_diff_id,
        configs,
        manifests,
        index,
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", tb_core::encoding::sha256_hex(bytes))
}
