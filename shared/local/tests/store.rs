//! The `StateStore` contract on SQLite: the semantics of `tb_pipeline::memory::MemoryStore`,
//! plus what only a file can show (reopening it).

use std::path::Path;
use std::sync::Arc;

use tb_core::domain::{Description, Phase, ProjectId, RequestId, UserId};
use tb_core::model::StopReason;
use tb_core::ports::PortError;
use tb_core::{Block, Message, MicroUsd, ModelCall, TokenUsage};
use tb_local::SqliteStore;
use tb_pipeline::{Appended, Created, RequestRecord, StateStore};

fn new_record(id: &str, owner: &str, created_at_ms: u64) -> (RequestRecord, Message) {
    RequestRecord::new(
        RequestId::parse(id).unwrap(),
        UserId::parse(owner).unwrap(),
        ProjectId::parse("proj_1").unwrap(),
        Description::parse("Create a simple API with a users endpoint").unwrap(),
        created_at_ms,
    )
}

fn message(text: &str) -> Message {
    Message::assistant(vec![Block::Text { text: text.into() }])
}

fn call(iteration: u32) -> ModelCall {
    ModelCall {
        iteration,
        model: "scripted".into(),
        usage: TokenUsage {
            input: 100,
            output: 10,
            cache_write: 0,
            cache_read: 0,
        },
        cost: MicroUsd::from_micros(1_000 + i64::from(iteration)),
        latency_ms: 5,
        stop_reason: StopReason::ToolUse,
    }
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).await.expect("open the store")
}

/// Writes the next version of `rec` with one iteration's worth of items appended.
async fn append_iteration(store: &SqliteStore, rec: &mut RequestRecord, texts: &[&str]) {
    let messages: Vec<Message> = texts.iter().map(|t| message(t)).collect();
    let first_index = rec.agent.messages;
    rec.agent.iteration += 1;
    let calls = vec![call(rec.agent.iteration)];
    rec.agent.messages += messages.len();
    rec.agent.calls += 1;
    let appended = Appended {
        first_index,
        messages: &messages,
        calls: &calls,
    };
    tb_pipeline::ports::save_next(store, rec, appended)
        .await
        .expect("commit");
}

async fn count(store: &SqliteStore, table: &str, id: &RequestId) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE request_id = ?");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(id.as_str())
        .fetch_one(store.db().pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn creating_a_request_twice_returns_the_stored_one_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("db.sqlite")).await;
    let (mut rec, first) = new_record("req_1", "user_1", 1_000);
    assert_eq!(store.create(&rec, &first).await.unwrap(), Created::New);
    append_iteration(&store, &mut rec, &["one"]).await;

    let (mut retry, other_first) = new_record("req_1", "user_2", 2_000);
    retry.phase = Phase::Cancelled;
    let Created::Existing(existing) = store.create(&retry, &other_first).await.unwrap() else {
        panic!("a second create must find the first");
    };
    assert_eq!(*existing, rec, "the stored record, at its current version");
    let (messages, calls) = store.conversation(&rec).await.unwrap();
    assert_eq!(messages, vec![first, message("one")]);
    assert_eq!(calls, vec![call(1)]);
    assert_eq!(store.load(&rec.id).await.unwrap().unwrap(), rec);
}

#[tokio::test]
async fn a_commit_at_a_stale_version_is_a_conflict_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("db.sqlite")).await;
    let (mut rec, first) = new_record("req_1", "user_1", 1_000);
    store.create(&rec, &first).await.unwrap();
    let stale = rec.clone();
    append_iteration(&store, &mut rec, &["one"]).await;
    assert_eq!(rec.version, 1);

    // A writer that read version 0 tries to write its own version 1.
    let mut loser = stale.clone();
    loser.version = 1;
    loser.phase = Phase::Failed;
    loser.agent.messages = 3;
    loser.agent.calls = 1;
    let messages = [message("lost a"), message("lost b")];
    let calls = [call(2)];
    let appended = Appended {
        first_index: 1,
        messages: &messages,
        calls: &calls,
    };
    let err = store.commit(&loser, 0, appended).await.unwrap_err();
    assert!(matches!(err, PortError::Conflict(_)), "{err:?}");

    // The same without items (a claim, say): nothing else could stop it but the version.
    let mut claim = stale.clone();
    claim.version = 1;
    claim.phase = Phase::Running;
    claim.seq = 7;
    let err = store
        .commit(&claim, 0, Appended::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Conflict(_)), "{err:?}");

    assert_eq!(store.load(&rec.id).await.unwrap().unwrap(), rec);
    assert_eq!(count(&store, "messages", &rec.id).await, 2);
    assert_eq!(count(&store, "calls", &rec.id).await, 1);
    assert_eq!(
        store.active().await.unwrap().len(),
        1,
        "still active: the failed phase was not written"
    );
}

