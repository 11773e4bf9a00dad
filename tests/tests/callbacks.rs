//! Callbacks: a receiver on loopback gets exactly one signed summary per finished request,
//! also when the finalizer is delivered twice or dies between the final commit and the send.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use tb_core::agent::Outcome;
use tb_core::domain::{Description, Phase, ProjectId, RequestId, UserId};
use tb_core::ports::Notifier;
use tb_notify::{DELIVERY_HEADER, HttpNotifier, SIGNATURE_HEADER, sign};
use tb_pipeline::memory::MemoryStore;
use tb_pipeline::{Appended, Finalizer, FinalizerSettings, RequestRecord, StateStore};
use tb_tests::faults::{FaultyStore, Strike};

const SECRET: &str = "receiver-shared-secret";

/// Records what arrives, after checking the signature like a receiver should.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

async fn start_receiver() -> (String, Receiver) {
    let r = Receiver::default();
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let sig = headers[SIGNATURE_HEADER].to_str().unwrap().to_string();
                let (t, v1) = sig.split_once(',').unwrap();
                let t: u64 = t.trim_start_matches("t=").parse().unwrap();
                let body = String::from_utf8(body.to_vec()).unwrap();
                assert_eq!(
                    v1.trim_start_matches("v1="),
                    sign(SECRET.as_bytes(), t, &body),
                    "bad signature"
                );
                let delivery = headers[DELIVERY_HEADER].to_str().unwrap().to_string();
                state
                    .got
                    .lock()
                    .unwrap()
                    .push((delivery, serde_json::from_str(&body).unwrap()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, r)
}

/// A request whose agent ran out of budget, waiting for the finalizer (which then archives
/// nothing, releases nothing and reports the failure).
async fn finalizing_request(store: &dyn StateStore, callback: &str) -> RequestId {
    let (mut rec, first) = RequestRecord::new(
        RequestId::generate(),
        UserId::parse("user_cb").unwrap(),
        ProjectId::generate(),
        Description::parse("Create a simple API with a users endpoint").unwrap(),
        tb_core::clock::now_ms(),
    );
    rec.callback_url = Some(callback.to_string());
    // It holds its owner's only slot, which the finalizer must give back.
    assert!(store.acquire_slot(&rec.owner, 1).await.unwrap());
    rec.holds_slot = true;
    store.create(&rec, &first).await.unwrap();
    let v = rec.version;
    rec.version += 1;
    rec.phase = Phase::Finalizing;
    rec.agent.outcome = Some(Outcome::BudgetExhausted {
        spent: tb_core::MicroUsd::from_micros(5),
        budget: tb_core::MicroUsd::from_micros(5),
    });
    store.commit(&rec, v, Appended::default()).await.unwrap();
    rec.id
}

fn finalizer(store: Arc<dyn StateStore>, dir: &std::path::Path) -> Finalizer {
    Finalizer {
        store,
        sandboxes: Arc::new(tb_sandbox::LocalSandboxProvider::new(
            tb_sandbox::LocalSandboxConfig::new(dir.join("sandboxes")),
        )),
        archive: Arc::new(tb_local::DirArchive::new(dir.join("archive"))),
        code_host: Arc::new(tb_codehost::LocalGitCodeHost::new(dir.join("git")).unwrap()),
        databases: None,
        deployer: Arc::new(tb_deploy::LocalDeployer::new(tb_deploy::LocalConfig::new(
            dir.join("deploy"),
        ))),
        records: Arc::new(tb_frontdoor::memory::MemoryRecords::default()),
        notifier: Some(Arc::new(
            HttpNotifier::new(SECRET, true).with_retries(3, Duration::from_millis(5)),
        ) as Arc<dyn Notifier>),
        prober: Arc::new(tb_notify::HttpProber::new(true)),
        receipt_key: Some(tb_pipeline::receipt::SigningKey::new(SECRET)),
        queue: Arc::new(tb_pipeline::memory::MemoryQueue::default()),
        settings: FinalizerSettings {
            base_delay: Duration::from_millis(1),
            ..FinalizerSettings::standard()
        },
    }
}

fn message(id: &RequestId) -> String {
    json!({"kind": "finalize", "request_id": id}).to_string()
}

#[tokio::test]
async fn a_finished_request_sends_one_signed_callback_even_when_finalized_twice() {
    let (url, receiver) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let id = finalizing_request(store.as_ref(), &url).await;
    let f = finalizer(store.clone(), dir.path());
    f.handle(&message(&id), "w1").await.unwrap();
    f.handle(&message(&id), "w2").await.unwrap(); // a duplicate delivery
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, format!("{id}-final"));
    assert_eq!(got[0].1["phase"], "failed");
    assert_eq!(got[0].1["request_id"], id.as_str());
    assert!(
        got[0].1["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("budget")
    );
    let rec = store.load(&id).await.unwrap().unwrap();
    assert_eq!(rec.steps.get("notify").unwrap()["delivered"], true);
    assert!(!rec.holds_slot);
    let owner = UserId::parse("user_cb").unwrap();
    assert!(
        store.acquire_slot(&owner, 1).await.unwrap(),
        "the slot came back"
    );
    assert!(
        !store.acquire_slot(&owner, 1).await.unwrap(),
        "and only one"
    );
}

#[tokio::test]
async fn a_finalizer_that_dies_after_the_final_commit_still_sends_the_callback_once() {
    let (url, receiver) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let memory: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let id = finalizing_request(memory.as_ref(), &url).await;
    // Commits of the finalizer: claim, archive step, final; die right after the final one.
    let faulty = Arc::new(FaultyStore::new(memory.clone(), 3, Strike::AfterWrite));
    let f = finalizer(faulty.clone(), dir.path());
    assert!(f.handle(&message(&id), "w1").await.is_err());
    assert_eq!(
        memory.load(&id).await.unwrap().unwrap().phase,
        Phase::Failed,
        "the final commit landed"
    );
    assert!(
        receiver.got.lock().unwrap().is_empty(),
        "and the process died before sending"
    );
    faulty.revive();
    f.handle(&message(&id), "w2").await.unwrap();
    f.handle(&message(&id), "w3").await.unwrap();
    assert_eq!(receiver.got.lock().unwrap().len(), 1);
    // The slot came back once, on the redelivery.
    let owner = UserId::parse("user_cb").unwrap();
    assert!(memory.acquire_slot(&owner, 1).await.unwrap());
    assert!(!memory.acquire_slot(&owner, 1).await.unwrap());
}

#[tokio::test]
async fn callback_urls_to_private_addresses_are_refused_at_request_time_in_the_cloud() {
    let queue = Arc::new(tb_pipeline::memory::MemoryQueue::default());
    let mut requests = tb_tests::scenario::requests(Arc::new(MemoryStore::default()), queue);
    requests.allow_private_callbacks = false;
    for url in [
        "http://example.com/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/x",
    ] {
        let mut new = tb_tests::scenario::new_request(None);
        new.callback_url = Some(url.into());
        let err = requests.create(new).await.unwrap_err();
        assert!(
            matches!(err, tb_pipeline::Refusal::Invalid(_)),
            "{url}: {err}"
        );
    }
}

#[tokio::test]
async fn a_finalizer_that_dies_after_giving_back_the_slot_gives_it_back_once() {
    let (url, _receiver) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let memory: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
    let id = finalizing_request(memory.as_ref(), &url).await;
    let owner = UserId::parse("user_cb").unwrap();
    // Another request of the owner runs on and holds a second slot: a slot given back twice
    // would leave the counter below it (at zero a second give-back would not show).
    assert!(memory.acquire_slot(&owner, 2).await.unwrap());
    // Commits of the finalizer: claim, archive step, final; die at the one after it, when
    // the slot has been given back and that is being recorded.
    let faulty = Arc::new(FaultyStore::new(memory.clone(), 4, Strike::BeforeWrite));
    let f = finalizer(faulty.clone(), dir.path());
    let _ = f.handle(&message(&id), "w1").await;
    assert!(faulty.struck());
    faulty.revive();
    f.handle(&message(&id), "w2").await.unwrap();
    f.handle(&message(&id), "w3").await.unwrap();
    assert!(!memory.load(&id).await.unwrap().unwrap().holds_slot);
    // Exactly the other request's slot is taken: one more fits under 2, a second does not.
    assert!(memory.acquire_slot(&owner, 2).await.unwrap());
    assert!(
        !memory.acquire_slot(&owner, 2).await.unwrap(),
        "the slot was given back twice"
    );
}
