//! Per-user limits under parallel calls: the number of running requests and the spending cap.

mod support;

use std::time::Duration;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{is_error, text, user};
use tb_core::MicroUsd;
use tb_core::domain::{ProjectId, RequestId};
use tb_core::model::StopReason;
use tb_core::ports::PlatformRecords;
use tb_frontdoor::Limits;
use tb_pipeline::StateStore;

/// Store latency: without admission control, parallel calls interleave between counting the
/// running requests and creating one.
const LATENCY: Duration = Duration::from_millis(5);

fn limits(max_running: usize, cap_usd: i64) -> Limits {
    Limits {
        max_concurrent_per_user: max_running,
        spending_cap_per_user: MicroUsd::from_micros(cap_usd * 1_000_000),
        ..Limits::default()
    }
}

/// Puts `usd` of finished model calls on `user`'s ledger.
async fn spend(s: &support::Server, user_id: &str, usd: i64) {
    let call = tb_core::ModelCall {
        iteration: 1,
        model: "scripted".into(),
        usage: Default::default(),
        cost: MicroUsd::from_micros(usd * 1_000_000),
        latency_ms: 1,
        stop_reason: StopReason::EndTurn,
    };
    s.records
        .record_usage(
            &RequestId::generate(),
            &user(user_id),
            &ProjectId::generate(),
            &[call],
        )
        .await
        .unwrap();
}

