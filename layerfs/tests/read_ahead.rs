//! Read-ahead across files: opening one file of a directory loads the
//! chunks of the next small files in listing order, so `tar`, `cp -r` and
//! an interpreter's imports find them verified in the chunk cache.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use cas::{ChunkId, ChunkKind};
use common::{cow_mount, store};
use layerfs::cowfs::{CachedAbove, ROOT_INO};

fn contents(i: usize) -> Vec<u8> {
    (0..10_000u32)
        .map(|j| (j.wrapping_mul(31).wrapping_add(i as u32 * 7919) >> 3) as u8)
        .collect()
}

#[test]
fn opening_a_file_loads_the_next_small_files_of_its_directory() {
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("d/f{i:02}")), contents(i)).unwrap();
    }
    let tree = common::import_dir(&store, "files", &src);
    let fs_ = cow_mount(&store, tree, &tmp.path().join("upper"));
    store.clear_cache();
    let id = |i: usize| ChunkId::compute(ChunkKind::Data, &contents(i));
    assert!((0..40).all(|i| !store.is_cached(&id(i))));

    let dir = fs_.lookup(ROOT_INO, b"d").unwrap().ino;
    // Every name looked up first, as a walk would: looking up loads nothing.
    let inos: Vec<u64> = (0..40)
        .map(|i| fs_.lookup(dir, format!("f{i:02}").as_bytes()).unwrap().ino)
        .collect();
    assert!((0..40).all(|i| !store.is_cached(&id(i))));

    fs_.open(inos[3], false).unwrap();
    let ahead = 4..20; // the 16 files after f03
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ahead.clone().all(|i| store.is_cached(&id(i))) {
        assert!(Instant::now() < deadline, "siblings not loaded ahead");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Not before it, not past the window, and each file once.
    assert!((0..=3).chain(20..40).all(|i| !store.is_cached(&id(i))));
    assert_eq!(fs_.read(inos[4], 0, 20_000).unwrap(), contents(4));
    fs_.release(inos[3]);
}

/// A sequential reader with a page cache of its own (a FUSE mount) does
/// not leave the chunks its read-ahead loaded in the chunk cache once it
/// has read past them, while it reads (at most about two read-ahead
/// windows are cached at any time) and after; a reader without one (9P)
/// keeps them there, since the chunk cache is then what serves its
/// re-reads. Both read every byte.
#[test]
fn a_streaming_reader_with_a_page_cache_does_not_fill_the_chunk_cache() {
    const LEN: usize = 48 << 20;
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = fixtures::workload::Rng::new(1).bytes(LEN);
    fs::write(src.join("big"), &data).unwrap();
    let tree = common::import_dir(&store, "big", &src);
    let read_all = |upper: &str, cached_above| {
        let fs_ = cow_mount(&store, tree, &tmp.path().join(upper));
        let ino = fs_.lookup(ROOT_INO, b"big").unwrap().ino;
        store.clear_cache();
        let mut buf = vec![0u8; 128 << 10];
        let mut offset = 0usize;
        let mut most = 0;
        while offset < LEN {
            let n = fs_
                .read_into(ino, offset as u64, &mut buf, cached_above)
                .unwrap();
            assert!(n > 0, "early end at {offset}");
            assert!(buf[..n] == data[offset..offset + n], "bytes at {offset}");
            offset += n;
            most = most.max(store.cached_bytes());
        }
        // Let the last read-ahead finish.
        std::thread::sleep(Duration::from_millis(300));
        (store.cached_bytes(), most)
    };

    let (kept, _) = read_all("upper", CachedAbove::No);
    assert!(
        kept >= 40 << 20,
        "a 9P reader's chunks stay cached: {kept} bytes"
    );
    let (kept, most) = read_all("upper2", CachedAbove::Yes);
    assert!(
        kept <= 1 << 20,
        "a FUSE reader's streamed chunks are dropped once read: {kept} bytes stay"
    );
    assert!(
        most <= 32 << 20,
        "a FUSE reader's chunks leave the cache as it reads: {most} bytes were cached at once"
    );
}

/// A second sequential pass over a file (after its chunks left the cache)
/// gets read-ahead again, as the first did.
#[test]
fn a_second_pass_over_a_file_is_read_ahead_again() {
    const LEN: usize = 24 << 20;
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = fixtures::workload::Rng::new(3).bytes(LEN);
    fs::write(src.join("big"), &data).unwrap();
    let tree = common::import_dir(&store, "big", &src);
    let fs_ = cow_mount(&store, tree, &tmp.path().join("upper"));
    let ino = fs_.lookup(ROOT_INO, b"big").unwrap().ino;
    let mut buf = vec![0u8; 128 << 10];
    for pass in 0..2 {
        store.clear_cache();
        for (i, offset) in (0..LEN).step_by(buf.len()).enumerate() {
            let n = fs_
                .read_into(ino, offset as u64, &mut buf, CachedAbove::No)
                .unwrap();
            assert!(buf[..n] == data[offset..offset + n], "bytes at {offset}");
            if i == 1 {
                // Two reads in: the read-ahead loads what follows.
                let deadline = Instant::now() + Duration::from_secs(10);
                while store.cached_bytes() < 8 << 20 {
                    assert!(
                        Instant::now() < deadline,
                        "pass {pass}: no read-ahead ({} bytes cached)",
                        store.cached_bytes()
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// An import stores files in the order a reader walking the tree meets
/// them (depth first, each directory's entries by name), whatever order
/// the host's directories list them in, so a walk's reads, and the
/// read-ahead across files above, go forward through the packs. Storing
/// on one thread makes that order exact; with more, neighbours may swap.
#[test]
fn an_import_stores_files_in_the_order_a_walk_reads_them() {
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    // A file's position in the walk, and its path: a directory's files
    // come before and after its subdirectories, one file is stored alone
    // (large) and the listing order on the host is not the name order.
    let walk = [
        "a0", "a1", "b/c/x", "b/c/y", "b/m", "b/n", "big", "c", "d/e", "z",
    ];
    let data = |i: usize| {
        let len = if walk[i] == "big" { 9 << 20 } else { 3000 };
        (0..len as u32)
            .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i as u32 * 40503) >> 13) as u8)
            .collect::<Vec<u8>>()
    };
    for i in [9, 3, 0, 7, 5, 1, 8, 2, 6, 4] {
        let path = src.join(walk[i]);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data(i)).unwrap();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| common::import_dir(&store, "walk", &src));
    // Where each file's first chunk lies: (pack, offset). The large file's
    // first chunk ends at the first content-defined cut.
    let chunker = cas::Chunker::new(cas::Chunking::ContentDefined, store.config().chunking);
    let first_chunk = |i: usize| {
        let bytes = data(i);
        let mut cuts = Vec::new();
        chunker.cut(&bytes, true, &mut cuts);
        let chunk = ChunkId::compute(ChunkKind::Data, &bytes[..cuts[0]]);
        let at = store.locate(&chunk).unwrap().expect("stored");
        (at.pack, at.offset)
    };
    let places: Vec<_> = (0..walk.len()).map(first_chunk).collect();
    for i in 1..walk.len() {
        assert!(
            places[i - 1] < places[i],
            "{} stored at {:?}, before {} at {:?}",
            walk[i],
            places[i],
            walk[i - 1],
            places[i - 1]
        );
    }
}
