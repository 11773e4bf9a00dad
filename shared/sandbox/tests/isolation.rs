//! The local sandbox's isolation boundary with real bubblewrap: what a hostile command can
//! see, reach, leave behind and use up. Needs `bwrap` (scripts/test installs it).

use std::time::Duration;

use tb_core::sandbox::{ExecOutput, Sandbox, SandboxError, SandboxSpec};
use tb_sandbox::{Isolation, Limits, LocalSandbox, LocalSandboxConfig, LocalSandboxProvider};
use tempfile::TempDir;

const TEN_SECONDS: Duration = Duration::from_secs(10);

struct Fixture {
    dir: TempDir,
    provider: LocalSandboxProvider,
    sandbox: LocalSandbox,
}

async fn fixture_with(limits: Limits) -> Fixture {
    fixture_with_isolation(Isolation {
        limits,
        ..Isolation::new()
    })
    .await
}

async fn fixture_with_isolation(isolation: Isolation) -> Fixture {
    let dir = TempDir::new().unwrap();
    isolation
        .probe()
        .expect("bubblewrap works here (apt-get install -y bubblewrap)");
    let config = LocalSandboxConfig {
        isolation: Some(isolation),
        ..LocalSandboxConfig::new(dir.path().join("sandboxes"))
    };
    let provider = LocalSandboxProvider::new(config);
    let sandbox = provider
        .create_local(&SandboxSpec::default())
        .await
        .unwrap();
    Fixture {
        dir,
        provider,
        sandbox,
    }
}

async fn fixture() -> Fixture {
    fixture_with(Limits::default()).await
}

async fn run(sandbox: &LocalSandbox, command: &str) -> ExecOutput {
    let out = sandbox.exec(command, TEN_SECONDS).await.unwrap();
    assert!(!out.timed_out, "{command:?} timed out: {}", out.output);
    out
}

#[tokio::test]
async fn a_command_sees_its_workspace_and_a_read_only_system_and_nothing_else() {
    let f = fixture().await;
    // Canaries around the workspace: the data directory, another sandbox, this process's
    // working directory.
    let data_secret = f.dir.path().join("callback-secret");
    std::fs::write(&data_secret, "canary-data-dir").unwrap();
    let other = f
        .provider
        .create_local(&SandboxSpec::default())
        .await
        .unwrap();
    std::fs::write(other.workspace_dir().join("theirs.txt"), "canary-other").unwrap();

    let out = run(
        &f.sandbox,
        &format!(
            "pwd; echo hi > mine.txt; cat {secret} 2>&1; ls {others} 2>&1; \
             ls {cwd} 2>&1 | head -1; touch /usr/x 2>&1; touch /etc/x 2>&1; \
             cat /etc/shadow 2>&1 | head -c 20; echo; ls /home; echo HOME=$HOME",
            secret = data_secret.display(),
            others = other.workspace_dir().display(),
            cwd = std::env::current_dir().unwrap().display(),
        ),
    )
    .await;
    let text = &out.output;
    assert!(text.starts_with("/workspace\n"), "{text}");
    assert!(!text.contains("canary"), "{text}");
    assert!(!text.contains("theirs.txt"), "{text}");
    assert_eq!(text.matches("Read-only file system").count(), 2, "{text}");
    assert!(!text.contains("root:"), "{text}");
    assert!(text.contains("HOME=/home/sandbox"), "{text}");
    assert_eq!(
        std::fs::read_to_string(f.sandbox.workspace_dir().join("mine.txt")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_to_string(&data_secret).unwrap(),
        "canary-data-dir"
    );
}

#[tokio::test]
async fn the_platforms_processes_and_environment_are_out_of_sight() {
    let f = fixture().await;
    let me = std::process::id();
    let out = run(
        &f.sandbox,
        &format!(
            "cat /proc/{me}/environ 2>&1 | head -c 100; echo; ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\\0' ' '"
        ),
    )
    .await;
    let lines: Vec<&str> = out.output.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines[0].contains("No such file"), "{}", out.output);
    let pids: u32 = lines[1].trim().parse().unwrap();
    assert!(
        pids < 10,
        "only the sandbox's few processes: {}",
        out.output
    );
    // Its init is the command's shell; bubblewrap's arguments (host paths, environment)
    // came through a pipe and are nowhere to be seen.
    assert!(lines[2].starts_with("bash "), "{}", out.output);
    let host_path = f.dir.path().to_string_lossy().into_owned();
    assert!(!out.output.contains(&host_path), "{}", out.output);
}

