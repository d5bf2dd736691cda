//! Volumes in the store: commits from many sessions at once all land, a
//! file written by several keeps every version (conflict copies, listed),
//! history reads back, retention and removal work, bad names are refused.

use std::sync::{Arc, Barrier};

use cas::{ChunkId, Chunking, Store, StoreConfig};
use layerfs::memtree::{MemKind, MemNode, MemTree};
use layerfs::tree::{Attrs, InodeKind};
use volume_server::{CommitKind, Volumes};

mod common;
use common::contents;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
    (dir, store)
}

/// `base` with files put at paths (as a session's capture would be).
fn with_files(store: &Store, base: ChunkId, files: &[(&str, &[u8])]) -> ChunkId {
    let writer = store.writer("test");
    let mut tree = MemTree::load(store, base).unwrap();
    for (path, bytes) in files {
        let blob = writer
            .write_blob(&mut &bytes[..], Chunking::ContentDefined)
            .unwrap();
        let node = MemNode {
            attrs: Attrs {
                mode: 0o644,
                ..Attrs::default()
            },
            kind: MemKind::Other(InodeKind::File {
                size: bytes.len() as u64,
                blob: Some(blob.id),
            }),
        };
        tree.insert(
            path.as_bytes(),
            node,
            &layerfs::memtree::implicit_dir_attrs(),
        )
        .unwrap();
    }
    tree.store(&writer).unwrap()
}

