//! The request pipeline (api → work queue → worker slices → finalize queue) over the
//! in-memory store and queue, with the scripted model and a real local sandbox.
//! `pipeline_aws.rs` runs the same scenarios against DynamoDB, SQS and S3 (moto).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tb_core::agent::Outcome;
use tb_core::domain::{Phase, RequestId, UserId};
use tb_pipeline::memory::{MemoryQueue, MemoryStore};
use tb_pipeline::{FinalizeMessage, Pipeline, StateStore, WorkError};
use tb_tests::faults::{FaultyStore, Strike};
use tb_tests::scenario::{self, assert_finished_like_reference, invocation, new_request};
use tempfile::TempDir;

struct Rig {
    pipeline: Pipeline,
    queue: Arc<MemoryQueue>,
    _dir: TempDir,
}

fn rig(store: Arc<dyn StateStore>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let pipeline = scenario::pipeline(store, queue.clone(), &dir);
    Rig {
        pipeline,
        queue,
        _dir: dir,
    }
}

/// Delivers work messages until none are left; `dup` delivers each twice, `reverse`
/// delivers each batch backwards. Returns the errors the worker reported.
async fn drain(rig: &Rig, dup: bool, reverse: bool) -> Vec<String> {
    let mut errors = Vec::new();
    for _ in 0..200 {
        let mut batch: Vec<String> = rig
            .queue
            .take_work()
            .iter()
            .map(|m| serde_json::to_string(m).unwrap())
            .collect();
        if batch.is_empty() {
            break;
        }
        if dup {
            batch = batch.iter().flat_map(|b| [b.clone(), b.clone()]).collect();
        }
        if reverse {
            batch.reverse();
        }
        for body in batch {
            if let Err(e) = rig.pipeline.handle_work(&body, &invocation()).await {
                errors.push(e.to_string());
            }
        }
    }
    errors
}

#[tokio::test]
async fn a_request_travels_through_small_slices_to_the_finalize_queue() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let rig = rig(store.clone());
    let accepted = rig.pipeline.create(new_request(None)).await.unwrap();
    assert!(accepted.created);
    assert!(drain(&rig, false, false).await.is_empty());
    assert_finished_like_reference(store.as_ref(), &accepted.request_id).await;
    assert_eq!(
        rig.queue.take_finalize(),
        vec![FinalizeMessage::Finalize {
            request_id: accepted.request_id.clone()
        }]
    );
    let record = store.load(&accepted.request_id).await.unwrap().unwrap();
    assert_eq!(
        record.seq, 3,
        "one slice per iteration: three continuations, then the finalizer"
    );
    assert!(
        record
            .activity
            .iter()
            .any(|l| l.contains("run_command cat a.txt")),
        "{:?}",
        record.activity
    );
}

#[tokio::test]
async fn duplicate_and_reordered_messages_change_nothing() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let rig = rig(store.clone());
    let accepted = rig.pipeline.create(new_request(None)).await.unwrap();
    // A stale copy of the first message arrives late, after everything.
    let first = serde_json::to_string(&rig.queue.work.lock().unwrap()[0]).unwrap();
    assert!(drain(&rig, true, true).await.is_empty());
    rig.pipeline
        .handle_work(&first, &invocation())
        .await
        .unwrap();
    assert_finished_like_reference(store.as_ref(), &accepted.request_id).await;
    assert_eq!(rig.queue.take_finalize().len(), 1);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_request() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let rig = rig(store.clone());
    let a = rig.pipeline.create(new_request(Some("k1"))).await.unwrap();
    let b = rig.pipeline.create(new_request(Some("k1"))).await.unwrap();
    assert_eq!(
        (a.request_id.clone(), a.project_id.clone()),
        (b.request_id.clone(), b.project_id.clone())
    );
    assert!(a.created && !b.created);
    assert_eq!(
        rig.queue.take_work().len(),
        1,
        "the retry did not enqueue again"
    );
}

