//! Crash trials: a seeded workload writes, truncates, renames, deletes,
//! fsyncs, commits and reloads through a FUSE session of a real `volume-server`
//! while the server is stopped at a random moment — SIGKILL, or SIGTERM
//! (the teardown path) — then started again. After each restart every
//! fsync and every commit the workload saw acknowledged is in the
//! volume's head, checked against a model of what was acknowledged.
//!
//! `STRATA_VOLUME_CRASH_TRIALS` sets the number of trials (default 8;
//! `benches/run.sh reliability` runs more); `STRATA_SEED` replays a run.

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::{detach, Server};
use fixtures::workload::{self, Rng, Workload};
use snapshotter::volume_api::{
    CommitInfo, CommitResult, ReloadResult, SessionInfo, VolumeInfo, VolumeOp,
};

/// The paths the workload works on: six files at the root and six in
/// each of two directories.
fn workload_paths() -> Vec<String> {
    let mut paths = Vec::new();
    for dir in ["", "d0/", "d1/"] {
        for i in 0..6 {
            paths.push(format!("{dir}f{i}"));
        }
    }
    paths
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_string()
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or(".")
}

/// The workload's process: does nothing unless `STRATA_VOLUME_CRASH_MNT`
/// names the mount. Works with paths relative to the mount (its working
/// directory), so that once the server is gone every operation fails
/// instead of reaching the directory under the mount point. Prints `OP n`
/// before each operation, `CHANGE path` before each change, `SYNCED path
/// size digest` / `GONE path` after each acknowledged fsync, and after an
/// acknowledged commit the state of every path. On the first error it
/// prints `ERR …` and waits to be killed: the test decides whether the
/// server was still up.
#[test]
fn crash_workload() {
    let Ok(mnt) = std::env::var("STRATA_VOLUME_CRASH_MNT") else {
        return;
    };
    let var = |name: &str| std::env::var(name).expect(name);
    let home = var("STRATA_VOLUME_CRASH_HOME");
    let session = var("STRATA_VOLUME_CRASH_SESSION");
    let mut rng = Rng::new(var("STRATA_VOLUME_CRASH_SEED").parse().unwrap());
    std::env::set_current_dir(&mnt).unwrap();
    let out = std::cell::RefCell::new(std::io::stdout());
    let say = |line: String| {
        let mut out = out.borrow_mut();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    // libtest prints "test crash_workload ... " with no newline first.
    say(String::new());
    let fail = |what: String| -> ! {
        say(format!("ERR {what}"));
        std::thread::sleep(Duration::from_secs(600));
        std::process::exit(1)
    };
    let paths = workload_paths();
    let read = |path: &str| -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    // What every path holds, as this workload wrote it.
    let mut shadow: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for path in &paths {
        if let Ok(bytes) = read(path) {
            shadow.insert(path.clone(), bytes);
        }
    }
    let state_of = |path: &str, shadow: &BTreeMap<String, Vec<u8>>| match read(path) {
        Ok(bytes) if shadow.get(path) == Some(&bytes) => {
            format!("SYNCED {path} {} {}", bytes.len(), hash(&bytes))
        }
        Ok(bytes) => fail(format!(
            "{path} reads {} bytes that no operation wrote as such",
            bytes.len()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !shadow.contains_key(path) => {
            format!("GONE {path}")
        }
        Err(e) => fail(format!("reading {path}: {e}")),
    };
    for op in 0u64.. {
        let path = paths[rng.below(paths.len() as u64) as usize].clone();
        let exists = shadow.contains_key(&path);
        say(format!("OP {op}"));
        match rng.below(100) {
            // Write a run of bytes in the first 300 KiB.
            0..=34 => {
                say(format!("CHANGE {path}"));
                let dir = parent_of(&path);
                if let Err(e) = std::fs::create_dir_all(dir) {
                    fail(format!("mkdir {dir}: {e}"));
                }
                let offset = rng.below(300_000) as usize;
                let most = if rng.below(4) == 0 { 200_000 } else { 9_000 };
                let len = 1 + rng.below(most) as usize;
                let bytes = rng.bytes(len);
                let written = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.write_all_at(&bytes, offset as u64));
                if let Err(e) = written {
                    fail(format!("write {path}: {e}"));
                }
                let copy = shadow.entry(path.clone()).or_default();
                if copy.len() < offset + len {
                    copy.resize(offset + len, 0);
                }
                copy[offset..offset + len].copy_from_slice(&bytes);
            }
            // Truncate, shorter or longer.
            35..=44 if exists => {
                say(format!("CHANGE {path}"));
                let size = rng.below(320_000);
                let done = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(size));
                if let Err(e) = done {
                    fail(format!("truncate {path}: {e}"));
                }
                if let Some(copy) = shadow.get_mut(&path) {
                    copy.resize(size as usize, 0);
                }
            }
            // fsync or fdatasync: the file is durable, its name too.
            45..=64 if exists => {
                let synced = File::open(&path).and_then(|f| {
                    if rng.below(4) == 0 {
                        f.sync_data()
                    } else {
                        f.sync_all()
                    }
                });
                if let Err(e) = synced {
                    fail(format!("fsync {path}: {e}"));
                }
                say(state_of(&path, &shadow));
            }
            // Unlink, and sometimes fsync the directory.
            65..=74 if exists => {
                say(format!("CHANGE {path}"));
                if let Err(e) = std::fs::remove_file(&path) {
                    fail(format!("unlink {path}: {e}"));
                }
                shadow.remove(&path);
                if rng.below(2) == 0 {
                    let dir = parent_of(&path);
                    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                        fail(format!("fsync dir {dir}: {e}"));
                    }
                    say(format!("GONE {path}"));
                }
            }
            // Rename over another workload path.
            75..=86 if exists => {
                let to = paths[rng.below(paths.len() as u64) as usize].clone();
                if to != path {
                    say(format!("CHANGE {path}"));
                    say(format!("CHANGE {to}"));
                    let dir = parent_of(&to);
                    let done =
                        std::fs::create_dir_all(dir).and_then(|()| std::fs::rename(&path, &to));
                    if let Err(e) = done {
                        fail(format!("rename {path} {to}: {e}"));
                    }
                    let moved = shadow.remove(&path).unwrap_or_default();
                    shadow.insert(to, moved);
                }
            }
            // Commit through the API: everything up to now is durable.
            87..=92 => {
                let committed: anyhow::Result<Vec<CommitResult>> =
                    snapshotter::volume_cmd::connect(Path::new(&home)).and_then(|mut c| {
                        c.call(VolumeOp::Commit {
                            target: session.clone(),
                        })
                    });
                if let Err(e) = committed {
                    fail(format!("commit: {e:#}"));
                }
                say("COMMITTED".into());
                for path in &paths {
                    say(state_of(path, &shadow));
                }
            }
            // Reload through the API: the mount moves onto the head (its
            // own last commit) and goes on; a recovery then starts from
            // the reload's tree.
            93..=96 => {
                let reloaded: anyhow::Result<Vec<ReloadResult>> =
                    snapshotter::volume_cmd::connect(Path::new(&home)).and_then(|mut c| {
                        c.call(VolumeOp::Reload {
                            target: session.clone(),
                        })
                    });
                if let Err(e) = reloaded {
                    fail(format!("reload: {e:#}"));
                }
            }
            _ => {}
        }
    }
}

