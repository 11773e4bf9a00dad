//! What the front door's and the sweeper's reads cost does not grow with the table.
//!
//! One user with a running request and a finished one in the same project, other users with
//! requests running, then the table filled with finished requests (the user's own in other
//! projects, and other users'), first to 100 requests and then to 10,000. The items DynamoDB
//! reads (its `ScannedCount`, one per `GetItem`, as counted by the store) for each operation
//! must be the same at both sizes. Each operation is the store calls the front door and the
//! sweeper make for it:
//!
//! - admission (`tb_pipeline::Requests::create` with a project and an idempotency key): the
//!   load of the derived request id, the owner's running requests (the spending check) and
//!   the project's newest request (owning a project whose record is not written yet);
//! - `list_projects` (`tb_frontdoor::views::list_projects`): the owner's running requests;
//! - `get_project` (`tb_frontdoor::views::project`): the project's newest requests;
//! - a sweep tick (`tb_pipeline::Worker::sweep`): the requests not finished.

mod common;

use std::time::Instant;

use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use common::{call, new_request, step, turn};
use tb_aws::testing::TestAws;
use tb_aws::{DynamoStore, ReadStats, layout};
use tb_core::domain::{Phase, ProjectId, RequestId, UserId};
use tb_pipeline::{Appended, RequestRecord, StateStore};

/// What the front door lists at most (`tb_pipeline::admission::ACTIVE_SCAN`).
const ACTIVE_SCAN: usize = 1000;
/// Requests `get_project` shows (`tb_frontdoor::views::PROJECT_REQUESTS_SHOWN`).
const PROJECT_REQUESTS_SHOWN: usize = 5;

struct Scene {
    user: UserId,
    project: ProjectId,
    running: RequestRecord,
    /// Requests not finished, of every user.
    live: usize,
}

/// What each operation read.
#[derive(Debug, PartialEq, Eq)]
struct Costs {
    admission: ReadStats,
    list_projects: ReadStats,
    get_project: ReadStats,
    sweep: ReadStats,
}

async fn measure<F, Fut>(store: &DynamoStore, op: F) -> ReadStats
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = store.read_stats();
    op().await;
    store.read_stats() - before
}

async fn costs(store: &DynamoStore, scene: &Scene) -> Costs {
    let admission = measure(store, || async {
        let retry = RequestId::parse("req_idempotent_retry_absent").unwrap();
        assert_eq!(store.load(&retry).await.unwrap(), None);
        let running = store
            .running_for_owner(&scene.user, ACTIVE_SCAN)
            .await
            .unwrap();
        assert_eq!(running, vec![scene.running.clone()]);
        let newest = store
            .list_for_project(&scene.user, &scene.project, 1)
            .await
            .unwrap();
        assert_eq!(newest.len(), 1);
    })
    .await;
    let list_projects = measure(store, || async {
        let running = store
            .running_for_owner(&scene.user, ACTIVE_SCAN)
            .await
            .unwrap();
        assert_eq!(running.len(), 1);
    })
    .await;
    let get_project = measure(store, || async {
        let requests = store
            .list_for_project(&scene.user, &scene.project, PROJECT_REQUESTS_SHOWN)
            .await
            .unwrap();
        assert_eq!(requests[0].id, scene.running.id);
        assert!(requests.iter().all(|r| r.project == scene.project));
    })
    .await;
    let sweep = measure(store, || async {
        let active = store.active().await.unwrap();
        assert_eq!(active.len(), scene.live);
        assert!(active.iter().all(|r| !r.phase.is_terminal()));
    })
    .await;
    Costs {
        admission,
        list_projects,
        get_project,
        sweep,
    }
}

/// The user's requests and a few other users' running ones, through the store.
async fn scene(store: &DynamoStore) -> (Scene, usize) {
    let (mut running, first) = new_request("user_reader", 1_000_000);
    let user = running.owner.clone();
    let project = running.project.clone();
    // A finished request of the same project, made earlier.
    let (mut done, first_done) = new_request("user_reader", 900_000);
    done.project = project.clone();
    store.create(&done, &first_done).await.unwrap();
    let expected = done.version;
    done.version += 1;
    done.phase = Phase::Succeeded;
    store
        .commit(&done, expected, Appended::default())
        .await
        .unwrap();
    store.create(&running, &first).await.unwrap();
    step(store, &mut running, &turn(1, 100), &[call(1)])
        .await
        .unwrap();
    let mut live = 1;
    for i in 0..3 {
        let (other, first) = new_request(&format!("user_other{i}"), 1_000_000 + i);
        store.create(&other, &first).await.unwrap();
        live += 1;
    }
    (
        Scene {
            user,
            project,
            running,
            live,
        },
        5,
    )
}

