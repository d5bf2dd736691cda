//! The `volume-server` daemon end to end: real FUSE mounts, real 9P
//! connections from another process, SIGTERM and SIGKILL of the server.
//!
//! - the seeds' scenario: 50 MiB of random data and a text file written
//!   by a session torn down with no commit and no wait — a FUSE mount
//!   unmounted from outside, and a 9P client process killed with SIGKILL —
//!   are read back by the next session, started at once;
//! - SIGTERM commits every session before the server exits; after SIGKILL
//!   the next server commits everything the sandbox fsync'd;
//! - 16 sessions on one volume: distinct files all land, same-file writes
//!   keep every version as conflict copies, listed in the history;
//! - a 9P listener refuses attaches to volumes it was not given;
//! - bad requests are clear errors that change nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{checksum, detach, random_bytes, Server};
use p9server::client::Client as P9Client;
use snapshotter::volume_api::{
    CommitInfo, CommitResult, FileInfo, SessionInfo, VolumeInfo, VolumeListenerInfo, VolumeOp,
};

fn fuse() -> bool {
    fixtures::require::fuse()
}

fn create(server: &Server, name: &str) -> VolumeInfo {
    server.call(VolumeOp::Create {
        name: name.into(),
        quota_bytes: 0,
    })
}

fn umount_outside(dir: &Path) {
    let status = Command::new("umount").arg(dir).status().unwrap();
    assert!(status.success(), "umount {}", dir.display());
}

fn history(server: &Server, name: &str) -> Vec<CommitInfo> {
    server.call(VolumeOp::History {
        name: name.into(),
        limit: Some(1000),
    })
}

fn get(server: &Server, name: &str, path: &str) -> Vec<u8> {
    let mut client = snapshotter::volume_cmd::connect(&server.home).unwrap();
    let mut out = Vec::new();
    let _: serde_json::Value = client
        .call_streaming(
            VolumeOp::GetFile {
                name: name.into(),
                path: path.into(),
            },
            &mut out,
        )
        .unwrap_or_else(|e| panic!("get {path}: {e:#}"));
    out
}

/// The seeds' scenario over FUSE: the mount is unmounted from outside
/// (as a runtime tearing a sandbox down does), nobody commits or waits,
/// and a new session mounted at once reads everything back.
#[test]
fn a_fuse_session_unmounted_from_outside_loses_nothing() {
    if !fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("home"), 0);
    create(&server, "data");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    server.mount("data", &a);
    let big = random_bytes("seeds-fuse", 50 << 20);
    std::fs::write(a.join("big.bin"), &big).unwrap();
    std::fs::write(a.join("notes.txt"), "the results of run 7\n").unwrap();
    let want = blake3::hash(&big).to_hex().to_string();
    umount_outside(&a);
    // No commit asked for, no wait.
    server.mount("data", &b);
    assert_eq!(checksum(&b.join("big.bin")), want);
    assert_eq!(
        std::fs::read_to_string(b.join("notes.txt")).unwrap(),
        "the results of run 7\n"
    );
    assert_eq!(
        blake3::hash(&get(&server, "data", "big.bin"))
            .to_hex()
            .to_string(),
        want
    );
    let commits = history(&server, "data");
    assert_eq!(commits[0].kind, "commit");
    assert_eq!(commits[0].paths_changed, 2);
    umount_outside(&b);
}

/// The child side of the 9P scenario: when `STRATA_9P_WRITER` names a
/// socket, attaches volume `data` there, writes 50 MiB of random data and
/// a text file (every write acknowledged), says so, and waits to be
/// killed. Otherwise does nothing.
#[test]
fn child_9p_writer() {
    let Ok(socket) = std::env::var("STRATA_9P_WRITER") else {
        return;
    };
    let listen: p9server::Listen = format!("unix:{socket}").parse().unwrap();
    let mut client = P9Client::connect(&listen, 1 << 20).unwrap();
    client.attach(0, "data", 0).unwrap();
    let big = random_bytes("seeds-9p", 50 << 20);
    client.walk(0, 1, "").unwrap();
    client.lcreate(1, "big.bin", 0o644).unwrap();
    let mut offset = 0;
    for piece in big.chunks(256 << 10) {
        assert_eq!(
            client.write(1, offset, piece).unwrap() as usize,
            piece.len()
        );
        offset += piece.len() as u64;
    }
    client.walk(0, 2, "").unwrap();
    client.lcreate(2, "notes.txt", 0o644).unwrap();
    client.write(2, 0, b"9p results\n").unwrap();
    println!("WRITTEN {}", blake3::hash(&big).to_hex());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
}

