//! OAuth 2.1 for remote MCP clients: the official Python SDK's OAuth client connects end to
//! end, and the flow's failure modes are the documented OAuth errors (RFC 6749 section 5.2,
//! RFC 6750 section 3.1, RFC 7591 section 3.2.2, RFC 8707 `invalid_target`), never a 500.

mod support;

use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{ACCEPT, Server, clients};
use tb_core::ids::sha256_hex;
use tb_frontdoor::OAuthSettings;

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mJ92K1s5-s8Ew0QxLk1YzBmZx7TDvo-quite-long";

fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `application/x-www-form-urlencoded` bodies (reqwest's `form` feature is not enabled).
trait FormBody {
    fn form_body<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            body.append_pair(k.as_ref(), v.as_ref());
        }
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body.finish())
    }
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An OAuth error response: the status, and the `error` code of its JSON body.
async fn oauth_error(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.expect("an OAuth error is JSON");
    assert!(
        body["error_description"].is_string(),
        "error_description: {body}"
    );
    (
        status,
        body["error"].as_str().expect("error code").to_string(),
    )
}

struct Flow<'a> {
    s: &'a Server,
    client_id: String,
}

impl<'a> Flow<'a> {
    /// Registers a client (RFC 7591) with `REDIRECT`.
    async fn register(s: &'a Server) -> Flow<'a> {
        let r = s
            .http
            .post(format!("{}/register", s.url))
            .json(
                &json!({"client_name": "Test Connector", "redirect_uris": [REDIRECT],
                          "token_endpoint_auth_method": "none", "application_type": "native"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["token_endpoint_auth_method"], "none");
        Flow {
            s,
            client_id: body["client_id"].as_str().unwrap().to_string(),
        }
    }

    fn authorize_params(&self, resource: &str) -> Vec<(&'static str, String)> {
        vec![
            ("response_type", "code".into()),
            ("client_id", self.client_id.clone()),
            ("redirect_uri", REDIRECT.into()),
            ("code_challenge", challenge(VERIFIER)),
            ("code_challenge_method", "S256".into()),
            ("state", "st4te".into()),
            ("resource", resource.into()),
        ]
    }

    /// Submits the sign-in form with `key`; returns the redirect's query parameters.
    async fn consent(&self, key: &str, host: Option<&str>) -> Vec<(String, String)> {
        let resource = match host {
            Some(h) => format!("http://{h}/mcp"),
            None => self.s.mcp_url(),
        };
        let mut form = self.authorize_params(&resource);
        form.push(("api_key", key.into()));
        form.push(("decision", "allow".into()));
        let mut req = browser()
            .post(format!("{}/authorize", self.s.url))
            .form_body(&form);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{:?}", r.text().await);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(REDIRECT), "{location}");
        url::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    async fn code(&self, key: &str) -> String {
        let q = self.consent(key, None).await;
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("state").as_deref(), Some("st4te"));
        assert_eq!(get("iss").as_deref(), Some(self.s.url.as_str()));
        get("code").expect("a code")
    }

    async fn token(&self, form: &[(&str, &str)]) -> reqwest::Response {
        let mut all = vec![("client_id", self.client_id.as_str())];
        all.extend_from_slice(form);
        self.s
            .http
            .post(format!("{}/token", self.s.url))
            .form_body(&all)
            .send()
            .await
            .unwrap()
    }

    async fn exchange(&self, code: &str) -> reqwest::Response {
        let resource = self.s.mcp_url();
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("resource", &resource),
        ])
        .await
    }

    /// The whole flow: (access token, refresh token).
    async fn tokens(&self, key: &str) -> (String, String) {
        let code = self.code(key).await;
        let r = self.exchange(&code).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(t["expires_in"], 3600);
        (
            t["access_token"].as_str().unwrap().into(),
            t["refresh_token"].as_str().unwrap().into(),
        )
    }

    async fn refresh(&self, refresh: &str) -> reqwest::Response {
        self.token(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
            .await
    }
}

/// `tools/list` with an access token: the HTTP status.
async fn list_tools(s: &Server, token: &str) -> StatusCode {
    s.mcp(
        token,
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await
    .0
}

#[tokio::test]
async fn the_python_sdk_oauth_client_registers_signs_in_and_calls_tools() {
    let tools = clients::prepare("python");
    let s = support::start().await;
    let key = s.key("user_oauth").await;
    let python = tools["PYTHON"].clone();
    let url = s.mcp_url();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(url)
            .env("OAUTH_API_KEY", key)
            .output()
            .expect("run the Python OAuth client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python OAuth client failed:\n{stdout}\n{stderr}"
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{stderr}"));
    // It registered dynamically, saw our sign-in page naming it, and came back with a code.
    assert!(
        report["client_id"].as_str().unwrap().starts_with("tbcl_"),
        "{report}"
    );
    assert_eq!(report["pages"], json!([200, 303]), "{report}");
    assert_eq!(report["consent_names_client"], true, "{report}");
    assert_eq!(report["redirected_to"], REDIRECT, "{report}");
    let auth_url = report["authorization_url"].as_str().unwrap();
    assert!(
        auth_url.contains("code_challenge_method=S256"),
        "{auth_url}"
    );
    assert!(auth_url.contains("resource="), "{auth_url}");
    assert_eq!(report["access_token_prefix"], "tbat_", "{report}");
    assert_eq!(report["has_refresh_token"], true, "{report}");
    assert_eq!(report["tools"].as_array().unwrap().len(), 7, "{report}");
    assert_eq!(report["execute"]["created"], true, "{report}");
    // The request belongs to the user whose key signed in.
    let id = report["execute"]["request_id"].as_str().unwrap();
    let rec =
        s.fd.pipeline
            .store
            .load(&tb_core::domain::RequestId::parse(id).unwrap())
            .await
            .unwrap()
            .expect("the request exists");
    assert_eq!(rec.owner, support::user("user_oauth"));
}

#[tokio::test]
async fn a_401_points_at_the_metadata_that_names_the_resource_and_its_server() {
    let s = support::start().await;
    let r = s
        .http
        .post(s.mcp_url())
        .header("accept", ACCEPT)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    let metadata_url = format!("{}/.well-known/oauth-protected-resource", s.url);
    assert!(
        challenge.starts_with(&format!("Bearer resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let prm: Value = s
        .http
        .get(&metadata_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], s.mcp_url());
    assert_eq!(prm["authorization_servers"], json!([s.url]));
    // The path-suffixed form (RFC 9728 section 3.1) answers the same.
    let suffixed: Value = s
        .http
        .get(format!("{metadata_url}/mcp"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(suffixed, prm);
    let asm: Value = s
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asm["issuer"], s.url);
    assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(asm["client_id_metadata_document_supported"], true);
    assert_eq!(
        asm["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    for e in ["authorization", "token", "registration", "revocation"] {
        assert!(
            asm[format!("{e}_endpoint")]
                .as_str()
                .unwrap()
                .starts_with(&s.url)
        );
    }
    // An unknown token is an RFC 6750 invalid_token with the same pointer.
    let r = s
        .http
        .post(s.mcp_url())
        .bearer_auth("tbat_0000")
        .header("accept", ACCEPT)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains(&metadata_url), "{challenge}");
}

#[tokio::test]
async fn tokens_work_beside_api_keys_and_are_stored_as_hashes() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let flow = Flow::register(&s).await;
    let (access, refresh) = flow.tokens(&key).await;
    assert_eq!(list_tools(&s, &access).await, StatusCode::OK);
    assert_eq!(list_tools(&s, &key).await, StatusCode::OK);
    // Same user, same tenancy: what the token creates, the key lists.
    let made = s
        .call(
            &access,
            "execute_request",
            json!({"description": "a users API"}),
        )
        .await;
    let project = made["structuredContent"]["project_id"].as_str().unwrap();
    let listed = s.call(&key, "list_projects", json!({})).await;
    assert!(listed.to_string().contains(project), "{listed}");
    // Only hashes are stored.
    for t in [&access, &refresh] {
        assert!(s.fd.oauth.grant(t).await.unwrap().is_none());
        assert!(
            s.fd.oauth
                .grant(&sha256_hex(t.as_bytes()))
                .await
                .unwrap()
                .is_some()
        );
    }
    // REST does not take OAuth tokens: they are for the MCP resource only.
    let r = s
        .http
        .get(format!("{}/v1/projects", s.url))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_wrong_verifier_or_a_reused_code_is_invalid_grant_and_reuse_revokes_the_grant() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let flow = Flow::register(&s).await;

    let code = flow.code(&key).await;
    let resource = s.mcp_url();
    let wrong = "x".repeat(43);
    let r = flow
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &wrong),
            ("resource", &resource),
        ])
        .await;
    assert_eq!(
        oauth_error(r).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );

    let code = flow.code(&key).await;
    let r = flow.exchange(&code).await;
    assert_eq!(r.status(), StatusCode::OK);
    let first: Value = r.json().await.unwrap();
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(list_tools(&s, access).await, StatusCode::OK);
    let r = flow.exchange(&code).await;
    assert_eq!(
        oauth_error(r).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    // RFC 6749 section 4.1.2: the tokens issued for the replayed code are revoked.
    assert_eq!(list_tools(&s, access).await, StatusCode::UNAUTHORIZED);
    let r = flow.refresh(first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(oauth_error(r).await.1, "invalid_grant");
}

#[tokio::test]
async fn an_oauth_2_1_token_request_may_leave_out_the_redirect_uri() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let flow = Flow::register(&s).await;
    let code = flow.code(&key).await;
    let r = flow
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", VERIFIER),
        ])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_foreign_redirect_uri_is_shown_never_followed() {
    let s = support::start().await;
    let flow = Flow::register(&s).await;
    let mut params = flow.authorize_params(&s.mcp_url());
    params[2].1 = "https://evil.example/callback".into();
    let r = browser()
        .get(format!("{}/authorize", s.url))
        .query(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("not one the client registered")
    );
    // An unknown client is shown too, not redirected.
    let mut params = flow.authorize_params(&s.mcp_url());
    params[1].1 = "tbcl_unknown".into();
    let r = browser()
        .get(format!("{}/authorize", s.url))
        .query(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    // Registration refuses redirect URIs that are neither https nor loopback http.
    let r = s
        .http
        .post(format!("{}/register", s.url))
        .json(&json!({"redirect_uris": ["http://evil.example/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        oauth_error(r).await,
        (StatusCode::BAD_REQUEST, "invalid_redirect_uri".into())
    );
    // The code is bound to the redirect URI it was issued for.
    let key = s.key("user_a").await;
    let code = flow.code(&key).await;
    let r = flow
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("code_verifier", VERIFIER),
        ])
        .await;
    assert_eq!(oauth_error(r).await.1, "invalid_grant");
}

#[tokio::test]
async fn errors_after_the_redirect_uri_is_trusted_go_back_with_state() {
    let s = support::start().await;
    let flow = Flow::register(&s).await;
    for (i, value, error) in [
        (0, "token", "unsupported_response_type"),
        (4, "plain", "invalid_request"),
        (6, "https://other.example/mcp", "invalid_target"),
    ] {
        let mut params = flow.authorize_params(&s.mcp_url());
        params[i].1 = value.into();
        let r = browser()
            .get(format!("{}/authorize", s.url))
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{value}");
        let location = r.headers()["location"].to_str().unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        assert!(location.contains(&format!("error={error}")), "{location}");
        assert!(location.contains("state=st4te"), "{location}");
    }
}

#[tokio::test]
async fn a_token_for_another_resource_is_refused() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let flow = Flow::register(&s).await;
    // The token endpoint refuses another resource (RFC 8707 section 2).
    let code = flow.code(&key).await;
    let r = flow
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("resource", "https://other.example/mcp"),
        ])
        .await;
    assert_eq!(
        oauth_error(r).await,
        (StatusCode::BAD_REQUEST, "invalid_target".into())
    );
    // A token granted for this server under another name (its audience is
    // http://localhost:<port>/mcp) is not accepted at http://127.0.0.1:<port>/mcp.
    let port = s.url.rsplit(':').next().unwrap();
    let q = flow.consent(&key, Some(&format!("localhost:{port}"))).await;
    let code = q.iter().find(|(k, _)| k == "code").unwrap().1.clone();
    let r = s
        .http
        .post(format!("{}/token", s.url))
        .header("host", format!("localhost:{port}"))
        .form_body(&[
            ("client_id", flow.client_id.as_str()),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let foreign = t["access_token"].as_str().unwrap();
    let g =
        s.fd.oauth
            .grant(&sha256_hex(foreign.as_bytes()))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(g.resource, format!("http://localhost:{port}/mcp"));
    assert_eq!(list_tools(&s, foreign).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let flow = Flow::register(&s).await;
    let (access, _) = flow.tokens(&key).await;
    assert_eq!(list_tools(&s, &access).await, StatusCode::OK);
    let hash = sha256_hex(access.as_bytes());
    let mut g = s.fd.oauth.grant(&hash).await.unwrap().unwrap();
    assert!(
        g.expires_at_ms > tb_core::agent::now_ms() + 3_500_000,
        "about an hour"
    );
    g.expires_at_ms = tb_core::agent::now_ms() - 1;
    s.fd.oauth.save_grant(&g).await.unwrap();
    assert_eq!(list_tools(&s, &access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_family() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let flow = Flow::register(&s).await;
    let (_, refresh1) = flow.tokens(&key).await;
    let r = flow.refresh(&refresh1).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let (access2, refresh2) = (
        t["access_token"].as_str().unwrap().to_string(),
        t["refresh_token"].as_str().unwrap().to_string(),
    );
    assert_ne!(refresh2, refresh1);
    assert_eq!(list_tools(&s, &access2).await, StatusCode::OK);
    // The old refresh token again: a replay. The whole family is revoked.
    let r = flow.refresh(&refresh1).await;
    assert_eq!(
        oauth_error(r).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    assert_eq!(list_tools(&s, &access2).await, StatusCode::UNAUTHORIZED);
    let r = flow.refresh(&refresh2).await;
    assert_eq!(oauth_error(r).await.1, "invalid_grant");
    // Another client cannot use a client's refresh token.
    let (_, refresh3) = flow.tokens(&key).await;
    let other = Flow::register(&s).await;
    let r = other.refresh(&refresh3).await;
    assert_eq!(oauth_error(r).await.1, "invalid_grant");
}

#[tokio::test]
async fn a_revoked_api_keys_tokens_stop_working() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let flow = Flow::register(&s).await;
    let (access, refresh) = flow.tokens(&key).await;
    assert_eq!(list_tools(&s, &access).await, StatusCode::OK);
    let user = support::user("user_a");
    let id = s.records.authenticate(&key).await.unwrap().unwrap().id;
    use tb_core::ports::PlatformRecords;
    assert!(s.records.revoke_key(&user, &id).await.unwrap());
    assert_eq!(list_tools(&s, &access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        oauth_error(flow.refresh(&refresh).await).await.1,
        "invalid_grant"
    );
}

#[tokio::test]
async fn revocation_ends_the_grant_and_unknown_tokens_are_not_an_error() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let flow = Flow::register(&s).await;
    let (access, refresh) = flow.tokens(&key).await;
    let revoke = |token: String| {
        let s = &s;
        let client = flow.client_id.clone();
        async move {
            s.http
                .post(format!("{}/revoke", s.url))
                .form_body(&[("token", token.as_str()), ("client_id", client.as_str())])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(revoke("tbrt_unknown".into()).await, StatusCode::OK);
    assert_eq!(revoke(refresh.clone()).await, StatusCode::OK);
    assert_eq!(list_tools(&s, &access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        oauth_error(flow.refresh(&refresh).await).await.1,
        "invalid_grant"
    );
}

#[tokio::test]
async fn bad_token_requests_are_oauth_errors_and_the_endpoint_is_rate_limited() {
    let s = support::start().await;
    let flow = Flow::register(&s).await;
    type Case = (Vec<(&'static str, &'static str)>, StatusCode, &'static str);
    let cases: Vec<Case> = vec![
        (vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (
            vec![("grant_type", "password")],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "authorization_code")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "tbrt_nope"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
    ];
    for (form, status, error) in cases {
        let r = flow.token(&form).await;
        assert_eq!(
            oauth_error(r).await,
            (status, error.to_string()),
            "{form:?}"
        );
    }
    // No client_id, an unregistered one, a body that is not a form.
    let r = s
        .http
        .post(format!("{}/token", s.url))
        .form_body(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(r).await.1, "invalid_request");
    let r = s
        .http
        .post(format!("{}/token", s.url))
        .form_body(&[("grant_type", "refresh_token"), ("client_id", "tbcl_gone")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        oauth_error(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    let r = s
        .http
        .post(format!("{}/token", s.url))
        .json(&json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(r).await.1, "invalid_request");
    // 30 token requests a minute per client; then 429.
    let mut limited = 0;
    for _ in 0..30 {
        let r = flow.refresh("tbrt_nope").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            assert_eq!(oauth_error(r).await.1, "slow_down");
        }
    }
    assert!(limited >= 1, "the 31st request in a minute is limited");
}

/// Serves `document` at `/client.json` on loopback; returns its URL.
async fn serve_document(document: impl Fn(&str) -> Value + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/client.json", listener.local_addr().unwrap());
    let doc = Arc::new(document(&url));
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json((*doc).clone()) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_client_id_metadata_document_identifies_the_client() {
    let s = support::start_oauth(OAuthSettings {
        allow_loopback_clients: true,
        ..OAuthSettings::default()
    })
    .await;
    let key = s.key("user_a").await;
    let client_id = serve_document(|url| {
        json!({"client_id": url, "client_name": "Document Client", "redirect_uris": [REDIRECT],
               "token_endpoint_auth_method": "none"})
    })
    .await;
    let flow = Flow {
        s: &s,
        client_id: client_id.clone(),
    };
    let page = browser()
        .get(format!("{}/authorize", s.url))
        .query(&flow.authorize_params(&s.mcp_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Document Client"));
    let (access, _) = flow.tokens(&key).await;
    assert_eq!(list_tools(&s, &access).await, StatusCode::OK);

    // A document that names another client_id is refused, on a page.
    let liar = serve_document(|_| {
        json!({"client_id": "https://claude.ai/oauth/client.json", "redirect_uris": [REDIRECT]})
    })
    .await;
    let r = browser()
        .get(format!("{}/authorize", s.url))
        .query(
            &Flow {
                s: &s,
                client_id: liar,
            }
            .authorize_params(&s.mcp_url()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
}

#[tokio::test]
async fn in_the_cloud_client_documents_are_fetched_from_public_addresses_only() {
    // Default settings (the cloud): an https client_id on a loopback address is refused by
    // the address policy before any connection is made, and http ones are not documents.
    let s = support::start().await;
    for client_id in [
        "https://127.0.0.1:9/client.json",
        "http://127.0.0.1:9/client.json",
    ] {
        let flow = Flow {
            s: &s,
            client_id: client_id.into(),
        };
        let r = browser()
            .get(format!("{}/authorize", s.url))
            .query(&flow.authorize_params(&s.mcp_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{client_id}");
        assert!(r.headers().get("location").is_none());
        let text = r.text().await.unwrap();
        assert!(
            text.contains("public address") || text.contains("not registered"),
            "{client_id}: {text}"
        );
    }
}
