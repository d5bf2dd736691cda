//! Many readers and writers at once.

mod common;

use std::sync::{Arc, Mutex};

use cas::{Chunking, FsckOptions, OpenOptions, RefExpectation, Store, StoreConfig};
use common::*;

fn content(seed: u64) -> Vec<u8> {
    let len = 5_000 + (seed % 7) as usize * 40_000;
    if seed % 3 == 0 {
        text_bytes(len, seed)
    } else {
        random_bytes(len, seed)
    }
}

#[test]
fn readers_and_writers_at_once_see_only_correct_bytes() {
    let (dir, store) = new_store(small_config());
    let written: Arc<Mutex<Vec<(cas::ChunkId, u64)>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4u64)
        .map(|r| {
            let store = store.clone();
            let written = Arc::clone(&written);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut x = r + 1;
                while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    let pick = {
                        let list = written.lock().unwrap();
                        if list.is_empty() {
                            None
                        } else {
                            x = x
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            Some(list[(x >> 33) as usize % list.len()])
                        }
                    };
                    if let Some((id, seed)) = pick {
                        // Most of these chunks are not committed yet.
                        assert_eq!(read_blob(&store, &id).unwrap(), content(seed));
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = store.clone();
            let written = Arc::clone(&written);
            std::thread::spawn(move || {
                let writer = store.writer("concurrent writer");
                for i in 0..40u64 {
                    // Overlapping seeds: writers race to store the same content.
                    let seed = (w * 17 + i * 5) % 60;
                    let info = writer
                        .write_blob(&mut &content(seed)[..], Chunking::ContentDefined)
                        .unwrap();
                    written.lock().unwrap().push((info.id, seed));
                    if i % 10 == 9 {
                        writer
                            .set_ref(&format!("w{w}/{i}"), info.id, RefExpectation::Absent)
                            .unwrap();
                    }
                }
                writer.commit().unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer panicked");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().expect("reader panicked") > 0);
    }
    let list = written.lock().unwrap().clone();
    drop(store);
    let store = Store::open(&dir.path().join("store"), OpenOptions::default()).unwrap();
    for (id, seed) in &list {
        assert_eq!(read_blob(&store, id).unwrap(), content(*seed));
    }
    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn racing_puts_of_the_same_content_store_it_once() {
    let (_dir, store) = new_store(StoreConfig::default());
    let data = Arc::new(random_bytes(4 << 20, 99));
    let ids: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let data = Arc::clone(&data);
            std::thread::spawn(move || {
                let writer = store.writer("racer");
                let info = writer
                    .write_blob(&mut &data[..], Chunking::ContentDefined)
                    .unwrap();
                writer.commit().unwrap();
                info.id
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    // One copy (plus frame headers and the blob's node), not eight.
    let stored = pack_bytes(&store);
    assert!(
        stored < data.len() as u64 + (1 << 20),
        "stored {stored} bytes for a 4 MiB blob"
    );
    assert_eq!(read_blob(&store, &ids[0]).unwrap(), *data);
}

#[test]
fn durability_costs_one_commit_per_batch_not_per_chunk() {
    let (_dir, store) = new_store(small_config());
    let writer = store.writer("batch");
    let info = writer
        .write_blob(&mut &random_bytes(400_000, 7)[..], Chunking::ContentDefined)
        .unwrap();
    assert!(info.chunks > 100);
    let before = store.commits();
    writer.commit().unwrap();
    assert_eq!(
        store.commits() - before,
        1,
        "{} chunks, one commit",
        info.chunks
    );

    // Concurrent committers share commits.
    let before = store.commits();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let writer = store.writer("committer");
                for i in 0..50u64 {
                    writer
                        .put_data(&random_bytes(2_000, t * 1000 + i + 1))
                        .unwrap();
                    writer.commit().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let commits = store.commits() - before;
    assert!(
        commits < 400,
        "{commits} commits for 400 durable puts: none was shared"
    );
}

#[test]
fn refs_moved_together_move_all_or_none() {
    let (_dir, store) = new_store(StoreConfig::default());
    let writer = store.writer("test");
    let a = writer.put_data(b"a").unwrap().id;
    let b = writer.put_data(b"b").unwrap().id;
    let head = store.set_ref("head", a, RefExpectation::Absent).unwrap();
    store.set_ref("doomed", a, RefExpectation::Absent).unwrap();
    // One expectation fails: nothing is written.
    let stale = writer.set_refs(&[
        ("other", Some(b), RefExpectation::Any),
        (
            "head",
            Some(b),
            RefExpectation::Generation(head.generation + 1),
        ),
    ]);
    assert!(
        matches!(stale, Err(cas::Error::RefConflict { .. })),
        "{stale:?}"
    );
    assert!(store.get_ref("other").unwrap().is_none());
    assert_eq!(store.get_ref("head").unwrap().unwrap().root, a);
    // All hold: set, moved by compare-and-swap, deleted (a missing ref
    // deleted with `Any` is no error).
    let values = writer
        .set_refs(&[
            ("other", Some(b), RefExpectation::Absent),
            ("head", Some(b), RefExpectation::Generation(head.generation)),
            ("doomed", None, RefExpectation::Any),
            ("never", None, RefExpectation::Any),
        ])
        .unwrap();
    assert_eq!(values[1].as_ref().unwrap().generation, head.generation + 1);
    assert!(values[2].is_none() && values[3].is_none());
    assert_eq!(store.get_ref("other").unwrap().unwrap().root, b);
    assert_eq!(store.get_ref("head").unwrap().unwrap().root, b);
    assert!(store.get_ref("doomed").unwrap().is_none());
    // A root that is not stored is refused, changing nothing.
    let missing = cas::ChunkId::from_bytes([7; 32]);
    assert!(writer
        .set_refs(&[("head", Some(missing), RefExpectation::Any)])
        .is_err());
    assert_eq!(store.get_ref("head").unwrap().unwrap().root, b);
}

#[test]
fn a_pinned_node_vouches_for_its_links_and_nothing_else() {
    let (_dir, store) = new_store(StoreConfig::default());
    let writer = store.writer("test");
    let a = writer.put_data(b"a").unwrap().id;
    let base = cas::Node::new(cas::NodeType::OPAQUE, vec![a], b"base".to_vec());
    let base_id = writer.put_node(&base).unwrap().id;
    writer.commit().unwrap();
    let other = store.writer("other");
    other
        .pin_node(&store.get_verified_node(&base_id).unwrap())
        .unwrap();
    // Its links are taken as stored; a link nobody stored is still refused.
    let derived = cas::Node::new(cas::NodeType::OPAQUE, vec![a], b"derived".to_vec());
    other.put_node(&derived).unwrap();
    let missing = cas::ChunkId::from_bytes([9; 32]);
    let dangling = cas::Node::new(cas::NodeType::OPAQUE, vec![a, missing], Vec::new());
    assert!(matches!(
        other.put_node(&dangling),
        Err(cas::Error::DanglingLink { link, .. }) if link == missing
    ));
}