#[tokio::test]
async fn every_process_a_command_started_dies_with_it() {
    let f = fixture().await;
    let marker = format!("tb-daemon-{:08x}", rand_u32());
    // A setsid daemon, a double fork and a nohup'd loop, each sleeping with a marker in
    // its arguments, then the command returns at once.
    let out = run(
        &f.sandbox,
        &format!(
            "setsid bash -c 'sleep 300; :' {marker}-a & (bash -c 'sleep 301; :' {marker}-b &) ; nohup bash -c 'sleep 302; :' {marker}-c >/dev/null 2>&1 & disown; echo started"
        ),
    )
    .await;
    assert_eq!(out.output.trim(), "started");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(survivors.is_empty(), "still running: {survivors:?}");
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_everything_it_started() {
    let f = fixture().await;
    let marker = format!("tb-timeout-{:08x}", rand_u32());
    let started = std::time::Instant::now();
    let out = f
        .sandbox
        .exec(
            &format!("setsid bash -c 'sleep 300; :' {marker} & echo begun; sleep 300"),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(out.timed_out, "{out:?}");
    assert!(out.output.contains("begun"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(survivors.is_empty(), "still running: {survivors:?}");
    assert_eq!(run(&f.sandbox, "echo next").await.output.trim(), "next");
}

#[tokio::test]
async fn loopback_services_are_unreachable_and_the_proxy_refuses_them() {
    // Root's way (the platform opens the proxy's port inside the namespace) and the
    // bridge others get.
    for bridge in [false, true] {
        let f = fixture_with_isolation(Isolation {
            bridge,
            ..Isolation::new()
        })
        .await;
        loopback_is_unreachable(&f).await;
    }
}

async fn loopback_is_unreachable(f: &Fixture) {
    // Something listening on the host's loopback, like Postgres or the platform's port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = run(
        &f.sandbox,
        &format!(
            "(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>&1 && echo REACHED-DIRECT; \
             (exec 3<>/dev/tcp/127.0.0.1/5432) 2>&1 && echo REACHED-PG; \
             exec 3<>/dev/tcp/127.0.0.1/3128; printf 'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n' >&3; head -1 <&3; \
             exec 4<>/dev/tcp/127.0.0.1/3128; printf 'CONNECT localhost:5432 HTTP/1.1\\r\\n\\r\\n' >&4; head -1 <&4"
        ),
    )
    .await;
    let text = &out.output;
    assert!(!text.contains("REACHED"), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 403 Forbidden").count(),
        2,
        "the proxy refuses both: {text}"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing connected to the host port"
    );
}

#[tokio::test]
async fn a_fork_bomb_is_held_by_the_process_limit_and_the_next_command_runs() {
    let f = fixture_with(Limits {
        processes: 64,
        ..Limits::default()
    })
    .await;
    let out = f
        .sandbox
        .exec(
            "b() { b | b & }; b; sleep 1; echo survived",
            Duration::from_secs(5),
        )
        .await;
    match out {
        // With the pids cgroup: the refused forks are counted and the command is an error.
        Err(SandboxError::Invalid(m)) => assert!(m.contains("process limit"), "{m}"),
        // With RLIMIT_NPROC only (no writable pids cgroup): held, but not counted.
        Ok(out) => assert!(
            out.timed_out || out.output.contains("fork") || out.output.contains("Resource"),
            "{out:?}"
        ),
        Err(e) => panic!("{e:?}"),
    }
    let next = run(&f.sandbox, "echo next").await;
    assert_eq!(next.output.trim(), "next");
}

#[tokio::test]
async fn a_large_write_stops_at_the_file_size_limit() {
    let f = fixture_with(Limits {
        file_size_bytes: 8 << 20,
        ..Limits::default()
    })
    .await;
    let out = run(&f.sandbox, "head -c 2G /dev/zero > big; echo status=$?").await;
    assert!(out.output.contains("File size limit exceeded"), "{out:?}");
    let size = std::fs::metadata(f.sandbox.workspace_dir().join("big"))
        .unwrap()
        .len();
    assert_eq!(size, 8 << 20);
}

#[tokio::test]
async fn memory_past_the_limit_ends_the_command() {
    let f = fixture_with(Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    })
    .await;
    let out = run(
        &f.sandbox,
        "node -e 'const a=[]; for(;;) a.push(Buffer.alloc(1<<20, 1))' 2>&1 | tail -c 300; echo status=${PIPESTATUS[0]}",
    )
    .await;
    assert!(!out.output.contains("status=0"), "{out:?}");
    assert_eq!(run(&f.sandbox, "echo ok").await.output.trim(), "ok");
}

#[tokio::test]
async fn cpu_is_held_to_its_share() {
    let f = fixture_with(Limits {
        cpu_millicores: 100,
        ..Limits::default()
    })
    .await;
    // A busy loop for one second of wall time gets about a tenth of a core.
    let out = run(
        &f.sandbox,
        "TIMEFORMAT=%U; time (timeout 1 bash -c 'while :; do :; done')",
    )
    .await;
    let user: f64 = out.output.trim().lines().last().unwrap().parse().unwrap();
    assert!(user < 0.4, "{} s of CPU in 1 s at 0.1 core", user);
}

#[tokio::test]
async fn going_over_the_disk_budget_is_reported_after_the_command() {
    let f = fixture_with(Limits {
        disk_bytes: 16 << 20,
        ..Limits::default()
    })
    .await;
    let out = f
        .sandbox
        .exec(
            "for i in 1 2 3; do head -c 8M /dev/zero > f$i; done",
            TEN_SECONDS,
        )
        .await;
    match out {
        Err(SandboxError::Invalid(m)) => {
            assert!(m.contains("over its disk budget of 16 MiB"), "{m}")
        }
        other => panic!("expected the disk budget error, got {other:?}"),
    }
    // While over it, no command runs (a hostile loop cannot keep filling the disk).
    match f
        .sandbox
        .exec("head -c 8M /dev/zero > f4", TEN_SECONDS)
        .await
    {
        Err(SandboxError::Invalid(m)) => assert!(m.starts_with("not run:"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!f.sandbox.workspace_dir().join("f4").exists());
    // Deleting with the file tools brings it back under: the next command runs.
    for name in ["f1", "f2"] {
        f.sandbox
            .delete(&tb_core::sandbox::WorkspacePath::parse(name).unwrap())
            .await
            .unwrap();
    }
    let out = run(&f.sandbox, "echo cleaned").await;
    assert_eq!(out.output.trim(), "cleaned");
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}
