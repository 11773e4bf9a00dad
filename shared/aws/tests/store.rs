//! `DynamoStore` against moto: conditional creates and commits, ordered conversations,
//! spilled payloads, TTL and the sweeper's view.

mod common;

use common::{call, new_request, step, turn};
use tb_aws::layout;
use tb_aws::testing::TestAws;
use tb_core::domain::{Phase, UserId};
use tb_core::ports::PortError;
use tb_core::{Block, Message};
use tb_pipeline::{Appended, Created, StateStore};

#[tokio::test]
async fn creating_a_request_twice_returns_the_first_record() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (record, first) = new_request("user_a", 1_000);
    assert_eq!(store.create(&record, &first).await.unwrap(), Created::New);

    let mut retry = record.clone();
    retry.created_at_ms = 2_000;
    retry.description = tb_core::domain::Description::parse("something else").unwrap();
    match store
        .create(&retry, &Message::user_text("something else"))
        .await
        .unwrap()
    {
        Created::Existing(existing) => assert_eq!(*existing, record),
        Created::New => panic!("the second create must find the first"),
    }
    assert_eq!(store.load(&record.id).await.unwrap(), Some(record.clone()));
    let (messages, calls) = store.conversation(&record).await.unwrap();
    assert_eq!(messages, vec![first]);
    assert!(calls.is_empty());
}

#[tokio::test]
async fn a_commit_with_a_stale_version_is_a_conflict_and_writes_nothing() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    step(&store, &mut record, &turn(1, 10), &[call(1)])
        .await
        .unwrap();
    let keys_before = aws.sort_keys(&record.id).await;
    let bytes_before = store.bytes_written();

    // A writer that read version 0 and does not know about the commit above: it would
    // append a call the store does not have yet, and cancel the request.
    let mut stale = record.clone();
    stale.version = 1;
    stale.phase = Phase::Cancelled;
    let err = store
        .commit(
            &stale,
            0,
            Appended {
                first_index: 0,
                messages: &[],
                calls: &[call(2)],
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PortError::Conflict(m) if m.contains("no longer 0")),
        "{err:?}"
    );
    // The same writer appending the messages it thinks come next also fails.
    let mut stale = record.clone();
    stale.version = 0;
    stale.agent.messages = 1;
    stale.agent.calls = 0;
    let err = step(&store, &mut stale, &turn(1, 10), &[call(1)])
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Conflict(_)), "{err:?}");

    assert_eq!(
        aws.sort_keys(&record.id).await,
        keys_before,
        "no CALL#000000002 may appear"
    );
    assert_eq!(store.bytes_written(), bytes_before);
    assert_eq!(store.load(&record.id).await.unwrap(), Some(record));
}

#[tokio::test]
async fn commits_append_messages_and_calls_and_the_conversation_reads_them_in_order() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    let mut want_messages = vec![first];
    let mut want_calls = Vec::new();
    // Twelve iterations, so indices pass 10 (sort order must be numeric, not textual).
    for i in 1..=12u32 {
        let messages = turn(i as usize, 20 * i as usize);
        step(&store, &mut record, &messages, &[call(i)])
            .await
            .unwrap();
        want_messages.extend(messages);
        want_calls.push(call(i));
    }
    // A commit that appends nothing (a phase change) keeps the conversation as it is.
    let expected = record.version;
    record.version += 1;
    record.phase = Phase::Finalizing;
    store
        .commit(&record, expected, Appended::default())
        .await
        .unwrap();

    let loaded = store.load(&record.id).await.unwrap().unwrap();
    assert_eq!(loaded, record);
    let (messages, calls) = store.conversation(&loaded).await.unwrap();
    assert_eq!(messages.len(), 25);
    assert_eq!(messages, want_messages);
    assert_eq!(calls, want_calls);
    assert_eq!(
        aws.sort_keys(&record.id)
            .await
            .iter()
            .filter(|k| k.starts_with("MSG#"))
            .count(),
        25
    );
}

#[tokio::test]
async fn appending_an_index_that_already_exists_fails_the_whole_transaction() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    step(&store, &mut record, &turn(1, 10), &[call(1)])
        .await
        .unwrap();
    let keys_before = aws.sort_keys(&record.id).await;

    // Right version, but the messages claim indices 1 and 2 again (plus a new 3) and a new call.
    let expected = record.version;
    let mut next = record.clone();
    next.version += 1;
    next.agent.messages = 4;
    next.agent.calls = 2;
    let [a, b] = turn(2, 10);
    let messages = [a.clone(), b, a];
    let err = store
        .commit(
            &next,
            expected,
            Appended {
                first_index: 1,
                messages: &messages,
                calls: &[call(2)],
            },
        )
        .await
        .unwrap_err();
    match err {
        PortError::Conflict(why) => assert!(why.contains("MSG#000000001 already exists"), "{why}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        aws.sort_keys(&record.id).await,
        keys_before,
        "neither MSG#3 nor CALL#2 may appear"
    );
    assert_eq!(store.load(&record.id).await.unwrap(), Some(record));
}

