//! A mount holds a bounded number of open data files, however many files a
//! sandbox writes, keeps open or leaves behind for recovery: the node
//! daemon serves every mount from one process, whose descriptor limit a
//! sandbox writing many small files must not exhaust (20,000 on this
//! machine: a `tar x` of a `node_modules` would have stopped every mount).
//!
//! One test in this binary: descriptors are counted for the whole process.

mod common;

use common::{cow_mount, store};
use layerfs::cowfs::{Caller, CowFs, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const FILES: usize = 3_000;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// `FILES` files under `dir`, each written with its own bytes; released
/// (closed by the sandbox) unless `keep_open`.
fn write_files(fs: &CowFs, dir: u64, keep_open: bool) -> Vec<u64> {
    let mut inos = Vec::new();
    for i in 0..FILES {
        let name = format!("f{i}");
        let ino = fs.create(dir, name.as_bytes(), 0o644, ROOT).unwrap().ino;
        fs.open(ino, false).unwrap();
        fs.write(ino, 0, contents(i).as_bytes()).unwrap();
        if !keep_open {
            fs.release(ino);
        }
        inos.push(ino);
    }
    inos
}

fn contents(i: usize) -> String {
    format!("file {i}\n")
}

fn check_files(fs: &CowFs, dir: u64) {
    for i in 0..FILES {
        let ino = fs.lookup(dir, format!("f{i}").as_bytes()).unwrap().ino;
        let want = contents(i);
        let got = fs.read(ino, 0, 64).unwrap();
        assert_eq!(got, want.as_bytes(), "f{i}");
    }
}

#[test]
fn open_data_files_stay_bounded_through_writes_syncs_snapshots_and_recovery() {
    let (tmp, store) = store();
    let tree = common::empty_image(&store, "img", tmp.path());
    let upper = tmp.path().join("upper");
    let bound = layerfs::cowfs::OPEN_DATA_FILES + 64;
    let before = open_descriptors();

    let fs = cow_mount(&store, tree, &upper);
    // Written and closed, as `tar x` does.
    let closed = fs.mkdir(ROOT_INO, b"closed", 0o755, ROOT).unwrap().ino;
    write_files(&fs, closed, false);
    let held = open_descriptors() - before;
    assert!(
        held <= bound,
        "{held} descriptors held for {FILES} closed files"
    );
    check_files(&fs, closed);

    // Held open by the sandbox, then each synced: every sync reaches its
    // file (a descriptor closed for the bound is opened again).
    let open = fs.mkdir(ROOT_INO, b"open", 0o755, ROOT).unwrap().ino;
    let inos = write_files(&fs, open, true);
    let held = open_descriptors() - before;
    assert!(
        held <= bound,
        "{held} descriptors held for {FILES} open files"
    );
    for &ino in &inos {
        fs.fsync(ino).unwrap();
    }
    check_files(&fs, open);
    for &ino in &inos {
        fs.release(ino);
    }

    // A snapshot seals every written file; until its layers are
    // converted, reads of them still work and descriptors stay bounded.
    let capture = fs.capture(b"").unwrap();
    let writer = store.writer("descriptors test");
    let stored = capture.store(&store, &writer).unwrap();
    writer.commit().unwrap();
    let held = open_descriptors() - before;
    assert!(held <= bound, "{held} descriptors held by sealed layers");
    check_files(&fs, closed);
    fs.converted(&stored).unwrap();
    // Written again after the snapshot, then the mount stops without a
    // snapshot: recovery replays its journal.
    let again = fs.mkdir(ROOT_INO, b"again", 0o755, ROOT).unwrap().ino;
    write_files(&fs, again, false);
    fs.fsyncdir(ROOT_INO).unwrap();
    drop(fs);
    let leaked = open_descriptors().saturating_sub(before);
    assert!(
        leaked <= 64,
        "{leaked} descriptors left after the mount ended"
    );

    let config = layerfs::cowfs::MountConfig {
        upper_dir: upper.clone(),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    };
    let (fs, report) = CowFs::recover(store.clone(), tree, config).unwrap();
    assert_eq!(report.skipped, 0);
    let held = open_descriptors() - before;
    assert!(held <= bound, "{held} descriptors held after recovery");
    for name in ["closed", "open", "again"] {
        let dir = fs.lookup(ROOT_INO, name.as_bytes()).unwrap().ino;
        check_files(&fs, dir);
    }
    let held = open_descriptors() - before;
    assert!(held <= bound, "{held} descriptors held after reading back");
}

/// A file cut shorter must have its cut synced before the journal records
/// it; when the file is removed before that sync and its descriptor was
/// closed (the sandbox had released it), there is nothing left to sync:
/// the journal syncs on, and the mount's later syncs succeed.
#[test]
fn a_file_cut_shorter_then_removed_before_the_next_sync_leaves_the_journal_working() {
    let (tmp, store) = store();
    let tree = common::empty_image(&store, "img", tmp.path());
    let fs = cow_mount(&store, tree, &tmp.path().join("upper"));
    for name in [&b"gone"[..], b"kept"] {
        let ino = fs.create(ROOT_INO, name, 0o644, ROOT).unwrap().ino;
        fs.write(ino, 0, &vec![5u8; 200_000]).unwrap();
        fs.release(ino);
    }
    let gone = fs.lookup(ROOT_INO, b"gone").unwrap().ino;
    let cut = layerfs::cowfs::SetAttr {
        size: Some(10),
        ..Default::default()
    };
    // `ftruncate` on an open file, then close: the release closes the
    // descriptor the cut used.
    fs.open(gone, false).unwrap();
    fs.setattr(gone, cut).unwrap();
    fs.release(gone);
    fs.unlink(ROOT_INO, b"gone").unwrap();
    fs.fsyncdir(ROOT_INO)
        .expect("the journal syncs after a cut file was removed");
    let kept = fs.lookup(ROOT_INO, b"kept").unwrap().ino;
    fs.open(kept, false).unwrap();
    fs.write(kept, 0, b"after").unwrap();
    fs.fsync(kept).expect("later syncs succeed");
    fs.release(kept);
}
