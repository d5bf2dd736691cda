//! The disk cache of fetched pack bytes: one sparse file per remote pack,
//! holding the blocks fetched so far at their offsets, bounded in size by
//! evicting the least recently used packs.
//!
//! Nothing here is trusted: a frame read from the cache is checked like
//! one read from the bucket (and then verified by the store), so a cache
//! file that was damaged, truncated or deleted under a reader only costs a
//! fetch. The cache can be wiped at any time.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// Bytes fetched per request: the unit of caching and read-ahead.
pub const BLOCK_BYTES: u64 = 4 << 20;

struct PackState {
    /// Bytes this pack's file is charged with.
    charged: u64,
    last_use: u64,
    /// Blocks written since this process opened the cache.
    blocks: HashSet<u64>,
}

#[derive(Default)]
struct State {
    packs: HashMap<u64, PackState>,
    total: u64,
    clock: u64,
}

/// Cached pack blocks under one directory.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

fn file_name(pack: u64) -> String {
    format!("{pack:016x}.pack")
}

impl DiskCache {
    /// Opens (or makes) the cache in `dir`, charging the files already
    /// there by their allocated size.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        let mut found: Vec<(i64, u64, u64)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".pack")) else {
                continue;
            };
            let Ok(pack) = u64::from_str_radix(hex, 16) else {
                continue;
            };
            let meta = entry.metadata()?;
            found.push((meta.mtime(), pack, meta.blocks() * 512));
        }
        found.sort();
        for (_, pack, bytes) in found {
            state.clock += 1;
            state.total += bytes;
            state.packs.insert(
                pack,
                PackState {
                    charged: bytes,
                    last_use: state.clock,
                    blocks: HashSet::new(),
                },
            );
        }
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(state),
        };
        cache.evict(None);
        Ok(cache)
    }

    /// Bytes charged to cached files.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().total
    }

    /// Whether block `block` of `pack` was written since opening.
    pub fn has_block(&self, pack: u64, block: u64) -> bool {
        self.state
            .lock()
            .packs
            .get(&pack)
            .is_some_and(|p| p.blocks.contains(&block))
    }

    /// `len` bytes at `offset` of cached pack `pack`, if the file has them
    /// (they may be a hole's zeros: the caller checks).
    pub fn read(&self, pack: u64, offset: u64, len: usize) -> Option<Vec<u8>> {
        let file = File::open(self.dir.join(file_name(pack))).ok()?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).ok()?;
        let mut state = self.state.lock();
        state.clock += 1;
        let clock = state.clock;
        if let Some(p) = state.packs.get_mut(&pack) {
            p.last_use = clock;
        }
        Some(buf)
    }

    /// Stores block `block` of `pack`. Failures are only logged: the cache
    /// is an optimisation.
    pub fn write_block(&self, pack: u64, block: u64, bytes: &[u8]) {
        if let Err(e) = self.try_write(pack, block, bytes) {
            tracing::warn!(pack, block, error = %e, "remote cache: block not cached");
        }
    }

    fn try_write(&self, pack: u64, block: u64, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.dir.join(file_name(pack));
        let file = match OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The cache directory was wiped.
                std::fs::create_dir_all(&self.dir)?;
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&path)?
            }
            Err(e) => return Err(e),
        };
        file.write_all_at(bytes, block * BLOCK_BYTES)?;
        {
            let mut state = self.state.lock();
            state.clock += 1;
            let clock = state.clock;
            let pack_state = state.packs.entry(pack).or_insert(PackState {
                charged: 0,
                last_use: clock,
                blocks: HashSet::new(),
            });
            pack_state.last_use = clock;
            let added = if pack_state.blocks.insert(block) {
                bytes.len() as u64
            } else {
                0
            };
            pack_state.charged += added;
            state.total += added;
        }
        self.evict(Some(pack));
        Ok(())
    }

    /// Deletes least recently used pack files (not `keep`) until the total
    /// is within the limit.
    fn evict(&self, keep: Option<u64>) {
        let mut state = self.state.lock();
        while state.total > self.limit {
            let victim = state
                .packs
                .iter()
                .filter(|(pack, _)| Some(**pack) != keep)
                .min_by_key(|(_, p)| p.last_use)
                .map(|(pack, _)| *pack);
            let Some(victim) = victim else { break };
            if let Some(p) = state.packs.remove(&victim) {
                state.total = state.total.saturating_sub(p.charged);
            }
            let _ = std::fs::remove_file(self.dir.join(file_name(victim)));
        }
    }

    /// Forgets what this process wrote of `pack` (its file was found
    /// missing or damaged), so that its blocks are fetched again.
    pub fn forget(&self, pack: u64) {
        let mut state = self.state.lock();
        if let Some(p) = state.packs.remove(&pack) {
            state.total = state.total.saturating_sub(p.charged);
        }
    }

    /// Forgets every cached block (the files are removed).
    pub fn clear(&self) {
        let mut state = self.state.lock();
        for pack in state.packs.keys() {
            let _ = std::fs::remove_file(self.dir.join(file_name(*pack)));
        }
        *state = State::default();
    }
}
