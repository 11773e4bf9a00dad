//! The Daytona client against the fake Daytona (real HTTP, real commands, real files).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tb_core::sandbox::{Sandbox, SandboxError, SandboxProvider, SandboxSpec, WorkspacePath};
use tb_sandbox::{DaytonaConfig, DaytonaProvider};
use tb_testkit::FakeDaytona;

const KEY: &str = "dtn_test_key";
const TEN_SECONDS: Duration = Duration::from_secs(10);

fn wp(path: &str) -> WorkspacePath {
    WorkspacePath::parse(path).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_sandbox_is_created_through_a_rate_limit_and_runs_commands_in_the_workdir() {
    let fake = FakeDaytona::start(KEY).await;
    fake.fail_next_create_with_429(1);
    let provider = fake.provider();
    let spec = SandboxSpec {
        name: "job-42".into(),
        labels: labels(&[("job", "42")]),
    };
    let sandbox = provider.create(&spec).await.unwrap();
    assert_eq!(fake.create_calls(), 2, "one 429, then the retry");
    assert_eq!(fake.sandbox_ids(), [sandbox.id().to_owned()]);

    let sent = fake.last_create_body().unwrap();
    assert_eq!(sent["name"], "job-42");
    assert_eq!(sent["labels"], serde_json::json!({"job": "42"}));
    assert_eq!(
        sent["env"],
        serde_json::json!({}),
        "no environment (and so no secret) is passed"
    );
    assert_eq!(
        (
            sent["autoStopInterval"].as_i64(),
            sent["autoDeleteInterval"].as_i64()
        ),
        (Some(15), Some(60))
    );
    assert!(sent.get("snapshot").is_none() && sent.get("buildInfo").is_none());

    let out = sandbox
        .exec(
            "echo out; echo err >&2; [[ -d . ]] && echo bash; exit 4",
            TEN_SECONDS,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(4));
    assert_eq!(out.output, "out\nerr\nbash\n");
    assert_eq!(out.total_bytes, 13);
    assert!(!out.timed_out);
    let exec = fake.last_exec_body().unwrap();
    assert_eq!(exec["cwd"], DaytonaConfig::DEFAULT_WORKDIR);
    assert_eq!(exec["timeout"], 10);
}

#[tokio::test]
async fn files_round_trip_through_the_toolbox_and_really_land_on_disk() {
    let fake = FakeDaytona::start(KEY).await;
    let sandbox = fake
        .provider()
        .create_sandbox(&SandboxSpec::default())
        .await
        .unwrap();
    let on_disk = fake.workspace_dir(sandbox.id()).unwrap();

    sandbox
        .write_file(
            &wp("server/api/health.get.ts"),
            b"export default () => 'ok'\n",
        )
        .await
        .unwrap();
    sandbox
        .write_file(&wp("package.json"), b"{}")
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(on_disk.join("server/api/health.get.ts")).unwrap(),
        b"export default () => 'ok'\n"
    );
    assert_eq!(
        sandbox
            .read_file(&wp("server/api/health.get.ts"))
            .await
            .unwrap(),
        b"export default () => 'ok'\n"
    );

    let out = sandbox
        .exec("cat server/api/health.get.ts", TEN_SECONDS)
        .await
        .unwrap();
    assert_eq!(
        out.output, "export default () => 'ok'\n",
        "commands see the uploaded files"
    );

    let root: Vec<_> = sandbox.list(&WorkspacePath::root()).await.unwrap();
    assert_eq!(
        root.iter()
            .map(|e| (e.path.as_str(), e.is_dir, e.size))
            .collect::<Vec<_>>(),
        [("package.json", false, 2), ("server", true, 0)]
    );
    let api: Vec<_> = sandbox
        .list(&wp("server/api"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(api, ["server/api/health.get.ts"]);

    sandbox.delete(&wp("server")).await.unwrap();
    assert!(!on_disk.join("server").exists());
    assert!(matches!(
        sandbox.read_file(&wp("server/api/health.get.ts")).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        sandbox.delete(&wp("server")).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        sandbox.list(&wp("server")).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        sandbox.read_file(&wp("package.json/x")).await,
        Err(SandboxError::Invalid(_) | SandboxError::NotFound(_))
    ));
    assert!(matches!(
        sandbox.delete(&WorkspacePath::root()).await,
        Err(SandboxError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_command_past_its_timeout_comes_back_as_timed_out() {
    let fake = FakeDaytona::start(KEY).await;
    let sandbox = fake
        .provider()
        .create(&SandboxSpec::default())
        .await
        .unwrap();
    let started = Instant::now();
    let out = sandbox
        .exec("sleep 30", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(fake.exec_calls(), 1, "a command is not resent");
}

#[tokio::test]
async fn large_command_output_is_counted_but_capped_like_the_local_sandbox() {
    let fake = FakeDaytona::start(KEY).await;
    let config = DaytonaConfig {
        output_cap_bytes: 1000,
        ..fake.config()
    };
    let sandbox = DaytonaProvider::new(config)
        .unwrap()
        .create(&SandboxSpec::default())
        .await
        .unwrap();
    let out = sandbox
        .exec(
            "head -c 1000000 /dev/zero | tr '\\0' b; echo; echo END",
            TEN_SECONDS,
        )
        .await
        .unwrap();
    assert_eq!(out.total_bytes, 1_000_005);
    assert!(out.output.len() <= 1000 + 100, "{} bytes", out.output.len());
    assert!(
        out.output.starts_with("bbb") && out.output.ends_with("b\nEND\n"),
        "{}",
        out.output
    );
    assert!(out.output.contains("[999005 bytes omitted]"));
}

#[tokio::test]
async fn a_file_larger_than_the_read_limit_is_refused() {
    let fake = FakeDaytona::start(KEY).await;
    let config = DaytonaConfig {
        read_limit_bytes: 100,
        ..fake.config()
    };
    let sandbox = DaytonaProvider::new(config)
        .unwrap()
        .create(&SandboxSpec::default())
        .await
        .unwrap();
    sandbox
        .write_file(&wp("big.bin"), &[7u8; 101])
        .await
        .unwrap();
    sandbox
        .write_file(&wp("ok.bin"), &[7u8; 100])
        .await
        .unwrap();
    assert_eq!(sandbox.read_file(&wp("ok.bin")).await.unwrap().len(), 100);
    match sandbox.read_file(&wp("big.bin")).await {
        Err(SandboxError::Invalid(message)) => assert!(message.contains("read limit"), "{message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn connecting_to_an_unknown_sandbox_is_not_found() {
    let fake = FakeDaytona::start(KEY).await;
    let provider = fake.provider();
    for id in ["0000-missing", "has/slash", "../sandbox"] {
        assert!(
            matches!(provider.connect(id).await, Err(SandboxError::NotFound(_))),
            "{id}"
        );
    }
}

#[tokio::test]
async fn a_sandbox_is_reattached_by_id_and_a_stopped_one_is_started_first() {
    let fake = FakeDaytona::start(KEY).await;
    let provider = fake.provider();
    let sandbox = provider.create(&SandboxSpec::default()).await.unwrap();
    sandbox.write_file(&wp("notes.txt"), b"kept").await.unwrap();

    let again = provider.connect(sandbox.id()).await.unwrap();
    assert_eq!(again.read_file(&wp("notes.txt")).await.unwrap(), b"kept");
    assert_eq!(fake.start_calls(), 0);

    assert!(fake.stop(sandbox.id()));
    let restarted = provider.connect(sandbox.id()).await.unwrap();
    assert_eq!(fake.start_calls(), 1);
    assert_eq!(
        restarted
            .exec("cat notes.txt", TEN_SECONDS)
            .await
            .unwrap()
            .output,
        "kept"
    );
}

#[tokio::test]
async fn destroying_a_sandbox_twice_succeeds_and_removes_it() {
    let fake = FakeDaytona::start(KEY).await;
    let provider = fake.provider();
    let sandbox = provider.create(&SandboxSpec::default()).await.unwrap();
    let on_disk = fake.workspace_dir(sandbox.id()).unwrap();
    provider.destroy(sandbox.id()).await.unwrap();
    provider.destroy(sandbox.id()).await.unwrap();
    assert!(fake.sandbox_ids().is_empty());
    assert!(!on_disk.exists());
    assert!(matches!(
        provider.connect(sandbox.id()).await,
        Err(SandboxError::NotFound(_))
    ));
}

#[tokio::test]
async fn listing_filters_by_label_across_pages() {
    let fake = FakeDaytona::start(KEY).await;
    fake.set_list_page_size(1);
    let prod = DaytonaProvider::new(DaytonaConfig {
        labels: labels(&[("env", "prod")]),
        ..fake.config()
    })
    .unwrap();
    let dev = DaytonaProvider::new(DaytonaConfig {
        labels: labels(&[("env", "dev")]),
        ..fake.config()
    })
    .unwrap();
    let a = prod
        .create(&SandboxSpec {
            name: String::new(),
            labels: labels(&[("job", "a")]),
        })
        .await
        .unwrap();
    let b = prod
        .create(&SandboxSpec {
            name: String::new(),
            labels: labels(&[("job", "b")]),
        })
        .await
        .unwrap();
    let c = dev.create(&SandboxSpec::default()).await.unwrap();

    let listed = prod.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [a.id(), b.id()]
    );
    assert_eq!(listed[0].labels, labels(&[("env", "prod"), ("job", "a")]));
    assert!(listed[0].created_at > 1_700_000_000, "createdAt is parsed");
    assert!(fake.list_calls() >= 2, "pages were followed");

    let only_b = prod
        .list_with_labels(&labels(&[("job", "b")]))
        .await
        .unwrap();
    assert_eq!(
        only_b.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [b.id()]
    );
    assert_eq!(
        dev.list()
            .await
            .unwrap()
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        [c.id()]
    );
    assert!(
        matches!(dev.connect(a.id()).await, Err(SandboxError::NotFound(_))),
        "scoped providers do not reach others' sandboxes"
    );
}

#[tokio::test]
async fn a_wrong_api_key_is_a_clear_error_and_is_not_retried() {
    let fake = FakeDaytona::start(KEY).await;
    let provider = DaytonaProvider::new(DaytonaConfig {
        api_key: "wrong".into(),
        ..fake.config()
    })
    .unwrap();
    match provider
        .create(&SandboxSpec::default())
        .await
        .map(|s| s.id().to_owned())
    {
        Err(SandboxError::Unavailable(message)) => {
            assert!(
                message.contains("API key") && message.contains("Invalid credentials"),
                "{message}"
            );
            assert!(
                !message.contains("wrong"),
                "the key is not echoed: {message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(fake.unauthorized_calls(), 1);
}

#[tokio::test]
async fn rate_limits_outlasting_the_retries_become_unavailable() {
    let fake = FakeDaytona::start(KEY).await;
    fake.fail_next_create_with_429(100);
    let provider = fake.provider();
    match provider
        .create(&SandboxSpec::default())
        .await
        .map(|s| s.id().to_owned())
    {
        Err(e @ SandboxError::Unavailable(_)) => {
            assert!(e.to_string().contains("Rate limit exceeded"), "{e}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(fake.create_calls(), provider.config().retry.max_attempts);
}

#[tokio::test]
async fn a_sandbox_that_fails_to_start_reports_why_and_is_deleted() {
    let fake = FakeDaytona::start(KEY).await;
    fake.fail_next_start_with("image pull failed: no such image");
    match fake
        .provider()
        .create(&SandboxSpec::default())
        .await
        .map(|s| s.id().to_owned())
    {
        Err(SandboxError::Unavailable(message)) => {
            assert!(message.contains("image pull failed"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        fake.sandbox_ids().is_empty(),
        "the failed sandbox was left behind"
    );
}

#[tokio::test]
async fn a_taken_name_is_refused_as_invalid() {
    let fake = FakeDaytona::start(KEY).await;
    let provider = fake.provider();
    provider
        .create(&SandboxSpec {
            name: "same".into(),
            labels: BTreeMap::new(),
        })
        .await
        .unwrap();
    let second = provider
        .create(&SandboxSpec {
            name: "same".into(),
            labels: BTreeMap::new(),
        })
        .await;
    assert!(
        matches!(second.map(|s| s.id().to_owned()), Err(SandboxError::Invalid(m)) if m.contains("already exists"))
    );
}

#[tokio::test]
async fn a_named_sandbox_whose_create_answer_was_lost_is_adopted_on_retry() {
    let fake = FakeDaytona::start(KEY).await;
    fake.fail_next_create_with_500_after_creating(1);
    let provider = fake.provider();
    let spec = SandboxSpec {
        name: "job-7".into(),
        labels: BTreeMap::new(),
    };
    let sandbox = provider.create(&spec).await.unwrap();
    assert_eq!(
        fake.create_calls(),
        2,
        "the 500 was retried and answered 409"
    );
    assert_eq!(
        fake.sandbox_ids(),
        [sandbox.id().to_owned()],
        "no second sandbox"
    );
    assert_eq!(
        sandbox
            .exec("echo adopted", TEN_SECONDS)
            .await
            .unwrap()
            .output,
        "adopted\n"
    );
}

#[tokio::test]
async fn creating_from_an_image_sends_a_dockerfile() {
    let fake = FakeDaytona::start(KEY).await;
    let provider = DaytonaProvider::new(DaytonaConfig {
        image: Some("node:22-bookworm".into()),
        ..fake.config()
    })
    .unwrap();
    provider.create(&SandboxSpec::default()).await.unwrap();
    let sent = fake.last_create_body().unwrap();
    assert_eq!(
        sent["buildInfo"]["dockerfileContent"],
        "FROM node:22-bookworm\n"
    );
    assert!(sent.get("snapshot").is_none());
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_after_retries() {
    let fake = FakeDaytona::start(KEY).await;
    let config = fake.config();
    drop(fake);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let provider = DaytonaProvider::new(config).unwrap();
    assert!(matches!(
        provider.list().await,
        Err(SandboxError::Unavailable(_))
    ));
}