/// A finished request's `STATE` item as the store writes it (see `tb_aws::layout`).
fn finished_state_item(
    owner: &str,
    project: Option<&ProjectId>,
    created_at_ms: u64,
) -> layout::Item {
    let (mut record, _) = new_request(owner, created_at_ms);
    if let Some(p) = project {
        record.project = p.clone();
    }
    record.phase = Phase::Succeeded;
    record.version = 3;
    layout::Item::from([
        (layout::PK.into(), layout::s(layout::request_pk(&record.id))),
        (layout::SK.into(), layout::s(layout::STATE_SK)),
        (
            layout::BODY.into(),
            layout::s(serde_json::to_string(&record).unwrap()),
        ),
        (layout::VERSION.into(), layout::n(record.version)),
        (
            layout::PHASE.into(),
            layout::s(layout::phase_name(record.phase)),
        ),
        (layout::OWNER.into(), layout::s(owner)),
        (layout::PROJECT.into(), layout::s(record.project.as_str())),
        (layout::CREATED_AT_MS.into(), layout::n(created_at_ms)),
        (
            layout::UPDATED_AT_MS.into(),
            layout::n(created_at_ms + 60_000),
        ),
        (
            layout::TTL.into(),
            layout::n(layout::expiry_secs(created_at_ms + 60_000)),
        ),
    ])
}

/// Adds `count` finished requests straight into the table with BatchWriteItem: a third the
/// user's own in other projects, a few in the user's project (older than the ones the scene
/// made), the rest other users'.
async fn fill(aws: &TestAws, scene: &Scene, from: usize, count: usize) {
    let items: Vec<layout::Item> = (from..from + count)
        .map(|i| {
            let created = 1 + i as u64;
            match i % 30 {
                0 => finished_state_item(scene.user.as_str(), Some(&scene.project), created),
                1..=9 => finished_state_item(scene.user.as_str(), None, created),
                _ => finished_state_item(&format!("user_filler{}", i % 97), None, created),
            }
        })
        .collect();
    let mut batches = tokio::task::JoinSet::new();
    // DynamoDB takes at most 25 puts per BatchWriteItem.
    for chunk in items.chunks(25) {
        let writes: Vec<WriteRequest> = chunk
            .iter()
            .map(|item| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        let dynamo = aws.clients.dynamo.clone();
        let table = aws.settings.table.clone();
        batches.spawn(async move {
            let out = dynamo
                .batch_write_item()
                .request_items(table, writes)
                .send()
                .await
                .expect("writing a batch");
            assert!(
                out.unprocessed_items.unwrap_or_default().is_empty(),
                "moto left items unprocessed"
            );
        });
        if batches.len() >= 8 {
            batches.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = batches.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn reads_per_operation_are_the_same_with_100_and_with_10000_requests_in_the_table() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (scene, made) = scene(&store).await;

    fill(&aws, &scene, 0, 100 - made).await;
    let small = costs(&store, &scene).await;

    let started = Instant::now();
    fill(&aws, &scene, 100 - made, 10_000 - 100).await;
    println!("wrote 9,900 requests in {:?}", started.elapsed());
    let large = costs(&store, &scene).await;

    println!("items read with 100 requests: {small:?}");
    println!("items read with 10,000 requests: {large:?}");
    assert_eq!(small, large, "reads grew with the table");
    // And they are what the operations need, not more: admission reads the absent retry, the
    // one running request and the project's newest; a sweep tick reads the live requests.
    assert_eq!(small.admission.items, 3);
    assert_eq!(small.list_projects.items, 1);
    assert_eq!(small.get_project.items, PROJECT_REQUESTS_SHOWN as u64);
    assert_eq!(small.sweep.items, scene.live as u64);
}
