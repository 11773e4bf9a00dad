//! `LocalDeployer` running the small Node app as real processes.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use support::{Health, get_json, node_app};
use tb_core::domain::ProjectId;
use tb_core::ports::{Deployer, PortError};
use tb_deploy::{LocalConfig, LocalDeployer};

fn deployer(root: &Path) -> LocalDeployer {
    let mut config = LocalConfig::new(root);
    config.health_timeout = Duration::from_secs(3);
    LocalDeployer::new(config)
}

fn secrets() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "DATABASE_URL".to_owned(),
        "postgres://app:pw-local@127.0.0.1/app".to_owned(),
    )])
}

fn pid_of(details: &serde_json::Value) -> u32 {
    details["pid"].as_u64().unwrap() as u32
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

async fn gone(pid: u32) -> bool {
    for _ in 0..40 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Processes whose working directory lies under `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
        })
        .collect()
}

#[tokio::test]
async fn the_local_deployer_runs_the_app_on_a_free_port_with_a_clean_environment() {
    let root = tempfile::tempdir().unwrap();
    let d = deployer(root.path());
    let project = ProjectId::parse("proj_local1").unwrap();
    let artifact = node_app("v1", Health::Healthy);

    let deployment = d.deploy(&project, &artifact, &secrets()).await.unwrap();

    assert!(
        deployment.url.starts_with("http://127.0.0.1:"),
        "{}",
        deployment.url
    );
    assert_eq!(deployment.version, artifact.sha256);
    let users = get_json(&format!("{}/api/users", deployment.url)).await;
    assert_eq!(users["version"], "v1");
    assert_eq!(users["database_url_set"], true);
    assert_eq!(users["node_env"], "production");
    let dir = root.path().join("proj_local1").join(&artifact.sha256);
    assert_eq!(
        Path::new(users["cwd"].as_str().unwrap()),
        std::fs::canonicalize(&dir).unwrap()
    );
    assert!(dir.join(".output/server/chunks/users.mjs").is_file());
    let health = get_json(&format!("{}/api/health", deployment.url)).await;
    assert_eq!(health["ok"], true);
}

#[tokio::test]
async fn redeploying_replaces_the_process_and_the_old_one_is_gone() {
    let root = tempfile::tempdir().unwrap();
    let d = deployer(root.path());
    let project = ProjectId::parse("proj_local2").unwrap();

    let first = d
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap();
    let second = d
        .deploy(&project, &node_app("v2", Health::Healthy), &secrets())
        .await
        .unwrap();

    assert!(
        gone(pid_of(&first.details)).await,
        "the first process still runs"
    );
    assert!(
        reqwest::get(format!("{}/api/health", first.url))
            .await
            .is_err()
    );
    let users = get_json(&format!("{}/api/users", second.url)).await;
    assert_eq!(users["version"], "v2");
    assert_eq!(second.details["previous_version"], first.version.as_str());
    assert_eq!(processes_under(root.path()), vec![pid_of(&second.details)]);
}

#[tokio::test]
async fn a_failing_artifact_leaves_the_old_version_serving() {
    let root = tempfile::tempdir().unwrap();
    let d = deployer(root.path());
    let project = ProjectId::parse("proj_local3").unwrap();
    let good = d
        .deploy(&project, &node_app("good", Health::Healthy), &secrets())
        .await
        .unwrap();

    for bad in [Health::Unhealthy, Health::Crashes] {
        let err = d
            .deploy(&project, &node_app("bad", bad), &secrets())
            .await
            .unwrap_err();
        let PortError::Permanent(message) = &err else {
            panic!("a permanent failure expected: {err:?}");
        };
        assert!(
            message.contains("previous version keeps running"),
            "{message}"
        );
        if bad == Health::Crashes {
            assert!(
                message.contains("exited") && message.contains("crashing on purpose"),
                "{message}"
            );
        }
        let users = get_json(&format!("{}/api/users", good.url)).await;
        assert_eq!(users["version"], "good");
        assert_eq!(processes_under(root.path()), vec![pid_of(&good.details)]);
    }
}

#[tokio::test]
async fn a_process_left_by_an_earlier_run_is_stopped_by_the_next_deploy() {
    let root = tempfile::tempdir().unwrap();
    let project = ProjectId::parse("proj_local4").unwrap();
    let earlier = deployer(root.path());
    let first = earlier
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap();
    // The earlier server dies without cleaning up: its process keeps running.
    std::mem::forget(earlier);
    let first_pid = pid_of(&first.details);
    assert!(alive(first_pid));

    let later = deployer(root.path());
    let second = later
        .deploy(&project, &node_app("v2", Health::Healthy), &secrets())
        .await
        .unwrap();

    assert!(gone(first_pid).await, "the orphaned process still runs");
    assert_eq!(second.details["previous_version"], first.version.as_str());
    assert_eq!(
        get_json(&format!("{}/api/users", second.url)).await["version"],
        "v2"
    );
    drop(later);
    assert!(
        gone(pid_of(&second.details)).await,
        "dropping the deployer stops its apps"
    );
}

#[tokio::test]
async fn an_artifact_with_a_wrong_checksum_is_refused_before_anything_runs() {
    let root = tempfile::tempdir().unwrap();
    let d = deployer(root.path());
    let mut artifact = node_app("v1", Health::Healthy);
    artifact.sha256 = "0".repeat(64);
    let err = d
        .deploy(
            &ProjectId::parse("proj_local5").unwrap(),
            &artifact,
            &secrets(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    assert!(processes_under(root.path()).is_empty());
}

#[tokio::test]
async fn rolling_back_runs_the_previous_version_again_and_destroying_stops_and_removes_the_app() {
    let root = tempfile::tempdir().unwrap();
    let d = deployer(root.path());
    let project = ProjectId::parse("proj_local_life").unwrap();
    let first = d
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap();
    let second = d
        .deploy(&project, &node_app("v2", Health::Healthy), &secrets())
        .await
        .unwrap();

    let back = d.rollback(&project, &first.version).await.unwrap();
    assert_eq!(back.version, first.version);
    assert_eq!(
        get_json(&format!("{}/api/users", back.url)).await["version"],
        "v1"
    );
    assert!(gone(pid_of(&second.details)).await, "v2 still runs");
    assert_eq!(back.details["previous_version"], second.version.as_str());
    assert_eq!(processes_under(root.path()), vec![pid_of(&back.details)]);
    // A version that is not kept is refused, and the rolled-back one keeps serving.
    let refused = d.rollback(&project, &"0".repeat(64)).await.unwrap_err();
    assert!(matches!(refused, PortError::Permanent(_)), "{refused:?}");
    assert_eq!(
        get_json(&format!("{}/api/users", back.url)).await["version"],
        "v1"
    );

    let removed = d.destroy(&project).await.unwrap();
    assert_eq!(removed["stopped"], true, "{removed}");
    assert!(gone(pid_of(&back.details)).await, "the app still runs");
    assert!(!root.path().join(project.as_str()).exists());
    let again = d.destroy(&project).await.unwrap();
    assert_eq!(
        (again["stopped"].clone(), again["removed"].clone()),
        (false.into(), false.into())
    );
}

#[tokio::test]
async fn the_running_apps_recent_log_lines_are_read_bounded_with_its_secrets_redacted() {
    let root = tempfile::tempdir().unwrap();
    let d = deployer(root.path());
    let project = ProjectId::parse("proj_local_logs").unwrap();
    assert_eq!(d.recent_logs(&project).await.unwrap(), None, "nothing runs");
    let app = d
        .deploy(&project, &node_app("v1", Health::Healthy), &secrets())
        .await
        .unwrap();
    for i in 0..80 {
        let status = reqwest::get(format!("{}/api/missing-{i}", app.url))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404);
    }
    let lines = d.recent_logs(&project).await.unwrap().expect("a log");
    assert_eq!(lines.len(), tb_core::ports::APP_LOG_LINES, "{lines:#?}");
    assert!(lines.iter().map(|l| l.len() + 1).sum::<usize>() <= tb_core::ports::APP_LOG_BYTES);
    let all = lines.join("\n");
    assert!(!all.contains("pw-local"), "{all}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("no route for /api/missing-79 with database <redacted>")
    );
}

#[tokio::test]
async fn a_retained_version_is_kept_for_a_rollback_however_many_versions_follow_it() {
    let root = tempfile::tempdir().unwrap();
    let d = deployer(root.path());
    let project = ProjectId::parse("proj_local_keep").unwrap();
    let deploy = |v: &'static str| {
        let d = &d;
        let project = &project;
        async move {
            d.deploy(project, &node_app(v, Health::Healthy), &secrets())
                .await
                .unwrap()
        }
    };
    // Without `retain`, a version two deploys old is gone.
    let v1 = deploy("v1").await;
    deploy("v2").await;
    deploy("v3").await;
    let refused = d.rollback(&project, &v1.version).await.unwrap_err();
    assert!(matches!(refused, PortError::Permanent(_)), "{refused:?}");

    let v4 = deploy("v4").await;
    d.retain(&project, &v4.version).await.unwrap();
    deploy("v5").await;
    deploy("v6").await;
    deploy("v7").await;
    let back = d.rollback(&project, &v4.version).await.unwrap();
    assert_eq!(
        get_json(&format!("{}/api/users", back.url)).await["version"],
        "v4"
    );
}
