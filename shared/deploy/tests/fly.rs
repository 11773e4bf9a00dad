//! `FlyDeployer` against the fake Fly.io, which pulls the pushed image from the real
//! registry (`TB_TEST_REGISTRY`) and runs it as a real process.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::{Health, get_json, node_app, push_synthetic_base, test_registry, unique};
use tb_core::domain::ProjectId;
use tb_core::ports::{Deployer, PortError};
use tb_deploy::{FlyConfig, FlyDeployer, ImageRef, Secret};
use tb_testkit::fake_fly::FakeFly;
use tb_testkit::registry_proxy::RegistryProxy;

const DB_PASSWORD: &str = "pw-7e1f0c9d";

struct Setup {
    fake: FakeFly,
    deployer: FlyDeployer,
    token: String,
    /// The registry images are pushed to: the test registry behind a proxy that wants
    /// user `x` and the bare macaroon, as `registry.fly.io` gets them from flyctl.
    registry: String,
    target: RegistryProxy,
}

/// A fake Fly, a synthetic base in the registry, and a deployer pointed at both, with
/// short timeouts. App names get a fresh prefix, so runs never share registry repositories.
async fn setup(health_timeout: Duration) -> Setup {
    let upstream = test_registry();
    let bare = format!("fm2_{}", tb_core::ids::random_hex(16));
    let token = format!("FlyV1 {bare}");
    // flyctl gives Docker `x` and `Tokens.Docker()`, the token without its scheme
    // (flyctl internal/build/imgsrc/docker.go `registryAuth`, fly-go tokens/tokens.go).
    let target = RegistryProxy::with_basic_auth(&upstream, "x", &bare).await;
    let registry = target.registry().to_owned();
    let fake = FakeFly::start(&token, &registry).await;
    let base = push_synthetic_base(&upstream, &unique("tb-test/node")).await;
    let mut config = FlyConfig::new(Secret::new(token.clone()), "test-org");
    config.api_base = fake.api_url().to_owned();
    config.registry = registry.clone();
    config.base_image = base.reference;
    config.public_url_template = fake.public_url_template();
    config.app_prefix = format!("{}-", unique("tbtest"));
    config.health_timeout = health_timeout;
    config.health_poll_interval = Duration::from_millis(100);
    Setup {
        fake,
        deployer: FlyDeployer::new(config).unwrap(),
        token,
        registry,
        target,
    }
}

/// Creates `app` in `org` directly through the API, as another process would.
async fn create_app_elsewhere(s: &Setup, app: &str, org: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{}/apps", s.fake.api_url()))
        .header("authorization", &s.token)
        .json(&serde_json::json!({"name": app, "org_slug": org}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

fn secrets() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "DATABASE_URL".to_owned(),
        format!("postgres://app:{DB_PASSWORD}@db.internal:5432/app"),
    )])
}

fn project() -> ProjectId {
    ProjectId::parse(&format!("proj_{}", tb_core::ids::random_hex(4))).unwrap()
}

