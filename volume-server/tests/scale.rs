//! Cost follows change: on a volume of 1,000,000 files (built directly in
//! the store; `STRATA_VOLUME_FILES` sets another count) a session mounts
//! by reading one directory node, a commit of 10 changed files reads and
//! writes only their directories and the root, and a reload onto a head
//! that changed 10 other files compares only the directories the session
//! loaded on changed paths. Timings are printed, not asserted
//! (`benches/run.sh volume` measures them).

use std::sync::Arc;
use std::time::Instant;

use cas::{ChunkId, Chunking, Store};
use layerfs::cowfs::{CowFs, MountConfig, ROOT_INO};
use layerfs::memtree::{implicit_dir_attrs, MemKind, MemNode};
use layerfs::tree::InodeKind;
use layerfs::MemTree;
use volume_server::{CommitKind, Session, Volumes};

const PER_DIR: usize = 1000;

/// A tree of `files` 4 KiB files (one shared blob), `PER_DIR` to a
/// directory `dNNNN/fNNNN`.
fn build(store: &Store, files: usize) -> ChunkId {
    let writer = store.writer("scale fixture");
    let bytes = vec![7u8; 4096];
    let blob = writer
        .write_blob(&mut &bytes[..], Chunking::ContentDefined)
        .unwrap();
    let mut dir_attrs = implicit_dir_attrs();
    dir_attrs.mode = 0o755;
    let mut file_attrs = dir_attrs.clone();
    file_attrs.mode = 0o644;
    let mut tree = MemTree::new(dir_attrs.clone());
    for i in 0..files {
        let path = format!("d{:04}/f{:04}", i / PER_DIR, i % PER_DIR);
        tree.insert(
            path.as_bytes(),
            MemNode {
                attrs: file_attrs.clone(),
                kind: MemKind::Other(InodeKind::File {
                    size: bytes.len() as u64,
                    blob: Some(blob.id),
                }),
            },
            &dir_attrs,
        )
        .unwrap();
    }
    let root = tree.store(&writer).unwrap();
    writer.commit().unwrap();
    root
}

fn config(dir: &std::path::Path) -> MountConfig {
    MountConfig {
        upper_dir: dir.to_path_buf(),
        quota_bytes: 1 << 40,
        inode_quota: 1 << 40,
    }
}

/// Writes `text` over the file at `path` (from the root) of `fs`.
fn change(fs: &CowFs, path: &str, text: &str) {
    let mut at = ROOT_INO;
    for part in path.split('/') {
        at = fs.lookup(at, part.as_bytes()).unwrap().ino;
    }
    fs.open(at, true).unwrap();
    fs.write(at, 0, text.as_bytes()).unwrap();
    fs.release(at);
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[test]
fn a_million_file_volume_costs_what_changed() {
    let files: usize = std::env::var("STRATA_VOLUME_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::init(&tmp.path().join("store"), cas::StoreConfig::default()).unwrap();
    let started = Instant::now();
    let tree = build(&store, files);
    println!("\nbuilt a tree of {files} files in {:.0} ms", ms(started));
    let volumes = Arc::new(Volumes::new(store.clone()));
    let head = volumes.create("big", 0).unwrap();
    volumes
        .replace("big", &head, tree, CommitKind::Edit, "fixture")
        .unwrap()
        .expect("the head did not move");

    // Mounting reads the root node alone.
    let started = Instant::now();
    let a = Session::open(volumes.clone(), "big", "a", config(&tmp.path().join("a"))).unwrap();
    let mount_ms = ms(started);
    let b = Session::open(volumes.clone(), "big", "b", config(&tmp.path().join("b"))).unwrap();

    // Session a changes 10 files in 10 directories and commits.
    for i in 0..10 {
        change(
            a.fs(),
            &format!("d{:04}/f0001", i * 37 % (files / PER_DIR)),
            "a\n",
        );
    }
    let started = Instant::now();
    let committed = a.commit().unwrap();
    let commit_ms = ms(started);
    assert!(committed.wrote);
    // The 10 files (their directories' own attributes did not change).
    assert_eq!(committed.head.commit.record.paths_changed, 10);

    // Session b changed 10 other files meanwhile; it reloads onto a's
    // commit: only the root is compared (a's directories are not loaded
    // in b: they switch node whole).
    for i in 0..10 {
        change(
            b.fs(),
            &format!("d{:04}/f0002", i * 53 % (files / PER_DIR) + 1),
            "b\n",
        );
    }
    let started = Instant::now();
    let reloaded = b.reload().unwrap();
    let reload_ms = ms(started);
    assert!(reloaded.conflicts.is_empty());
    assert!(
        reloaded.rebased.dirs_compared <= 1,
        "{:?}",
        reloaded.rebased
    );
    // b sees a's change and keeps its own, uncommitted.
    let read = |fs: &CowFs, path: &str| {
        let mut at = ROOT_INO;
        for part in path.split('/') {
            at = fs.lookup(at, part.as_bytes()).unwrap().ino;
        }
        fs.read(at, 0, 10).unwrap()
    };
    assert_eq!(read(b.fs(), "d0000/f0001"), b"a\n");
    assert_eq!(read(b.fs(), "d0001/f0002"), b"b\n");
    let committed_b = b.commit().unwrap();
    assert!(committed_b.head.commit.record.conflicts.is_empty());
    assert_eq!(committed_b.head.commit.record.paths_changed, 10);
    println!(
        "{files} files: mount {mount_ms:.1} ms, commit of 10 files {commit_ms:.1} ms, \
         reload onto 10 changed files {reload_ms:.1} ms (debug builds are slower)"
    );
}