#[tokio::test]
async fn appended_items_keep_their_order_and_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("db.sqlite")).await;
    let (mut rec, first) = new_record("req_1", "user_1", 1_000);
    store.create(&rec, &first).await.unwrap();
    // Enough items that text ordering of their indices ("10" < "2") would show.
    let texts: Vec<String> = (1..=12).map(|i| format!("m{i}")).collect();
    for pair in texts.chunks(2) {
        let pair: Vec<&str> = pair.iter().map(String::as_str).collect();
        append_iteration(&store, &mut rec, &pair).await;
    }
    let (messages, calls) = store.conversation(&rec).await.unwrap();
    let expected: Vec<Message> = std::iter::once(first.clone())
        .chain(texts.iter().map(|t| message(t)))
        .collect();
    assert_eq!(messages, expected);
    assert_eq!(calls, (1..=6).map(call).collect::<Vec<_>>());

    // A commit at the right version whose message index exists already: refused whole.
    let mut next = rec.clone();
    next.version += 1;
    next.agent.messages += 1;
    let clash = [message("overwrite m5")];
    let appended = Appended {
        first_index: 5,
        messages: &clash,
        calls: &[],
    };
    let err = store
        .commit(&next, rec.version, appended)
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Conflict(_)), "{err:?}");
    // The same with a call whose iteration exists, after a fresh message.
    let fresh = [message("fresh")];
    let old_call = [ModelCall {
        cost: MicroUsd::from_micros(999_999),
        ..call(3)
    }];
    let appended = Appended {
        first_index: 13,
        messages: &fresh,
        calls: &old_call,
    };
    let err = store
        .commit(&next, rec.version, appended)
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Conflict(_)), "{err:?}");

    assert_eq!(store.load(&rec.id).await.unwrap().unwrap(), rec);
    assert_eq!(
        store.conversation(&rec).await.unwrap(),
        (expected.clone(), (1..=6).map(call).collect())
    );
    assert_eq!(
        count(&store, "messages", &rec.id).await,
        13,
        "`fresh` was rolled back"
    );

    // A record read at an older version sees only the items it counts.
    let mut older = rec.clone();
    older.agent.messages = 3;
    older.agent.calls = 1;
    let (messages, calls) = store.conversation(&older).await.unwrap();
    assert_eq!(messages, expected[..3]);
    assert_eq!(calls, vec![call(1)]);
}

#[tokio::test]
async fn active_skips_finished_requests_and_an_owners_list_is_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("db.sqlite")).await;
    for (id, owner, at) in [
        ("req_a", "user_1", 1_000),
        ("req_b", "user_1", 3_000),
        ("req_c", "user_1", 2_000),
        ("req_d", "user_2", 4_000),
    ] {
        let (rec, first) = new_record(id, owner, at);
        store.create(&rec, &first).await.unwrap();
    }
    let mut done = store
        .load(&RequestId::parse("req_c").unwrap())
        .await
        .unwrap()
        .unwrap();
    done.phase = Phase::Succeeded;
    tb_pipeline::ports::save_next(&store, &mut done, Appended::default())
        .await
        .unwrap();

    let mut active: Vec<String> = store
        .active()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect();
    active.sort();
    assert_eq!(active, ["req_a", "req_b", "req_d"]);

    let ids = |v: Vec<RequestRecord>| v.into_iter().map(|r| r.id.to_string()).collect::<Vec<_>>();
    let user_1 = UserId::parse("user_1").unwrap();
    assert_eq!(
        ids(store.list_for_owner(&user_1, 10).await.unwrap()),
        ["req_b", "req_c", "req_a"]
    );
    assert_eq!(
        ids(store.list_for_owner(&user_1, 2).await.unwrap()),
        ["req_b", "req_c"]
    );
    assert_eq!(
        ids(store
            .list_for_owner(&UserId::parse("user_3").unwrap(), 10)
            .await
            .unwrap()),
        Vec::<String>::new()
    );
    let all = store.list_for_owner(&user_1, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[1], done, "listed records are the stored ones");
}