/// The JSON bodies of the recorded requests matching `method` and a path prefix.
fn bodies(fake: &FakeFly, method: &str, path: &str) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.starts_with(path) && r.status < 400)
        .map(|r| serde_json::from_str(&r.body).unwrap_or(Value::Null))
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test]
async fn a_deployed_app_answers_its_users_endpoint_with_its_secrets_in_the_environment() {
    let s = setup(Duration::from_secs(30)).await;
    let project = project();
    let app = s.deployer.app_name(&project);

    let deployment = s
        .deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));

    assert_eq!(deployment.url, s.fake.app_url(&app));
    let users = get_json(&format!("{}/api/users", s.fake.app_url(&app))).await;
    assert_eq!(users["version"], "v1");
    assert_eq!(users["users"][0]["name"], "Ada");
    assert_eq!(users["database_url_set"], true);
    assert_eq!(users["node_env"], "production");
    assert!(users["cwd"].as_str().unwrap().ends_with("/app"), "{users}");
    assert!(!users.to_string().contains(DB_PASSWORD));

    // Deployed by digest, from the app's own repository.
    let digest = deployment.version.clone();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let image = format!("{}/{app}@{digest}", s.registry);
    assert_eq!(deployment.details["image"], image.as_str());
    assert_eq!(deployment.details["app"], app.as_str());
    assert_eq!(deployment.details["previous_image"], Value::Null);
    let machines = s.fake.machines(&app);
    assert_eq!(machines.len(), 1);
    assert_eq!(deployment.details["machine_id"], machines[0].id.as_str());
    assert_eq!(machines[0].image, image);
    assert_eq!(machines[0].state, "started");

    // The app has its public IPs and its secret; the machine waited for that secret.
    let kinds: Vec<String> = s.fake.ips(&app).into_iter().map(|(k, _)| k).collect();
    assert!(
        kinds.contains(&"shared_v4".to_owned()) && kinds.contains(&"v6".to_owned()),
        "{kinds:?}"
    );
    assert!(s.fake.secrets(&app).contains_key("DATABASE_URL"));
    let create = &bodies(&s.fake, "POST", &format!("/v1/apps/{app}/machines"))[0];
    assert_eq!(create["min_secrets_version"], 1);
    let config = &create["config"];
    assert_eq!(config["services"][0]["internal_port"], 8080);
    assert_eq!(config["services"][0]["checks"][0]["path"], "/api/health");
    // Autostop with `on-failure`, as `fly deploy` makes its machines.
    assert_eq!(config["services"][0]["autostop"], "stop");
    assert_eq!(config["restart"]["policy"], "on-failure");
    // The app got its own network, and the registry saw user `x` with the bare token.
    assert_eq!(s.fake.network(&app).unwrap(), format!("{app}-net"));
    assert!(s.target.count() > 0);
    assert!(
        s.target
            .requests()
            .iter()
            .all(|r| r.authorized || r.status == 401),
        "{:?}",
        s.target.requests()
    );
    assert_eq!(
        config["guest"],
        serde_json::json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
    );
}

#[tokio::test]
async fn redeploying_updates_the_same_machine_to_the_new_digest_and_keeps_the_previous_image() {
    let s = setup(Duration::from_secs(30)).await;
    let project = project();
    let app = s.deployer.app_name(&project);

    let first = s
        .deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));
    let first_pid = s.fake.machines(&app)[0].pid.unwrap();
    let second = s
        .deployer
        .deploy(&project, &node_app("v2", Health::Healthy), &secrets())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));

    assert_ne!(first.version, second.version);
    let machines = s.fake.all_machines(&app);
    assert_eq!(machines.len(), 1, "one machine in all: {machines:?}");
    assert_eq!(
        machines[0].id,
        first.details["machine_id"].as_str().unwrap()
    );
    assert_eq!(machines[0].image, second.details["image"].as_str().unwrap());
    assert_eq!(second.details["previous_image"], first.details["image"]);
    assert_eq!(second.details["machine_id"], first.details["machine_id"]);
    let users = get_json(&format!("{}/api/users", s.fake.app_url(&app))).await;
    assert_eq!(users["version"], "v2");
    assert_eq!(s.fake.running_processes(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pid_alive(first_pid), "the first version's process is gone");
    // The update sent the whole config, on the machine's current instance.
    let updates = bodies(
        &s.fake,
        "POST",
        &format!("/v1/apps/{app}/machines/{}", machines[0].id),
    );
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0]["config"]["image"], second.details["image"]);
    assert!(updates[0]["config"]["services"].is_array());
    assert!(updates[0]["current_version"].is_string());
}

#[tokio::test]
async fn a_new_machine_that_never_gets_healthy_fails_the_deploy_and_is_destroyed() {
    let s = setup(Duration::from_secs(3)).await;
    let project = project();
    let app = s.deployer.app_name(&project);

    let err = s
        .deployer
        .deploy(&project, &node_app("sick", Health::Unhealthy), &secrets())
        .await
        .unwrap_err();

    let PortError::Permanent(message) = &err else {
        panic!("a permanent failure expected: {err:?}");
    };
    assert!(message.contains("destroyed"), "{message}");
    assert!(
        s.fake.machines(&app).is_empty(),
        "{:?}",
        s.fake.machines(&app)
    );
    let all = s.fake.all_machines(&app);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, "destroyed");
    assert_eq!(s.fake.running_processes(), 0);
    assert!(s.fake.requests().iter().any(|r| {
        r.method == "DELETE"
            && r.path == format!("/v1/apps/{app}/machines/{}?force=true", all[0].id)
    }));
}