/// The seeds' scenario over 9P: the client process is killed with
/// SIGKILL (its connection drops mid-session, files still open); a new
/// session started at once reads everything it wrote.
#[test]
fn a_9p_session_whose_client_is_killed_loses_nothing() {
    if !fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("home"), 0);
    create(&server, "data");
    let socket = tmp.path().join("9p.sock");
    let _: VolumeListenerInfo = server.call(VolumeOp::Serve9pStart {
        volumes: vec!["data".into()],
        listen: format!("unix:{}", socket.display()),
    });
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_9p_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STRATA_9P_WRITER", &socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut want = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints "test child_9p_writer ... " without a newline
        // before the test's own output: the marker is within the line.
        if let Some((_, sum)) = line.split_once("WRITTEN ") {
            want = Some(sum.trim().to_string());
            break;
        }
    }
    let want = want.expect("the 9P writer said what it wrote");
    child.kill().unwrap();
    child.wait().unwrap();
    // At once: a new session over FUSE, and the file read from outside.
    let b = tmp.path().join("b");
    server.mount("data", &b);
    assert_eq!(checksum(&b.join("big.bin")), want);
    assert_eq!(
        std::fs::read_to_string(b.join("notes.txt")).unwrap(),
        "9p results\n"
    );
    assert_eq!(
        blake3::hash(&get(&server, "data", "big.bin"))
            .to_hex()
            .to_string(),
        want
    );
    umount_outside(&b);
}

/// A listener serves only the volumes it was given.
#[test]
fn a_9p_attach_to_another_volume_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("home"), 0);
    create(&server, "mine");
    create(&server, "theirs");
    let socket = tmp.path().join("9p.sock");
    let _: VolumeListenerInfo = server.call(VolumeOp::Serve9pStart {
        volumes: vec!["mine".into()],
        listen: format!("unix:{}", socket.display()),
    });
    let listen: p9server::Listen = format!("unix:{}", socket.display()).parse().unwrap();
    let mut client = P9Client::connect(&listen, 64 << 10).unwrap();
    for aname in ["theirs", "/theirs", "nope", "../theirs", "mine/../theirs"] {
        match client.attach(0, aname, 0) {
            Err(p9server::client::ClientError::Remote(code)) => {
                assert_eq!(code, libc::ENOENT as u32, "{aname}")
            }
            other => panic!("attach {aname}: {other:?}"),
        }
    }
    // Its own volume, by name and as the only one (empty name).
    client.attach(0, "mine", 0).unwrap();
    client.attach(1, "", 0).unwrap();
    // Nothing was made for the refused ones.
    let sessions: Vec<SessionInfo> = server.call(VolumeOp::Sessions);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].volume, "mine");
    // A listener for a volume that does not exist is refused.
    let refused = server.try_call::<VolumeListenerInfo>(VolumeOp::Serve9pStart {
        volumes: vec!["ghost".into()],
        listen: format!("unix:{}", tmp.path().join("other.sock").display()),
    });
    assert!(refused.is_err());
}

