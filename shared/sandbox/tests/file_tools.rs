//! The local sandbox's file tools against what a hostile command can leave in the
//! workspace: FIFOs, sockets, hard links, and symlinks swapped while a tool runs.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tb_core::sandbox::{Sandbox, SandboxError, SandboxSpec, WorkspacePath};
use tb_sandbox::{LocalSandbox, LocalSandboxConfig, LocalSandboxProvider};
use tempfile::TempDir;

/// A file tool that blocks is a failed test, not a hung one.
const TOOL_DEADLINE: Duration = Duration::from_secs(5);

struct Fixture {
    _dir: TempDir,
    sandbox: LocalSandbox,
    /// Holds canary files that nothing may change.
    outside: TempDir,
}

async fn fixture() -> Fixture {
    let dir = TempDir::new().unwrap();
    let provider = LocalSandboxProvider::new(LocalSandboxConfig::new(dir.path().join("sb")));
    let sandbox = provider
        .create_local(&SandboxSpec::default())
        .await
        .unwrap();
    let outside = TempDir::new().unwrap();
    std::fs::write(outside.path().join("canary.txt"), "canary").unwrap();
    Fixture {
        _dir: dir,
        sandbox,
        outside,
    }
}

fn wp(path: &str) -> WorkspacePath {
    WorkspacePath::parse(path).unwrap()
}

fn ws(f: &Fixture, rel: &str) -> std::path::PathBuf {
    f.sandbox.workspace_dir().join(rel)
}

/// The tool's result, or a panic if it did not come back in time. The call runs on a thread
/// and runtime of its own, so a tool stuck in a blocking syscall fails the test instead of
/// hanging it (the stuck thread is left behind).
fn bounded<T: Send + 'static>(
    what: &str,
    tool: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(runtime.block_on(tool));
        std::mem::forget(runtime); // never wait for a stuck blocking task
    });
    rx.recv_timeout(TOOL_DEADLINE)
        .unwrap_or_else(|_| panic!("{what} blocked for {TOOL_DEADLINE:?}"))
}

/// `write_file`, as a future that owns what it needs.
fn write(
    sandbox: &LocalSandbox,
    path: &str,
    contents: &[u8],
) -> impl std::future::Future<Output = Result<(), SandboxError>> + Send + 'static {
    let (sandbox, path, contents) = (sandbox.clone(), wp(path), contents.to_vec());
    async move { sandbox.write_file(&path, &contents).await }
}

