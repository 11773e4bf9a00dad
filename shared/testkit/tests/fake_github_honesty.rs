//! The fake GitHub behaves like GitHub where clients depend on it, and what it accepts
//! is a real git repository.

use std::process::Command;

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tb_testkit::fake_github::FakeGitHub;
use tempfile::TempDir;

const TOKEN: &str = "ghp_fake_token_for_tests";

struct Gh {
    fake: FakeGitHub,
    http: Client,
}

impl Gh {
    async fn start() -> Gh {
        Gh {
            fake: FakeGitHub::start(TOKEN, "octo").await,
            http: Client::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.fake.api_url()))
            .header("user-agent", "honesty-test")
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let home = TempDir::new().unwrap();
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn requests_without_a_user_agent_are_forbidden_like_github_does() {
    let gh = Gh::start().await;
    let response = gh
        .http
        .get(format!("{}/user", gh.fake.api_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.text().await.unwrap().contains("User-Agent"));
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401_and_the_log_keeps_no_token() {
    let gh = Gh::start().await;
    let response = gh
        .http
        .get(format!("{}/user", gh.fake.api_url()))
        .header("user-agent", "t")
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Bad credentials");
    let (status, user) = gh.call(Method::GET, "/user", None).await;
    assert_eq!(
        (status, user["login"].as_str()),
        (StatusCode::OK, Some("octo"))
    );
    for request in gh.fake.requests() {
        assert!(request.had_authorization);
        assert!(
            request
                .headers
                .iter()
                .all(|(name, value)| name != "authorization"
                    && !value.contains(TOKEN)
                    && !value.contains("nope"))
        );
    }
}

#[tokio::test]
async fn creating_an_existing_repository_answers_githubs_422_body() {
    let gh = Gh::start().await;
    let (status, repo) = gh
        .call(
            Method::POST,
            "/user/repos",
            Some(json!({"name": "r1", "private": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (repo["private"].as_bool(), repo["default_branch"].as_str()),
        (Some(true), Some("main"))
    );
    let (status, body) = gh
        .call(Method::POST, "/user/repos", Some(json!({"name": "R1"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "name");
    assert_eq!(
        body["errors"][0]["message"],
        "name already exists on this account"
    );
    let (status, _) = gh
        .call(
            Method::POST,
            "/orgs/unknown/repos",
            Some(json!({"name": "r"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_git_data_api_refuses_an_empty_repository_while_the_contents_api_makes_the_first_commit()
 {
    let gh = Gh::start().await;
    gh.call(Method::POST, "/user/repos", Some(json!({"name": "r"})))
        .await;
    let blob = json!({"content": "aGk=", "encoding": "base64"});
    let (status, body) = gh
        .call(Method::POST, "/repos/octo/r/git/blobs", Some(blob.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["message"], "Git Repository is empty.");
    let (status, _) = gh
        .call(Method::GET, "/repos/octo/r/git/ref/heads/main", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, put) = gh
        .call(
            Method::PUT,
            "/repos/octo/r/contents/docs/README.md",
            Some(json!({"message": "init", "content": "aGVsbG8K"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(put["commit"]["parents"], json!([]));
    let (status, _) = gh
        .call(Method::POST, "/repos/octo/r/git/blobs", Some(blob))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, head) = gh
        .call(Method::GET, "/repos/octo/r/git/ref/heads/main", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(head["object"]["sha"], put["commit"]["sha"]);
}

#[tokio::test]
async fn what_the_git_data_api_accepts_is_a_repository_git_can_clone() {
    let gh = Gh::start().await;
    gh.call(
        Method::POST,
        "/user/repos",
        Some(json!({"name": "r", "auto_init": true})),
    )
    .await;
    let (_, head) = gh
        .call(Method::GET, "/repos/octo/r/git/ref/heads/main", None)
        .await;
    let parent = head["object"]["sha"].as_str().unwrap().to_owned();
    let (_, blob) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/blobs",
            Some(json!({"content": "AAEC", "encoding": "base64"})),
        )
        .await;
    let (status, tree) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/trees",
            Some(json!({"tree": [
                {"path": "bin/run", "mode": "100755", "type": "blob", "content": "#!/bin/sh\n"},
                {"path": "data.bin", "mode": "100644", "type": "blob", "sha": blob["sha"]},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, commit) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/commits",
            Some(
                json!({"message": "m", "tree": tree["sha"], "parents": [parent],
                        "author": {"name": "A", "email": "a@example.com"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(commit["parents"][0]["sha"], parent.as_str());
    let sha = commit["sha"].as_str().unwrap();
    let (status, _) = gh
        .call(
            Method::PATCH,
            "/repos/octo/r/git/refs/heads/main",
            Some(json!({"sha": sha})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let dir = TempDir::new().unwrap();
    git(
        dir.path(),
        &["clone", "-q", &gh.fake.clone_url("octo", "r"), "w"],
    );
    let work = dir.path().join("w");
    assert_eq!(std::fs::read(work.join("data.bin")).unwrap(), [0u8, 1, 2]);
    assert_eq!(
        git(&work, &["ls-files", "-s", "bin/run"]).split(' ').next(),
        Some("100755")
    );
    assert!(
        !work.join("README.md").exists(),
        "a tree without base_tree replaces everything"
    );
    assert_eq!(
        git(&work, &["log", "--format=%an %P"]).lines().next(),
        Some(format!("A {parent}").as_str())
    );
}

#[tokio::test]
async fn a_tree_on_a_base_tree_keeps_the_base_and_replaces_what_its_entries_name() {
    let gh = Gh::start().await;
    gh.call(
        Method::POST,
        "/user/repos",
        Some(json!({"name": "r", "auto_init": true})),
    )
    .await;
    let (_, head) = gh
        .call(Method::GET, "/repos/octo/r/git/ref/heads/main", None)
        .await;
    let (_, commit) = gh
        .call(
            Method::GET,
            &format!(
                "/repos/octo/r/git/commits/{}",
                head["object"]["sha"].as_str().unwrap()
            ),
            None,
        )
        .await;
    let base = commit["tree"]["sha"].as_str().unwrap().to_owned();
    // The files of a created tree, as `GET …/git/trees/{sha}?recursive=1` lists them.
    let paths = async |tree: &Value| -> Vec<String> {
        let path = format!(
            "/repos/octo/r/git/trees/{}?recursive=1",
            tree["sha"].as_str().unwrap()
        );
        let (_, listed) = gh.call(Method::GET, &path, None).await;
        listed["tree"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["type"] == "blob")
            .map(|i| i["path"].as_str().unwrap().to_owned())
            .collect()
    };
    // A nested file added to the base tree.
    let (status, with_file) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/trees",
            Some(json!({"base_tree": base, "tree": [
                {"path": "dir/a.json", "mode": "100644", "type": "blob", "content": "{}"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(paths(&with_file).await, ["README.md", "dir/a.json"]);
    // The same file again gives the same tree.
    let (_, again) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/trees",
            Some(json!({"base_tree": with_file["sha"], "tree": [
                {"path": "dir/a.json", "mode": "100644", "type": "blob", "content": "{}"}]})),
        )
        .await;
    assert_eq!(again["sha"], with_file["sha"]);
    // A subdirectory given by tree sha (mode 040000) replaces the base's directory.
    let (_, other) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/trees",
            Some(json!({"tree": [
                {"path": "b.json", "mode": "100644", "type": "blob", "content": "[]"}]})),
        )
        .await;
    let (status, grafted) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/trees",
            Some(json!({"base_tree": with_file["sha"], "tree": [
                {"path": "dir", "mode": "040000", "type": "tree", "sha": other["sha"]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(paths(&grafted).await, ["README.md", "dir/b.json"]);
    // A tree entry whose type does not match its mode is refused.
    let (status, _) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/trees",
            Some(json!({"tree": [
                {"path": "dir", "mode": "040000", "type": "blob", "sha": other["sha"]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_ref_update_must_be_a_fast_forward_unless_forced_and_an_existing_ref_cannot_be_created() {
    let gh = Gh::start().await;
    gh.call(
        Method::POST,
        "/user/repos",
        Some(json!({"name": "r", "auto_init": true})),
    )
    .await;
    let (_, head) = gh
        .call(Method::GET, "/repos/octo/r/git/ref/heads/main", None)
        .await;
    let (_, tree) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/trees",
            Some(json!({"tree": [
            {"path": "x", "mode": "100644", "type": "blob", "content": "x"}]})),
        )
        .await;
    let (_, root) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/commits",
            Some(json!({"message": "root", "tree": tree["sha"]})),
        )
        .await;
    let patch = |force: bool| json!({"sha": root["sha"], "force": force});

    let (status, body) = gh
        .call(
            Method::PATCH,
            "/repos/octo/r/git/refs/heads/main",
            Some(patch(false)),
        )
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Update is not a fast forward")
        )
    );
    let (status, _) = gh
        .call(
            Method::PATCH,
            "/repos/octo/r/git/refs/heads/main",
            Some(patch(true)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = gh
        .call(
            Method::POST,
            "/repos/octo/r/git/refs",
            Some(json!({"ref": "refs/heads/main", "sha": head["object"]["sha"]})),
        )
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Reference already exists")
        )
    );
}

#[tokio::test]
async fn injected_faults_carry_their_status_and_headers_then_stop() {
    let gh = Gh::start().await;
    gh.fake.fail_next(
        2,
        403,
        &[("retry-after", "0"), ("x-ratelimit-remaining", "0")],
    );
    for _ in 0..2 {
        let response = gh
            .http
            .get(format!("{}/user", gh.fake.api_url()))
            .header("user-agent", "t")
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()["retry-after"], "0");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("secondary rate limit")
        );
    }
    let (status, _) = gh.call(Method::GET, "/user", None).await;
    assert_eq!(status, StatusCode::OK);
    let logged: Vec<u16> = gh.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(logged, [403, 403, 200]);
}