/// SIGTERM: every session (FUSE and 9P) is committed before the server
/// exits; the next server has it all and no session left.
#[test]
fn sigterm_commits_every_session() {
    if !fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut server = Server::start(&home, 0);
    create(&server, "data");
    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("m{i}"))).collect();
    for (i, dir) in dirs.iter().enumerate() {
        server.mount("data", dir);
        std::fs::write(dir.join(format!("f{i}")), format!("session {i}")).unwrap();
    }
    let socket = tmp.path().join("9p.sock");
    let _: VolumeListenerInfo = server.call(VolumeOp::Serve9pStart {
        volumes: vec!["data".into()],
        listen: format!("unix:{}", socket.display()),
    });
    let listen: p9server::Listen = format!("unix:{}", socket.display()).parse().unwrap();
    let mut client = P9Client::connect(&listen, 64 << 10).unwrap();
    client.attach(0, "data", 0).unwrap();
    client.walk(0, 1, "").unwrap();
    client.lcreate(1, "over9p", 0o644).unwrap();
    client.write(1, 0, b"from 9p").unwrap();
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    for dir in &dirs {
        detach(dir);
    }
    drop(client);
    let server = Server::start(&home, 0);
    let sessions: Vec<SessionInfo> = server.call(VolumeOp::Sessions);
    assert!(sessions.is_empty(), "{sessions:?}");
    for i in 0..3 {
        assert_eq!(
            get(&server, "data", &format!("f{i}")),
            format!("session {i}").as_bytes()
        );
    }
    assert_eq!(get(&server, "data", "over9p"), b"from 9p");
    assert!(!home.join("sessions").read_dir().unwrap().any(|_| true));
}

