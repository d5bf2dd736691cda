//! Reload end to end, over real FUSE mounts: a session moves onto the
//! newest head while a process has a file of it open for reading and its
//! working directory inside it. The open file keeps reading what it
//! opened, the working directory stays valid and shows the new head, the
//! session's uncommitted changes stay (uncommitted), and a conflict with
//! the head keeps both versions and is listed. An old commit mounts
//! read-only.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Cleanup, Server};
use snapshotter::volume_api::{CommitInfo, ReloadResult, SessionInfo, VolumeOp};

fn reload(server: &Server, dir: &Path) -> ReloadResult {
    let mut results: Vec<ReloadResult> = server.call(VolumeOp::Reload {
        target: dir.display().to_string(),
    });
    assert_eq!(results.len(), 1);
    results.remove(0)
}

/// Commits `files` (path, contents) through a session of its own.
fn commit_files(server: &Server, dir: &Path, files: &[(&str, &str)]) {
    server.mount("data", dir);
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    let committed = server.umount(dir);
    assert!(committed.wrote);
}

#[test]
fn reload_keeps_open_files_and_working_directories() {
    if !fixtures::require::fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let _cleanup = Cleanup(&[&a, &b, &c]);
    let server = Server::start(&tmp.path().join("home"), 0);
    let _: serde_json::Value = server.call(VolumeOp::Create {
        name: "data".into(),
        quota_bytes: 0,
    });
    commit_files(
        &server,
        &a,
        &[("dir/x.txt", "first version\n"), ("dir/old.txt", "old\n")],
    );

    // The sandbox: a shell whose working directory is in the volume and
    // which holds dir/x.txt open; it waits for a line before reading.
    server.mount("data", &b);
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && exec 3<x.txt && echo ready && read go && \
             echo \"open: $(cat <&3)\" && echo \"by name: $(cat x.txt)\" && \
             echo \"listing: $(ls | tr '\\n' ' ')\"",
        )
        .arg("sh")
        .arg(b.join("dir"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(shell.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // The session's own change, not committed.
    std::fs::write(b.join("mine.txt"), "uncommitted\n").unwrap();

    // Meanwhile another session changes the head.
    commit_files(
        &server,
        &c,
        &[("dir/x.txt", "second version\n"), ("dir/new.txt", "new\n")],
    );
    let head_before: Vec<CommitInfo> = server.call(VolumeOp::History {
        name: "data".into(),
        limit: Some(1),
    });

    let reloaded = reload(&server, &b);
    assert!(reloaded.conflicts.is_empty(), "{reloaded:?}");
    assert_eq!(reloaded.head.seq, head_before[0].seq);
    assert!(reloaded.entries_changed >= 2, "{reloaded:?}");

    let mut stdin = shell.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(shell.wait().unwrap().success());
    assert_eq!(
        rest,
        [
            "open: first version",
            "by name: second version",
            "listing: new.txt old.txt x.txt ",
        ]
    );
    // The uncommitted change is still there, and still uncommitted.
    assert_eq!(
        std::fs::read_to_string(b.join("mine.txt")).unwrap(),
        "uncommitted\n"
    );
    let head_after: Vec<CommitInfo> = server.call(VolumeOp::History {
        name: "data".into(),
        limit: Some(1),
    });
    assert_eq!(
        head_after[0].seq, head_before[0].seq,
        "a reload commits nothing"
    );

    // A conflict: both change dir/x.txt; the reload keeps both versions.
    std::fs::write(b.join("dir/x.txt"), "b's version\n").unwrap();
    commit_files(&server, &c, &[("dir/x.txt", "c's version\n")]);
    let reloaded = reload(&server, &b);
    assert_eq!(reloaded.conflicts.len(), 1, "{reloaded:?}");
    let conflict = &reloaded.conflicts[0];
    assert_eq!(conflict.path, "/dir/x.txt");
    let copy = conflict.copy.clone().expect("a conflict copy");
    let copy = copy.trim_start_matches('/').to_string();
    assert!(copy.starts_with("dir/x.conflict-"), "{copy}");
    assert_eq!(
        std::fs::read_to_string(b.join("dir/x.txt")).unwrap(),
        "c's version\n"
    );
    assert_eq!(
        std::fs::read_to_string(b.join(&copy)).unwrap(),
        "b's version\n"
    );

    // Ending the session commits what it holds, with no further conflict.
    let committed = server.umount(&b);
    assert!(committed.wrote);
    assert!(committed.head.conflicts.is_empty(), "{committed:?}");
    server.mount("data", &a);
    for (path, want) in [
        ("mine.txt", "uncommitted\n"),
        ("dir/x.txt", "c's version\n"),
        (copy.as_str(), "b's version\n"),
        ("dir/new.txt", "new\n"),
        ("dir/old.txt", "old\n"),
    ] {
        assert_eq!(
            std::fs::read_to_string(a.join(path)).unwrap(),
            want,
            "{path}"
        );
    }
    server.umount(&a);
}

#[test]
fn an_old_commit_mounts_read_only() {
    if !fixtures::require::fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, old) = (tmp.path().join("a"), tmp.path().join("old"));
    let _cleanup = Cleanup(&[&a, &old]);
    let server = Server::start(&tmp.path().join("home"), 0);
    let _: serde_json::Value = server.call(VolumeOp::Create {
        name: "data".into(),
        quota_bytes: 0,
    });
    commit_files(&server, &a, &[("f.txt", "one\n")]);
    let first: Vec<CommitInfo> = server.call(VolumeOp::History {
        name: "data".into(),
        limit: Some(1),
    });
    commit_files(&server, &a, &[("f.txt", "two\n"), ("g.txt", "g\n")]);

    std::fs::create_dir_all(&old).unwrap();
    let view: SessionInfo = server.call(VolumeOp::Mount {
        name: "data".into(),
        mountpoint: old.clone(),
        commit: Some(first[0].seq),
    });
    assert_eq!(view.commit, Some(first[0].seq));
    assert_eq!(std::fs::read_to_string(old.join("f.txt")).unwrap(), "one\n");
    assert!(!old.join("g.txt").exists());
    let refused = std::fs::write(old.join("f.txt"), "three\n").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
    // Ending it commits nothing.
    let head: Vec<CommitInfo> = server.call(VolumeOp::History {
        name: "data".into(),
        limit: Some(1),
    });
    let ended = server.umount(&old);
    assert!(!ended.wrote);
    assert_eq!(ended.head.seq, head[0].seq);
    // A commit that does not exist is a clear error.
    let missing = server
        .try_call::<SessionInfo>(VolumeOp::Mount {
            name: "data".into(),
            mountpoint: old.clone(),
            commit: Some(999),
        })
        .unwrap_err();
    assert!(
        format!("{missing:#}").contains("no commit 999"),
        "{missing:#}"
    );
}
