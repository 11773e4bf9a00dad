//! The request pipeline (api → work queue → worker slices → finalize queue) over the
//! in-memory store and queue, with the scripted model and a real local sandbox.
//! `pipeline_aws.rs` runs the same scenarios against DynamoDB, SQS and S3 (moto).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tb_core::agent::Outcome;
use tb_core::domain::{Phase, ProjectId, UserId};
use tb_core::ports::ProjectRecord;
use tb_pipeline::memory::{MemoryQueue, MemoryStore};
use tb_pipeline::{FinalizeMessage, StateStore, WorkError, Worker};
use tb_tests::faults::{FaultyStore, Strike};
use tb_tests::scenario::{self, assert_finished_like_reference, invocation, new_request};
use tempfile::TempDir;

struct Rig {
    pipeline: Worker,
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
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
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
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
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
    let a = rig
        .pipeline
        .requests
        .create(new_request(Some("k1")))
        .await
        .unwrap();
    let b = rig
        .pipeline
        .requests
        .create(new_request(Some("k1")))
        .await
        .unwrap();
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
    rig0.pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
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
            let accepted = rig
                .pipeline
                .requests
                .create(new_request(None))
                .await
                .unwrap();
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
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
    let first = rig.queue.take_work();
    rig.pipeline
        .handle_work(&serde_json::to_string(&first[0]).unwrap(), &invocation())
        .await
        .unwrap();
    let status = rig
        .pipeline
        .requests
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
            .requests
            .cancel(&other, &accepted.request_id)
            .await
            .is_err()
    );
    assert!(
        rig.pipeline
            .requests
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
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
    rig.queue.take_work(); // lost
    // An orphan sandbox: labelled with a request that does not exist.
    let orphan = rig
        .pipeline
        .sandboxes
        .create(&tb_core::sandbox::SandboxSpec {
            name: "orphan".into(),
            labels: [(
                tb_pipeline::worker::REQUEST_LABEL.to_string(),
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

/// A project record of `owner`'s.
fn project_of(id: &str, owner: &str) -> ProjectRecord {
    ProjectRecord::new(
        ProjectId::parse(id).unwrap(),
        UserId::parse(owner).unwrap(),
        1,
    )
}

#[tokio::test]
async fn a_job_naming_another_users_project_is_refused() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let rig = rig(store.clone());
    let records = rig.pipeline.requests.records.clone();
    records
        .save_project(&project_of("proj_theirs", "user_owner"))
        .await
        .unwrap();
    let job = |id: &str, user: &str| {
        json!({"id": id, "data": {"tool_name": "execute_request", "user_id": user, "project_id": "proj_theirs",
            "request_params": {"description": "Add a users endpoint"}}})
        .to_string()
    };

    let err = rig
        .pipeline
        .handle_work(&job("job-intruder", "user_456"), &invocation())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkError::Poison { reason, .. } if reason.contains("no project proj_theirs")),
        "{err}"
    );
    let intruder = UserId::parse("user_456").unwrap();
    assert!(
        store
            .list_for_owner(&intruder, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(rig.queue.dead.lock().unwrap().len(), 1);

    // The project's owner may: the same gate admits it.
    rig.pipeline
        .handle_work(&job("job-owner", "user_owner"), &invocation())
        .await
        .unwrap();
    let owner = UserId::parse("user_owner").unwrap();
    let theirs = store.list_for_owner(&owner, 10).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].project.as_str(), "proj_theirs");
}

#[tokio::test]
async fn jobs_pass_the_same_limits_as_the_front_doors_requests() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let mut rig = rig(store.clone());
    let mut requests = scenario::requests(store.clone(), rig.queue.clone());
    requests.limits.max_concurrent_per_user = 1;
    rig.pipeline.requests = Arc::new(requests);
    let job = |id: &str| {
        json!({"id": id, "data": {"tool_name": "execute_request", "user_id": "user_busy",
            "request_params": {"description": "Create a simple API with a users endpoint"}}})
        .to_string()
    };
    rig.pipeline
        .handle_work(&job("job-1"), &invocation())
        .await
        .unwrap();
    // The user's one slot is taken: the second job waits (the queue delivers it again).
    let err = rig
        .pipeline
        .handle_work(&job("job-2"), &invocation())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkError::Retry(reason) if reason.contains("the limit is 1")),
        "{err}"
    );
    let busy = UserId::parse("user_busy").unwrap();
    assert_eq!(store.list_for_owner(&busy, 10).await.unwrap().len(), 1);
    assert!(rig.queue.dead.lock().unwrap().is_empty());
}
