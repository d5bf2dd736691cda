//! Rebasing a live mount (a volume session's reload): the mount ends up
//! showing exactly the merged tree; loaded directories keep their inodes
//! (a working directory stays valid); an open file keeps reading what it
//! opened; attribute-only changes keep the inode; only directories on
//! changed paths are compared; a crash afterwards recovers onto the new
//! tree with what came after; and what cannot be rebased is refused with
//! nothing changed.

mod common;

use std::path::Path;

use cas::{ChunkId, Store};
use common::{dump, import_dir, lookup, store, write};
use layerfs::cowfs::{Caller, CowFs, Errno, MountConfig, SetAttr};

const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn config(dir: &Path) -> MountConfig {
    MountConfig {
        upper_dir: dir.to_path_buf(),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    }
}

/// Captures and stores the whole mount as a commit does; returns its tree.
fn commit(fs: &CowFs, store: &Store) -> ChunkId {
    let capture = fs.capture(b"").unwrap();
    let writer = store.writer("rebase test");
    let stored = capture.store(store, &writer).unwrap();
    writer.commit().unwrap();
    fs.converted(&stored).unwrap();
    stored.tree
}

/// Captures a frozen mount and stores the capture (as a reload does).
fn capture_frozen(
    frozen: &mut layerfs::cowfs::Frozen<'_>,
    store: &Store,
) -> layerfs::cowfs::Stored {
    let capture = frozen.capture().unwrap();
    let writer = store.writer("rebase test");
    let stored = capture.store(store, &writer).unwrap();
    writer.commit().unwrap();
    frozen.converted(&stored).unwrap();
    stored
}

