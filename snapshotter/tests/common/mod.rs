//! Helpers shared by the `snapctl` tests: run it, read its answers, and
//! run a node daemon for the length of a test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub fn snapctl(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapctl"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("STRATA_HOME")
        .output()
        .expect("run snapctl")
}

/// `out`, after checking that its command succeeded.
pub fn must(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    out
}

pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

pub fn code(output: &Output) -> i32 {
    output.status.code().expect("exit code")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Whether FUSE mounts can be made here (root and /dev/fuse); otherwise
/// says why, and fails under CI (see `fixtures::require`).
pub fn fuse_available() -> bool {
    fixtures::require::fuse()
}

/// A `snapctl daemon` process; stopped with SIGTERM when dropped.
pub struct Daemon {
    pub child: Child,
    pub home: PathBuf,
}

impl Daemon {
    /// Starts the daemon of `home` and waits until it answers.
    pub fn start(home: &Path) -> Daemon {
        Daemon::start_with_env(home, &[])
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with_env(home: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(home, env, &[])
    }

    /// Starts the daemon with extra `snapctl daemon` arguments.
    pub fn start_with_args(home: &Path, args: &[&str]) -> Daemon {
        Daemon::start_with(home, &[], args)
    }

    fn start_with(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_snapctl"))
            .arg("--home")
            .arg(home)
            .arg("daemon")
            .args(args)
            .env_remove("STRATA_HOME")
            .envs(env.iter().copied())
            .spawn()
            .expect("start snapctl daemon");
        let daemon = Daemon {
            child,
            home: home.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = snapctl(home, &["mounts"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not come up: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// Sends `signal` and waits for the process to end.
    pub fn stop(mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("wait for the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Upper-layer bytes used by each of the daemon's mounts.
pub fn mounts_used(home: &Path) -> Vec<u64> {
    let mounts = json(&must(snapctl(home, &["--json", "mounts"])));
    mounts
        .as_array()
        .expect("mounts is a list")
        .iter()
        .map(|m| m["used_bytes"].as_u64().expect("used_bytes"))
        .collect()
}
