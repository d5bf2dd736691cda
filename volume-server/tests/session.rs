//! Sessions: a sandbox's writes reach the volume at teardown with nothing
//! asked of it, survive the server's store being closed and opened again,
//! and concurrent sessions' changes all land (a same-file clash keeps both
//! versions).

use std::path::Path;
use std::sync::Arc;

use cas::{OpenOptions, Store, StoreConfig};
use fixtures::workload::Rng;
use layerfs::cowfs::{Caller, CowFs, MountConfig, DEFAULT_INODE_QUOTA, ROOT_INO};
use volume_server::{Session, Volumes};

const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn config(dir: &Path, name: &str) -> MountConfig {
    MountConfig {
        upper_dir: dir.join(name),
        quota_bytes: 1 << 30,
        inode_quota: DEFAULT_INODE_QUOTA,
    }
}

fn put(fs: &CowFs, name: &str, bytes: &[u8]) {
    let ino = match fs.lookup(ROOT_INO, name.as_bytes()) {
        Ok(st) => {
            fs.open(st.ino, true).unwrap();
            st.ino
        }
        Err(_) => {
            fs.create(ROOT_INO, name.as_bytes(), 0o644, ROOT)
                .unwrap()
                .ino
        }
    };
    for (i, piece) in bytes.chunks(1 << 20).enumerate() {
        assert_eq!(fs.write(ino, (i << 20) as u64, piece).unwrap(), piece.len());
    }
    fs.release(ino);
}

fn get(fs: &CowFs, name: &str) -> Vec<u8> {
    let st = fs.lookup(ROOT_INO, name.as_bytes()).unwrap();
    fs.open(st.ino, false).unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < st.size {
        let got = fs.read(st.ino, out.len() as u64, 1 << 20).unwrap();
        assert!(!got.is_empty());
        out.extend_from_slice(&got);
    }
    fs.release(st.ino);
    out
}

/// The seeds' scenario: 50 MiB of random data and a text file written, the
/// session torn down with no explicit commit, the store closed; a new
/// session on the reopened store reads both back.
#[test]
fn a_torn_down_session_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("store");
    let big = Rng::new(fixtures::workload::seed()).bytes(50 << 20);
    let text = b"results: 42\n".to_vec();
    {
        let store = Store::init(&home, StoreConfig::default()).unwrap();
        let volumes = Arc::new(Volumes::new(store));
        volumes.create("results", 0).unwrap();
        let session =
            Session::open(volumes.clone(), "results", "s1", config(tmp.path(), "s1")).unwrap();
        put(session.fs(), "data.bin", &big);
        put(session.fs(), "notes.txt", &text);
        let closed = session.close().unwrap();
        assert!(closed.wrote);
        assert_eq!(closed.head.commit.record.paths_changed, 2);
    }
    let store = Store::open(&home, OpenOptions::default()).unwrap();
    let volumes = Arc::new(Volumes::new(store));
    let session =
        Session::open(volumes.clone(), "results", "s2", config(tmp.path(), "s2")).unwrap();
    assert_eq!(
        blake3::hash(&get(session.fs(), "data.bin")),
        blake3::hash(&big)
    );
    assert_eq!(get(session.fs(), "notes.txt"), text);
    // Nothing changed: closing writes no commit.
    assert!(!session.close().unwrap().wrote);
    assert_eq!(volumes.history("results", 10).unwrap().len(), 2);
}

/// Two sessions at once: their own files both land, a file both wrote
/// keeps both versions, and a session's second commit carries only what
/// changed since its first.
#[test]
fn concurrent_sessions_merge_and_later_commits_carry_only_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    let volumes = Arc::new(Volumes::new(store));
    volumes.create("shared", 0).unwrap();
    let a = Session::open(volumes.clone(), "shared", "a", config(tmp.path(), "a")).unwrap();
    let b = Session::open(volumes.clone(), "shared", "b", config(tmp.path(), "b")).unwrap();
    put(a.fs(), "from-a", b"a");
    put(b.fs(), "from-b", b"b");
    put(a.fs(), "both.txt", b"version a");
    put(b.fs(), "both.txt", b"version b");
    a.commit().unwrap();
    let merged = b.commit().unwrap();
    assert_eq!(merged.head.commit.record.conflicts.len(), 1);
    let copy = merged.head.commit.record.conflicts[0].copy.clone().unwrap();
    assert!(
        copy.starts_with("/both.conflict-") && copy.ends_with("-b.txt"),
        "{copy}"
    );

    // a changes one more file: its next commit changes that path alone.
    put(a.fs(), "later", b"l");
    let next = a.commit().unwrap();
    assert_eq!(next.head.commit.record.paths_changed, 1);
    assert!(next.head.commit.record.conflicts.is_empty());
    a.close().unwrap();
    b.close().unwrap();

    let c = Session::open(volumes.clone(), "shared", "c", config(tmp.path(), "c")).unwrap();
    let fs = c.fs();
    assert_eq!(get(fs, "from-a"), b"a");
    assert_eq!(get(fs, "from-b"), b"b");
    assert_eq!(get(fs, "later"), b"l");
    assert_eq!(get(fs, "both.txt"), b"version a");
    assert_eq!(get(fs, copy.trim_start_matches('/')), b"version b");
}

