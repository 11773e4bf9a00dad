//! The Daytona client against the shapes and states of older and current Daytona servers,
//! as the fake reproduces them (each behaviour names its source in the fake).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tb_core::sandbox::{SandboxError, SandboxProvider, SandboxSpec};
use tb_testkit::FakeDaytona;

const KEY: &str = "dtn_test_key";
const TEN_SECONDS: Duration = Duration::from_secs(10);

fn spec(job: &str) -> SandboxSpec {
    SandboxSpec {
        name: String::new(),
        labels: BTreeMap::from([("job".to_string(), job.to_string())]),
    }
}

#[tokio::test]
async fn an_older_daemon_reporting_code_gives_the_same_exit_codes() {
    let fake = FakeDaytona::start(KEY).await;
    fake.answer_exit_codes_as_code();
    let sandbox = fake.provider().create(&spec("1")).await.unwrap();
    let failed = sandbox.exec("echo out; exit 3", TEN_SECONDS).await.unwrap();
    assert_eq!(failed.exit_code, Some(3), "{failed:?}");
    assert_eq!(failed.output, "out\n");
    let ok = sandbox.exec("true", TEN_SECONDS).await.unwrap();
    assert_eq!(ok.exit_code, Some(0));
}

#[tokio::test]
async fn sandboxes_are_listed_from_a_plain_array_and_from_cursor_pages() {
    let fake = FakeDaytona::start(KEY).await;
    let provider = fake.provider();
    for job in ["1", "2", "3"] {
        provider.create(&spec(job)).await.unwrap();
    }
    let ids = |infos: Vec<tb_core::sandbox::SandboxInfo>| {
        infos.into_iter().map(|i| i.id).collect::<Vec<_>>()
    };

    // Today's server: `{items, nextCursor}`, one item per page here, so three pages.
    fake.set_list_page_size(1);
    let paged = ids(provider.list().await.unwrap());
    assert_eq!(paged, fake.sandbox_ids());
    assert_eq!(fake.list_calls(), 3);

    // An older server: every sandbox in one plain array.
    fake.list_as_plain_array();
    let plain = ids(provider.list().await.unwrap());
    assert_eq!(plain, fake.sandbox_ids());
    assert_eq!(
        fake.list_calls(),
        4,
        "one request: there is no cursor to follow"
    );
}

#[tokio::test]
async fn a_sandbox_stopped_while_starting_is_started_again() {
    let fake = FakeDaytona::start(KEY).await;
    // Auto-stop (or an operator) stops it between two polls.
    fake.next_create_goes_through(&["starting", "stopped"]);
    let began = Instant::now();
    let sandbox = fake.provider().create(&spec("1")).await.unwrap();
    assert_eq!(fake.start_calls(), 1);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let out = sandbox.exec("echo hi", TEN_SECONDS).await.unwrap();
    assert_eq!(out.output, "hi\n");
}

#[tokio::test]
async fn a_sandbox_created_stopped_or_stopped_later_is_started() {
    let fake = FakeDaytona::start(KEY).await;
    fake.next_create_goes_through(&["stopped"]);
    let provider = fake.provider();
    let sandbox = provider.create(&spec("1")).await.unwrap();
    assert_eq!(fake.start_calls(), 1);

    // Reattached while it stops again: started once more, and used.
    assert!(fake.stop(sandbox.id()));
    let again = provider.connect(sandbox.id()).await.unwrap();
    assert_eq!(fake.start_calls(), 2);
    assert_eq!(
        again.exec("echo ok", TEN_SECONDS).await.unwrap().output,
        "ok\n"
    );
}

/// Terminal states and states on the way down end the wait at once (the fake's start
/// timeout is 10 s), each with the state named; the failed sandbox is deleted.
#[tokio::test]
async fn terminal_and_stopping_states_end_the_wait_at_once_with_the_state_named() {
    for (states, named) in [
        (
            &["pending_build", "build_failed: Dockerfile step 2 failed"][..],
            "Dockerfile step 2 failed",
        ),
        (
            &["error: no capacity in region"][..],
            "no capacity in region",
        ),
        (&["destroying"][..], "destroying"),
        (&["destroyed"][..], "destroyed"),
        (&["stopping"][..], "stopping"),
        (&["pausing"][..], "pausing"),
        (&["paused"][..], "Resuming is not supported"),
    ] {
        let fake = FakeDaytona::start(KEY).await;
        fake.next_create_goes_through(states);
        let began = Instant::now();
        let err = match fake.provider().create(&spec("1")).await {
            Ok(sandbox) => panic!("{states:?}: created {}", sandbox.id()),
            Err(e) => e,
        };
        let elapsed = began.elapsed();
        let message = err.to_string();
        assert!(
            matches!(err, SandboxError::Unavailable(_)),
            "{states:?}: {err:?}"
        );
        assert!(message.contains(named), "{states:?}: {message}");
        assert!(
            elapsed < Duration::from_secs(3),
            "{states:?}: waited {elapsed:?} for a state that cannot become `started`"
        );
        assert!(fake.sandbox_ids().is_empty(), "{states:?}: not deleted");
    }
}
