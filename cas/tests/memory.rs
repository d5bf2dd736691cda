//! Index memory stays bounded: it lives in RocksDB's block cache, not in a
//! map of every chunk. A child process writes a million chunks; this
//! process then opens the store with small caches and looks chunks up all
//! over the id space, and its resident memory grows by far less than an
//! in-memory index of a million chunks would take (≥ 58 MB of keys and
//! values alone).

use std::path::Path;
use std::process::Command;

use cas::{ChunkId, ChunkKind, OpenOptions, Store, StoreConfig};

const CHUNKS: u64 = 1_000_000;

fn chunk(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

/// Resident set size of this process in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn memory_child() {
    let Some(home) = std::env::var_os("CAS_MEMORY_CHILD") else {
        return;
    };
    let store = Store::open(Path::new(&home), OpenOptions::default()).unwrap();
    for batch in 0..CHUNKS / 50_000 {
        let writer = store.writer("fill");
        for i in batch * 50_000..(batch + 1) * 50_000 {
            writer.put_data(&chunk(i)).unwrap();
        }
        writer.commit().unwrap();
    }
}

#[test]
fn index_memory_stays_bounded_as_the_store_grows() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("store");
    drop(Store::init(&home, StoreConfig::default()).unwrap());
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["memory_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("CAS_MEMORY_CHILD", &home)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let before = rss();
    let options = OpenOptions {
        index_cache_bytes: 8 << 20,
        chunk_cache_bytes: 8 << 20,
        ..OpenOptions::default()
    };
    let store = Store::open(&home, options).unwrap();
    let mut found = 0;
    for i in (0..CHUNKS).step_by(7) {
        let id = ChunkId::compute(ChunkKind::Data, &chunk(i));
        assert!(
            store.locate(&id).unwrap().is_some(),
            "chunk {i} not indexed"
        );
        found += 1;
    }
    for i in (0..CHUNKS).step_by(997) {
        let id = ChunkId::compute(ChunkKind::Data, &chunk(i));
        assert_eq!(store.get(&id).unwrap(), &chunk(i)[..]);
    }
    let grown = rss().saturating_sub(before);
    eprintln!("resident memory grew by {} MiB", grown >> 20);
    assert!(found > 100_000);
    assert!(
        grown < 48 << 20,
        "resident memory grew by {} MiB for an index of {CHUNKS} chunks",
        grown >> 20
    );
}
