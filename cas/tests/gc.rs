//! Garbage collection: what nothing reaches goes, what refs and leases reach
//! stays, also while writers keep writing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cas::{Chunking, FsckOptions, RefExpectation};
use common::*;

#[test]
fn gc_removes_what_no_ref_reaches_and_keeps_what_refs_reach() {
    let (_dir, store) = new_store(small_config());
    let kept_data = random_bytes(300_000, 1);
    let dropped_data = random_bytes(300_000, 2);
    let writer = store.writer("kept");
    let kept = writer
        .write_blob(&mut &kept_data[..], Chunking::ContentDefined)
        .unwrap();
    writer
        .set_ref("test/kept", kept.id, RefExpectation::Absent)
        .unwrap();
    drop(writer);
    let writer = store.writer("dropped");
    let dropped = writer
        .write_blob(&mut &dropped_data[..], Chunking::ContentDefined)
        .unwrap();
    writer.commit().unwrap();
    drop(writer);
    let before = pack_bytes(&store);

    let report = store.gc().unwrap();
    assert!(report.swept_chunks >= dropped.chunks, "{report:?}");
    assert!(report.bytes_reclaimed > 0, "{report:?}");
    assert!(pack_bytes(&store) < before);
    assert_eq!(read_blob(&store, &kept.id).unwrap(), kept_data);
    assert!(matches!(
        store.blob(&dropped.id),
        Err(cas::Error::ChunkNotFound { .. })
    ));
    let fsck = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(fsck.is_clean(), "{:?}", fsck.problems);

    // Deleting the ref makes the rest collectable.
    store.delete_ref("test/kept", RefExpectation::Any).unwrap();
    let report = store.gc().unwrap();
    assert_eq!(report.reachable_chunks, 0);
    assert_eq!(store.stats().unwrap().chunks, 0);
}

#[test]
fn gc_never_removes_chunk_reachable_from_lease() {
    let (_dir, store) = new_store(small_config());
    let data = random_bytes(200_000, 3);
    let writer = store.writer("import in flight");
    let info = writer
        .write_blob(&mut &data[..], Chunking::ContentDefined)
        .unwrap();
    writer.commit().unwrap();
    assert_eq!(store.leases().len(), 1);
    // No ref yet: only the lease keeps the blob alive.
    let report = store.gc().unwrap();
    assert_eq!(report.swept_chunks, 0, "{report:?}");
    assert_eq!(read_blob(&store, &info.id).unwrap(), data);
    writer
        .set_ref("test/late", info.id, RefExpectation::Absent)
        .unwrap();
    drop(writer);
    assert!(store.leases().is_empty());
    store.gc().unwrap();
    assert_eq!(read_blob(&store, &info.id).unwrap(), data);
}

#[test]
fn gc_compacts_packs_whose_dead_share_passes_the_threshold() {
    let (_dir, store) = new_store(small_config());
    let mut blobs = Vec::new();
    for i in 0..40 {
        let data = random_bytes(50_000, 100 + i);
        let writer = store.writer("fill");
        let info = writer
            .write_blob(&mut &data[..], Chunking::ContentDefined)
            .unwrap();
        writer
            .set_ref(&format!("test/{i}"), info.id, RefExpectation::Absent)
            .unwrap();
        blobs.push((i, info.id, data));
    }
    // Kill every other blob: packs end up half dead, none entirely.
    for (i, _, _) in blobs.iter().filter(|(i, _, _)| i % 2 == 0) {
        store
            .delete_ref(&format!("test/{i}"), RefExpectation::Any)
            .unwrap();
    }
    let before = pack_bytes(&store);
    let report = store.gc().unwrap();
    assert!(report.packs_compacted > 0, "{report:?}");
    assert!(report.chunks_relocated > 0, "{report:?}");
    let after = pack_bytes(&store);
    assert!(after < before * 7 / 10, "packs {before} -> {after}");
    for (i, id, data) in blobs.iter().filter(|(i, _, _)| i % 2 == 1) {
        assert_eq!(&read_blob(&store, id).unwrap(), data, "blob {i}");
    }
    let fsck = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(fsck.is_clean(), "{:?}", fsck.problems);
}

/// Writers keep writing (often content that is garbage at that moment, so
/// dedup hits race the sweep), setting and deleting refs, while GC runs in
/// a loop. No ref may ever point at anything unreadable.
#[test]
fn gc_concurrent_with_writers_loses_no_reachable_chunk() {
    let (_dir, store) = new_store(small_config());
    let stop = Arc::new(AtomicBool::new(false));
    let live: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let gc_runs = {
        let store = store.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut runs = 0u32;
            let mut swept = 0u64;
            while !stop.load(Ordering::Relaxed) || runs < 3 {
                let report = store.gc().expect("gc");
                swept += report.swept_chunks;
                runs += 1;
            }
            (runs, swept)
        })
    };
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let store = store.clone();
            let live = Arc::clone(&live);
            std::thread::spawn(move || {
                for round in 0..150u64 {
                    // A small pool of contents: the same bytes come back
                    // after their previous ref was deleted.
                    let seed = (round * 7 + w * 3) % 12;
                    let data = random_bytes(20_000 + (seed as usize) * 3_000, seed);
                    let writer = store.writer("concurrent");
                    let info = writer
                        .write_blob(&mut &data[..], Chunking::ContentDefined)
                        .unwrap();
                    let name = format!("w{w}/r{round}");
                    writer
                        .set_ref(&name, info.id, RefExpectation::Absent)
                        .unwrap();
                    drop(writer);
                    assert_eq!(
                        read_blob(&store, &info.id).unwrap(),
                        data,
                        "{name} right after set_ref"
                    );
                    live.lock().unwrap().insert(name, seed);
                    if round % 3 == 0 && round > 0 {
                        let old = format!("w{w}/r{}", round - 1);
                        store.delete_ref(&old, RefExpectation::Any).unwrap();
                        live.lock().unwrap().remove(&old);
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer panicked");
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, swept) = gc_runs.join().expect("gc panicked");
    assert!(runs >= 3);
    assert!(
        swept > 0,
        "gc never collected anything, so the test proved nothing"
    );
    store.gc().unwrap();
    for (name, seed) in live.lock().unwrap().iter() {
        let root = store.get_ref(name).unwrap().expect("ref").root;
        let data = random_bytes(20_000 + (*seed as usize) * 3_000, *seed);
        assert_eq!(read_blob(&store, &root).unwrap(), data, "{name}");
    }
    let fsck = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(fsck.is_clean(), "{:?}", fsck.problems);
}