/// What a path must be after a crash.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    /// Changed since it was last made durable: anything.
    Unknown,
    Synced {
        size: u64,
        hash: String,
    },
    Gone,
}

#[derive(Default)]
struct Model {
    paths: BTreeMap<String, Expect>,
    ops: u64,
    syncs: u64,
    commits: u64,
}

impl Model {
    fn absorb(&mut self, lines: &[String]) {
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["OP", _] => self.ops += 1,
                ["CHANGE", path] => {
                    self.paths.insert(path.to_string(), Expect::Unknown);
                }
                ["SYNCED", path, size, hash] => {
                    self.syncs += 1;
                    let size = size.parse().expect("a size");
                    let hash = hash.to_string();
                    self.paths
                        .insert(path.to_string(), Expect::Synced { size, hash });
                }
                ["GONE", path] => {
                    self.paths.insert(path.to_string(), Expect::Gone);
                }
                ["COMMITTED"] => self.commits += 1,
                _ => {}
            }
        }
    }

    /// Checks the volume's head; returns how many paths it checked
    /// exactly.
    fn check(&self, server: &Server, trial: u64) -> usize {
        let mut exact = 0;
        for (path, expect) in &self.paths {
            let found = read_file(server, path);
            match (expect, found) {
                (Expect::Unknown, _) => continue,
                (Expect::Synced { size, hash: want }, Ok(bytes)) => assert!(
                    bytes.len() as u64 == *size && &hash(&bytes) == want,
                    "trial {trial}: {path} was made durable at {size} bytes ({want}) and \
                     not changed since, but the head holds {} bytes ({})",
                    bytes.len(),
                    hash(&bytes)
                ),
                (Expect::Synced { .. }, Err(e)) => panic!(
                    "trial {trial}: {path} was made durable and not changed since, \
                     but the head has none: {e:#}"
                ),
                (Expect::Gone, Err(e)) if format!("{e:#}").contains("no such path") => {}
                (Expect::Gone, found) => panic!(
                    "trial {trial}: the removal of {path} was made durable, yet the head \
                     has {:?}",
                    found.map(|b| b.len())
                ),
            }
            exact += 1;
        }
        exact
    }
}