#[tokio::test]
async fn a_worker_dying_at_any_write_loses_nothing_and_counts_nothing_twice() {
    // Count the commits of a clean run, then kill the worker at each of them in turn.
    let clean = Arc::new(FaultyStore::new(
        Arc::new(MemoryStore::default()),
        usize::MAX,
        Strike::BeforeWrite,
    ));
    let rig0 = rig(clean.clone());
    rig0.pipeline.create(new_request(None)).await.unwrap();
    drain(&rig0, false, false).await;
    let writes = clean.commits();
    assert!(writes >= 10, "{writes}");

    for strike in [Strike::BeforeWrite, Strike::AfterWrite] {
        for at in 1..=writes {
            let faulty = Arc::new(FaultyStore::new(
                Arc::new(MemoryStore::default()),
                at,
                strike,
            ));
            let rig = rig(faulty.clone());
            let accepted = rig.pipeline.create(new_request(None)).await.unwrap();
            for _round in 0..20 {
                let errors = drain(&rig, false, false).await;
                if !faulty.struck()
                    || errors.is_empty()
                        && rig.queue.work.lock().unwrap().is_empty()
                        && !rig.queue.finalize.lock().unwrap().is_empty()
                {
                    break;
                }
                // The process is gone; a new one starts, and after the claim expires the sweeper
                // re-drives the request (SQS would also redeliver the message).
                faulty.revive();
                tokio::time::sleep(Duration::from_millis(5)).await;
                rig.pipeline.sweep().await;
            }
            assert!(faulty.struck(), "fault {at} never struck");
            assert_finished_like_reference(faulty.as_ref(), &accepted.request_id).await;
            assert!(
                !rig.queue.take_finalize().is_empty(),
                "{strike:?} at write {at}: never reached the finalizer"
            );
        }
    }
}

#[tokio::test]
async fn a_job_in_the_original_shape_runs_and_publishing_it_twice_creates_one_request() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let rig = rig(store.clone());
    let job = json!({"id": "test-job-123", "data": {"mcp_key_id": "key_123", "tool_name": "execute_request",
        "request_params": {"description": "Create a simple API with a users endpoint"}, "user_id": "user_456", "project_id": "proj_789"}})
    .to_string();
    rig.pipeline.handle_work(&job, &invocation()).await.unwrap();
    rig.pipeline.handle_work(&job, &invocation()).await.unwrap();
    drain(&rig, false, false).await;
    let requests = store
        .list_for_owner(&UserId::parse("user_456").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].project.as_str(), "proj_789");
    assert_eq!(requests[0].key_id.as_deref(), Some("key_123"));
    assert_finished_like_reference(store.as_ref(), &requests[0].id).await;
    assert_eq!(rig.queue.take_finalize().len(), 1);
}

#[tokio::test]
async fn malformed_messages_and_unknown_tools_are_parked_with_a_reason() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let rig = rig(store.clone());
    for (body, expect) in [
        ("{not json", "not JSON"),
        (
            r#"{"id":"j1","data":{"tool_name":"drop_tables","user_id":"u1","request_params":{}}}"#,
            "unknown tool `drop_tables`",
        ),
        (
            r#"{"id":"j2","data":{"tool_name":"execute_request","user_id":"u1","request_params":{}}}"#,
            "description is empty",
        ),
        (
            r#"{"kind":"continue","request_id":"req_nope","seq":0}"#,
            "no request req_nope",
        ),
    ] {
        let err = rig
            .pipeline
            .handle_work(body, &invocation())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WorkError::Poison { reason, .. } if reason.contains(expect)),
            "{body}: {err}"
        );
    }
    let dead = rig.queue.dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 4);
    assert_eq!(dead[0].0, "{not json");
}

