//! Faults at the store's boundary, injected by the filesystem under it
//! ([`fixtures::powercut`]): each has a written expectation — a clear
//! error to the caller, no wrong bytes served, nothing acknowledged lost,
//! and the store usable again once the fault is gone.

mod common;

use cas::{Chunking, FsckOptions, OpenOptions, RefExpectation, Store, StoreConfig};
use common::*;
use fixtures::powercut::{Action, Fault, Op, Options, PowerCutFs};

fn read_blob(store: &Store, name: &str) -> cas::Result<Vec<u8>> {
    let value = store
        .get_ref(name)?
        .ok_or(cas::Error::RefNotFound { name: name.into() })?;
    let mut out = Vec::new();
    store.blob(&value.root)?.copy_to(&mut out)?;
    Ok(out)
}

fn put(store: &Store, name: &str, data: &[u8]) -> cas::Result<()> {
    let writer = store.writer("fault test");
    let blob = writer.write_blob(&mut &data[..], Chunking::ContentDefined)?;
    writer.set_ref(name, blob.id, RefExpectation::Absent)?;
    Ok(())
}

/// Defect 2 of issue 14: the store started write-back of a growing pack
/// and then waited for it with `sync_file_range`, ignoring the result —
/// which, since Linux 4.14, consumes the write-back error, so the commit's
/// `fdatasync` succeeded for bytes that never reached the disk and the
/// index recorded them. A write-back failure must fail the commit instead:
/// whatever `set_ref` acknowledged reads back exactly.
#[test]
fn a_failed_pack_write_back_is_never_acknowledged() {
    if !fixtures::require::fuse() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let options = Options {
        writeback_cache: true,
        ..Options::default()
    };
    let mut power = PowerCutFs::mount(base.path(), options).unwrap();
    let home = power.path().join("store");
    let store = Store::init(&home, StoreConfig::default()).unwrap();
    let before = random_bytes(200_000, 1);
    put(&store, "before", &before).unwrap();
    // One write-back of pack bytes fails (not the pack's first pages).
    let fault = power.add_fault(Fault {
        op: Op::Write,
        path: Some(".pack".into()),
        skip: 2,
        times: 1,
        action: Action::Fail(libc::EIO),
    });
    let big = random_bytes(40 << 20, 2);
    let acknowledged = put(&store, "big", &big);
    assert_eq!(power.fired(fault), 1, "the write-back failure happened");
    let later = put(&store, "later", &random_bytes(1000, 3));
    assert!(
        acknowledged.is_err() || later.is_err(),
        "the failed write-back was reported to a writer"
    );
    drop(store);
    power.clear_faults();
    // Fresh caches: what is read now is what reached the filesystem.
    power.remount().unwrap();
    let store = Store::open(&power.path().join("store"), OpenOptions::default()).unwrap();
    assert_eq!(read_blob(&store, "before").unwrap(), before);
    if acknowledged.is_ok() {
        let back = read_blob(&store, "big");
        assert!(
            back.as_ref().is_ok_and(|b| *b == big),
            "set_ref acknowledged a blob whose pack bytes failed to reach the disk: {:?}",
            back.err()
        );
    }
    if later.is_ok() {
        assert!(read_blob(&store, "later").is_ok());
    }
    // Once the fault is gone the store writes again.
    put(&store, "after", b"after the fault").unwrap();
    assert_eq!(read_blob(&store, "after").unwrap(), b"after the fault");
    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    let refs_broken: Vec<_> = report
        .problems
        .iter()
        .filter(|p| format!("{p:?}").contains("ref"))
        .collect();
    assert!(refs_broken.is_empty(), "{:?}", report.problems);
}
