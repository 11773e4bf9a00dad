//! The embedded default end to end, through the real binary: the scripted model, a real
//! `npm install` and build, git, a real process on a real port; and a process killed in the
//! middle of a request, then restarted.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use tb_core::domain::UserId;
use tb_core::ports::PlatformRecords;

mod common;
use common::{events, turbobackend};

/// The commits of `main` in the local repository: a request's source commit and, on top,
/// its signed receipt's commit (checked to be main's head).
fn commits(data: &Path) -> usize {
    let git = std::fs::read_dir(data.join("git"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = Command::new("git")
        .args([
            "--git-dir",
            git.to_str().unwrap(),
            "rev-list",
            "--count",
            "main",
        ])
        .output()
        .unwrap();
    let subject = Command::new("git")
        .args([
            "--git-dir",
            git.to_str().unwrap(),
            "log",
            "-1",
            "--format=%s",
            "main",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&subject.stdout).starts_with("Verification receipt for request "),
        "{subject:?}"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn the_demo_builds_deploys_and_serves_the_users_endpoint() {
    let data = tempfile::tempdir().unwrap();
    let mut child = turbobackend(data.path(), &["demo", "--output", "json"])
        .spawn()
        .unwrap();
    let events = events(&mut child, |_| false);
    assert!(child.wait().unwrap().success(), "{events:#?}");

    let start = &events[0];
    assert_eq!(
        start["scripted"], true,
        "without a key the model is scripted, and says so"
    );
    let done = events
        .iter()
        .find(|e| e["event"] == "done")
        .expect("a done event");
    assert_eq!(done["status"]["phase"], "succeeded");
    assert_eq!(
        done["status"]["result"]["database"]["skipped"]
            .as_str()
            .map(|s| s.contains("no database cluster")),
        Some(true)
    );
    // The calls shown are the verify step's: health, then the script's declared checks.
    let calls: Vec<&Value> = events.iter().filter(|e| e["event"] == "call").collect();
    let shown: Vec<(&str, &str, u64)> = calls
        .iter()
        .map(|c| {
            (
                c["method"].as_str().unwrap(),
                c["path"].as_str().unwrap(),
                c["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("GET", "/api/health", 200),
            ("POST", "/api/users", 201),
            ("GET", "/api/users", 200),
            ("GET", "/api/users/1", 200),
            ("POST", "/api/users", 400)
        ],
        "{calls:#?}"
    );
    assert!(calls.iter().all(|c| c["passed"] == true), "{calls:#?}");
    assert!(
        calls[3]["excerpt"]
            .as_str()
            .unwrap()
            .contains("ada@example.com"),
        "{}",
        calls[3]
    );
    assert_eq!(
        done["status"]["result"]["verify"]["declared"], 4,
        "{}",
        done["status"]["result"]["verify"]
    );
    assert_eq!(commits(data.path()), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_process_resumes_its_request_with_the_same_cost_and_one_commit_and_receipt() {
    let data = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "--output",
        "json",
        "--idempotency-key",
        "survive-a-kill",
    ];

    // First process: killed once the agent is past its second iteration.
    let mut first = turbobackend(data.path(), &args).spawn().unwrap();
    let seen = events(&mut first, |e| {
        e["event"] == "activity" && e["iteration"].as_u64() >= Some(2)
    });
    let request = seen[0]["request_id"].as_str().unwrap().to_string();
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();

    // Second process: the same request, resumed and finished.
    let mut second = turbobackend(data.path(), &args).spawn().unwrap();
    let events = events(&mut second, |_| false);
    assert!(second.wait().unwrap().success(), "{events:#?}");
    assert_eq!(events[0]["request_id"], request.as_str());
    assert_eq!(events[0]["resumed"], true);
    let status = &events.iter().find(|e| e["event"] == "done").unwrap()["status"];
    assert_eq!(status["phase"], "succeeded");
    assert_eq!(
        status["iteration"], 3,
        "the script's three iterations, none counted twice"
    );

    // The ledger: one row per iteration, and the request's cost is their sum.
    let records = tb_local::SqliteRecords::open(data.path().join("turbobackend.sqlite"))
        .await
        .unwrap();
    let spent = records
        .spent(&UserId::parse("user_local").unwrap())
        .await
        .unwrap();
    assert_eq!(spent.micros(), status["cost_micro_usd"].as_i64().unwrap());
    assert_eq!(commits(data.path()), 2);
}

#[test]
fn a_model_with_no_price_stops_start_up_naming_the_setting() {
    let data = tempfile::tempdir().unwrap();
    // Any command stops at start-up, before anything runs (nothing listens on loopback's
    // port 9 either).
    let out = turbobackend(data.path(), &["keys", "list"])
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .env("TB_MODEL", "mystery-model-7b")
        .env_remove("TB_MODEL_PRICES")
        .env_remove("TB_ALLOW_UNPRICED_MODELS")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TB_MODEL_PRICES") && stderr.contains("mystery-model-7b"),
        "{stderr}"
    );
}

/// The model's endpoint refuses every connection (nothing listens on its port): the wait
/// shows in the progress, then `run` names the model and the cause and exits non-zero,
/// within the outage bound (`TB_OUTAGE_RETRY_SECS`) and the model client's last attempt.
#[test]
fn a_model_that_stays_down_ends_the_run_failed_naming_it_within_the_bound() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let mut child = turbobackend(data.path(), &["run", "--output", "json"])
        .env("ANTHROPIC_API_KEY", "test-key")
        .env("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("TB_OUTAGE_RETRY_SECS", "8")
        .spawn()
        .unwrap();
    let events = events(&mut child, |_| false);
    let status = child.wait().unwrap();
    let took = started.elapsed();

    assert!(!status.success(), "{events:#?}");
    assert!(took < std::time::Duration::from_secs(25), "{took:?}");
    let lines: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "activity")
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("waiting for the model: connection refused; attempt 1, next in")),
        "{lines:#?}"
    );
    let done = &events
        .iter()
        .find(|e| e["event"] == "done")
        .expect("a done event")["status"];
    assert_eq!(done["phase"], "failed");
    let reason = done["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the model was unreachable for") && reason.contains("Connection refused"),
        "{reason}"
    );
}
