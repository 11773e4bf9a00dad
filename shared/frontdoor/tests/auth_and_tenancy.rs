//! Authentication (REST and MCP alike) and tenancy: a user sees and cancels only their own
//! requests and projects, and someone else's look exactly like ones that do not exist.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{ACCEPT, is_error, text, user};
use tb_core::domain::ProjectId;
use tb_core::ports::{PlatformRecords, ProjectRecord};
use tb_pipeline::StateStore;

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}})
}

async fn assert_unauthorized(resp: reqwest::Response) {
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // REST says `Bearer`; MCP adds where OAuth clients discover how to sign in (RFC 9728).
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        challenge.as_deref().is_some_and(|c| c == "Bearer"
            || (c.starts_with("Bearer resource_metadata=\"http://127.0.0.1:")
                && c.contains("/.well-known/oauth-protected-resource\""))),
        "{challenge:?}"
    );
    let body: Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401_with_a_json_body_on_rest_and_mcp() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let mcp = s.mcp_url();
    let rest = format!("{}/v1/requests", s.url);
    let create = json!({"description": "x"});

    // No key.
    assert_unauthorized(
        s.http
            .post(&mcp)
            .header("accept", ACCEPT)
            .json(&initialize())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_unauthorized(s.http.get(&rest).send().await.unwrap()).await;
    // Wrong keys, a wrong scheme, an empty key, an absurdly long key.
    for auth in [
        format!("Bearer {key}x"),
        "Bearer tb_0000000000000000000000000000000000000000".into(),
        format!("Basic {key}"),
        "Bearer ".into(),
        format!("Bearer {}", "a".repeat(10_000)),
    ] {
        assert_unauthorized(
            s.http
                .post(&mcp)
                .header("authorization", &auth)
                .header("accept", ACCEPT)
                .json(&initialize())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_unauthorized(
            s.http
                .post(&rest)
                .header("authorization", &auth)
                .json(&create)
                .send()
                .await
                .unwrap(),
        )
        .await;
    }
    assert_unauthorized(
        s.http
            .get(&rest)
            .header("x-api-key", "tb_nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        s.store
            .list_for_owner(&user("user_a"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The same key works as a bearer token and as X-Api-Key, on both.
    let (status, body) = s.mcp(&key, initialize()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["serverInfo"]["name"], "turbobackend");
    let r = s
        .http
        .get(&rest)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_key_is_refused() {
    let s = support::start().await;
    let (record, key) = s
        .records
        .create_key(&user("user_a"), "laptop")
        .await
        .unwrap();
    let other = s.key("user_a").await;
    let (status, _) = s.rest(&key, Method::GET, "/v1/requests", None).await;
    assert_eq!(status, StatusCode::OK);

    assert!(
        s.records
            .revoke_key(&user("user_a"), &record.id)
            .await
            .unwrap()
    );
    let (status, body) = s.rest(&key, Method::GET, "/v1/requests", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = s.mcp(&key, initialize()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The user's other key still works.
    let (status, _) = s.mcp(&other, initialize()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_needs_no_key_and_get_or_delete_on_mcp_is_405() {
    let s = support::start().await;
    let r = s
        .http
        .get(format!("{}/health", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    let key = s.key("user_a").await;
    for method in [Method::GET, Method::DELETE, Method::PUT] {
        let r = s
            .http
            .request(method.clone(), s.mcp_url())
            .bearer_auth(&key)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(r.headers()["allow"], "POST");
        assert!(r.headers().get("mcp-session-id").is_none());
    }
    let r = s
        .http
        .get(format!("{}/nowhere", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_stateless_server_never_mints_a_session_and_answers_notifications_with_202() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let r = s
        .http
        .post(s.mcp_url())
        .bearer_auth(&key)
        .header("accept", ACCEPT)
        .json(&initialize())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("mcp-session-id").is_none());
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let r = s
        .http
        .post(s.mcp_url())
        .bearer_auth(&key)
        .header("accept", ACCEPT)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.text().await.unwrap().is_empty());
}

/// User B's request and project, with user A's and B's keys.
struct TwoUsers {
    s: support::Server,
    key_a: String,
    key_b: String,
    b_request: String,
    b_project: String,
    b_record_project: String,
}

async fn two_users() -> TwoUsers {
    let s = support::start().await;
    let key_a = s.key("user_a").await;
    let key_b = s.key("user_b").await;
    let r = s
        .call(
            &key_b,
            "execute_request",
            json!({"description": "B's backend"}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    let b_request = r["structuredContent"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_project = r["structuredContent"]["project_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A finished project of B's, as the finalizer records it.
    let b_record_project = "proj_b_finished".to_string();
    s.records
        .save_project(&ProjectRecord {
            name: "b-finished".into(),
            repo_url: Some("https://git.example/b".into()),
            deploy_url: Some("https://b.example".into()),
            database: Some("db_b".into()),
            deployed_version: Some("v1".into()),
            updated_at_ms: 2,
            ..ProjectRecord::new(
                ProjectId::parse(&b_record_project).unwrap(),
                user("user_b"),
                1,
            )
        })
        .await
        .unwrap();
    TwoUsers {
        s,
        key_a,
        key_b,
        b_request,
        b_project,
        b_record_project,
    }
}

#[tokio::test]
async fn over_mcp_a_user_cannot_read_list_or_cancel_another_users_requests_or_projects() {
    let t = two_users().await;
    let s = &t.s;
    let nonexistent = "req_0123456789abcdef0123456789";
    // A's view of B's request is exactly A's view of a request that does not exist.
    for tool in ["get_request_status", "cancel_request"] {
        let theirs = s
            .call(&t.key_a, tool, json!({"request_id": t.b_request}))
            .await;
        let none = s
            .call(&t.key_a, tool, json!({"request_id": nonexistent}))
            .await;
        assert!(is_error(&theirs) && is_error(&none), "{theirs} {none}");
        assert_eq!(
            text(&theirs).replace(&t.b_request, "ID"),
            text(&none).replace(nonexistent, "ID")
        );
        assert!(text(&theirs).starts_with("no request"), "{theirs}");
    }
    let rec = s
        .store
        .load(&tb_core::domain::RequestId::parse(&t.b_request).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!rec.cancel_requested, "A cancelled B's request");

    for project in [&t.b_project, &t.b_record_project] {
        let r = s
            .call(&t.key_a, "get_project", json!({"project_id": project}))
            .await;
        assert!(is_error(&r), "{r}");
        assert!(text(&r).starts_with("no project"), "{r}");
        // Nor can A change B's project.
        let r = s
            .call(
                &t.key_a,
                "execute_request",
                json!({"description": "take over", "project_id": project}),
            )
            .await;
        assert!(is_error(&r), "{r}");
        assert!(text(&r).starts_with("no project"), "{r}");
    }
    let r = s.call(&t.key_a, "list_projects", json!({})).await;
    assert_eq!(r["structuredContent"]["total"], 0, "{r}");
    assert!(
        s.store
            .list_for_owner(&user("user_a"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // B sees both, and can build on them.
    let r = s.call(&t.key_b, "list_projects", json!({})).await;
    assert_eq!(r["structuredContent"]["total"], 2, "{r}");
    let r = s
        .call(
            &t.key_b,
            "get_project",
            json!({"project_id": t.b_record_project}),
        )
        .await;
    assert_eq!(
        r["structuredContent"]["deployment_url"], "https://b.example",
        "{r}"
    );
    let r = s
        .call(
            &t.key_b,
            "get_request_status",
            json!({"request_id": t.b_request}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    let r = s
        .call(
            &t.key_b,
            "execute_request",
            json!({"description": "add a posts endpoint", "project_id": t.b_project}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    assert_eq!(r["structuredContent"]["project_id"], t.b_project.as_str());
    let r = s
        .call(
            &t.key_b,
            "cancel_request",
            json!({"request_id": t.b_request}),
        )
        .await;
    assert_eq!(r["structuredContent"]["cancel_requested"], true, "{r}");
}

#[tokio::test]
async fn over_rest_a_user_cannot_read_list_or_cancel_another_users_requests_or_projects() {
    let t = two_users().await;
    let s = &t.s;
    let (status, body) = s
        .rest(
            &t.key_a,
            Method::GET,
            &format!("/v1/requests/{}", t.b_request),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = s
        .rest(
            &t.key_a,
            Method::POST,
            &format!("/v1/requests/{}/cancel", t.b_request),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = s.rest(&t.key_a, Method::GET, "/v1/requests", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["requests"], json!([]), "{body}");
    for project in [&t.b_project, &t.b_record_project] {
        let (status, body) = s
            .rest(
                &t.key_a,
                Method::GET,
                &format!("/v1/projects/{project}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = s
            .rest(
                &t.key_a,
                Method::POST,
                "/v1/requests",
                Some(json!({"description": "take over", "project_id": project})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"], "not_found");
    }
    let (_, body) = s.rest(&t.key_a, Method::GET, "/v1/projects", None).await;
    assert_eq!(body["total"], 0, "{body}");

    let (status, body) = s
        .rest(
            &t.key_b,
            Method::GET,
            &format!("/v1/requests/{}", t.b_request),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = s.rest(&t.key_b, Method::GET, "/v1/projects", None).await;
    assert_eq!(body["total"], 2, "{body}");
    let (status, body) = s
        .rest(
            &t.key_b,
            Method::GET,
            &format!("/v1/projects/{}", t.b_record_project),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["repository_url"], "https://git.example/b");
}

#[tokio::test]
async fn a_user_cannot_delete_or_roll_back_another_users_project_over_mcp_or_rest() {
    let t = two_users().await;
    let s = &t.s;
    for project in [&t.b_project, &t.b_record_project] {
        let r = s
            .call(
                &t.key_a,
                "delete_project",
                json!({"project_id": project, "confirm": project}),
            )
            .await;
        assert!(is_error(&r), "{r}");
        assert!(text(&r).starts_with("no project"), "{r}");
        let r = s
            .call(&t.key_a, "rollback_project", json!({"project_id": project}))
            .await;
        assert!(is_error(&r), "{r}");
        assert!(text(&r).starts_with("no project"), "{r}");
        let (status, body) = s
            .rest(
                &t.key_a,
                Method::DELETE,
                &format!("/v1/projects/{project}?confirm={project}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = s
            .rest(
                &t.key_a,
                Method::POST,
                &format!("/v1/projects/{project}/rollback"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // Nothing was recorded or handed to the finalizer.
    assert!(s.queue.take_finalize().is_empty());
    let record = s
        .records
        .project(&ProjectId::parse(&t.b_record_project).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.lifecycle, Default::default());
}

#[tokio::test]
async fn the_owner_deletes_with_confirmation_and_deleted_projects_are_hidden_unless_asked_for() {
    let t = two_users().await;
    let s = &t.s;
    let project = &t.b_record_project;
    // Without the confirmation: refused, nothing recorded.
    let r = s
        .call(
            &t.key_b,
            "delete_project",
            json!({"project_id": project, "confirm": "yes"}),
        )
        .await;
    assert!(is_error(&r), "{r}");
    assert!(text(&r).contains("confirm"), "{r}");
    let (status, body) = s
        .rest(
            &t.key_b,
            Method::DELETE,
            &format!("/v1/projects/{project}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(s.queue.take_finalize().is_empty());

    // With it: recorded and handed to the finalizer.
    let r = s
        .call(
            &t.key_b,
            "delete_project",
            json!({"project_id": project, "confirm": project}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    assert_eq!(r["structuredContent"]["state"], "deleting", "{r}");
    let sent = s.queue.take_finalize();
    assert_eq!(
        sent,
        vec![tb_pipeline::FinalizeMessage::DeleteProject {
            project_id: ProjectId::parse(project).unwrap()
        }]
    );
    let r = s
        .call(&t.key_b, "get_project", json!({"project_id": project}))
        .await;
    assert_eq!(r["structuredContent"]["state"], "deleting", "{r}");
    assert_eq!(
        r["structuredContent"]["history"][0]["action"], "delete requested",
        "{r}"
    );
    assert_eq!(r["structuredContent"]["history"][0]["by"], "user_b", "{r}");
    // A change request to a project being deleted is refused.
    let r = s
        .call(
            &t.key_b,
            "execute_request",
            json!({"description": "add posts", "project_id": project}),
        )
        .await;
    assert!(is_error(&r), "{r}");
    assert!(text(&r).contains("deleted"), "{r}");

    // Once the finalizer has recorded it deleted: hidden from the list by default.
    let id = ProjectId::parse(project).unwrap();
    let mut lifecycle = s.records.project(&id).await.unwrap().unwrap().lifecycle;
    lifecycle.deleted_at_ms = Some(42);
    lifecycle.next_version();
    s.records.save_lifecycle(&id, &lifecycle).await.unwrap();
    let r = s.call(&t.key_b, "list_projects", json!({})).await;
    let listed: Vec<&str> = r["structuredContent"]["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["project_id"].as_str().unwrap())
        .collect();
    assert!(!listed.contains(&project.as_str()), "{r}");
    let r = s
        .call(&t.key_b, "list_projects", json!({"include_deleted": true}))
        .await;
    let deleted = r["structuredContent"]["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["project_id"] == project.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(deleted["state"], "deleted");
    assert_eq!(deleted["deleted_at_ms"], 42);
    let (_, body) = s
        .rest(
            &t.key_b,
            Method::GET,
            "/v1/projects?include_deleted=true",
            None,
        )
        .await;
    assert!(
        body["projects"].to_string().contains(project.as_str()),
        "{body}"
    );
    let r = s
        .call(&t.key_b, "get_project", json!({"project_id": project}))
        .await;
    assert_eq!(r["structuredContent"]["state"], "deleted", "{r}");

    // Deleting again: a no-op that says so.
    let r = s
        .call(
            &t.key_b,
            "delete_project",
            json!({"project_id": project, "confirm": project}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    assert_eq!(r["structuredContent"]["state"], "deleted", "{r}");
    assert_eq!(r["structuredContent"]["started"], false, "{r}");
    assert!(s.queue.take_finalize().is_empty());
}
