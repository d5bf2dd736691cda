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