#[tokio::test]
async fn a_200_kb_message_is_spilled_to_s3_and_loads_back_identical() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    let big = turn(1, 200_000);
    step(&store, &mut record, &big, &[call(1)]).await.unwrap();

    let item = aws.item(&record.id, &layout::message_sk(2)).await.unwrap();
    assert!(
        !item.contains_key(layout::BODY),
        "the item must not hold the body"
    );
    let key = item[layout::SPILL].as_s().unwrap().clone();
    assert!(
        key.starts_with(&format!("spill/{}/MSG#000000002-", record.id)),
        "{key}"
    );
    assert_eq!(
        aws.object_keys(&format!("spill/{}/", record.id)).await,
        vec![key]
    );
    assert!(layout::item_size(&item) < 1_000);
    // The small message of the same commit stays inline.
    assert!(
        aws.item(&record.id, &layout::message_sk(1))
            .await
            .unwrap()
            .contains_key(layout::BODY)
    );

    let (messages, _) = store.conversation(&record).await.unwrap();
    assert_eq!(messages[1..], big[..]);
    assert!(store.write_stats().spilled_bytes > 200_000);
}

#[tokio::test]
async fn a_state_item_above_its_threshold_is_spilled_and_loads_back() {
    let aws = TestAws::new().await;
    let store = aws.store().with_state_spill_threshold(2_000);
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    record.steps.other.insert(
        "snapshot".into(),
        serde_json::json!({ "files": "f".repeat(5_000) }),
    );
    step(&store, &mut record, &[], &[]).await.unwrap();

    let item = aws.item(&record.id, layout::STATE_SK).await.unwrap();
    assert!(item.contains_key(layout::SPILL) && !item.contains_key(layout::BODY));
    assert_eq!(
        item[layout::VERSION].as_n().unwrap(),
        "1",
        "conditions still see the version"
    );
    assert_eq!(store.load(&record.id).await.unwrap(), Some(record.clone()));
    assert_eq!(store.active().await.unwrap(), vec![record]);
}

#[tokio::test]
async fn a_terminal_phase_sets_ttl_and_removes_active() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    let item = aws.item(&record.id, layout::STATE_SK).await.unwrap();
    assert_eq!(item[layout::ACTIVE].as_s().unwrap(), "queued");
    // The key of the sparse index of requests not finished, and the other indexes' keys.
    assert_eq!(item[layout::ACTIVE_OWNER].as_s().unwrap(), "user_a");
    assert_eq!(
        item[layout::PROJECT].as_s().unwrap(),
        record.project.as_str()
    );
    assert!(!item.contains_key(layout::TTL));
    assert_eq!(item[layout::OWNER].as_s().unwrap(), "user_a");
    assert_eq!(item[layout::PHASE].as_s().unwrap(), "queued");

    let expected = record.version;
    record.version += 1;
    record.phase = Phase::Succeeded;
    record.updated_at_ms = 1_700_000_000_000;
    store
        .commit(&record, expected, Appended::default())
        .await
        .unwrap();

    let item = aws.item(&record.id, layout::STATE_SK).await.unwrap();
    assert!(!item.contains_key(layout::ACTIVE));
    assert!(!item.contains_key(layout::ACTIVE_OWNER));
    assert_eq!(
        item[layout::TTL].as_n().unwrap(),
        &(1_700_000_000 + 30 * 86_400).to_string()
    );
    assert_eq!(item[layout::PHASE].as_s().unwrap(), "succeeded");
}

#[tokio::test]
async fn active_returns_only_requests_that_are_not_terminal() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let mut live = Vec::new();
    for (i, phase) in [
        Phase::Queued,
        Phase::Running,
        Phase::Finalizing,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Cancelled,
    ]
    .into_iter()
    .enumerate()
    {
        let (mut record, first) = new_request("user_a", 1_000 + i as u64);
        store.create(&record, &first).await.unwrap();
        if phase != Phase::Queued {
            let expected = record.version;
            record.version += 1;
            record.phase = phase;
            store
                .commit(&record, expected, Appended::default())
                .await
                .unwrap();
        }
        if !phase.is_terminal() {
            live.push(record);
        }
    }
    let mut active = store.active().await.unwrap();
    active.sort_by_key(|r| r.created_at_ms);
    assert_eq!(active, live);
}

