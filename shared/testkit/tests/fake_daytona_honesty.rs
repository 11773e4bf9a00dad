//! The fake refuses what the real Daytona refuses, so client bugs are not hidden.

use tb_core::sandbox::{SandboxProvider, SandboxSpec};
use tb_testkit::FakeDaytona;

const KEY: &str = "dtn_test_key";

#[tokio::test]
async fn requests_without_the_bearer_token_get_a_json_401() {
    let fake = FakeDaytona::start(KEY).await;
    let http = reqwest::Client::new();
    let url = format!("{}/sandbox", fake.api_url());
    for request in [http.get(&url), http.get(&url).bearer_auth("not-the-key")] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["statusCode"], 401);
        assert!(body["message"].is_string());
    }
    let ok = http.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn toolbox_paths_outside_the_workdir_are_refused() {
    let fake = FakeDaytona::start(KEY).await;
    let sandbox = fake
        .provider()
        .create(&SandboxSpec::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let files = format!("{}/{}/files", fake.toolbox_url(), sandbox.id());
    let outside = [
        "/etc/passwd",
        "/home/daytona/project/../../../etc/passwd",
        "/home/daytona/projectile/x",
        "relative/path",
    ];
    for path in outside {
        let download = http
            .get(format!("{files}/download"))
            .query(&[("path", path)])
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(download.status(), 400, "download {path}");
        let folder = http
            .post(format!("{files}/folder"))
            .query(&[("path", path), ("mode", "0755")])
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(folder.status(), 400, "folder {path}");
    }
    let dir = http
        .post(format!("{files}/folder"))
        .query(&[("path", "/home/daytona/project/sub")])
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(dir.status(), 201);
    let without_recursive = http
        .delete(&files)
        .query(&[("path", "/home/daytona/project/sub")])
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        without_recursive.status(),
        400,
        "a directory needs recursive=true"
    );
}

#[tokio::test]
async fn a_new_sandbox_must_be_polled_until_it_has_started() {
    let fake = FakeDaytona::start(KEY).await;
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{}/sandbox", fake.api_url()))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"labels": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["state"], "creating");
    assert_eq!(created["toolboxProxyUrl"], fake.toolbox_url());
    let id = created["id"].as_str().unwrap();
    let execute = format!("{}/{id}/process/execute", fake.toolbox_url());
    let early = http
        .post(&execute)
        .bearer_auth(KEY)
        .json(&serde_json::json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert!(
        early.status().is_client_error(),
        "the toolbox answered before the sandbox started"
    );
    let mut states = Vec::new();
    for _ in 0..2 {
        let got: serde_json::Value = http
            .get(format!("{}/sandbox/{id}", fake.api_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        states.push(got["state"].as_str().unwrap().to_owned());
    }
    assert_eq!(states, ["creating", "started"]);
    let provider = fake.provider();
    assert_eq!(
        provider
            .connect(id)
            .await
            .unwrap()
            .exec("echo ok", std::time::Duration::from_secs(5))
            .await
            .unwrap()
            .output,
        "ok\n"
    );
}
