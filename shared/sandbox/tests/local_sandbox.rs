//! The local sandbox against a real temporary directory and real `bash`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tb_core::sandbox::{Sandbox, SandboxError, SandboxProvider, SandboxSpec, WorkspacePath};
use tb_sandbox::{LocalSandbox, LocalSandboxConfig, LocalSandboxProvider};
use tempfile::TempDir;

const SECOND: Duration = Duration::from_secs(1);
const TEN_SECONDS: Duration = Duration::from_secs(10);

struct Fixture {
    _dir: TempDir,
    provider: LocalSandboxProvider,
    sandbox: LocalSandbox,
    /// A directory outside every sandbox, for symlinks to point at.
    outside: TempDir,
}

async fn fixture_with(configure: impl FnOnce(&mut LocalSandboxConfig)) -> Fixture {
    let dir = TempDir::new().unwrap();
    let mut config = LocalSandboxConfig::new(dir.path().join("sandboxes"));
    configure(&mut config);
    let provider = LocalSandboxProvider::new(config);
    let sandbox = provider
        .create_local(&SandboxSpec::default())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        provider,
        sandbox,
        outside: TempDir::new().unwrap(),
    }
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

fn wp(path: &str) -> WorkspacePath {
    WorkspacePath::parse(path).unwrap()
}

async fn run(sandbox: &LocalSandbox, command: &str) -> tb_core::sandbox::ExecOutput {
    let out = sandbox.exec(command, TEN_SECONDS).await.unwrap();
    assert!(!out.timed_out, "{command:?} timed out: {}", out.output);
    out
}

fn assert_symlink_refusal(result: Result<impl std::fmt::Debug, SandboxError>, reason_part: &str) {
    match result {
        Err(SandboxError::Path(e)) => {
            assert!(e.reason.contains(reason_part), "reason was {:?}", e.reason)
        }
        other => panic!("expected a path refusal ({reason_part}), got {other:?}"),
    }
}

/// The `State:` line of a process, to tell a survivor from an unreaped zombie.
fn process_state(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("State:"))
        .unwrap_or("gone")
        .to_owned()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn traversal_and_absolute_paths_cannot_even_be_expressed_for_any_file_tool() {
    for bad in [
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../etc/passwd",
        "~/.ssh/id_rsa",
    ] {
        assert!(WorkspacePath::parse(bad).is_err(), "{bad:?} parsed");
        assert!(
            serde_json::from_str::<WorkspacePath>(&format!("{bad:?}")).is_err(),
            "{bad:?} deserialised"
        );
    }
}

#[tokio::test]
async fn a_symlink_made_by_a_command_cannot_be_read_or_listed_through() {
    let f = fixture().await;
    run(&f.sandbox, "ln -s /etc escape").await;
    assert_symlink_refusal(
        f.sandbox.read_file(&wp("escape/passwd")).await,
        "outside the project",
    );
    assert_symlink_refusal(
        f.sandbox.read_file(&wp("escape")).await,
        "outside the project",
    );
    assert_symlink_refusal(f.sandbox.list(&wp("escape")).await, "outside the project");
}

#[tokio::test]
async fn a_symlink_made_by_a_command_cannot_be_written_through() {
    let f = fixture().await;
    run(
        &f.sandbox,
        &format!("ln -s '{}' escape", f.outside.path().display()),
    )
    .await;
    assert_symlink_refusal(
        f.sandbox.write_file(&wp("escape/pwned.txt"), b"x").await,
        "outside the project",
    );
    assert_symlink_refusal(
        f.sandbox
            .write_file(&wp("escape/deep/er/pwned.txt"), b"x")
            .await,
        "outside the project",
    );
    assert!(!f.outside.path().join("pwned.txt").exists());
    assert!(
        !f.outside.path().join("deep").exists(),
        "directories were created outside"
    );
}

