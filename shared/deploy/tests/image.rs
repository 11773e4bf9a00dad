//! The image assembly against a real registry (`TB_TEST_REGISTRY`, see
//! `infra/registry.sh`): what lands there is checked with plain HTTP requests, not with
//! the code under test.

mod support;

use std::io::Read;

use bytes::Bytes;
use serde_json::Value;
use support::{
    File, Health, node_app, push_synthetic_base, registry_alias, tar_gz, test_registry, unique,
};
use tb_core::encoding::sha256_hex;
use tb_deploy::image::{Transfer, push_app_image};
use tb_deploy::registry::{Mount, OCI_MANIFEST, RegistryClient};
use tb_deploy::{artifact, layer};

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// GETs `/v2/<path>` from the registry with plain reqwest.
async fn raw(registry: &str, path: &str) -> Vec<u8> {
    let url = format!("http://{registry}/v2/{path}");
    let resp = reqwest::Client::new()
        .get(&url)
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.bytes().await.unwrap().to_vec()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn tar_paths(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data)
        })
        .collect()
}

#[tokio::test]
async fn an_assembled_image_is_valid_oci_and_its_base_layer_is_mounted_not_uploaded() {
    let registry = test_registry();
    let base = push_synthetic_base(&registry, &unique("tb-test/base")).await;
    let app_repo = unique("tb-test/app");
    let client = RegistryClient::new(&registry, None).unwrap();
    let artifact = node_app("v1", Health::Healthy);

    let pushed = push_app_image(
        &client,
        &base.reference,
        &client,
        &app_repo,
        "v1",
        &artifact,
    )
    .await
    .unwrap();

    // The base layer was linked by a cross-repository mount (201), never sent again.
    assert_eq!(pushed.transfer(&base.layer_digest), Some(Transfer::Mounted));
    assert_eq!(
        pushed.transfer(&pushed.layer_digest),
        Some(Transfer::Uploaded)
    );
    assert_eq!(
        pushed.transfer(&pushed.config_digest),
        Some(Transfer::Uploaded)
    );
    // The index was narrowed to linux/amd64.
    assert_eq!(pushed.base_digest, base.amd64_digest);
    assert_eq!(
        pushed.reference,
        format!("{registry}/{app_repo}@{}", pushed.digest)
    );

    // The manifest stored under the tag is the one whose digest was returned.
    let manifest_bytes = raw(&registry, &format!("{app_repo}/manifests/v1")).await;
    assert_eq!(sha(&manifest_bytes), pushed.digest);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );

    // The config blob matches its descriptor.
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config_bytes = raw(&registry, &format!("{app_repo}/blobs/{config_digest}")).await;
    assert_eq!(sha(&config_bytes), config_digest);
    assert_eq!(manifest["config"]["size"], config_bytes.len());
    let config: Value = serde_json::from_slice(&config_bytes).unwrap();

    // Every layer matches its descriptor, and every diff_id is the uncompressed layer's.
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(diff_ids.len(), 2);
    assert_eq!(layers[0]["digest"], base.layer_digest.as_str());
    assert_eq!(diff_ids[0], base.layer_diff_id.as_str());
    let mut app_tar = Vec::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let digest = layer["digest"].as_str().unwrap();
        let blob = raw(&registry, &format!("{app_repo}/blobs/{digest}")).await;
        assert_eq!(sha(&blob), digest);
        assert_eq!(layer["size"], blob.len());
        let tar = gunzip(&blob);
        assert_eq!(sha(&tar), diff_id.as_str().unwrap());
        app_tar = tar;
    }

    // The app layer holds the artifact under /app/.
    let entries = tar_paths(&app_tar);
    let index = entries
        .iter()
        .find(|(p, _)| p == "app/.output/server/index.mjs")
        .expect("the entry point is in the layer");
    assert!(String::from_utf8_lossy(&index.1).contains("const VERSION = \"v1\""));
    assert!(
        entries
            .iter()
            .any(|(p, _)| p == "app/.output/server/chunks/users.mjs")
    );

    // The config is the amd64 base's, made to run the app.
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let run = &config["config"];
    assert_eq!(
        run["Cmd"],
        serde_json::json!(["node", "/app/.output/server/index.mjs"])
    );
    assert_eq!(run["WorkingDir"], "/app");
    assert!(
        run.get("Entrypoint").is_none(),
        "the base's entrypoint script is not used"
    );
    let env: Vec<&str> = run["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for wanted in [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "NODE_VERSION=20.0.0-synthetic",
        "PORT=8080",
        "NODE_ENV=production",
    ] {
        assert!(env.contains(&wanted), "{wanted} missing from {env:?}");
    }
    assert_eq!(config["history"].as_array().unwrap().len(), 2);
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.digest"],
        base.amd64_digest.as_str()
    );
}

