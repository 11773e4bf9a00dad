//! The request pipeline on AWS's wire protocol: DynamoDB, SQS and S3 on the moto server, the
//! worker function's batch handler fed from real SQS receives. Needs `AWS_ENDPOINT_URL`
//! (scripts/test starts moto and sets it).

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::{Value, json};
use tb_aws::testing::{Received, TestAws};
use tb_core::domain::{Phase, UserId};
use tb_pipeline::{StateStore, Worker};
use tb_tests::faults::{FaultyStore, Strike};
use tb_tests::scenario::{self, assert_finished_like_reference, new_request};
use tempfile::TempDir;

struct Rig {
    aws: TestAws,
    pipeline: Worker,
    _dir: TempDir,
}

async fn rig_with(wrap: impl FnOnce(Arc<dyn StateStore>) -> Arc<dyn StateStore>) -> Rig {
    let aws = TestAws::new().await;
    let dir = tempfile::tempdir().unwrap();
    let store = wrap(Arc::new(aws.store()));
    let pipeline = scenario::pipeline(store, Arc::new(aws.queue()), &dir);
    Rig {
        aws,
        pipeline,
        _dir: dir,
    }
}

async fn rig() -> Rig {
    rig_with(|s| s).await
}

fn batch(messages: &[Received]) -> SqsEvent {
    let records: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| json!({"messageId": format!("m{i}"), "body": m.body}))
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// Receives work messages and runs them through the worker function's batch handler until
/// the queue is empty, deleting what the handler acknowledged (as Lambda's event source
/// mapping does). `dup` delivers every batch twice, the second time reversed. Returns how
/// many records the handler reported as failed.
async fn pump(rig: &Rig, dup: bool) -> usize {
    let mut failed = 0;
    for _ in 0..100 {
        let received = rig.aws.receive_work(Duration::ZERO).await;
        if received.is_empty() {
            break;
        }
        let mut deliveries = vec![received.clone()];
        if dup {
            deliveries.push(received.iter().rev().cloned().collect());
        }
        for delivery in deliveries {
            let response = worker::handle_batch(
                &rig.pipeline,
                batch(&delivery),
                &lambda_runtime::Context::default(),
            )
            .await;
            let failures: Vec<String> = response
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.clone())
                .collect();
            failed += failures.len();
            for (i, m) in delivery.iter().enumerate() {
                if !failures.contains(&format!("m{i}")) {
                    rig.aws.delete(&rig.aws.settings.work_queue_url, m).await;
                }
            }
        }
    }
    failed
}

async fn finalize_messages(rig: &Rig) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let got = rig.aws.receive_finalize(Duration::ZERO).await;
        if got.is_empty() {
            return all;
        }
        for m in got {
            all.push(serde_json::from_str(&m.body).unwrap());
            rig.aws
                .delete(&rig.aws.settings.finalize_queue_url, &m)
                .await;
        }
    }
}

#[tokio::test]
async fn a_request_created_through_the_api_travels_through_worker_slices_to_the_finalize_queue() {
    let rig = rig().await;
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
    assert_eq!(pump(&rig, false).await, 0);
    assert_finished_like_reference(rig.pipeline.requests.store.as_ref(), &accepted.request_id)
        .await;
    assert_eq!(
        finalize_messages(&rig).await,
        vec![json!({"kind": "finalize", "request_id": accepted.request_id})]
    );
    // The conversation is stored as append-only items beside the state.
    let keys = rig.aws.sort_keys(&accepted.request_id).await;
    assert_eq!(keys.iter().filter(|k| k.starts_with("MSG#")).count(), 9);
    assert_eq!(keys.iter().filter(|k| k.starts_with("CALL#")).count(), 4);
}

#[tokio::test]
async fn every_message_delivered_twice_and_out_of_order_changes_nothing() {
    let rig = rig().await;
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
    assert_eq!(pump(&rig, true).await, 0);
    assert_finished_like_reference(rig.pipeline.requests.store.as_ref(), &accepted.request_id)
        .await;
    assert_eq!(finalize_messages(&rig).await.len(), 1);
}