#[tokio::test]
async fn a_symlink_planted_at_the_write_target_does_not_redirect_the_write() {
    let f = fixture().await;
    let target = f.outside.path().join("target.txt");
    std::fs::write(&target, "original").unwrap();
    run(
        &f.sandbox,
        &format!("ln -s '{}' planted.txt", target.display()),
    )
    .await;
    assert_symlink_refusal(
        f.sandbox
            .write_file(&wp("planted.txt"), b"overwritten")
            .await,
        "symlink",
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original");

    // Even a link that points inside is not written through.
    run(
        &f.sandbox,
        "echo inside > real.txt && ln -s real.txt alias.txt",
    )
    .await;
    assert_symlink_refusal(
        f.sandbox.write_file(&wp("alias.txt"), b"changed").await,
        "symlink",
    );
    assert_eq!(
        f.sandbox.read_file(&wp("real.txt")).await.unwrap(),
        b"inside\n"
    );
}

#[tokio::test]
async fn a_dangling_symlink_in_the_parent_path_is_refused() {
    let f = fixture().await;
    let missing = f.outside.path().join("not-yet");
    run(&f.sandbox, &format!("ln -s '{}' later", missing.display())).await;
    assert!(matches!(
        f.sandbox.write_file(&wp("later/x.txt"), b"x").await,
        Err(SandboxError::Path(_))
    ));
    assert!(!missing.exists(), "the link's target was created");
}

#[tokio::test]
async fn a_symlink_that_stays_inside_the_workspace_is_followed() {
    let f = fixture().await;
    run(
        &f.sandbox,
        "mkdir src && echo hi > src/a.txt && ln -s src lib",
    )
    .await;
    assert_eq!(
        f.sandbox.read_file(&wp("lib/a.txt")).await.unwrap(),
        b"hi\n"
    );
    f.sandbox
        .write_file(&wp("lib/b.txt"), b"via link")
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(f.sandbox.workspace_dir().join("src/b.txt")).unwrap(),
        b"via link"
    );
    let listed: Vec<_> = f
        .sandbox
        .list(&wp("lib"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(listed, ["lib/a.txt", "lib/b.txt"]);
}

#[tokio::test]
async fn deleting_a_symlink_removes_the_link_and_never_its_target() {
    let f = fixture().await;
    std::fs::write(f.outside.path().join("keep.txt"), "keep").unwrap();
    run(
        &f.sandbox,
        &format!(
            "ln -s '{0}' dirlink && ln -s '{0}/keep.txt' filelink",
            f.outside.path().display()
        ),
    )
    .await;
    f.sandbox.delete(&wp("dirlink")).await.unwrap();
    f.sandbox.delete(&wp("filelink")).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(f.outside.path().join("keep.txt")).unwrap(),
        "keep"
    );
    assert!(
        f.sandbox
            .list(&WorkspacePath::root())
            .await
            .unwrap()
            .is_empty()
    );
    assert_symlink_refusal(
        {
            run(
                &f.sandbox,
                &format!("ln -s '{}' out", f.outside.path().display()),
            )
            .await;
            f.sandbox.delete(&wp("out/keep.txt")).await
        },
        "outside the project",
    );
    assert!(f.outside.path().join("keep.txt").exists());
}

#[tokio::test]
async fn deleting_a_directory_is_recursive_but_the_project_root_is_refused() {
    let f = fixture().await;
    f.sandbox.write_file(&wp("a/b/c.txt"), b"c").await.unwrap();
    f.sandbox.write_file(&wp("top.txt"), b"t").await.unwrap();
    f.sandbox.delete(&wp("a")).await.unwrap();
    assert!(!f.sandbox.workspace_dir().join("a").exists());
    assert!(matches!(
        f.sandbox.delete(&WorkspacePath::root()).await,
        Err(SandboxError::Invalid(_))
    ));
    assert!(f.sandbox.workspace_dir().join("top.txt").exists());
    assert!(matches!(
        f.sandbox.delete(&wp("a")).await,
        Err(SandboxError::NotFound(_))
    ));
}

#[tokio::test]
async fn files_round_trip_with_parents_created_and_listing_is_sorted_and_relative() {
    let f = fixture().await;
    f.sandbox
        .write_file(&wp("server/api/health.get.ts"), b"export default 1\n")
        .await
        .unwrap();
    f.sandbox
        .write_file(&wp("server/z.ts"), b"z")
        .await
        .unwrap();
    f.sandbox
        .write_file(&wp("package.json"), b"{}")
        .await
        .unwrap();
    assert_eq!(
        f.sandbox
            .read_file(&wp("server/api/health.get.ts"))
            .await
            .unwrap(),
        b"export default 1\n"
    );

    let root: Vec<_> = f.sandbox.list(&WorkspacePath::root()).await.unwrap();
    assert_eq!(
        root.iter()
            .map(|e| (e.path.as_str(), e.is_dir))
            .collect::<Vec<_>>(),
        [("package.json", false), ("server", true)]
    );
    assert_eq!(root[0].size, 2);
    let server: Vec<_> = f
        .sandbox
        .list(&wp("server"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(server, ["server/api", "server/z.ts"]);

    f.sandbox
        .write_file(&wp("package.json"), b"{\"name\":\"x\"}")
        .await
        .unwrap();
    assert_eq!(
        f.sandbox.read_file(&wp("package.json")).await.unwrap(),
        b"{\"name\":\"x\"}"
    );
    assert!(matches!(
        f.sandbox.read_file(&wp("missing.txt")).await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        f.sandbox.read_file(&wp("server")).await,
        Err(SandboxError::Invalid(_))
    ));
    assert!(matches!(
        f.sandbox.list(&wp("package.json")).await,
        Err(SandboxError::Invalid(_))
    ));
    assert!(matches!(
        f.sandbox.write_file(&wp("package.json/x"), b"").await,
        Err(SandboxError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_file_larger_than_the_read_limit_is_refused_with_its_size() {
    let f = fixture_with(|c| c.read_limit_bytes = 1000).await;
    f.sandbox
        .write_file(&wp("small.txt"), &[b'a'; 1000])
        .await
        .unwrap();
    f.sandbox
        .write_file(&wp("big.txt"), &[b'a'; 1001])
        .await
        .unwrap();
    assert_eq!(
        f.sandbox.read_file(&wp("small.txt")).await.unwrap().len(),
        1000
    );
    match f.sandbox.read_file(&wp("big.txt")).await {
        Err(SandboxError::Invalid(message)) => {
            assert!(
                message.contains("1001 bytes") && message.contains("larger than the read limit"),
                "{message}"
            )
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn exit_codes_are_reported_and_stdout_and_stderr_are_merged_in_order() {
    let f = fixture().await;
    let out = run(&f.sandbox, "echo one; echo two >&2; echo three; exit 3").await;
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.output, "one\ntwo\nthree\n");
    assert_eq!(out.total_bytes, 14);
    assert_eq!(run(&f.sandbox, "true").await.exit_code, Some(0));
    let killed = run(&f.sandbox, "kill -9 $$").await;
    assert_eq!(
        killed.exit_code, None,
        "a command killed by a signal has no exit code"
    );
}

#[tokio::test]
async fn commands_run_in_the_workspace_with_a_minimal_environment() {
    let f = fixture_with(|c| {
        c.extra_env
            .insert("npm_config_cache".into(), "/shared/npm-cache".into());
    })
    .await;
    let out = run(&f.sandbox, "pwd; echo \"$HOME|$TMPDIR|$LANG|$CI|$npm_config_cache|$PATH\"; read line; echo \"stdin:$?\"").await;
    let lines: Vec<_> = out.output.lines().collect();
    assert_eq!(Path::new(lines[0]), f.sandbox.workspace_dir());
    let dir = f.sandbox.dir().display().to_string();
    assert_eq!(
        lines[1],
        format!("{dir}/home|{dir}/tmp|C.UTF-8|true|/shared/npm-cache|/usr/local/bin:/usr/bin:/bin")
    );
    assert_eq!(lines[2], "stdin:1", "stdin should be at end-of-file");
    assert!(
        f.sandbox
            .list(&WorkspacePath::root())
            .await
            .unwrap()
            .is_empty(),
        "the command script was left in the workspace"
    );
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_children() {
    // Killed children are re-parented here and reaped by the sandbox, not by a slow PID 1.
    tb_sandbox::local::adopt_orphans().unwrap();
    let f = fixture().await;
    let started = Instant::now();
    let out = f
        .sandbox
        .exec(
            "sleep 1000 & echo $! > child.pid; echo waiting; sleep 1000",
            SECOND,
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert_eq!(out.output, "waiting\n", "output so far is kept");
    let pid: i32 = f
        .sandbox
        .read_file(&wp("child.pid"))
        .await
        .unwrap()
        .trim_ascii()
        .iter()
        .fold(0, |n, d| n * 10 + i32::from(d - b'0'));
    assert!(pid > 0);
    let deadline = Instant::now() + SECOND;
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !pid_alive(pid),
        "background child {pid} survived the timeout ({})",
        process_state(pid)
    );
}

#[tokio::test]
async fn background_children_do_not_keep_a_finished_command_open() {
    tb_sandbox::local::adopt_orphans().unwrap();
    let f = fixture().await;
    let started = Instant::now();
    let out = run(&f.sandbox, "sleep 1000 & echo $! > child.pid; echo started").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!((out.exit_code, out.output.as_str()), (Some(0), "started\n"));
    let pid: i32 = String::from_utf8(f.sandbox.read_file(&wp("child.pid")).await.unwrap())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + SECOND;
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !pid_alive(pid),
        "background child {pid} outlived its command ({})",
        process_state(pid)
    );
}

#[tokio::test]
async fn a_hundred_megabytes_of_output_is_counted_but_kept_within_the_cap() {
    let f = fixture().await;
    let cap = LocalSandboxConfig::DEFAULT_OUTPUT_CAP_BYTES;
    let started = Instant::now();
    let out = run(
        &f.sandbox,
        "head -c 100000000 /dev/zero | tr '\\0' a; echo; echo END",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.total_bytes, 100_000_000 + 5);
    assert!(
        out.output.len() <= cap + 100,
        "{} bytes kept",
        out.output.len()
    );
    assert!(out.output.starts_with("aaaa"));
    assert!(out.output.ends_with("a\nEND\n"));
    assert!(
        out.output
            .contains(&format!("[{} bytes omitted]", 100_000_005 - cap)),
        "{}",
        &out.output[cap / 2 - 10..cap / 2 + 60]
    );
}

#[tokio::test]
async fn the_provider_names_sandboxes_lists_them_and_destroys_idempotently() {
    let f = fixture().await;
    let labels = BTreeMap::from([("job".to_owned(), "j-1".to_owned())]);
    let named = f
        .provider
        .create(&SandboxSpec {
            name: "job-1".into(),
            labels: labels.clone(),
        })
        .await
        .unwrap();
    assert_eq!(named.id(), "job-1");
    let again = f
        .provider
        .create(&SandboxSpec {
            name: "job-1".into(),
            labels: BTreeMap::new(),
        })
        .await
        .unwrap();
    assert!(again.id().starts_with("sbx-"), "{}", again.id());
    let odd = f
        .provider
        .create(&SandboxSpec {
            name: "../escape".into(),
            labels: BTreeMap::new(),
        })
        .await
        .unwrap();
    assert!(odd.id().starts_with("sbx-"), "{}", odd.id());

    named.write_file(&wp("kept.txt"), b"kept").await.unwrap();
    let reattached = f.provider.connect("job-1").await.unwrap();
    assert_eq!(
        reattached.read_file(&wp("kept.txt")).await.unwrap(),
        b"kept"
    );

    let listed = f.provider.list().await.unwrap();
    assert_eq!(listed.len(), 4);
    let info = listed.iter().find(|i| i.id == "job-1").unwrap();
    assert_eq!(info.labels, labels);
    assert!(info.created_at > 1_700_000_000);

    f.provider.destroy("job-1").await.unwrap();
    f.provider.destroy("job-1").await.unwrap();
    assert!(matches!(
        f.provider.connect("job-1").await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        f.provider.connect("../sandboxes").await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        f.provider.connect("nope").await,
        Err(SandboxError::NotFound(_))
    ));
    assert_eq!(f.provider.list().await.unwrap().len(), 3);
}
