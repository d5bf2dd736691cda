//! Faults under a mount's upper layer, injected by the filesystem it
//! lives on ([`fixtures::powercut`]): a write or a copy-up that fails
//! (ENOSPC, EIO) returns the error and changes nothing a reader sees.

mod common;

use fixtures::powercut::{Action, Fault, Op};
use layerfs::cowfs::{CowFs, MountConfig, ROOT_INO};

fn mount(upper: &std::path::Path, store: &cas::Store, tree: cas::ChunkId) -> CowFs {
    let config = MountConfig {
        upper_dir: upper.to_path_buf(),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    };
    CowFs::new(store.clone(), tree, config).unwrap()
}

/// Fails naming the first byte where `got` differs from `want`.
#[track_caller]
fn same(got: &[u8], want: &[u8], when: &str) {
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{when}: byte {at} (block {}) reads {} instead of {}",
            at / (64 << 10),
            got[at],
            want[at]
        );
    }
    assert_eq!(got.len(), want.len(), "{when}: length");
}

/// Defect 4 of issue 14: a write marked the blocks it fully covers as
/// present in the upper layer before writing them; when that write (or
/// the copy-up of a later block) failed, those blocks read as zeros
/// instead of the lower bytes.
#[test]
fn a_failed_write_over_lower_data_leaves_the_lower_bytes_readable() {
    if !fixtures::require::fuse() {
        return;
    }
    let (_tmp, store, tree, power) = common::upper_on_powercut();
    let fs = mount(&power.path().join("upper"), &store, tree);
    let big = fs.lookup(ROOT_INO, b"big").unwrap().ino;
    let lower = common::lower_big();
    fs.open(big, false).unwrap();

    // The data write itself fails: four whole blocks were to be written.
    let rule = power.add_fault(Fault::once(
        Op::Write,
        Some("/upper/data/"),
        Action::Fail(libc::ENOSPC),
    ));
    let err = fs.write(big, 0, &[9u8; 256 << 10]).unwrap_err();
    assert_eq!(err.0, libc::ENOSPC);
    assert_eq!(power.fired(rule), 1);
    same(
        &fs.read(big, 0, 1 << 20).unwrap(),
        &lower,
        "after a failed write over whole blocks",
    );

    // A copy-up fails after an earlier block was copied and a middle
    // block was covered: block 1 partly, block 2 wholly, block 3 partly.
    power.add_fault(Fault {
        op: Op::Write,
        path: Some("/upper/data/".into()),
        skip: 1,
        times: 1,
        action: Action::Fail(libc::EIO),
    });
    let start = (64 << 10) + 100;
    assert!(fs.write(big, start, &[7u8; 3 * (64 << 10)]).is_err());
    same(
        &fs.read(big, 0, 1 << 20).unwrap(),
        &lower,
        "after a failed copy-up",
    );

    // Once the fault is gone, the same write works.
    fs.write(big, start, &[7u8; 3 * (64 << 10)]).unwrap();
    let mut expected = lower.clone();
    expected[start as usize..start as usize + 3 * (64 << 10)].fill(7);
    same(
        &fs.read(big, 0, 1 << 20).unwrap(),
        &expected,
        "after the write",
    );
    fs.release(big);
}

/// What a fault under the upper layer must lead to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// The write fails with the error and changes nothing a reader sees;
    /// once the fault is gone the mount writes and syncs again.
    WriteFails,
    /// The operation itself succeeds but its record could not be written:
    /// every later sync fails (nothing is claimed durable that may not
    /// be) until the mount is recovered from its journal.
    SyncFailsUntilRecovered,
    /// The sync fails, and so does every later sync of that file or
    /// journal, until the mount is recovered.
    StickySyncFailure,
    /// Reads fail with the error, never wrong bytes.
    ReadFails,
    /// Everything succeeds, later.
    Slow,
}