#[tokio::test]
async fn an_owners_running_requests_are_newest_first_and_finished_ones_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("db.sqlite")).await;
    let mut requests = vec![
        ("req_a", "user_1", 1_000, Phase::Queued),
        ("req_b", "user_1", 3_000, Phase::Running),
        ("req_c", "user_1", 2_000, Phase::Succeeded),
        ("req_d", "user_2", 4_000, Phase::Finalizing),
    ];
    // Newer than all of them, and finished.
    let finished: Vec<String> = (0..5).map(|i| format!("req_done{i}")).collect();
    for (i, id) in finished.iter().enumerate() {
        requests.push((id.as_str(), "user_1", 5_000 + i as u64, Phase::Failed));
    }
    for (id, owner, at, phase) in requests {
        let (mut rec, first) = new_record(id, owner, at);
        store.create(&rec, &first).await.unwrap();
        if phase != Phase::Queued {
            rec.phase = phase;
            tb_pipeline::ports::save_next(&store, &mut rec, Appended::default())
                .await
                .unwrap();
        }
    }
    let running = |owner: &str, limit: usize| {
        let store = &store;
        let owner = UserId::parse(owner).unwrap();
        async move {
            store
                .running_for_owner(&owner, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(running("user_1", 10).await, ["req_b", "req_a"]);
    assert_eq!(running("user_1", 1).await, ["req_b"]);
    // The five newest are finished: the running ones are found all the same.
    assert_eq!(running("user_1", 2).await, ["req_b", "req_a"]);
    assert_eq!(running("user_2", 10).await, ["req_d"]);
    assert_eq!(running("user_3", 10).await, Vec::<String>::new());
    let listed = store
        .running_for_owner(&UserId::parse("user_1").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(
        listed[0].phase,
        Phase::Running,
        "listed records are the stored ones"
    );
}

#[tokio::test]
async fn a_request_that_does_not_exist_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("db.sqlite")).await;
    let (rec, _) = new_record("req_missing", "user_1", 1_000);
    assert_eq!(store.load(&rec.id).await.unwrap(), None);
    assert!(matches!(
        store.conversation(&rec).await,
        Err(PortError::NotFound(_))
    ));
    assert!(matches!(
        store.commit(&rec, 0, Appended::default()).await,
        Err(PortError::NotFound(_))
    ));
}

#[tokio::test]
async fn concurrent_commits_at_the_same_version_let_exactly_one_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("db.sqlite")).await);
    let (rec, first) = new_record("req_1", "user_1", 1_000);
    store.create(&rec, &first).await.unwrap();
    let mut writers = Vec::new();
    for i in 0..8u32 {
        let store = store.clone();
        let mut mine = rec.clone();
        writers.push(tokio::spawn(async move {
            mine.version = 1;
            mine.agent.messages = 2;
            mine.agent.calls = 1;
            let messages = [message(&format!("writer {i}"))];
            let calls = [call(1)];
            let appended = Appended {
                first_index: 1,
                messages: &messages,
                calls: &calls,
            };
            store.commit(&mine, 0, appended).await
        }));
    }
    let mut won = 0;
    for w in writers {
        match w.await.unwrap() {
            Ok(()) => won += 1,
            Err(PortError::Conflict(_)) => {}
            Err(e) => panic!("a losing writer must see a conflict, not {e:?}"),
        }
    }
    assert_eq!(won, 1);
    let stored = store.load(&rec.id).await.unwrap().unwrap();
    let (messages, calls) = store.conversation(&stored).await.unwrap();
    assert_eq!((messages.len(), calls.len()), (2, 1));
}

#[tokio::test]
async fn everything_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("data").join("db.sqlite");
    let (mut rec, first) = new_record("req_1", "user_1", 1_000);
    {
        let store = open(&path).await;
        store.create(&rec, &first).await.unwrap();
        append_iteration(&store, &mut rec, &["one", "two"]).await;
        append_iteration(&store, &mut rec, &["three"]).await;
        store.db().close().await;
    }
    assert!(path.is_file(), "the parent directories were created");
    let store = open(&path).await;
    assert_eq!(store.load(&rec.id).await.unwrap().unwrap(), rec);
    let (messages, calls) = store.conversation(&rec).await.unwrap();
    assert_eq!(
        messages,
        vec![first, message("one"), message("two"), message("three")]
    );
    assert_eq!(calls, vec![call(1), call(2)]);
    assert_eq!(store.active().await.unwrap(), vec![rec.clone()]);

    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.db().pool())
        .await
        .unwrap();
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.db().pool())
        .await
        .unwrap();
    assert_eq!(
        (mode.as_str(), synchronous),
        ("wal", 2),
        "WAL with synchronous=FULL"
    );
}

#[tokio::test]
async fn a_slot_is_given_back_with_its_record_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("state.db")).await;
    let (mut rec, first) = new_record("req_slot", "user_slot", 1);
    let owner = rec.owner.clone();
    store.create(&rec, &first).await.unwrap();
    // This request's slot and another one's.
    assert!(store.acquire_slot(&owner, 2).await.unwrap());
    assert!(store.acquire_slot(&owner, 2).await.unwrap());
    let v = rec.version;
    rec.version += 1;
    rec.phase = Phase::Succeeded;
    store.commit_releasing_slot(&rec, v).await.unwrap();
    // A second attempt from the version it was read at is a conflict and gives back nothing.
    let err = store.commit_releasing_slot(&rec, v).await.unwrap_err();
    assert!(matches!(err, PortError::Conflict(_)), "{err}");
    assert_eq!(
        store.load(&rec.id).await.unwrap().unwrap().phase,
        Phase::Succeeded
    );
    assert!(
        store.acquire_slot(&owner, 2).await.unwrap(),
        "one came back"
    );
    assert!(!store.acquire_slot(&owner, 2).await.unwrap(), "only one");
}
