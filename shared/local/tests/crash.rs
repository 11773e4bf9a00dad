//! A process killed in the middle of commits leaves the database consistent, and every
//! commit it reported as done is there.
//!
//! The test binary runs itself as the child: with `TB_LOCAL_COMMIT_LOOP_DB` set, the same
//! test function commits in a loop instead (large commits, two writers), printing each
//! committed version. The parent kills it with SIGKILL at a random moment, several times
//! over, then reopens the file and checks every request's invariants.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tb_core::domain::{Description, ProjectId, RequestId, UserId};
use tb_core::model::StopReason;
use tb_core::ports::PortError;
use tb_core::{Block, Message, MicroUsd, ModelCall, TokenUsage};
use tb_local::SqliteStore;
use tb_pipeline::{Appended, RequestRecord, StateStore};
use tokio::io::{AsyncBufReadExt, BufReader};

const CHILD_DB: &str = "TB_LOCAL_COMMIT_LOOP_DB";
const TEST_NAME: &str = "a_process_killed_mid_commit_leaves_the_database_consistent";
/// Requests the child commits to (one writer task each).
const REQUESTS: [&str; 2] = ["req_crash_a", "req_crash_b"];
/// Each commit appends this many messages (and one call).
const MESSAGES_PER_COMMIT: usize = 3;
const ROUNDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_commit_leaves_the_database_consistent() {
    if let Some(path) = std::env::var_os(CHILD_DB) {
        return commit_forever(Path::new(&path)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.sqlite");
    // The highest version the children reported committed, per request.
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DB, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it commit a few times, then kill it at a random point of a later commit.
        let mut seen = 0;
        let wait = tokio::time::timeout(Duration::from_secs(60), async {
            while seen < 4 {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the child exited early");
                if let Some((id, version)) = parse_committed(&line) {
                    seen += 1;
                    let top = reported.entry(id).or_default();
                    *top = (*top).max(version);
                }
            }
        })
        .await;
        assert!(wait.is_ok(), "round {round}: the child reported no commits");
        tokio::time::sleep(Duration::from_micros(rand::random_range(0..20_000))).await;
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert!(!status.success(), "the child was killed, not finished");
        // Commits it reported before it died.
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((id, version)) = parse_committed(&line) {
                let top = reported.entry(id).or_default();
                *top = (*top).max(version);
            }
        }
    }

    let store = SqliteStore::open(&db).await.unwrap();
    let pool = store.db().pool();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let mut total = 0;
    for id in REQUESTS {
        let rec = store
            .load(&RequestId::parse(id).unwrap())
            .await
            .unwrap()
            .expect("created by the first child");
        let v = rec.version as usize;
        total += v;
        let reported = reported.get(id).copied().unwrap_or(0);
        assert!(
            rec.version >= reported,
            "{id}: a reported commit was lost ({} < {reported})",
            rec.version
        );
        // Every commit appended exactly its items, and the header counts them.
        assert_eq!(rec.agent.calls, v, "{id}");
        assert_eq!(rec.agent.messages, 1 + MESSAGES_PER_COMMIT * v, "{id}");
        let (messages, calls): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM messages WHERE request_id = ?1),
                    (SELECT COUNT(*) FROM calls WHERE request_id = ?1)",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            (messages as usize, calls as usize),
            (rec.agent.messages, rec.agent.calls),
            "{id}: rows match the header"
        );
        let (messages, calls) = store.conversation(&rec).await.unwrap();
        assert_eq!(messages.len(), rec.agent.messages);
        for (i, c) in calls.iter().enumerate() {
            assert_eq!(c.iteration as usize, i + 1, "{id}: calls are 1..=n");
        }
        for (i, m) in messages.iter().enumerate().skip(1) {
            let n = (i - 1) / MESSAGES_PER_COMMIT + 1;
            assert!(
                m.text().starts_with(&format!("commit {n} ")),
                "{id}: message {i} belongs to commit {n}"
            );
        }
    }
    assert!(
        total >= ROUNDS * 4,
        "the children committed at least what they reported: {total}"
    );
}

fn parse_committed(line: &str) -> Option<(String, u64)> {
    let rest = line.strip_prefix("committed ")?;
    let (id, version) = rest.split_once(' ')?;
    Some((id.to_string(), version.parse().ok()?))
}

/// The child: commits to every request, concurrently, until it is killed.
async fn commit_forever(path: &Path) {
    let store = SqliteStore::open(path).await.expect("child: open");
    let mut writers = tokio::task::JoinSet::new();
    for id in REQUESTS {
        let store = store.clone();
        writers.spawn(async move {
            let id = RequestId::parse(id).unwrap();
            let (rec, first) = RequestRecord::new(
                id.clone(),
                UserId::parse("user_1").unwrap(),
                ProjectId::parse("proj_1").unwrap(),
                Description::parse("crash test").unwrap(),
                1,
            );
            store.create(&rec, &first).await?;
            let mut rec = store.load(&id).await?.expect("just created");
            loop {
                commit_one(&store, &mut rec).await?;
                println!("committed {id} {}", rec.version);
            }
        });
    }
    let stopped: Option<Result<Result<(), PortError>, _>> = writers.join_next().await;
    panic!("child: a writer stopped: {stopped:?}");
}

async fn commit_one(store: &SqliteStore, rec: &mut RequestRecord) -> Result<(), PortError> {
    let n = rec.version + 1;
    // Large enough that a commit spans many pages of the WAL.
    let filler = "x".repeat(24 * 1024);
    let messages: Vec<Message> = (0..MESSAGES_PER_COMMIT)
        .map(|k| {
            Message::assistant(vec![Block::Text {
                text: format!("commit {n} item {k} {filler}"),
            }])
        })
        .collect();
    let calls = [ModelCall {
        iteration: n as u32,
        model: "scripted".into(),
        usage: TokenUsage::default(),
        cost: MicroUsd::from_micros(1),
        latency_ms: 0,
        stop_reason: StopReason::EndTurn,
    }];
    let appended = Appended {
        first_index: rec.agent.messages,
        messages: &messages,
        calls: &calls,
    };
    rec.agent.messages += MESSAGES_PER_COMMIT;
    rec.agent.calls += 1;
    rec.agent.iteration = n as u32;
    tb_pipeline::ports::save_next(store, rec, appended).await
}