/// The fault matrix under a mount's upper layer: for each fault its
/// written outcome holds; in every case what was synced before reads back
/// exactly after a recovery with the fault gone, and the mount works.
/// Prints the table RELIABILITY.md shows.
#[test]
fn every_fault_under_the_upper_layer_has_its_written_outcome() {
    use std::time::Duration;
    if !fixtures::require::fuse() {
        return;
    }
    let root = layerfs::cowfs::Caller { uid: 0, gid: 0 };
    let cases = [
        (
            "ENOSPC writing a data file",
            Fault::always(Op::Write, Some("/data/"), Action::Fail(libc::ENOSPC)),
            Outcome::WriteFails,
        ),
        (
            "EIO writing a data file",
            Fault::always(Op::Write, Some("/data/"), Action::Fail(libc::EIO)),
            Outcome::WriteFails,
        ),
        (
            "EIO appending to the journal",
            Fault::once(Op::Write, Some("/journal"), Action::Fail(libc::EIO)),
            Outcome::SyncFailsUntilRecovered,
        ),
        (
            "EIO at a data file's fsync (write-back error)",
            Fault::once(Op::Fsync, Some("/data/"), Action::FailAndForget(libc::EIO)),
            Outcome::StickySyncFailure,
        ),
        (
            "EIO at the journal's fsync",
            Fault::once(
                Op::Fsync,
                Some("/journal"),
                Action::FailAndForget(libc::EIO),
            ),
            Outcome::StickySyncFailure,
        ),
        (
            "EIO reading a data file",
            Fault::always(Op::Read, Some("/data/"), Action::Fail(libc::EIO)),
            Outcome::ReadFails,
        ),
        (
            "slow disk (every sync 300 ms)",
            Fault::always(Op::Fsync, None, Action::Delay(Duration::from_millis(300))),
            Outcome::Slow,
        ),
    ];
    let mut rows = Vec::new();
    for (name, fault, outcome) in cases {
        let (_tmp, store, tree, mut power) = common::upper_on_powercut();
        let upper = power.path().join("upper");
        let fs = mount(&upper, &store, tree);
        let f = fs.create(ROOT_INO, b"f", 0o644, root).unwrap().ino;
        let synced = vec![7u8; 200_000];
        fs.write(f, 0, &synced).unwrap();
        fs.fsync(f).unwrap();
        let fs = if outcome == Outcome::ReadFails {
            // Reads must reach the filesystem, not the page cache.
            drop(fs);
            power.remount().unwrap();
            let upper = power.path().join("upper");
            CowFs::recover(store.clone(), tree, config_of(&upper))
                .unwrap()
                .0
        } else {
            fs
        };
        let f = fs.lookup(ROOT_INO, b"f").unwrap().ino;
        let id = power.add_fault(fault);
        let error = match outcome {
            Outcome::WriteFails => {
                let e = fs.write(f, 100_000, &[9u8; 50_000]).unwrap_err();
                same(&fs.read(f, 0, 300_000).unwrap(), &synced, name);
                assert!(power.fired(id) > 0, "{name}: the fault fired");
                power.clear_faults();
                fs.write(f, 100_000, &[9u8; 50_000]).unwrap();
                fs.fsync(f).unwrap();
                fs.write(f, 100_000, &[7u8; 50_000]).unwrap();
                fs.fsync(f).unwrap();
                Some(e)
            }
            Outcome::SyncFailsUntilRecovered => {
                fs.mkdir(ROOT_INO, b"d", 0o755, root).unwrap();
                assert!(power.fired(id) > 0, "{name}: the fault fired");
                power.clear_faults();
                let e = fs.fsyncdir(ROOT_INO).unwrap_err();
                assert!(fs.fsync(f).is_err(), "{name}: a later sync succeeded");
                Some(e)
            }
            Outcome::StickySyncFailure => {
                fs.write(f, 0, &[8u8; 1000]).unwrap();
                fs.mkdir(ROOT_INO, b"d", 0o755, root).unwrap();
                let e = fs.fsync(f).unwrap_err();
                assert!(power.fired(id) > 0, "{name}: the fault fired");
                power.clear_faults();
                assert!(fs.fsync(f).is_err(), "{name}: a retried sync succeeded");
                Some(e)
            }
            Outcome::ReadFails => {
                let e = fs.read(f, 0, 300_000).unwrap_err();
                assert!(power.fired(id) > 0, "{name}: the fault fired");
                power.clear_faults();
                same(&fs.read(f, 0, 300_000).unwrap(), &synced, name);
                Some(e)
            }
            Outcome::Slow => {
                fs.write(f, 0, &[7u8; 1000]).unwrap();
                fs.fsync(f).unwrap();
                assert!(power.fired(id) > 0, "{name}: the fault fired");
                None
            }
        };
        power.clear_faults();
        // Recovered with the fault gone: what was synced is there, and the
        // mount writes and syncs again.
        drop(fs);
        power.remount().unwrap();
        let upper = power.path().join("upper");
        let (fs, _) = CowFs::recover(store.clone(), tree, config_of(&upper))
            .unwrap_or_else(|e| panic!("{name}: recovery: {e}"));
        let f = fs.lookup(ROOT_INO, b"f").unwrap().ino;
        let back = fs.read(f, 0, 300_000).unwrap();
        if outcome == Outcome::StickySyncFailure {
            // The failed sync's bytes may or may not have reached the
            // disk; the synced ones past them did.
            same(&back[1000..], &synced[1000..], name);
        } else {
            same(&back, &synced, name);
        }
        fs.write(f, 0, b"again").unwrap();
        fs.fsync(f)
            .unwrap_or_else(|e| panic!("{name}: a sync after recovery: errno {}", e.0));
        let error =
            error.map(|e| format!("errno {} ({})", e.0, std::io::Error::from_raw_os_error(e.0)));
        rows.push(format!(
            "| {name} | {outcome:?} | {} |",
            error.unwrap_or_else(|| "(no error)".into())
        ));
    }
    println!("| fault | outcome | error the caller got |\n|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

fn config_of(upper: &std::path::Path) -> MountConfig {
    MountConfig {
        upper_dir: upper.to_path_buf(),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    }
}
