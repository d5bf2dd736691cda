//! Power cuts and failed syncs under a mount's upper layer, on a
//! filesystem that loses whatever was not synced ([`fixtures::powercut`]).
//! Every `fsync` the core acknowledged must survive a cut taken right
//! after it returned, and a failed sync must never be followed by one that
//! reports success for what was lost.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fixtures::powercut::{Action, Cut, Fault, Op};
use layerfs::cowfs::{Caller, CowFs, MountConfig, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn config(upper: &Path) -> MountConfig {
    MountConfig {
        upper_dir: upper.to_path_buf(),
        quota_bytes: 1 << 30,
    }
}

/// Defect 1 of issue 14: the journal's sync cleared its "unsynced" mark
/// before its `fdatasync`, so an fsync arriving while another's sync was
/// in progress returned at once — before the records it had to make
/// durable were on disk. Here the first sync is slowed down; the second
/// fsync must not return before the records are durable, so a cut taken
/// the moment it returns keeps the directory entry it made durable.
#[test]
fn an_fsync_during_another_sync_returns_only_once_its_records_are_durable() {
    if !fixtures::require::fuse() {
        return;
    }
    let (_tmp, store, tree, mut power) = common::upper_on_powercut();
    let upper = power.path().join("upper");
    let fs = Arc::new(CowFs::new(store.clone(), tree, config(&upper)).unwrap());
    let a = fs.create(ROOT_INO, b"a", 0o644, ROOT).unwrap().ino;
    fs.fsync(a).unwrap();
    // A new name, journaled but not synced.
    fs.mkdir(ROOT_INO, b"b", 0o755, ROOT).unwrap();
    // The next journal sync takes a while to reach the disk.
    let slow = power.add_fault(Fault::once(
        Op::Fsync,
        Some("/upper/journal"),
        Action::Delay(Duration::from_millis(1500)),
    ));
    let first = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.fsync(a))
    };
    while power.fired(slow) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // While that sync is under way, an fsync of the directory covers the
    // new name.
    fs.fsyncdir(ROOT_INO).unwrap();
    let first_done = first.is_finished();
    // The power goes the moment it returned.
    power.cut(Cut::DiscardUnsynced).unwrap();
    let _ = first.join();
    drop(fs);
    let (back, _) = CowFs::recover(store, tree, config(&power.path().join("upper"))).unwrap();
    back.lookup(ROOT_INO, b"b").unwrap_or_else(|e| {
        panic!(
            "the directory's fsync returned (the slow sync had {}finished), \
             yet its new entry b is gone after a power cut: errno {}",
            if first_done { "" } else { "not " },
            e.0
        )
    });
}

/// Defect 2 of issue 14 (the mount's side): after an fsync of a file
/// failed and its unsynced bytes were dropped (as Linux drops pages whose
/// write-back failed), a retried fsync must fail too, not report success
/// for bytes that are gone.
#[test]
fn a_failed_fsync_of_a_file_is_not_followed_by_a_false_success() {
    if !fixtures::require::fuse() {
        return;
    }
    let (_tmp, store, tree, power) = common::upper_on_powercut();
    let upper = power.path().join("upper");
    let fs = CowFs::new(store, tree, config(&upper)).unwrap();
    let f = fs.create(ROOT_INO, b"f", 0o644, ROOT).unwrap().ino;
    fs.write(f, 0, &[1u8; 100_000]).unwrap();
    fs.fsync(f).unwrap();
    fs.write(f, 0, &[2u8; 100_000]).unwrap();
    power.add_fault(Fault::once(
        Op::Fsync,
        Some("/upper/data/"),
        Action::FailAndForget(libc::EIO),
    ));
    assert!(fs.fsync(f).is_err(), "the injected failure is reported");
    let retry = fs.fsync(f);
    assert!(
        retry.is_err(),
        "a retried fsync reported success for bytes the failed one lost"
    );
}

/// The same for the journal: once a journal sync failed (its records may
/// be lost), no later sync may claim they are durable.
#[test]
fn a_failed_journal_sync_is_not_followed_by_a_false_success() {
    if !fixtures::require::fuse() {
        return;
    }
    let (_tmp, store, tree, power) = common::upper_on_powercut();
    let upper = power.path().join("upper");
    let fs = CowFs::new(store, tree, config(&upper)).unwrap();
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, ROOT).unwrap().ino;
    fs.fsyncdir(d).unwrap();
    fs.mkdir(d, b"e", 0o755, ROOT).unwrap();
    power.add_fault(Fault::once(
        Op::Fsync,
        Some("/upper/journal"),
        Action::FailAndForget(libc::EIO),
    ));
    assert!(fs.fsyncdir(d).is_err(), "the injected failure is reported");
    assert!(
        fs.fsyncdir(d).is_err(),
        "a retried sync reported success for journal records the failed one lost"
    );
}