#[test]
fn sixteen_sessions_committing_at_once_lose_nothing() {
    let (_tmp, store) = store();
    let volumes = Arc::new(Volumes::new(store.clone()));
    let head = volumes.create("shared", 0).unwrap();
    let base = with_files(&store, head.commit.tree, &[("data/shared.txt", b"base")]);
    let head = volumes
        .replace("shared", &head, base, CommitKind::Edit, "test")
        .unwrap()
        .unwrap();
    let base = head.commit.tree;

    let sessions = 16;
    let barrier = Arc::new(Barrier::new(sessions));
    let threads: Vec<_> = (0..sessions)
        .map(|i| {
            let (volumes, store, barrier) = (volumes.clone(), store.clone(), barrier.clone());
            std::thread::spawn(move || {
                let own = format!("out/session-{i}.txt");
                let text = format!("version {i}");
                let ours = with_files(
                    &store,
                    base,
                    &[
                        (&own, text.as_bytes()),
                        ("data/shared.txt", text.as_bytes()),
                    ],
                );
                barrier.wait();
                let tag = format!("s{i}");
                volumes
                    .commit("shared", base, ours, &format!("session-{i}"), &tag)
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().all(|r| r.wrote));
    let retries: usize = results.iter().map(|r| r.retries).sum();
    eprintln!("16 concurrent commits: {retries} merges again after a lost race");

    let head = volumes.head("shared").unwrap();
    assert_eq!(head.commit.record.seq, 2 + sessions as u64);
    let files = contents(&store, head.commit.tree);
    // Every session's own file landed.
    for i in 0..sessions {
        let got = files.get(&format!("/out/session-{i}.txt"));
        assert_eq!(
            got.map(Vec::as_slice),
            Some(format!("version {i}").as_bytes())
        );
    }
    // Every version of the shared file survives: one under its name, the
    // others as conflict copies beside it.
    let mut versions: Vec<&[u8]> = files
        .iter()
        .filter(|(p, _)| p.starts_with("/data/shared"))
        .map(|(_, b)| b.as_slice())
        .collect();
    versions.sort();
    let mut expected: Vec<Vec<u8>> = (0..sessions)
        .map(|i| format!("version {i}").into_bytes())
        .collect();
    expected.sort();
    assert_eq!(
        versions,
        expected.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    // The conflicts listed across the history are exactly the copies.
    let history = volumes.history("shared", 100).unwrap();
    assert_eq!(history.len(), 2 + sessions);
    let mut listed: Vec<String> = history
        .iter()
        .flat_map(|c| c.record.conflicts.iter())
        .map(|c| c.copy.clone().unwrap())
        .collect();
    listed.sort();
    let mut copies: Vec<String> = files
        .keys()
        .filter(|p| p.starts_with("/data/shared.conflict-"))
        .cloned()
        .collect();
    copies.sort();
    assert_eq!(listed.len(), sessions - 1);
    assert_eq!(listed, copies);
}

#[test]
fn history_restore_retention_and_removal() {
    let (_tmp, store) = store();
    let volumes = Volumes::new(store.clone());
    let mut head = volumes.create("v", 1 << 20).unwrap();
    let first = head.commit.tree;
    for i in 0..5 {
        let ours = with_files(&store, head.commit.tree, &[(&format!("f{i}"), b"x")]);
        head = volumes
            .commit("v", head.commit.tree, ours, "t", "t")
            .unwrap()
            .head;
    }
    let history = volumes.history("v", 100).unwrap();
    let seqs: Vec<u64> = history.iter().map(|c| c.record.seq).collect();
    assert_eq!(seqs, vec![6, 5, 4, 3, 2, 1]);
    assert!(history.iter().all(|c| c.record.quota_bytes == 1 << 20));
    // A volume with a quota keeps its bytes in each commit.
    let bytes: Vec<Option<u64>> = history.iter().map(|c| c.record.bytes).collect();
    assert_eq!(bytes, [5, 4, 3, 2, 1, 0].map(Some));
    assert_eq!(history.last().unwrap().record.kind, CommitKind::Create);
    // A commit with nothing changed writes nothing.
    let same = volumes
        .commit("v", head.commit.tree, head.commit.tree, "t", "t")
        .unwrap();
    assert!(!same.wrote);
    // Restoring the first commit is a new commit with its tree.
    let restored = volumes
        .replace("v", &head, first, CommitKind::Restore, "t")
        .unwrap()
        .unwrap();
    assert_eq!(restored.commit.record.seq, 7);
    assert_eq!(restored.commit.record.paths_changed, 5);
    assert_eq!(restored.commit.record.bytes, Some(0));
    assert!(contents(&store, restored.commit.tree).is_empty());
    // A stale expected head is refused (None), not overwritten.
    assert!(volumes
        .replace("v", &head, first, CommitKind::Restore, "t")
        .unwrap()
        .is_none());

    assert!(matches!(
        volumes.create("v", 0),
        Err(volume_server::Error::Exists(_))
    ));
    for bad in ["", ".hidden", "a/b", "sp ace", &"x".repeat(129)] {
        assert!(
            matches!(
                volumes.create(bad, 0),
                Err(volume_server::Error::BadName(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(volumes.list().unwrap().len(), 1);
    volumes.remove("v").unwrap();
    assert!(matches!(
        volumes.head("v"),
        Err(volume_server::Error::NotFound(_))
    ));
    assert!(volumes.list().unwrap().is_empty());
}

#[test]
fn commits_past_the_retention_are_reclaimed_by_gc() {
    let (_tmp, store) = store();
    let volumes = Volumes::with_retention(store.clone(), 3);
    assert_eq!(volumes.keep_commits(), 3);
    let mut head = volumes.create("v", 0).unwrap();
    // Each commit rewrites one file with 1 MiB of its own (incompressible)
    // bytes, so each old version is garbage once its commit is let go.
    let version = |i: u64| -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1 << 20);
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        while bytes.len() < 1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        bytes
    };
    let mut trees = Vec::new();
    for i in 0..6 {
        let ours = with_files(&store, head.commit.tree, &[("data.bin", &version(i))]);
        head = volumes
            .commit("v", head.commit.tree, ours, "t", "t")
            .unwrap()
            .head;
        trees.push(head.commit.tree);
    }
    // Before GC every commit is still readable; restore reaches only the
    // kept ones.
    assert_eq!(volumes.history("v", 100).unwrap().len(), 7);
    assert!(matches!(
        volumes.restore("v", 3, "t"),
        Err(volume_server::Error::NoSuchCommit(_, 3))
    ));

    let report = store.gc().unwrap();
    // Versions 0..=2 (commits 2..=4) are let go: about 3 MiB.
    assert!(
        report.swept_bytes >= 3 << 20 && report.swept_bytes < 4 << 20,
        "{report:?}"
    );
    let history = volumes.history("v", 100).unwrap();
    let seqs: Vec<u64> = history.iter().map(|c| c.record.seq).collect();
    assert_eq!(seqs, vec![7, 6, 5], "the history ends where GC reclaimed");
    for (i, tree) in trees.iter().enumerate() {
        let kept = i >= 3;
        assert_eq!(
            store.locate(tree).unwrap().is_some(),
            kept,
            "commit of version {i}"
        );
        if kept {
            assert_eq!(contents(&store, *tree)["/data.bin"], version(i as u64));
        }
    }
    // Restoring a kept commit still works, and the store is whole.
    let restored = volumes.restore("v", 5, "t").unwrap();
    assert_eq!(
        contents(&store, restored.commit.tree)["/data.bin"],
        version(3)
    );
    let fsck = store.fsck(cas::FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(fsck.is_clean(), "{fsck:?}");

    // Removing the volume lets everything go.
    volumes.remove("v").unwrap();
    let report = store.gc().unwrap();
    assert!(report.swept_bytes >= 3 << 20, "{report:?}");
}