async fn running(s: &support::Server, user_id: &str) -> usize {
    s.store
        .list_for_owner(&user(user_id), 100)
        .await
        .unwrap()
        .iter()
        .filter(|r| !r.phase.is_terminal())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_parallel_execute_requests_with_a_limit_of_three_admit_exactly_three() {
    let s = support::start_full(limits(3, 1000), LATENCY).await;
    let key = s.key("user_a").await;
    let other = s.key("user_b").await;
    let calls = (0..10).map(|i| {
        s.call(
            &key,
            "execute_request",
            json!({"description": format!("backend {i}")}),
        )
    });
    let results = join_all(calls).await;
    let accepted = results.iter().filter(|r| !is_error(r)).count();
    assert_eq!(accepted, 3, "{results:#?}");
    assert_eq!(running(&s, "user_a").await, 3);
    for r in results.iter().filter(|r| is_error(r)) {
        assert!(
            text(r).contains("3 of your requests are running and the limit is 3"),
            "{r}"
        );
    }
    // Another user is not affected.
    let r = s
        .call(&other, "execute_request", json!({"description": "mine"}))
        .await;
    assert!(!is_error(&r), "{r}");

    // A finished request frees a slot (marked finished as the finalizer would).
    let r = s
        .call(&key, "execute_request", json!({"description": "next"}))
        .await;
    assert!(is_error(&r), "{r}");
    finish_one(&s, "user_a").await;
    let r = s
        .call(&key, "execute_request", json!({"description": "next"}))
        .await;
    assert!(!is_error(&r), "{r}");
    assert_eq!(running(&s, "user_a").await, 3);
}

/// Marks one of the user's running requests succeeded.
async fn finish_one(s: &support::Server, user_id: &str) {
    let mut rec = s
        .store
        .list_for_owner(&user(user_id), 100)
        .await
        .unwrap()
        .into_iter()
        .find(|r| !r.phase.is_terminal())
        .expect("a running request");
    rec.phase = tb_core::domain::Phase::Succeeded;
    tb_pipeline::ports::save_next(s.store.as_ref(), &mut rec, Default::default())
        .await
        .unwrap();
    // As the finalizer does after the final commit.
    tb_pipeline::ports::give_back_slot(s.store.as_ref(), &mut rec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_rest_creates_over_the_limit_get_429_saying_how_many_run() {
    let s = support::start_full(limits(3, 1000), LATENCY).await;
    let key = s.key("user_a").await;
    let calls = (0..10).map(|i| {
        s.rest(
            &key,
            Method::POST,
            "/v1/requests",
            Some(json!({"description": format!("backend {i}")})),
        )
    });
    let results = join_all(calls).await;
    let accepted = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 3, "{results:#?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::ACCEPTED) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["running"], 3);
        assert_eq!(body["limit"], 3);
        assert!(body["message"].as_str().unwrap().contains("limit is 3"));
    }
    assert_eq!(running(&s, "user_a").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_parallel_rest_and_mcp_creates_share_one_limit() {
    let s = support::start_full(limits(4, 1000), LATENCY).await;
    let key = s.key("user_a").await;
    let mcp = (0..6).map(|i| {
        let s = &s;
        let key = &key;
        async move {
            let r = s
                .call(
                    key,
                    "execute_request",
                    json!({"description": format!("m{i}")}),
                )
                .await;
            !is_error(&r)
        }
    });
    let rest = (0..6).map(|i| {
        let s = &s;
        let key = &key;
        async move {
            let (status, _) = s
                .rest(
                    key,
                    Method::POST,
                    "/v1/requests",
                    Some(json!({"description": format!("r{i}")})),
                )
                .await;
            status == StatusCode::ACCEPTED
        }
    });
    let (a, b) = futures::join!(join_all(mcp), join_all(rest));
    let accepted = a.iter().chain(b.iter()).filter(|ok| **ok).count();
    assert_eq!(accepted, 4);
    assert_eq!(running(&s, "user_a").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spending_cap_holds_under_parallel_calls() {
    // Cap $50, $40 already spent, $5 per request (the standard budget): two more fit.
    let s = support::start_full(limits(100, 50), LATENCY).await;
    assert_eq!(s.fd.requests.agent.budget, MicroUsd::from_micros(5_000_000));
    let key = s.key("user_a").await;
    spend(&s, "user_a", 40).await;
    spend(&s, "user_b", 48).await;
    let calls = (0..10).map(|i| {
        s.call(
            &key,
            "execute_request",
            json!({"description": format!("backend {i}")}),
        )
    });
    let results = join_all(calls).await;
    let accepted = results.iter().filter(|r| !is_error(r)).count();
    assert_eq!(accepted, 2, "{results:#?}");
    for r in results.iter().filter(|r| is_error(r)) {
        let t = text(r);
        assert!(t.starts_with("spending cap reached"), "{t}");
        assert!(t.contains("$40.000000") && t.contains("$50.000000"), "{t}");
    }
    // REST says the same with 402 and the figures.
    let (status, body) = s
        .rest(
            &key,
            Method::POST,
            "/v1/requests",
            Some(json!({"description": "one more"})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["error"], "spending_cap_reached");
    assert_eq!(body["spent_micro_usd"], 40_000_000);
    assert_eq!(body["committed_micro_usd"], 10_000_000);

    // User B has spent $48: even one request ($5) would pass the cap.
    let key_b = s.key("user_b").await;
    let r = s
        .call(&key_b, "execute_request", json!({"description": "b"}))
        .await;
    assert!(is_error(&r), "{r}");
    assert!(text(&r).starts_with("spending cap reached"), "{r}");
    assert_eq!(running(&s, "user_b").await, 0);
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_same_request_even_at_the_limit() {
    let s = support::start_full(limits(1, 1000), LATENCY).await;
    let key = s.key("user_a").await;
    let args = json!({"description": "once", "idempotency_key": "k-1"});
    let first = s.call(&key, "execute_request", args.clone()).await;
    assert!(!is_error(&first), "{first}");
    assert_eq!(first["structuredContent"]["created"], true);
    let again = s.call(&key, "execute_request", args).await;
    assert!(!is_error(&again), "{again}");
    assert_eq!(again["structuredContent"]["created"], false);
    assert_eq!(
        again["structuredContent"]["request_id"],
        first["structuredContent"]["request_id"]
    );
    let other = s
        .call(&key, "execute_request", json!({"description": "another"}))
        .await;
    assert!(is_error(&other), "{other}");
    assert_eq!(running(&s, "user_a").await, 1);
}