fn source(tmp: &Path) -> std::path::PathBuf {
    let src = tmp.join("src");
    for dir in ["work", "data/deep", "keep", "gone/sub"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    std::fs::write(src.join("work/x"), b"x, first version\n").unwrap();
    std::fs::write(src.join("work/y"), b"y\n").unwrap();
    std::fs::write(src.join("data/deep/z"), b"z\n").unwrap();
    std::fs::write(src.join("keep/k"), b"k\n").unwrap();
    std::fs::write(src.join("gone/sub/g"), b"g\n").unwrap();
    std::fs::write(src.join("top"), b"top\n").unwrap();
    src
}

fn create_file(fs: &CowFs, dir: u64, name: &str, bytes: &[u8]) -> u64 {
    let ino = fs.create(dir, name.as_bytes(), 0o644, ROOT).unwrap().ino;
    write(fs, ino, 0, bytes);
    ino
}

fn read_all(fs: &CowFs, ino: u64) -> Vec<u8> {
    fs.read(ino, 0, 1 << 20).unwrap()
}

#[test]
fn a_rebased_mount_shows_the_merged_tree_and_keeps_what_is_in_use() {
    let (tmp, store) = store();
    let base = import_dir(&store, "vol", &source(tmp.path()));

    // Another session changes the volume: the head moves to `theirs`.
    let other = CowFs::new(store.clone(), base, config(&tmp.path().join("other"))).unwrap();
    let x = lookup(&other, "work/x");
    other.open(x, true).unwrap();
    other.write(x, 0, b"x, their version\n").unwrap();
    other.release(x);
    create_file(&other, lookup(&other, "work"), "theirs-new", b"new\n");
    other.unlink(lookup(&other, "work"), b"y").unwrap();
    create_file(&other, lookup(&other, "data/deep"), "z2", b"z2\n");
    other
        .setattr(
            lookup(&other, "keep/k"),
            SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .unwrap();
    let gone = lookup(&other, "gone/sub");
    other.unlink(gone, b"g").unwrap();
    other.rmdir(lookup(&other, "gone"), b"sub").unwrap();
    other.rmdir(layerfs::cowfs::ROOT_INO, b"gone").unwrap();
    other
        .mkdir(layerfs::cowfs::ROOT_INO, b"fresh", 0o755, ROOT)
        .unwrap();
    let theirs = commit(&other, &store);

    // This session: its own change, a file open for reading, a directory
    // in use (a working directory), a deep directory it loaded.
    let upper = tmp.path().join("mine");
    let fs = CowFs::new(store.clone(), base, config(&upper)).unwrap();
    let work = lookup(&fs, "work");
    create_file(&fs, work, "mine", b"my file\n");
    let open_x = lookup(&fs, "work/x");
    fs.open(open_x, false).unwrap();
    let keep_k = lookup(&fs, "keep/k");
    let gone_sub = lookup(&fs, "gone/sub");

    // Reload: capture under the freeze, merge onto the head, rebase.
    let mut frozen = fs.freeze();
    let ours = capture_frozen(&mut frozen, &store).tree;
    let writer = store.writer("rebase test");
    let merged = layerfs::merge_trees(&store, &writer, base, ours, theirs, "t").unwrap();
    writer.commit().unwrap();
    assert!(merged.conflicts.is_empty(), "{:?}", merged.conflicts);
    let report = frozen.rebase(ours, merged.tree, Some(theirs)).unwrap();
    drop(frozen);

    // It shows exactly the merged tree.
    let fresh = CowFs::new(
        store.clone(),
        merged.tree,
        config(&tmp.path().join("fresh")),
    )
    .unwrap();
    assert_eq!(dump(&fs), dump(&fresh));
    assert_eq!(fs.lower(), merged.tree);
    // Directories in use keep their inodes; attribute-only changes keep
    // the file's inode; a changed file gets a new one.
    assert_eq!(lookup(&fs, "work"), work);
    assert_eq!(lookup(&fs, "keep/k"), keep_k);
    assert_eq!(fs.getattr(keep_k).unwrap().perm, 0o600);
    let new_x = lookup(&fs, "work/x");
    assert_ne!(new_x, open_x);
    assert_eq!(read_all(&fs, new_x), b"x, their version\n");
    assert_eq!(read_all(&fs, lookup(&fs, "work/mine")), b"my file\n");
    // The open file reads what it opened, until it is closed.
    assert_eq!(read_all(&fs, open_x), b"x, first version\n");
    fs.release(open_x);
    assert_eq!(fs.getattr(open_x).err(), Some(Errno::ENOENT));
    // The removed subtree is gone, inodes included.
    assert_eq!(fs.getattr(gone_sub).err(), Some(Errno::ENOENT));
    // Only directories on changed paths were compared: the root, work,
    // keep, gone's parent... never data/ (not loaded: swapped whole).
    assert!(report.dirs_compared <= 3, "{report:?}");
    assert!(report.entries_changed >= 5, "{report:?}");
    assert!(report.invalidate_entries.contains(&(work, b"x".to_vec())));

    // The mount goes on; what it does after is relative to the new tree.
    // Directory times come from the coarse clock (one tick is at most
    // 10 ms): wait past a tick so that work's new mtime differs from the
    // one the merge gave it, or the diff below rightly omits /work.
    std::thread::sleep(std::time::Duration::from_millis(25));
    create_file(&fs, work, "after", b"written after the reload\n");
    fs.unlink(work, b"theirs-new").unwrap();
    let after_dump = dump(&fs);
    let next = commit(&fs, &store);
    let diff = layerfs::diff_trees(&store, merged.tree, next).unwrap();
    let paths: Vec<&str> = diff.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/work", "/work/after", "/work/theirs-new"],
        "{diff:?}"
    );
    fs.fsyncdir(layerfs::cowfs::ROOT_INO).unwrap();
    drop(fs);

    // A crash: recovery, given the first lower tree, starts from the
    // rebase's tree and replays what came after.
    let (recovered, found) = CowFs::recover(store.clone(), base, config(&upper)).unwrap();
    assert_eq!(found.rebased, Some((merged.tree, Some(theirs))));
    assert_eq!(found.skipped, 0, "{found:?}");
    assert_eq!(recovered.lower(), merged.tree);
    assert_eq!(dump(&recovered), after_dump);
}

#[test]
fn a_mount_with_hard_links_is_refused_unchanged() {
    let (tmp, store) = store();
    let base = import_dir(&store, "vol", &source(tmp.path()));
    let fs = CowFs::new(store.clone(), base, config(&tmp.path().join("up"))).unwrap();
    let top = lookup(&fs, "top");
    fs.link(top, layerfs::cowfs::ROOT_INO, b"top-link").unwrap();
    let before = dump(&fs);
    let mut frozen = fs.freeze();
    let stored = capture_frozen(&mut frozen, &store);
    assert_eq!(
        frozen.rebase(stored.tree, base, None).err(),
        Some(Errno::EOPNOTSUPP)
    );
    drop(frozen);
    assert_eq!(dump(&fs), before);
    assert_eq!(fs.lower(), base);
}

#[test]
fn a_rebase_onto_a_large_directory_reads_only_what_changed() {
    // A directory of 20,000 files the mount never listed: a change to one
    // file in it swaps the directory's node, nothing is instantiated.
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..20_000 {
        std::fs::write(src.join(format!("many/f{i:05}")), format!("{i}\n")).unwrap();
    }
    let base = import_dir(&store, "vol", &src);
    let other = CowFs::new(store.clone(), base, config(&tmp.path().join("o"))).unwrap();
    let f = lookup(&other, "many/f00007");
    other.open(f, true).unwrap();
    other.write(f, 0, b"seven\n").unwrap();
    other.release(f);
    let theirs = commit(&other, &store);

    let fs = CowFs::new(store.clone(), base, config(&tmp.path().join("m"))).unwrap();
    // The root is loaded (a lookup in it), `many` is not.
    let many = lookup(&fs, "many");
    let mut frozen = fs.freeze();
    let stored = capture_frozen(&mut frozen, &store);
    let report = frozen.rebase(stored.tree, theirs, None).unwrap();
    drop(frozen);
    assert_eq!(report.dirs_compared, 1, "{report:?}");
    assert_eq!(lookup(&fs, "many"), many);
    assert_eq!(
        read_all(&fs, lookup(&fs, "many/f00007")),
        b"seven\n".to_vec()
    );
    assert_eq!(read_all(&fs, lookup(&fs, "many/f00008")), b"8\n".to_vec());
}