#[tokio::test]
async fn a_failed_update_rolls_the_machine_back_to_the_previous_digest() {
    let s = setup(Duration::from_secs(4)).await;
    let project = project();
    let app = s.deployer.app_name(&project);
    let good = s
        .deployer
        .deploy(&project, &node_app("good", Health::Healthy), &secrets())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));

    let err = s
        .deployer
        .deploy(&project, &node_app("bad", Health::Crashes), &secrets())
        .await
        .unwrap_err();

    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("rolled back"), "{err}");
    let machines = s.fake.all_machines(&app);
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert_eq!(machines[0].image, good.details["image"].as_str().unwrap());
    assert_eq!(machines[0].state, "started");
    let users = get_json(&format!("{}/api/users", s.fake.app_url(&app))).await;
    assert_eq!(users["version"], "good");
    assert_eq!(s.fake.running_processes(), 1);
}

#[tokio::test]
async fn an_app_name_taken_by_another_organization_is_a_permanent_error_naming_the_app() {
    let s = setup(Duration::from_secs(5)).await;
    let project = project();
    let app = s.deployer.app_name(&project);
    s.fake.reserve_app_name_for_other_org(&app);

    let err = s
        .deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap_err();

    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    assert!(
        err.to_string().contains(&app) && err.to_string().contains("taken"),
        "{err}"
    );
    assert!(s.fake.all_machines(&app).is_empty());
}

#[tokio::test]
async fn an_app_of_another_organization_of_the_token_is_not_deployed_to() {
    let s = setup(Duration::from_secs(5)).await;
    let project = project();
    let app = s.deployer.app_name(&project);
    s.fake.set_invisibility(Duration::ZERO, Duration::ZERO);
    create_app_elsewhere(&s, &app, "someone-elses-org").await;

    let err = s
        .deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap_err();

    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&app) && text.contains("someone-elses-org"),
        "{text}"
    );
    assert!(s.fake.all_machines(&app).is_empty());
}

#[tokio::test]
async fn a_taken_name_that_is_our_own_new_app_is_reused() {
    let s = setup(Duration::from_secs(30)).await;
    let project = project();
    let app = s.deployer.app_name(&project);
    // Another deploy created the app a moment ago; it is not visible yet, so the lookup
    // says 404 and the creation 422.
    s.fake
        .set_invisibility(Duration::from_millis(1500), Duration::from_millis(1500));
    create_app_elsewhere(&s, &app, "test-org").await;

    s.deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));

    let creations: Vec<u16> = s
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/v1/apps?"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        creations,
        vec![422],
        "the deployer tried once and was refused"
    );
    assert_eq!(s.fake.machines(&app).len(), 1);
}

#[tokio::test]
async fn new_apps_and_machines_that_answer_404_for_a_while_still_deploy() {
    let s = setup(Duration::from_secs(30)).await;
    let project = project();
    let app = s.deployer.app_name(&project);
    s.fake
        .set_invisibility(Duration::from_millis(1200), Duration::from_millis(1200));

    s.deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));

    assert!(s.fake.invisible_answers() > 0);
    let machines = s.fake.all_machines(&app);
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert_eq!(machines[0].state, "started");
    let users = get_json(&format!("{}/api/users", s.fake.app_url(&app))).await;
    assert_eq!(users["version"], "v1");
    // The wait that answered 404 was retried, not taken as a failure.
    assert!(s.fake.requests().iter().any(|r| {
        r.path
            .starts_with(&format!("/v1/apps/{app}/machines/{}/wait", machines[0].id))
            && r.status == 404
    }));
    assert!(!s.fake.requests().iter().any(|r| r.method == "DELETE"));
}

