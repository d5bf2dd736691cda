//! Helpers of the volume server's tests: run a `volume-server` process
//! for the length of a test and call its API.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use cas::{ChunkId, Store};
use layerfs::tree::{Entry, InodeKind};
use layerfs::TreeReader;
use serde::de::DeserializeOwned;
use snapshotter::volume_api::{CommitResult, SessionInfo, VolumeOp};

/// A `volume-server` process; stopped with SIGTERM when dropped.
pub struct Server {
    pub child: Child,
    pub home: PathBuf,
}

impl Server {
    /// Starts the server of `home` (background commits every
    /// `autocommit_secs`) and waits until it answers.
    pub fn start(home: &Path, autocommit_secs: u64) -> Server {
        Self::start_with(home, &["--autocommit-secs", &autocommit_secs.to_string()])
    }

    /// Starts the server of `home` with options `args` and waits until it
    /// answers.
    pub fn start_with(home: &Path, args: &[&str]) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_volume-server"))
            .arg("--home")
            .arg(home)
            .args(args)
            .env_remove("STRATA_VOLUME_HOME")
            .spawn()
            .expect("start volume-server");
        let server = Server {
            child,
            home: home.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while snapshotter::volume_cmd::connect(home).is_err() {
            assert!(Instant::now() < deadline, "volume-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Calls the API; panics on failure.
    pub fn call<T: DeserializeOwned>(&self, op: VolumeOp) -> T {
        self.try_call(op).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Calls the API.
    pub fn try_call<T: DeserializeOwned>(&self, op: VolumeOp) -> anyhow::Result<T> {
        snapshotter::volume_cmd::connect(&self.home)?.call(op)
    }

    /// Starts a FUSE session of volume `name` at `dir` (made if missing).
    pub fn mount(&self, name: &str, dir: &Path) -> SessionInfo {
        std::fs::create_dir_all(dir).unwrap();
        self.call(VolumeOp::Mount {
            name: name.into(),
            mountpoint: dir.to_path_buf(),
            commit: None,
        })
    }

    /// Ends the session mounted at `dir`; its commit.
    pub fn umount(&self, dir: &Path) -> CommitResult {
        self.call(VolumeOp::Umount {
            session: dir.display().to_string(),
        })
    }

    /// Sends `signal` and waits for the process to end; its exit status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill with the pid of our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("wait for volume-server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop_with(libc::SIGTERM);
        }
    }
}

/// `n` pseudo-random bytes from `seed`.
pub fn random_bytes(seed: &str, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Lazily unmounts `dir` if something is mounted there (cleanup).
pub fn detach(dir: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status();
}

/// Detaches the mounts at its directories when dropped (a failed test
/// leaves no mount behind).
pub struct Cleanup<'a>(pub &'a [&'a Path]);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for dir in self.0 {
            detach(dir);
        }
    }
}

/// A scratch directory with mount points for FUSE sessions in it, each
/// detached when this drops.
pub struct Scratch<const N: usize> {
    pub tmp: tempfile::TempDir,
    pub dirs: [PathBuf; N],
}

impl<const N: usize> Scratch<N> {
    /// `None` (with the reason printed) where FUSE is missing.
    pub fn with_mount_points(names: [&str; N]) -> Option<Scratch<N>> {
        if !fixtures::require::fuse() {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dirs = names.map(|name| tmp.path().join(name));
        Some(Scratch { tmp, dirs })
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

impl<const N: usize> Drop for Scratch<N> {
    fn drop(&mut self) {
        for dir in &self.dirs {
            detach(dir);
        }
    }
}

/// A BLAKE3 checksum of a file, in hex.
pub fn checksum(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    blake3::hash(&bytes).to_hex().to_string()
}

/// Every file of `tree` with its contents.
pub fn contents(store: &Store, tree: ChunkId) -> BTreeMap<String, Vec<u8>> {
    let reader = TreeReader::new(store);
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), tree)];
    while let Some((path, id)) = stack.pop() {
        let dir = reader.dir(id).unwrap();
        for (name, entry) in reader.entries(&dir).unwrap() {
            let p = format!("{path}/{}", String::from_utf8_lossy(&name));
            match entry {
                Entry::Dir(id) => stack.push((p, id)),
                Entry::Inode(inode) => {
                    if let InodeKind::File { blob, .. } = inode.kind {
                        let mut bytes = Vec::new();
                        if let Some(id) = blob {
                            store.blob(&id).unwrap().copy_to(&mut bytes).unwrap();
                        }
                        out.insert(p, bytes);
                    }
                }
                Entry::HardLink { .. } => {}
            }
        }
    }
    out
}