/// A server that stops without closing its sessions (a crash): each
/// session's upper layer is recovered from its journal, with everything
/// fsync'd, and its commit brings that into the volume — on top of what it
/// had committed before, without applying that twice.
#[test]
fn a_session_left_open_by_a_crash_is_recovered_and_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("store");
    {
        let store = Store::init(&home, StoreConfig::default()).unwrap();
        let volumes = Arc::new(Volumes::new(store));
        volumes.create("v", 0).unwrap();
        let s = Session::open(volumes.clone(), "v", "s1", config(tmp.path(), "s1")).unwrap();
        put(s.fs(), "committed", b"first");
        s.commit().unwrap();
        put(s.fs(), "synced", b"fsync'd");
        let ino = s.fs().lookup(ROOT_INO, b"synced").unwrap().ino;
        s.fs().fsync(ino).unwrap();
        // The session, its mount and the store go without a close.
        drop(s);
    }
    let store = Store::open(&home, OpenOptions::default()).unwrap();
    let volumes = Arc::new(Volumes::new(store));
    // Nothing of the second write is in the volume yet.
    assert_eq!(volumes.history("v", 10).unwrap().len(), 2);
    let s = Session::recover(volumes.clone(), "v", "s1", config(tmp.path(), "s1")).unwrap();
    assert_eq!(get(s.fs(), "synced"), b"fsync'd");
    let closed = s.close().unwrap();
    assert!(closed.wrote);
    assert_eq!(closed.head.commit.record.paths_changed, 1);
    assert!(closed.head.commit.record.conflicts.is_empty());
    let c = Session::open(volumes.clone(), "v", "c", config(tmp.path(), "c")).unwrap();
    assert_eq!(get(c.fs(), "committed"), b"first");
    assert_eq!(get(c.fs(), "synced"), b"fsync'd");
    // A session that is not there is a clear error.
    let missing = Session::recover(volumes, "v", "nobody", config(tmp.path(), "n"));
    assert!(matches!(missing, Err(volume_server::Error::Session(_))));
}

/// A commit's count of paths changed is what a diff of the head before
/// and after finds, whether the session's capture counted it (its
/// directories patched over the base) or the commit diffed (after a
/// reload, after another session's commit): checked over rounds that
/// create, rewrite and remove files of a directory large enough to be
/// paged.
#[test]
fn commits_count_the_paths_they_change() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    let volumes = Arc::new(Volumes::new(store.clone()));
    volumes.create("data", 0).unwrap();
    let a = Session::open(volumes.clone(), "data", "a", config(tmp.path(), "a")).unwrap();
    for i in 0..1200 {
        put(a.fs(), &format!("f{i:04}"), format!("{i}").as_bytes());
    }
    a.commit().unwrap();
    let b = Session::open(volumes.clone(), "data", "b", config(tmp.path(), "b")).unwrap();
    let mut rng = Rng::new(7);
    for round in 0..12 {
        let session = if round % 4 == 3 { &b } else { &a };
        for _ in 0..1 + rng.below(20) {
            let name = format!("f{:04}", rng.below(1300));
            if rng.below(5) == 0 {
                let _ = session.fs().unlink(ROOT_INO, name.as_bytes());
            } else {
                put(session.fs(), &name, format!("round {round}").as_bytes());
            }
        }
        let before = volumes.head("data").unwrap();
        let committed = session.commit().unwrap();
        let after = committed.head.commit;
        if committed.wrote {
            let diffed = layerfs::diff_trees(&store, before.commit.tree, after.tree)
                .unwrap()
                .len() as u64;
            assert_eq!(after.record.paths_changed, diffed, "round {round}");
        }
        if round % 3 == 2 {
            a.reload().unwrap();
        }
    }
    a.close().unwrap();
    b.close().unwrap();
}