#[tokio::test]
async fn each_project_gets_its_own_private_network() {
    let s = setup(Duration::from_secs(30)).await;
    let (a, b) = (project(), project());
    for p in [&a, &b] {
        s.deployer
            .deploy(p, &node_app("v1", Health::Healthy), &BTreeMap::new())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let (app_a, app_b) = (s.deployer.app_name(&a), s.deployer.app_name(&b));
    assert!(!s.fake.can_reach(&app_a, &app_b));
    assert_eq!(
        s.fake.network(&app_a).unwrap(),
        FlyDeployer::network_name(&app_a)
    );
    // The name is stable: a second deploy of the project keeps its app and network.
    assert_eq!(FlyDeployer::network_name(&app_a), format!("{app_a}-net"));
}

#[tokio::test]
async fn throttled_calls_wait_for_retry_after_and_go_through() {
    let s = setup(Duration::from_secs(30)).await;
    let project = project();
    let app = s.deployer.app_name(&project);
    s.fake.fail_next_mutations_with_429(2);

    s.deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));

    let throttled = s.fake.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 2);
    assert_eq!(s.fake.machines(&app).len(), 1);
}

#[tokio::test]
async fn the_token_never_appears_in_requests_errors_or_details() {
    let s = setup(Duration::from_secs(3)).await;
    let bare = s.token.strip_prefix("FlyV1 ").unwrap().to_owned();
    let leaks = |text: &str| text.contains(&bare);
    let project = project();
    let app = s.deployer.app_name(&project);

    let ok = s
        .deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));
    let failed = s
        .deployer
        .deploy(&project, &node_app("v2", Health::Unhealthy), &secrets())
        .await
        .unwrap_err();
    // A `FlyV1` token went out verbatim: every request was authorized.
    assert!(s.fake.requests().iter().all(|r| r.authorized));

    // A deployer with a wrong token is refused, and says so without the token.
    let mut config = s.deployer.config().clone();
    config.token = Secret::new(format!("{}-wrong", s.token));
    let refused = FlyDeployer::new(config.clone())
        .unwrap()
        .deploy(&project, &node_app("v3", Health::Healthy), &secrets())
        .await
        .unwrap_err();
    assert!(matches!(refused, PortError::Permanent(_)), "{refused:?}");
    assert!(refused.to_string().contains("401"), "{refused}");

    for r in s.fake.requests() {
        assert!(!leaks(&r.path) && !leaks(&r.body), "{r:?}");
    }
    assert!(!leaks(&ok.details.to_string()) && !leaks(&ok.url) && !leaks(&ok.version));
    assert!(!leaks(&failed.to_string()) && !leaks(&format!("{failed:?}")));
    assert!(!leaks(&refused.to_string()) && !leaks(&format!("{refused:?}")));
    assert!(!leaks(&format!("{:?}", s.deployer)) && !leaks(&format!("{config:?}")));
}

#[tokio::test]
async fn the_second_deploy_makes_no_request_to_the_base_registry() {
    let s = setup(Duration::from_secs(30)).await;
    // The base on "another registry" that hands out anonymous tokens as ECR Public does.
    let upstream = test_registry();
    let base_registry = RegistryProxy::like_ecr_public(&upstream).await;
    let repository = unique("tb-test/docker/library/node");
    push_synthetic_base(&upstream, &repository).await;
    let mut config = s.deployer.config().clone();
    config.base_image = ImageRef::new(base_registry.registry(), &repository, "20-slim").unwrap();
    let deployer = FlyDeployer::new(config).unwrap();
    let project = project();
    let app = deployer.app_name(&project);

    deployer
        .deploy(&project, &node_app("v1", Health::Healthy), &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));
    let after_first = base_registry.count();
    assert!(after_first > 0);
    assert!(
        base_registry
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/token/")),
        "the anonymous token flow: {:?}",
        base_registry.requests()
    );
    let target_before = s.target.requests().len();

    deployer
        .deploy(&project, &node_app("v2", Health::Healthy), &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.fake.log(&app)));

    assert_eq!(
        base_registry.count(),
        after_first,
        "{:?}",
        &base_registry.requests()[after_first..]
    );
    let users = get_json(&format!("{}/api/users", s.fake.app_url(&app))).await;
    assert_eq!(users["version"], "v2");
    // Only the new app layer and config were uploaded; the base layers were there (HEAD).
    let uploads = s.target.requests()[target_before..]
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/") && r.status == 201)
        .count();
    assert_eq!(uploads, 2, "{:?}", &s.target.requests()[target_before..]);
}
