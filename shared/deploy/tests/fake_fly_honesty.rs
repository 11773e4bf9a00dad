//! The fake Fly.io is only worth testing against if it refuses what Fly (and a real image
//! pull) would refuse. Raw HTTP calls here, not the deployer.

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use support::{Health, node_app, push_synthetic_base, test_registry, unique};
use tb_core::ids::sha256_hex;
use tb_deploy::image::push_app_image;
use tb_deploy::registry::{OCI_MANIFEST, RegistryClient};
use tb_testkit::fake_fly::FakeFly;

const TOKEN: &str = "fm2_honesty-test-token";

async fn call(fake: &FakeFly, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{}{path}", fake.api_url()))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn app_with_machine(fake: &FakeFly, app: &str, image: &str) -> String {
    let (status, _) = call(
        fake,
        "POST",
        "/apps",
        Some(json!({"app_name": app, "org_slug": "o"})),
    )
    .await;
    assert_eq!(status, 201);
    let config = json!({"image": image, "services": [{"protocol": "tcp", "internal_port": 8080,
        "checks": [{"type": "http", "port": 8080, "path": "/api/health"}]}]});
    let (status, machine) = call(
        fake,
        "POST",
        &format!("/apps/{app}/machines"),
        Some(json!({"config": config})),
    )
    .await;
    assert_eq!(status, 200, "{machine}");
    machine["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_recorded_without_header_values() {
    let fake = FakeFly::start(TOKEN, &test_registry()).await;
    fake.set_invisibility(Duration::ZERO, Duration::ZERO);
    let resp = reqwest::Client::new()
        .post(format!("{}/apps", fake.api_url()))
        .header("authorization", "Bearer not-the-token")
        .json(&json!({"app_name": "x", "org_slug": "o"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let recorded = fake.requests();
    assert_eq!(recorded.len(), 1);
    assert!(!recorded[0].authorized && recorded[0].status == 401);
    assert!(!format!("{recorded:?}").contains("not-the-token"));
    assert_eq!(
        call(&fake, "GET", "/apps/x", None).await.0,
        404,
        "nothing was created"
    );
}

#[tokio::test]
async fn an_image_whose_diff_id_does_not_match_its_layer_fails_the_machine() {
    let registry = test_registry();
    let fake = FakeFly::start(TOKEN, &registry).await;
    fake.set_invisibility(Duration::ZERO, Duration::ZERO);
    let base = push_synthetic_base(&registry, &unique("tb-test/base")).await;
    let repo = unique("tb-test/tampered");
    let client = RegistryClient::new(&registry, None).unwrap();
    // A good app image, then the same manifest with a config claiming another diff_id.
    let pushed = push_app_image(
        &client,
        &base.reference,
        &client,
        &repo,
        "good",
        &node_app("v1", Health::Healthy),
    )
    .await
    .unwrap();
    let manifest: Value = serde_json::from_slice(
        &client
            .get_manifest(&repo, &pushed.digest)
            .await
            .unwrap()
            .bytes,
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_slice(&client.get_blob(&repo, &pushed.config_digest).await.unwrap())
            .unwrap();
    config["rootfs"]["diff_ids"][1] = json!(format!("sha256:{}", "0".repeat(64)));
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    client
        .push_blob(&repo, &config_digest, Bytes::from(config.clone()))
        .await
        .unwrap();
    let mut tampered = manifest.clone();
    tampered["config"]["digest"] = json!(config_digest);
    tampered["config"]["size"] = json!(config.len());
    let digest = client
        .put_manifest(
            &repo,
            "tampered",
            OCI_MANIFEST,
            serde_json::to_vec(&tampered).unwrap(),
        )
        .await
        .unwrap();

    let app = unique("honesty");
    let id = app_with_machine(&fake, &app, &format!("{registry}/{repo}@{digest}")).await;
    let (status, _) = call(
        &fake,
        "GET",
        &format!("/apps/{app}/machines/{id}/wait?state=started&timeout=2"),
        None,
    )
    .await;
    assert_eq!(status, 408);
    let (_, machine) = call(&fake, "GET", &format!("/apps/{app}/machines/{id}"), None).await;
    assert_eq!(machine["state"], "failed", "{machine}");
    assert!(
        machine["events"].to_string().contains("diff_id"),
        "{machine}"
    );
    assert_eq!(fake.running_processes(), 0);
}

#[tokio::test]
async fn a_machine_is_started_only_once_its_check_answers_and_deleting_it_running_needs_force() {
    let registry = test_registry();
    let fake = FakeFly::start(TOKEN, &registry).await;
    fake.set_invisibility(Duration::ZERO, Duration::ZERO);
    let base = push_synthetic_base(&registry, &unique("tb-test/base")).await;
    let repo = unique("tb-test/sick");
    let client = RegistryClient::new(&registry, None).unwrap();
    let pushed = push_app_image(
        &client,
        &base.reference,
        &client,
        &repo,
        "sick",
        &node_app("v1", Health::Unhealthy),
    )
    .await
    .unwrap();

    let app = unique("honesty");
    let id = app_with_machine(&fake, &app, &pushed.reference).await;
    let (status, _) = call(
        &fake,
        "GET",
        &format!("/apps/{app}/machines/{id}/wait?state=started&timeout=2"),
        None,
    )
    .await;
    assert_eq!(status, 408, "a process that answers 503 is not started");
    let (_, machine) = call(&fake, "GET", &format!("/apps/{app}/machines/{id}"), None).await;
    assert_eq!(machine["state"], "starting");
    assert_eq!(fake.running_processes(), 1, "the process itself runs");
    assert_eq!(
        reqwest::get(format!("{}/api/health", fake.app_url(&app)))
            .await
            .unwrap()
            .status(),
        503
    );

    let (status, _) = call(&fake, "DELETE", &format!("/apps/{app}/machines/{id}"), None).await;
    assert_eq!(status, 412);
    let (status, _) = call(
        &fake,
        "DELETE",
        &format!("/apps/{app}/machines/{id}?force=true"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fake.running_processes(), 0);
    assert!(fake.machines(&app).is_empty());
}

#[tokio::test]
async fn new_apps_and_machines_answer_404_for_a_moment_and_names_are_one_namespace() {
    let registry = test_registry();
    let fake = FakeFly::start(TOKEN, &registry).await;
    fake.set_invisibility(Duration::from_millis(400), Duration::from_millis(400));
    let (status, _) = call(
        &fake,
        "POST",
        "/apps",
        Some(json!({"name": "fresh", "org_slug": "o", "network": "fresh-net"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(call(&fake, "GET", "/apps/fresh", None).await.0, 404);
    assert_eq!(
        call(&fake, "GET", "/apps/fresh/ip_assignments", None)
            .await
            .0,
        404
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (status, app) = call(&fake, "GET", "/apps/fresh", None).await;
    assert_eq!((status, app["network"].as_str()), (200, Some("fresh-net")));
    assert!(fake.invisible_answers() >= 2);

    // A taken name: 422 on creation; another organization's app reads as 403.
    let (status, body) = call(
        &fake,
        "POST",
        "/apps",
        Some(json!({"name": "fresh", "org_slug": "o"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    fake.reserve_app_name_for_other_org("theirs");
    assert_eq!(call(&fake, "GET", "/apps/theirs", None).await.0, 403);

    // Apps created without a network share the organization's default one.
    fake.set_invisibility(Duration::ZERO, Duration::ZERO);
    for name in ["a1", "a2"] {
        let (status, _) = call(
            &fake,
            "POST",
            "/apps",
            Some(json!({"name": name, "org_slug": "o"})),
        )
        .await;
        assert_eq!(status, 201);
    }
    assert!(fake.can_reach("a1", "a2"));
    assert!(!fake.can_reach("a1", "fresh"));
}

#[tokio::test]
async fn deleting_an_app_with_a_running_machine_needs_force_and_takes_its_machines_and_ips() {
    let registry = test_registry();
    let fake = FakeFly::start(TOKEN, &registry).await;
    fake.set_invisibility(Duration::ZERO, Duration::ZERO);
    let base = push_synthetic_base(&registry, &unique("tb-test/base")).await;
    let repo = unique("tb-test/doomed");
    let client = RegistryClient::new(&registry, None).unwrap();
    let pushed = push_app_image(
        &client,
        &base.reference,
        &client,
        &repo,
        "doomed",
        &node_app("v1", Health::Unhealthy),
    )
    .await
    .unwrap();
    let app = unique("honesty");
    app_with_machine(&fake, &app, &pushed.reference).await;
    let (status, ip) = call(
        &fake,
        "POST",
        &format!("/apps/{app}/ip_assignments"),
        Some(json!({"type": "v6"})),
    )
    .await;
    assert_eq!(status, 200, "{ip}");
    let address = ip["ip"].as_str().unwrap().to_owned();
    // The machine's process runs once its image is pulled (it never answers its check).
    for _ in 0..100 {
        if fake.running_processes() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.running_processes(), 1);

    // Releasing an address the app does not have is a 404; its own goes.
    let (status, _) = call(
        &fake,
        "DELETE",
        &format!("/apps/{app}/ip_assignments/2001:db8::99"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &fake,
        "DELETE",
        &format!("/apps/{app}/ip_assignments/{address}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(fake.ips(&app).is_empty());

    let (status, _) = call(&fake, "DELETE", &format!("/apps/{app}"), None).await;
    assert_eq!(
        status, 412,
        "a running machine blocks a deletion without force"
    );
    assert!(fake.app_exists(&app));
    let (status, _) = call(&fake, "DELETE", &format!("/apps/{app}?force=true"), None).await;
    assert_eq!(status, 202);
    assert!(!fake.app_exists(&app));
    assert_eq!(fake.running_processes(), 0);
    assert!(fake.machines(&app).is_empty());
    assert_eq!(
        call(&fake, "GET", &format!("/apps/{app}"), None).await.0,
        404
    );
    let (status, _) = call(&fake, "DELETE", &format!("/apps/{app}?force=true"), None).await;
    assert_eq!(status, 404);
}
