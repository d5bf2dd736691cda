//! Helpers shared by the integration tests.
#![allow(dead_code)]

use cas::{ChunkingConfig, Store, StoreConfig};

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like compressible bytes.
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "sandbox ",
        "chunk ",
        "snapshot ",
        "layer ",
        "volume ",
        "fork ",
        "restore ",
        "tree ",
        "blob ",
        "pack ",
        "index ",
        "commit ",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        if x % 11 == 0 {
            out.extend_from_slice(format!("{}\n", x % 10_000).as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// A config with tiny chunks, packs and fanout, so small tests exercise
/// many chunks, sealed packs and deep blob trees.
pub fn small_config() -> StoreConfig {
    StoreConfig {
        pack_target_bytes: 256 << 10,
        chunking: ChunkingConfig {
            cdc_min: 256,
            cdc_avg: 1024,
            cdc_max: 4096,
            fixed_size: 4096,
        },
        blob_fanout: 4,
    }
}

/// A fresh store in a temporary directory.
pub fn new_store(config: StoreConfig) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::init(&dir.path().join("store"), config).expect("init");
    (dir, store)
}

/// Total bytes of all pack files.
pub fn pack_bytes(store: &Store) -> u64 {
    std::fs::read_dir(store.packs_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Reads a whole blob.
pub fn read_blob(store: &Store, id: &cas::ChunkId) -> cas::Result<Vec<u8>> {
    let mut out = Vec::new();
    store.blob(id)?.copy_to(&mut out)?;
    Ok(out)
}

/// Flips one byte of a file in place (damage on disk), synced.
pub fn flip(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset).unwrap();
    file.sync_all().unwrap();
}