#[tokio::test]
async fn list_for_owner_returns_that_owners_requests_newest_first() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let mut mine = Vec::new();
    for (i, owner) in ["user_me", "user_other", "user_me", "user_me"]
        .into_iter()
        .enumerate()
    {
        let (mut record, first) = new_request(owner, 10_000 - 1_000 * i as u64);
        store.create(&record, &first).await.unwrap();
        // Give them conversations too: only STATE items may be listed.
        step(&store, &mut record, &turn(1, 10), &[call(1)])
            .await
            .unwrap();
        if owner == "user_me" {
            mine.push(record);
        }
    }
    let me = UserId::parse("user_me").unwrap();
    assert_eq!(store.list_for_owner(&me, 10).await.unwrap(), mine);
    assert_eq!(store.list_for_owner(&me, 2).await.unwrap(), mine[..2]);
    assert!(
        store
            .list_for_owner(&UserId::parse("user_nobody").unwrap(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_record_counting_more_items_than_are_stored_reads_as_not_yet_visible() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    step(&store, &mut record, &turn(1, 10), &[call(1)])
        .await
        .unwrap();

    let mut ahead = record.clone();
    ahead.agent.messages += 1;
    let err = store.conversation(&ahead).await.unwrap_err();
    assert!(
        matches!(&err, PortError::Transient(m) if m.contains("not yet visible")),
        "{err:?}"
    );
    // A record behind the items reads only what it counts.
    let mut behind = record.clone();
    behind.agent.messages = 2;
    behind.agent.calls = 0;
    let (messages, calls) = store.conversation(&behind).await.unwrap();
    assert_eq!(messages.len(), 2);
    assert!(calls.is_empty());
}

#[tokio::test]
async fn appended_messages_that_do_not_end_at_the_records_count_are_refused() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    let mut next = record.clone();
    next.version = 1;
    let messages = [Message::assistant(vec![Block::Text { text: "hi".into() }])];
    let err = store
        .commit(
            &next,
            0,
            Appended {
                first_index: 1,
                messages: &messages,
                calls: &[],
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    assert_eq!(store.load(&record.id).await.unwrap(), Some(record));
}

#[tokio::test]
async fn a_commit_of_more_than_100_items_is_refused_before_writing() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let (mut record, first) = new_request("user_a", 1_000);
    store.create(&record, &first).await.unwrap();
    let messages: Vec<Message> = (0..100)
        .map(|i| Message::user_text(format!("m{i}")))
        .collect();
    let err = step(&store, &mut record, &messages, &[]).await.unwrap_err();
    assert!(
        matches!(&err, PortError::Permanent(m) if m.contains("100 items per transaction")),
        "{err:?}"
    );
    assert_eq!(
        aws.sort_keys(&record.id).await,
        vec!["MSG#000000000", "STATE"]
    );
}

#[tokio::test]
async fn running_for_owner_and_list_for_project_read_the_indexes() {
    let aws = TestAws::new().await;
    let store = aws.store();
    let me = UserId::parse("user_me").unwrap();
    let (first_record, _) = new_request("user_me", 1);
    let project = first_record.project.clone();
    let mut running = Vec::new();
    let mut in_project = Vec::new();
    for (i, (owner, same_project, phase)) in [
        ("user_me", true, Phase::Succeeded),
        ("user_me", true, Phase::Running),
        ("user_me", false, Phase::Queued),
        ("user_other", false, Phase::Running),
        ("user_me", true, Phase::Queued),
        ("user_me", false, Phase::Failed),
    ]
    .into_iter()
    .enumerate()
    {
        let (mut record, first) = new_request(owner, 1_000 + i as u64);
        if same_project {
            record.project = project.clone();
        }
        store.create(&record, &first).await.unwrap();
        if phase != Phase::Queued {
            let expected = record.version;
            record.version += 1;
            record.phase = phase;
            store
                .commit(&record, expected, Appended::default())
                .await
                .unwrap();
        }
        if owner == "user_me" && !phase.is_terminal() {
            running.insert(0, record.clone());
        }
        if same_project {
            in_project.insert(0, record);
        }
    }
    assert_eq!(store.running_for_owner(&me, 10).await.unwrap(), running);
    assert_eq!(store.running_for_owner(&me, 2).await.unwrap(), running[..2]);
    assert_eq!(
        store.list_for_project(&me, &project, 10).await.unwrap(),
        in_project
    );
    assert_eq!(
        store.list_for_project(&me, &project, 1).await.unwrap(),
        in_project[..1]
    );
    // Someone else asking about the project sees none of it.
    let other = UserId::parse("user_other").unwrap();
    assert!(
        store
            .list_for_project(&other, &project, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
