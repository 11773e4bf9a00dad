//! Host environment variables never reach sandbox commands. Alone in its binary: it sets a
//! variable of this process before any other thread exists.

use std::time::Duration;

use tb_core::sandbox::{Sandbox, SandboxSpec};
use tb_sandbox::{LocalSandboxConfig, LocalSandboxProvider};

#[test]
fn host_environment_secrets_do_not_leak_into_commands() {
    // SAFETY: set before the runtime starts; no other thread of this process exists yet.
    unsafe { std::env::set_var("TB_SANDBOX_TEST_SECRET", "hunter2-do-not-leak") };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::TempDir::new().unwrap();
        let provider = LocalSandboxProvider::new(LocalSandboxConfig::new(dir.path()));
        let sandbox = provider
            .create_local(&SandboxSpec::default())
            .await
            .unwrap();
        let out = sandbox.exec("env", Duration::from_secs(10)).await.unwrap();
        assert!(out.output.contains("HOME="), "{}", out.output);
        assert!(
            !out.output.contains("TB_SANDBOX_TEST_SECRET"),
            "{}",
            out.output
        );
        assert!(!out.output.contains("hunter2"), "{}", out.output);
        let names: Vec<_> = out
            .output
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        for name in names {
            assert!(
                [
                    "PATH", "HOME", "TMPDIR", "LANG", "CI", "PWD", "SHLVL", "_", "OLDPWD"
                ]
                .contains(&name),
                "unexpected variable {name}"
            );
        }
    });
}