#[test]
fn the_app_layer_is_the_same_whatever_order_times_and_owners_the_artifact_had() {
    let files = [
        (".output/server/index.mjs", b"console.log(1)".as_slice()),
        (".output/server/chunks/a.mjs", b"export const a = 1;"),
        (".output/public/robots.txt", b"User-agent: *"),
    ];
    let first = tar_gz(
        &files
            .iter()
            .map(|(path, data)| File {
                path,
                data,
                mtime: 1_600_000_000,
                uid: 1000,
            })
            .collect::<Vec<_>>(),
    );
    let second = tar_gz(
        &files
            .iter()
            .rev()
            .map(|(path, data)| File {
                path,
                data,
                mtime: 1_700_000_123,
                uid: 501,
            })
            .collect::<Vec<_>>(),
    );
    assert_ne!(first, second, "the artifacts differ as bytes");
    let a = layer::app_layer(&artifact::read(&first).unwrap()).unwrap();
    let b = layer::app_layer(&artifact::read(&second).unwrap()).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.diff_id, b.diff_id);
    assert_eq!(a.blob, b.blob);

    let changed = tar_gz(&[File {
        path: ".output/server/index.mjs",
        data: b"console.log(2)",
        mtime: 0,
        uid: 0,
    }]);
    let c = layer::app_layer(&artifact::read(&changed).unwrap()).unwrap();
    assert_ne!(a.digest, c.digest);
}

#[tokio::test]
async fn pushing_the_same_artifact_again_sends_nothing_and_gives_the_same_digest() {
    let registry = test_registry();
    let base = push_synthetic_base(&registry, &unique("tb-test/base")).await;
    let app_repo = unique("tb-test/app");
    let client = RegistryClient::new(&registry, None).unwrap();
    let artifact = node_app("same", Health::Healthy);

    let first = push_app_image(&client, &base.reference, &client, &app_repo, "a", &artifact)
        .await
        .unwrap();
    let again = push_app_image(&client, &base.reference, &client, &app_repo, "b", &artifact)
        .await
        .unwrap();
    assert_eq!(first.digest, again.digest, "the image is reproducible");
    assert!(
        again.blobs.iter().all(|(_, t)| *t == Transfer::Present),
        "{:?}",
        again.blobs
    );
    let other = push_app_image(
        &client,
        &base.reference,
        &client,
        &app_repo,
        "c",
        &node_app("other", Health::Healthy),
    )
    .await
    .unwrap();
    assert_ne!(other.digest, first.digest);
    assert_eq!(other.transfer(&base.layer_digest), Some(Transfer::Present));
}

#[tokio::test]
async fn a_base_on_another_registry_is_copied_into_the_target() {
    let registry = test_registry();
    let base_repo = unique("tb-test/base");
    push_synthetic_base(&registry, &base_repo).await;
    // The same server under another name: a different registry to the client.
    let elsewhere = registry_alias(&registry);
    let base_ref = tb_deploy::ImageRef::new(&elsewhere, &base_repo, "20-slim").unwrap();
    let base_client = RegistryClient::new(&elsewhere, None).unwrap();
    let target = RegistryClient::new(&registry, None).unwrap();
    let app_repo = unique("tb-test/app");

    let pushed = push_app_image(
        &base_client,
        &base_ref,
        &target,
        &app_repo,
        "v1",
        &node_app("v1", Health::Healthy),
    )
    .await
    .unwrap();
    let base_layer = &pushed.blobs[0].0;
    assert_eq!(pushed.transfer(base_layer), Some(Transfer::Copied));
    assert!(target.blob_exists(&app_repo, base_layer).await.unwrap());
    let manifest = raw(
        &registry,
        &format!("{app_repo}/manifests/{}", pushed.digest),
    )
    .await;
    assert_eq!(sha(&manifest), pushed.digest);
}

#[tokio::test]
async fn a_refused_mount_falls_back_to_uploading_into_the_session_it_opened() {
    let registry = test_registry();
    let client = RegistryClient::new(&registry, None).unwrap();
    let from = unique("tb-test/source");
    let to = unique("tb-test/target");
    let blob = format!("blob {}", unique("x")).into_bytes();
    let digest = sha(&blob);
    client
        .push_blob(&from, &digest, Bytes::from(blob.clone()))
        .await
        .unwrap();

    // A repository that does not have the blob cannot lend it: 202 and an upload session.
    let refused = client
        .mount_blob(&to, &digest, &unique("tb-test/nowhere"))
        .await
        .unwrap();
    let Mount::Refused { upload_url } = refused else {
        panic!("the mount should have been refused: {refused:?}");
    };
    assert!(!client.blob_exists(&to, &digest).await.unwrap());
    client
        .push_blob_to(&to, &upload_url, &digest, Bytes::from(blob.clone()))
        .await
        .unwrap();
    assert!(client.blob_exists(&to, &digest).await.unwrap());

    // From the repository that has it, the mount succeeds.
    let other = unique("tb-test/target");
    assert_eq!(
        client.mount_blob(&other, &digest, &from).await.unwrap(),
        Mount::Mounted
    );
    assert_eq!(client.get_blob(&other, &digest).await.unwrap(), blob);

    // A wrong digest is refused by the registry, and reported.
    let err = client
        .push_blob(&other, &sha(b"something else"), Bytes::from(blob))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DIGEST_INVALID"), "{err}");
}