fn read_file(server: &Server, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    snapshotter::volume_cmd::connect(&server.home)?.call_streaming::<serde_json::Value>(
        VolumeOp::GetFile {
            name: "data".into(),
            path: path.into(),
        },
        &mut out,
    )?;
    Ok(out)
}

#[test]
fn what_was_acknowledged_survives_the_server_killed_at_random_moments() {
    if !fixtures::require::fuse() {
        return;
    }
    let trials: u64 = std::env::var("STRATA_VOLUME_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed = workload::seed();
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut model = Model::default();
    let mut exact = 0;
    let mut kills = 0;
    {
        let server = Server::start(&home, 0);
        let _: VolumeInfo = server.call(VolumeOp::Create {
            name: "data".into(),
            quota_bytes: 0,
        });
    }
    for trial in 0..trials {
        // Background commits every second: a kill may land in one.
        let mut server = Server::start(&home, 1);
        // The previous server's sessions are committed by now: the model
        // holds against the head before anything else runs.
        exact += model.check(&server, trial);
        let session: SessionInfo = server.call(VolumeOp::Mount {
            name: "data".into(),
            mountpoint: mnt.clone(),
            commit: None,
        });
        let mut cmd = workload::this_test("crash_workload");
        cmd.env("STRATA_VOLUME_CRASH_MNT", &mnt)
            .env("STRATA_VOLUME_CRASH_HOME", &home)
            .env("STRATA_VOLUME_CRASH_SESSION", &session.id)
            .env("STRATA_VOLUME_CRASH_SEED", rng.next_u64().to_string());
        let mut child = Workload::start(cmd).unwrap();
        let ops = 20 + rng.below(300) as usize;
        child.wait_for("OP ", ops, Duration::from_secs(120));
        assert_eq!(
            child.count("ERR"),
            0,
            "trial {trial}: the workload failed while the server was up"
        );
        let sigkill = rng.below(2) == 0;
        let status = server.stop_with(if sigkill {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        });
        if sigkill {
            kills += 1;
        } else {
            assert!(
                status.success(),
                "trial {trial}: SIGTERM stop failed: {status}"
            );
        }
        model.absorb(&child.kill());
        detach(&mnt);
    }
    let server = Server::start(&home, 0);
    exact += model.check(&server, trials);
    // One writer at a time: no commit may have found a conflict.
    let history: Vec<CommitInfo> = server.call(VolumeOp::History {
        name: "data".into(),
        limit: None,
    });
    assert!(
        history.iter().all(|c| c.conflicts.is_empty()),
        "a single writer's commits conflicted: {history:?}"
    );
    eprintln!(
        "seed {seed}: {trials} trials ({kills} SIGKILL), {} operations, {} fsyncs and {} \
         commits acknowledged, {exact} exact checks, {} commits in history",
        model.ops,
        model.syncs,
        model.commits,
        history.len()
    );
    assert!(model.ops >= trials * 20, "the workload barely ran");
    assert!(exact > 0, "nothing was checked exactly");
}