#[tokio::test]
async fn a_worker_dying_at_any_write_ends_with_the_same_conversation_and_cost() {
    // The clean run's number of writes, then a death at each of them, before and after the write.
    let mut counting = None;
    let clean = rig_with(|inner| {
        let c = Arc::new(FaultyStore::new(inner, usize::MAX, Strike::BeforeWrite));
        counting = Some(c.clone());
        c
    })
    .await;
    clean
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
    pump(&clean, false).await;
    let writes = counting.unwrap().commits();
    assert!(writes >= 10, "{writes}");
    for strike in [Strike::BeforeWrite, Strike::AfterWrite] {
        for at in 1..=writes {
            let mut faulty = None;
            let rig = rig_with(|inner| {
                let f = Arc::new(FaultyStore::new(inner, at, strike));
                faulty = Some(f.clone());
                f
            })
            .await;
            let faulty = faulty.unwrap();
            let accepted = rig
                .pipeline
                .requests
                .create(new_request(None))
                .await
                .unwrap();
            for _ in 0..10 {
                pump(&rig, false).await;
                if !faulty.struck() {
                    break;
                }
                // A new process; the message it died on comes back, or the sweeper re-drives.
                faulty.revive();
                tokio::time::sleep(Duration::from_millis(5)).await;
                rig.pipeline.sweep().await;
                if rig
                    .pipeline
                    .requests
                    .store
                    .load(&accepted.request_id)
                    .await
                    .unwrap()
                    .unwrap()
                    .phase
                    == Phase::Finalizing
                {
                    break;
                }
            }
            assert!(faulty.struck(), "{strike:?} {at}: the fault never struck");
            assert_finished_like_reference(
                rig.pipeline.requests.store.as_ref(),
                &accepted.request_id,
            )
            .await;
            assert!(
                !finalize_messages(&rig).await.is_empty(),
                "{strike:?} at write {at}: never reached the finalizer"
            );
        }
    }
}

#[tokio::test]
async fn a_malformed_message_fails_only_its_own_record_and_is_parked_with_its_reason() {
    let rig = rig().await;
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
    let good = rig.aws.receive_work(Duration::ZERO).await;
    let poison = [
        Received {
            body: "{oops".into(),
            receipt_handle: String::new(),
            receive_count: 1,
        },
        Received {
            body: json!({"kind": "continue", "request_id": "req_other", "seq": "x"}).to_string(),
            receipt_handle: String::new(),
            receive_count: 1,
        },
    ];
    let mixed: Vec<Received> = poison.iter().cloned().chain(good.iter().cloned()).collect();
    let response = worker::handle_batch(
        &rig.pipeline,
        batch(&mixed),
        &lambda_runtime::Context::default(),
    )
    .await;
    assert!(
        response.batch_item_failures.is_empty(),
        "poison is parked, not retried"
    );
    // The good record ran its slice.
    let rec = rig
        .pipeline
        .requests
        .store
        .load(&accepted.request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rec.seq, rec.agent.iteration), (1, 1));
    let dead: Vec<Value> = rig
        .aws
        .work_dlq_bodies()
        .await
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(dead.len(), 2);
    // The poison messages are parked concurrently: a standard queue keeps no order.
    let (not_json, bad_seq) = if dead[0]["body"] == "{oops" {
        (&dead[0], &dead[1])
    } else {
        (&dead[1], &dead[0])
    };
    assert_eq!(not_json["body"], "{oops");
    assert!(not_json["reason"].as_str().unwrap().contains("not JSON"));
    assert!(
        bad_seq["reason"].as_str().unwrap().contains("seq"),
        "{}",
        bad_seq
    );
}

#[tokio::test]
async fn a_malformed_message_naming_a_request_marks_that_request_failed() {
    let rig = rig().await;
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
    let body =
        json!({"kind": "continue", "request_id": accepted.request_id, "seq": "not a number"})
            .to_string();
    let r = Received {
        body,
        receipt_handle: String::new(),
        receive_count: 1,
    };
    worker::handle_batch(
        &rig.pipeline,
        batch(&[r]),
        &lambda_runtime::Context::default(),
    )
    .await;
    let rec = rig
        .pipeline
        .requests
        .store
        .load(&accepted.request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.phase, Phase::Failed);
    let failure = rec.failure.unwrap();
    assert_eq!(failure.step, "queue");
    assert!(failure.reason.contains("malformed"), "{}", failure.reason);
}