#[tokio::test]
async fn a_cancelled_request_stops_at_the_next_iteration_and_still_goes_to_the_finalizer() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let rig = rig(store.clone());
    let owner = UserId::parse("user_1").unwrap();
    let accepted = rig.pipeline.create(new_request(None)).await.unwrap();
    let first = rig.queue.take_work();
    rig.pipeline
        .handle_work(&serde_json::to_string(&first[0]).unwrap(), &invocation())
        .await
        .unwrap();
    let status = rig
        .pipeline
        .cancel(&owner, &accepted.request_id)
        .await
        .unwrap();
    assert!(status.cancel_requested);
    drain(&rig, false, false).await;
    let record = store.load(&accepted.request_id).await.unwrap().unwrap();
    assert_eq!(record.phase, Phase::Finalizing);
    assert_eq!(record.agent.outcome, Some(Outcome::Cancelled));
    assert_eq!(record.agent.iteration, 1);
    // Someone else's cancel and status are refused as not found.
    let other = UserId::parse("user_2").unwrap();
    assert!(
        rig.pipeline
            .cancel(&other, &accepted.request_id)
            .await
            .is_err()
    );
    assert!(
        rig.pipeline
            .status(&other, &accepted.request_id)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_sweeper_redrives_a_request_whose_message_was_lost_and_deletes_orphaned_sandboxes() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let mut rig = rig(store.clone());
    rig.pipeline.slices.sandbox_max_age = Duration::ZERO;
    let accepted = rig.pipeline.create(new_request(None)).await.unwrap();
    rig.queue.take_work(); // lost
    // An orphan sandbox: labelled with a request that does not exist.
    let orphan = rig
        .pipeline
        .sandboxes
        .create(&tb_core::sandbox::SandboxSpec {
            name: "orphan".into(),
            labels: [(
                tb_pipeline::sweeper::REQUEST_LABEL.to_string(),
                "req_gone".to_string(),
            )]
            .into(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = rig.pipeline.sweep().await;
    assert_eq!(report.redriven_work, vec![accepted.request_id.clone()]);
    assert_eq!(report.sandboxes_deleted, vec![orphan.id().to_string()]);
    assert!(drain(&rig, false, false).await.is_empty());
    assert_finished_like_reference(store.as_ref(), &accepted.request_id).await;
}

#[tokio::test]
async fn the_rest_api_creates_reports_and_cancels_only_for_the_owner() {
    use http::{Method, StatusCode};
    use tb_pipeline::rest::{Caller, MAX_BODY_BYTES, handle};
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let rig = rig(store.clone());
    let alice = Caller {
        user: UserId::parse("user_alice").unwrap(),
        key_id: Some("key_a".into()),
    };
    let bob = Caller {
        user: UserId::parse("user_bob").unwrap(),
        key_id: None,
    };
    let p = &rig.pipeline;

    let body = br#"{"description": "Create a simple API with a users endpoint", "idempotency_key": "once"}"#;
    let (status, created) = handle(p, &alice, &Method::POST, "/v1/requests", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["request_id"].as_str().unwrap().to_string();
    let (status, again) = handle(p, &alice, &Method::POST, "/v1/requests", body).await;
    assert_eq!(
        (status, &again["request_id"]),
        (StatusCode::OK, &created["request_id"])
    );

    let path = format!("/v1/requests/{id}");
    let (status, s) = handle(p, &alice, &Method::GET, &path, b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            s["phase"].as_str(),
            s["iteration"].as_u64(),
            s["max_iterations"].as_u64()
        ),
        (Some("queued"), Some(0), Some(60))
    );
    assert_eq!(
        store
            .load(&RequestId::parse(&id).unwrap())
            .await
            .unwrap()
            .unwrap()
            .key_id
            .as_deref(),
        Some("key_a")
    );

    // Bob sees nothing of Alice's: the same 404 as for an id that does not exist.
    assert_eq!(
        handle(p, &bob, &Method::GET, &path, b"").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        handle(p, &bob, &Method::POST, &format!("{path}/cancel"), b"")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        handle(p, &bob, &Method::GET, "/v1/requests", b"").await.1["requests"],
        json!([])
    );
    assert_eq!(
        handle(p, &alice, &Method::GET, "/v1/requests", b"").await.1["requests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (status, s) = handle(p, &alice, &Method::POST, &format!("{path}/cancel"), b"").await;
    assert_eq!(
        (status, s["cancel_requested"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    // Bad input: a clear error, never a panic or a 500.
    let big = vec![b'x'; MAX_BODY_BYTES + 1];
    assert_eq!(
        handle(p, &alice, &Method::POST, "/v1/requests", &big)
            .await
            .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    for bad in [
        &b"{"[..],
        br#"{"description": 5}"#,
        br#"{"description": "x", "extra": 1}"#,
        br#"{"description": "  "}"#,
        br#"{"description": "x", "project_id": "a b"}"#,
        br#"{"description": "x", "callback_url": "ftp://x"}"#,
    ] {
        let (status, e) = handle(p, &alice, &Method::POST, "/v1/requests", bad).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        handle(p, &alice, &Method::GET, "/v1/requests/..%2F..%2Fetc", b"")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        handle(p, &alice, &Method::DELETE, &path, b"").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        handle(p, &alice, &Method::GET, "/nope", b"").await.0,
        StatusCode::NOT_FOUND
    );
}
