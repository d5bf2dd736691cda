//! Helpers shared by the `snapctl` tests: run it, read its answers, and
//! run a node daemon for the length of a test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
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

    /// Starts the daemon with extra environment variables and arguments.
    pub fn start_with(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Daemon {
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

/// Everything observable of a directory tree: per path its type, mode,
/// owner, link count, size, times, link target, extended attributes and a
/// hash of its bytes.
pub fn digest(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mut xattrs: Vec<String> = xattr::list(&path)
                .map(|names| {
                    names
                        .map(|n| {
                            let v = xattr::get(&path, &n).ok().flatten().unwrap_or_default();
                            format!("{}={}", n.to_string_lossy(), String::from_utf8_lossy(&v))
                        })
                        .collect()
                })
                .unwrap_or_default();
            xattrs.sort();
            let ft = meta.file_type();
            let content = if ft.is_file() {
                blake3::hash(&std::fs::read(&path).unwrap()).to_hex()[..16].to_string()
            } else if ft.is_symlink() {
                std::fs::read_link(&path).unwrap().display().to_string()
            } else {
                String::new()
            };
            let size = if ft.is_dir() { 0 } else { meta.size() };
            out.insert(
                rel,
                format!(
                    "{:o} {}:{} n{} s{} m{}.{} c{}.{} x[{}] {content}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.nlink(),
                    size,
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ctime(),
                    meta.ctime_nsec(),
                    xattrs.join(",")
                ),
            );
            if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}