#[tokio::test]
async fn a_job_published_in_the_original_shape_runs_and_twice_is_still_one_request() {
    let rig = rig().await;
    let job = json!({"id": "test-job-123", "data": {"mcp_key_id": "key_123", "tool_name": "execute_request",
        "request_params": {"description": "Create a simple API with a users endpoint"}, "user_id": "user_456", "project_id": "proj_789"}});
    for _ in 0..2 {
        rig.aws
            .clients
            .sqs
            .send_message()
            .queue_url(&rig.aws.settings.work_queue_url)
            .message_body(job.to_string())
            .send()
            .await
            .unwrap();
    }
    // The two copies may run at once: the loser of a concurrent write is retried (SQS
    // redelivers it after the visibility timeout) and then finds the request already there.
    let mut failed = pump(&rig, false).await;
    for _ in 0..3 {
        if failed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        failed = pump(&rig, false).await;
    }
    assert_eq!(failed, 0);
    let requests = rig
        .pipeline
        .requests
        .store
        .list_for_owner(&UserId::parse("user_456").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(requests.len(), 1);
    assert_finished_like_reference(rig.pipeline.requests.store.as_ref(), &requests[0].id).await;
    assert_eq!(finalize_messages(&rig).await.len(), 1);
}

#[tokio::test]
async fn the_scheduled_sweep_redrives_a_lost_continuation() {
    let rig = rig().await;
    let accepted = rig
        .pipeline
        .requests
        .create(new_request(None))
        .await
        .unwrap();
    for m in rig.aws.receive_work(Duration::ZERO).await {
        rig.aws.delete(&rig.aws.settings.work_queue_url, &m).await; // lost
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let event = lambda_runtime::LambdaEvent::new(
        json!({"sweep": true}),
        lambda_runtime::Context::default(),
    );
    let report = worker::handle(&rig.pipeline, event).await.unwrap();
    assert_eq!(report["redriven_work"], json!([accepted.request_id]));
    pump(&rig, false).await;
    assert_finished_like_reference(rig.pipeline.requests.store.as_ref(), &accepted.request_id)
        .await;
}

#[tokio::test]
async fn concurrent_slots_are_counted_atomically_in_dynamodb() {
    let rig = rig().await;
    let store = rig.pipeline.requests.store.clone();
    let owner = UserId::parse("user_slots").unwrap();
    let tries = (0..8).map(|_| {
        let store = store.clone();
        let owner = owner.clone();
        async move { store.acquire_slot(&owner, 3).await.unwrap() }
    });
    let taken = futures::future::join_all(tries)
        .await
        .into_iter()
        .filter(|t| *t)
        .count();
    assert_eq!(taken, 3);
    store.release_slot(&owner).await.unwrap();
    assert!(store.acquire_slot(&owner, 3).await.unwrap());
    assert!(!store.acquire_slot(&owner, 3).await.unwrap());
    // Never below zero.
    for _ in 0..5 {
        store.release_slot(&owner).await.unwrap();
    }
    let again = futures::future::join_all((0..5).map(|_| store.acquire_slot(&owner, 3))).await;
    assert_eq!(
        again.into_iter().filter(|t| *t.as_ref().unwrap()).count(),
        3
    );
}

#[tokio::test]
async fn a_slot_is_given_back_in_the_same_transaction_as_its_record() {
    let rig = rig().await;
    let store = rig.pipeline.requests.store.clone();
    // Stored directly, not through admission: the test takes the slots itself.
    let new = new_request(None);
    let (rec, first) = tb_pipeline::RequestRecord::new(
        tb_core::domain::RequestId::generate(),
        new.owner,
        tb_core::domain::ProjectId::generate(),
        new.description,
        tb_core::clock::now_ms(),
    );
    store.create(&rec, &first).await.unwrap();
    let mut rec = store.load(&rec.id).await.unwrap().unwrap();
    // This request's slot and another one's.
    assert!(store.acquire_slot(&rec.owner, 2).await.unwrap());
    assert!(store.acquire_slot(&rec.owner, 2).await.unwrap());
    let v = rec.version;
    rec.version += 1;
    rec.phase = Phase::Succeeded;
    store.commit_releasing_slot(&rec, v).await.unwrap();
    // Again from the version it was read at: a conflict, and nothing given back.
    let err = store.commit_releasing_slot(&rec, v).await.unwrap_err();
    assert!(
        matches!(err, tb_core::ports::PortError::Conflict(_)),
        "{err}"
    );
    assert!(
        store.acquire_slot(&rec.owner, 2).await.unwrap(),
        "one came back"
    );
    assert!(
        !store.acquire_slot(&rec.owner, 2).await.unwrap(),
        "only one"
    );
    // With the counter at zero the record is still written, and the counter stays at zero.
    for _ in 0..2 {
        store.release_slot(&rec.owner).await.unwrap();
    }
    let v = rec.version;
    rec.version += 1;
    rec.activity.push("written with the counter at zero".into());
    store.commit_releasing_slot(&rec, v).await.unwrap();
    assert_eq!(
        store.load(&rec.id).await.unwrap().unwrap().version,
        rec.version
    );
    assert!(store.acquire_slot(&rec.owner, 1).await.unwrap());
    assert!(!store.acquire_slot(&rec.owner, 1).await.unwrap());
}