/// SIGKILL: what the sandbox fsync'd is committed by the next server.
#[test]
fn after_sigkill_the_next_server_commits_what_was_fsynced() {
    if !fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut server = Server::start(&home, 0);
    create(&server, "data");
    let dir = tmp.path().join("m");
    server.mount("data", &dir);
    let mut file = std::fs::File::create(dir.join("synced")).unwrap();
    file.write_all(b"fsynced before the crash").unwrap();
    file.sync_all().unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let mut file = std::fs::File::create(dir.join("sub/also")).unwrap();
    file.write_all(b"in a new directory").unwrap();
    file.sync_all().unwrap();
    std::fs::File::open(dir.join("sub"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::File::open(&dir).unwrap().sync_all().unwrap();
    drop(file);
    server.stop_with(libc::SIGKILL);
    let server = Server::start(&home, 0);
    assert_eq!(get(&server, "data", "synced"), b"fsynced before the crash");
    assert_eq!(get(&server, "data", "sub/also"), b"in a new directory");
    // The dead mount was detached; nothing is left half-served.
    let sessions: Vec<SessionInfo> = server.call(VolumeOp::Sessions);
    assert!(sessions.is_empty(), "{sessions:?}");
    detach(&dir);
}

/// Sixteen sessions on one volume at once: each writes a file of its own
/// and its own version of one shared file. Every own file lands; the
/// shared file has one version under its name and the other fifteen as
/// conflict copies; the history lists exactly those conflicts.
#[test]
fn sixteen_sessions_lose_nothing_and_conflicts_are_listed() {
    if !fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("home"), 0);
    create(&server, "shared");
    let dirs: Vec<_> = (0..16).map(|i| tmp.path().join(format!("s{i}"))).collect();
    for dir in &dirs {
        server.mount("shared", dir);
    }
    std::thread::scope(|scope| {
        for (i, dir) in dirs.iter().enumerate() {
            scope.spawn(move || {
                std::fs::write(dir.join(format!("own-{i}.txt")), format!("own {i}")).unwrap();
                std::fs::write(dir.join("report.txt"), format!("version {i}")).unwrap();
            });
        }
    });
    let results: Vec<CommitResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|dir| {
                let server = &server;
                scope.spawn(move || {
                    server.call::<CommitResult>(VolumeOp::Umount {
                        session: dir.display().to_string(),
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r.wrote));
    let files: Vec<FileInfo> = server.call(VolumeOp::ListFiles {
        name: "shared".into(),
        path: String::new(),
    });
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    for i in 0..16 {
        assert!(
            names.contains(&format!("own-{i}.txt").as_str()),
            "{names:?}"
        );
    }
    // Every version of report.txt is somewhere, once.
    let mut versions: Vec<String> = files
        .iter()
        .filter(|f| f.name.starts_with("report"))
        .map(|f| String::from_utf8(get(&server, "shared", &f.name)).unwrap())
        .collect();
    versions.sort();
    let mut want: Vec<String> = (0..16).map(|i| format!("version {i}")).collect();
    want.sort();
    assert_eq!(versions, want);
    // The history lists each conflict copy, and the copies are the files.
    let mut listed: Vec<String> = history(&server, "shared")
        .iter()
        .flat_map(|c| c.conflicts.iter().filter_map(|k| k.copy.clone()))
        .collect();
    listed.sort();
    let mut copies: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("report") && **n != "report.txt")
        .map(|n| format!("/{n}"))
        .collect();
    copies.sort();
    assert_eq!(copies.len(), 15, "{names:?}");
    assert_eq!(listed, copies);
    assert!(
        copies.iter().all(|c| c.contains(".conflict-")),
        "{copies:?}"
    );
}

/// Bad requests are clear errors and change nothing.
#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("home"), 0);
    create(&server, "v");
    let before = history(&server, "v");
    let err = |op: VolumeOp| {
        format!(
            "{:#}",
            server.try_call::<serde_json::Value>(op).unwrap_err()
        )
    };
    assert!(err(VolumeOp::Create {
        name: "../x".into(),
        quota_bytes: 0
    })
    .contains("bad volume name"));
    assert!(err(VolumeOp::Create {
        name: "v".into(),
        quota_bytes: 0
    })
    .contains("exists"));
    assert!(err(VolumeOp::Show {
        name: "nope".into()
    })
    .contains("no volume"));
    assert!(err(VolumeOp::Mount {
        name: "v".into(),
        mountpoint: "relative/dir".into(),
        commit: None,
    })
    .contains("absolute"));
    assert!(err(VolumeOp::Mount {
        name: "v".into(),
        mountpoint: tmp.path().join("missing"),
        commit: None,
    })
    .contains("mount point"));
    assert!(err(VolumeOp::Umount {
        session: "s-nope".into()
    })
    .contains("no session"));
    assert!(err(VolumeOp::Restore {
        name: "v".into(),
        seq: 99
    })
    .contains("no commit 99"));
    assert!(err(VolumeOp::RemoveFile {
        name: "v".into(),
        path: "missing".into()
    })
    .contains("no such path"));
    assert!(err(VolumeOp::GetFile {
        name: "v".into(),
        path: "../../etc/passwd".into()
    })
    .contains("passwd"));
    assert!(err(VolumeOp::Serve9pStart {
        volumes: vec!["v".into()],
        listen: "unix:relative.sock".into()
    })
    .contains("absolute"));
    assert!(err(VolumeOp::Serve9pStart {
        volumes: vec![],
        listen: "tcp:127.0.0.1:0".into()
    })
    .contains("at least one volume"));
    assert_eq!(history(&server, "v"), before);
    let sessions: Vec<SessionInfo> = server.call(VolumeOp::Sessions);
    assert!(sessions.is_empty());
}

/// Restore makes an old commit's tree the head as a new commit; history
/// keeps everything in between.
#[test]
fn restore_brings_an_old_commit_back_as_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("home"), 0);
    create(&server, "v");
    let put = |path: &str, bytes: &[u8]| {
        let mut client = snapshotter::volume_cmd::connect(&server.home).unwrap();
        client
            .call_sending::<CommitInfo>(
                VolumeOp::PutFile {
                    name: "v".into(),
                    path: path.into(),
                    mode: 0o644,
                },
                &mut &bytes[..],
            )
            .unwrap()
    };
    let first = put("a.txt", b"one");
    put("a.txt", b"two");
    put("b/c.txt", b"three");
    let restored: CommitInfo = server.call(VolumeOp::Restore {
        name: "v".into(),
        seq: first.seq,
    });
    assert_eq!(restored.kind, "restore");
    assert_eq!(restored.tree, first.tree);
    assert_eq!(get(&server, "v", "a.txt"), b"one");
    let files: Vec<FileInfo> = server.call(VolumeOp::ListFiles {
        name: "v".into(),
        path: String::new(),
    });
    assert_eq!(files.len(), 1, "{files:?}");
    let seqs: Vec<u64> = history(&server, "v").iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![5, 4, 3, 2, 1]);
}