fn invalid_message<T: std::fmt::Debug>(result: Result<T, SandboxError>) -> String {
    match result {
        Err(SandboxError::Invalid(message)) => message,
        other => panic!("expected a tool error the model can act on, got {other:?}"),
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn canary_untouched(f: &Fixture) {
    let names: Vec<_> = std::fs::read_dir(f.outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["canary.txt"], "something was created outside");
    assert_eq!(
        std::fs::read_to_string(f.outside.path().join("canary.txt")).unwrap(),
        "canary"
    );
}

#[tokio::test]
async fn a_fifo_is_refused_by_every_file_tool_without_blocking() {
    let f = fixture().await;
    mkfifo(&ws(&f, "pipe"));
    let write = bounded("write_file", write(&f.sandbox, "pipe", b"x"));
    let message = invalid_message(write);
    assert!(message.contains("`pipe` is a FIFO"), "{message}");
    assert!(
        message.contains("only read and write regular files"),
        "{message}"
    );
    let sandbox = f.sandbox.clone();
    let read = bounded(
        "read_file",
        async move { sandbox.read_file(&wp("pipe")).await },
    );
    assert!(invalid_message(read).contains("`pipe` is a FIFO"));

    // With a reader on the other end the open succeeds; the type is still checked on it.
    let reader = {
        let path = ws(&f, "pipe");
        std::thread::spawn(move || std::fs::read(path).unwrap())
    };
    let mut message = String::new();
    for _ in 0..50 {
        message = invalid_message(f.sandbox.write_file(&wp("pipe"), b"leak").await);
        if !message.contains("or a socket") {
            break; // the reader was there: refused through the opened descriptor
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        message.contains("`pipe` is a FIFO (named pipe);"),
        "{message}"
    );
    // The refused open let the reader through to an empty pipe: nothing was written. (A
    // non-blocking writer that closes at once, in case the reader was not there yet.)
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(ws(&f, "pipe"));
    assert_eq!(reader.join().unwrap(), b"");

    // Listing shows it; deleting it works; then the name is an ordinary file again.
    let listed = f.sandbox.list(&WorkspacePath::root()).await.unwrap();
    assert_eq!(listed.len(), 1);
    f.sandbox.delete(&wp("pipe")).await.unwrap();
    f.sandbox.write_file(&wp("pipe"), b"plain").await.unwrap();
    assert_eq!(f.sandbox.read_file(&wp("pipe")).await.unwrap(), b"plain");
}

#[tokio::test]
async fn a_socket_is_refused() {
    let f = fixture().await;
    let _listener = std::os::unix::net::UnixListener::bind(ws(&f, "sock")).unwrap();
    for result in [
        f.sandbox.write_file(&wp("sock"), b"x").await.map(|_| ()),
        f.sandbox.read_file(&wp("sock")).await.map(|_| ()),
    ] {
        let message = invalid_message(result);
        assert!(message.contains("socket"), "{message}");
    }
}

#[tokio::test]
async fn a_hard_linked_file_is_refused_and_its_other_name_keeps_its_contents() {
    let f = fixture().await;
    let secret = f.outside.path().join("canary.txt");
    std::fs::hard_link(&secret, ws(&f, "innocent.txt")).unwrap();

    let message = invalid_message(f.sandbox.read_file(&wp("innocent.txt")).await);
    assert!(message.contains("has 2 hard links"), "{message}");
    let message = invalid_message(f.sandbox.write_file(&wp("innocent.txt"), b"pwned").await);
    assert!(message.contains("has 2 hard links"), "{message}");
    canary_untouched(&f);
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 2);

    // Deleting removes the name in the project only.
    f.sandbox.delete(&wp("innocent.txt")).await.unwrap();
    canary_untouched(&f);
}

#[tokio::test]
async fn deleting_a_tree_unlinks_the_links_in_it_and_never_follows_them() {
    let f = fixture().await;
    f.sandbox.write_file(&wp("t/a/b.txt"), b"b").await.unwrap();
    std::os::unix::fs::symlink(f.outside.path(), ws(&f, "t/a/out")).unwrap();
    std::os::unix::fs::symlink(f.outside.path().join("canary.txt"), ws(&f, "t/c")).unwrap();
    f.sandbox.delete(&wp("t")).await.unwrap();
    assert!(!ws(&f, "t").exists());
    canary_untouched(&f);
}

/// A thread swaps `d` between a real directory and a symlink to a directory outside as fast
/// as it can (an atomic exchange of two names, so `d` is always one or the other), while
/// `write_file("d/f.txt")` runs 200 times; and the same for the target itself (`t.txt`: a
/// plain file or a symlink to the canary). No write may land outside.
#[tokio::test]
async fn a_symlink_swapped_during_200_writes_never_sends_one_outside() {
    let f = fixture().await;
    let root = f.sandbox.workspace_dir().to_path_buf();
    let outside = f.outside.path().to_path_buf();
    std::fs::create_dir(root.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("d.swap")).unwrap();
    std::fs::write(root.join("t.txt"), "inside").unwrap();
    std::os::unix::fs::symlink(outside.join("canary.txt"), root.join("t.swap")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange(&root.join("d"), &root.join("d.swap"));
                exchange(&root.join("t.txt"), &root.join("t.swap"));
                swaps += 1;
            }
            swaps
        })
    };
    let (mut written, mut refused) = (0, 0);
    for i in 0..200 {
        for path in ["d/f.txt", "t.txt"] {
            let body = format!("attempt {i}");
            match bounded("write_file", write(&f.sandbox, path, body.as_bytes())) {
                Ok(()) => written += 1,
                Err(SandboxError::Unavailable(e)) => panic!("infrastructure error: {e}"),
                Err(_) => refused += 1,
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    println!("400 writes during {swaps} swaps: {written} written inside, {refused} refused");
    canary_untouched(&f);
    assert!(swaps > 0);
}

/// `renameat2(RENAME_EXCHANGE)`: swaps two names atomically.
fn exchange(a: &Path, b: &Path) {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (a, b) = (c(a), c(b));
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(done, 0, "renameat2: {}", std::io::Error::last_os_error());
}
