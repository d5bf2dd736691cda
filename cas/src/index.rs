//! The RocksDB side of the store: where each chunk is (column family
//! `chunks`), the named roots (`refs`) and store bookkeeping (`meta`).
//!
//! Memory stays bounded: index and filter blocks live in one LRU block cache
//! of a configured size, never in a map of every chunk.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, BoundColumnFamily, Cache, ColumnFamilyDescriptor, DBCompressionType,
    DBWithThreadMode, IteratorMode, MultiThreaded, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::error::{Error, Result};
use crate::id::{ChunkId, ChunkKind, CHUNK_ID_LEN};
use crate::pack::PackId;

type Db = DBWithThreadMode<MultiThreaded>;

const CF_CHUNKS: &str = "chunks";
const CF_REFS: &str = "refs";
const CF_META: &str = "meta";

/// `meta` key: the next pack number to use (u64 LE).
const META_NEXT_PACK: &[u8] = b"next_pack";
/// `meta` key: every pack below this number is sealed and durable (u64 LE).
const META_SEALED_BELOW: &[u8] = b"sealed_below";

const LOCATION_VERSION: u8 = 1;
const LOCATION_LEN: usize = 26;
const REF_VERSION: u8 = 1;
const REF_LEN: usize = 49;

/// Where a chunk's frame is: the value of a `chunks` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    /// Offset of the frame header in the pack.
    pub offset: u64,
    /// Payload bytes after the 52-byte header.
    pub stored_len: u32,
    /// Bytes once decoded.
    pub raw_len: u32,
    pub kind: ChunkKind,
}

impl ChunkLocation {
    fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut out = [0u8; LOCATION_LEN];
        out[0] = LOCATION_VERSION;
        out[1..9].copy_from_slice(&self.pack.0.to_le_bytes());
        out[9..17].copy_from_slice(&self.offset.to_le_bytes());
        out[17..21].copy_from_slice(&self.stored_len.to_le_bytes());
        out[21..25].copy_from_slice(&self.raw_len.to_le_bytes());
        out[25] = self.kind.code();
        out
    }

    fn decode(id: &ChunkId, bytes: &[u8]) -> Result<ChunkLocation> {
        let bad = || Error::IndexCorrupt {
            detail: format!("index entry of chunk {id} does not decode"),
        };
        let bytes: &[u8; LOCATION_LEN] = bytes.try_into().map_err(|_| bad())?;
        if bytes[0] != LOCATION_VERSION {
            return Err(bad());
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let u32_at =
            |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let (stored_len, raw_len) = (u32_at(17), u32_at(21));
        // A frame never holds more than a chunk, nor stores more than its
        // raw length (zstd is used only where it shrinks): a larger length
        // is damage, and readers size buffers by it.
        if raw_len as usize > crate::config::MAX_CHUNK_LEN || stored_len > raw_len {
            return Err(Error::IndexCorrupt {
                detail: format!(
                    "index entry of chunk {id} gives impossible lengths \
                     (stored {stored_len}, raw {raw_len})"
                ),
            });
        }
        Ok(ChunkLocation {
            pack: PackId(u64_at(1)),
            offset: u64_at(9),
            stored_len,
            raw_len,
            kind: ChunkKind::from_code(bytes[25]).ok_or_else(bad)?,
        })
    }
}

/// The value of a ref: what it points at and how often it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RefValue {
    /// The chunk (usually a node or a blob) the ref keeps alive.
    pub root: ChunkId,
    /// Starts at 1 and grows by one with every update.
    pub generation: u64,
    /// When the ref was last set, nanoseconds since the Unix epoch.
    pub updated_unix_nanos: u64,
}

impl RefValue {
    fn encode(&self) -> [u8; REF_LEN] {
        let mut out = [0u8; REF_LEN];
        out[0] = REF_VERSION;
        out[1..33].copy_from_slice(self.root.as_bytes());
        out[33..41].copy_from_slice(&self.generation.to_le_bytes());
        out[41..49].copy_from_slice(&self.updated_unix_nanos.to_le_bytes());
        out
    }

    fn decode(name: &str, bytes: &[u8]) -> Result<RefValue> {
        let bad = || Error::IndexCorrupt {
            detail: format!("ref '{name}' does not decode"),
        };
        if bytes.len() != REF_LEN || bytes[0] != REF_VERSION {
            return Err(bad());
        }
        Ok(RefValue {
            root: ChunkId::from_slice(&bytes[1..33]).ok_or_else(bad)?,
            generation: u64::from_le_bytes(bytes[33..41].try_into().map_err(|_| bad())?),
            updated_unix_nanos: u64::from_le_bytes(bytes[41..49].try_into().map_err(|_| bad())?),
        })
    }
}

/// The open RocksDB database of one store.
pub struct IndexDb {
    db: Db,
}

/// How to open the database.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create a new database; fail if one exists.
    Create,
    /// Open an existing database.
    Existing,
}

fn db_options(cache: &Cache) -> Result<Options> {
    // No automatic resume after a background error (a failed WAL write or
    // flush): the index stays refusing writes until the store is opened
    // again, as the store itself does after a failed pack write. RocksDB's
    // resume runs on a thread of its own, and a close that meets it
    // waiting for a flush hung for good (seen in the fault tests: the
    // close waits for background work, the resume for a flush that the
    // closing database no longer runs).
    //
    // No flush by the close itself: it would run after background work is
    // cancelled (see `Drop`); `IndexDb` flushes before that instead.
    let mut opts = Options::default()
        .get_options_from_string("max_bgerror_resume_count=0;avoid_flush_during_shutdown=true")
        .map_err(|e| Error::index("setting the index's options", e))?;
    opts.set_compression_type(DBCompressionType::None);
    opts.set_max_open_files(256);
    opts.set_keep_log_file_num(3);
    opts.set_max_log_file_size(8 << 20);
    opts.set_paranoid_checks(true);
    opts.increase_parallelism(2);
    // Bounded memtables (RocksDB's default is 64 MiB each).
    opts.set_write_buffer_size(16 << 20);
    opts.set_max_write_buffer_number(2);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    Ok(opts)
}

impl IndexDb {
    /// Opens (or creates) the database at `path` with a block cache of
    /// `cache_bytes`.
    pub fn open(path: &Path, mode: OpenMode, cache_bytes: u64) -> Result<IndexDb> {
        let cache = Cache::new_lru_cache(cache_bytes as usize);
        let mut opts = db_options(&cache)?;
        if mode == OpenMode::Create {
            opts.create_if_missing(true);
            opts.set_error_if_exists(true);
            opts.create_missing_column_families(true);
        }
        let cfs = [CF_CHUNKS, CF_REFS, CF_META]
            .into_iter()
            .map(|name| Ok(ColumnFamilyDescriptor::new(name, db_options(&cache)?)))
            .collect::<Result<Vec<_>>>()?;
        let db =
            Db::open_cf_descriptors(&opts, path, cfs).map_err(|e| classify_open_error(path, e))?;
        Ok(IndexDb { db })
    }

    /// Runs RocksDB's own repair, which salvages what it can from damaged
    /// table files and logs. Used before rebuilding the chunk index when the
    /// database no longer opens.
    pub fn repair(path: &Path) -> Result<()> {
        let cache = Cache::new_lru_cache(8 << 20);
        Db::repair(&db_options(&cache)?, path).map_err(|e| Error::index("repairing the index", e))
    }

    fn cf(&self, name: &str) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Invariant(format!("column family {name} is not open")))
    }

    fn sync_write(&self, batch: WriteBatch, context: &str) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| Error::index(context, e))
    }

    /// Where chunk `id` is, if it is indexed.
    pub fn location(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        let cf = self.cf(CF_CHUNKS)?;
        match self
            .db
            .get_pinned_cf(&cf, id.as_bytes())
            .map_err(|e| Error::index(format!("looking up chunk {id}"), e))?
        {
            Some(bytes) => Ok(Some(ChunkLocation::decode(id, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Records where chunks are, durably (synced), together with the
    /// sealed-pack watermark. Called only after the pack bytes are durable.
    pub fn record_locations(
        &self,
        entries: &[(ChunkId, ChunkLocation)],
        sealed_below: Option<PackId>,
    ) -> Result<()> {
        self.record_locations_and_refs(entries, sealed_below, &[])
    }

    /// [`IndexDb::record_locations`] and ref writes or deletions in the
    /// same synced write: the refs land exactly when the chunks do.
    pub fn record_locations_and_refs(
        &self,
        entries: &[(ChunkId, ChunkLocation)],
        sealed_below: Option<PackId>,
        refs: &[(&str, Option<&RefValue>)],
    ) -> Result<()> {
        let cf = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        for (id, location) in entries {
            batch.put_cf(&cf, id.as_bytes(), location.encode());
        }
        if let Some(pack) = sealed_below {
            let meta = self.cf(CF_META)?;
            batch.put_cf(&meta, META_SEALED_BELOW, pack.0.to_le_bytes());
        }
        if !refs.is_empty() {
            let refs_cf = self.cf(CF_REFS)?;
            for (name, value) in refs {
                match value {
                    Some(value) => batch.put_cf(&refs_cf, name.as_bytes(), value.encode()),
                    None => batch.delete_cf(&refs_cf, name.as_bytes()),
                }
            }
        }
        self.sync_write(batch, "recording chunk locations")
    }

    /// Removes chunks from the index (garbage collection), durably.
    pub fn remove_chunks(&self, ids: &[ChunkId]) -> Result<()> {
        let cf = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        for id in ids {
            batch.delete_cf(&cf, id.as_bytes());
        }
        self.sync_write(batch, "removing swept chunks")
    }

    /// Visits every index entry in id order, reading a consistent snapshot
    /// and verifying RocksDB block checksums. Stops at the first error, or
    /// when `visit` returns `false`.
    pub fn for_each_chunk(
        &self,
        mut visit: impl FnMut(ChunkId, Result<ChunkLocation>) -> Result<bool>,
    ) -> Result<()> {
        let cf = self.cf(CF_CHUNKS)?;
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(true);
        opts.fill_cache(false);
        for item in self.db.iterator_cf_opt(&cf, opts, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| Error::index("reading the chunk index", e))?;
            let Some(id) = ChunkId::from_slice(&key).filter(|_| key.len() == CHUNK_ID_LEN) else {
                return Err(Error::IndexCorrupt {
                    detail: format!("index key of {} bytes is not a chunk id", key.len()),
                });
            };
            if !visit(id, ChunkLocation::decode(&id, &value))? {
                break;
            }
        }
        Ok(())
    }

    /// The ref called `name`.
    pub fn get_ref(&self, name: &str) -> Result<Option<RefValue>> {
        let cf = self.cf(CF_REFS)?;
        match self
            .db
            .get_pinned_cf(&cf, name.as_bytes())
            .map_err(|e| Error::index(format!("reading ref '{name}'"), e))?
        {
            Some(bytes) => Ok(Some(RefValue::decode(name, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Writes (or, with `None`, deletes) a ref, durably.
    pub fn write_ref(&self, name: &str, value: Option<&RefValue>) -> Result<()> {
        let cf = self.cf(CF_REFS)?;
        let mut batch = WriteBatch::default();
        match value {
            Some(value) => batch.put_cf(&cf, name.as_bytes(), value.encode()),
            None => batch.delete_cf(&cf, name.as_bytes()),
        }
        self.sync_write(batch, &format!("writing ref '{name}'"))
    }

    /// Every ref whose name starts with `prefix`, in name order.
    pub fn list_refs(&self, prefix: &str) -> Result<Vec<(String, RefValue)>> {
        let cf = self.cf(CF_REFS)?;
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix.as_bytes(), rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(&cf, mode) {
            let (key, value) = item.map_err(|e| Error::index("listing refs", e))?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            let name = String::from_utf8(key.to_vec()).map_err(|_| Error::IndexCorrupt {
                detail: "a ref name is not UTF-8".into(),
            })?;
            let value = RefValue::decode(&name, &value)?;
            out.push((name, value));
        }
        Ok(out)
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        let cf = self.cf(CF_META)?;
        let value = self
            .db
            .get_pinned_cf(&cf, key)
            .map_err(|e| Error::index("reading store metadata", e))?;
        match value {
            None => Ok(None),
            Some(bytes) => {
                let bytes: [u8; 8] = bytes[..].try_into().map_err(|_| Error::IndexCorrupt {
                    detail: format!("metadata {} does not decode", String::from_utf8_lossy(key)),
                })?;
                Ok(Some(u64::from_le_bytes(bytes)))
            }
        }
    }

    /// The next pack number to allocate (1 in a new store).
    pub fn next_pack(&self) -> Result<PackId> {
        Ok(PackId(self.meta_u64(META_NEXT_PACK)?.unwrap_or(1)))
    }

    /// Reserves pack numbers up to `next` (exclusive), durably, so they are
    /// never handed out twice even after packs are deleted.
    pub fn set_next_pack(&self, next: PackId) -> Result<()> {
        let cf = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&cf, META_NEXT_PACK, next.0.to_le_bytes());
        self.sync_write(batch, "reserving a pack number")
    }

    /// Every pack below this number was sealed and durable at the last
    /// commit; packs at or above it may need recovery after a crash.
    pub fn sealed_below(&self) -> Result<PackId> {
        Ok(PackId(self.meta_u64(META_SEALED_BELOW)?.unwrap_or(0)))
    }

    /// Drops and recreates the chunk index (for a rebuild from packs).
    pub fn clear_chunks(&self) -> Result<()> {
        self.db
            .drop_cf(CF_CHUNKS)
            .map_err(|e| Error::index("dropping the chunk index", e))?;
        let cache = Cache::new_lru_cache(8 << 20);
        self.db
            .create_cf(CF_CHUNKS, &db_options(&cache)?)
            .map_err(|e| Error::index("recreating the chunk index", e))
    }

    /// Flushes memtables to table files (tests use it to reach the files).
    pub fn flush(&self) -> Result<()> {
        for name in [CF_CHUNKS, CF_REFS, CF_META] {
            let cf = self.cf(name)?;
            self.db
                .flush_cf(&cf)
                .map_err(|e| Error::index("flushing the index", e))?;
        }
        Ok(())
    }

    /// The table files of the chunk index, for damage tests and reports.
    pub fn chunk_table_files(&self) -> Result<Vec<String>> {
        let files = self
            .db
            .live_files()
            .map_err(|e| Error::index("listing index files", e))?;
        Ok(files
            .into_iter()
            .filter(|f| f.column_family_name == CF_CHUNKS)
            .map(|f| f.name)
            .collect())
    }

    /// RocksDB's estimate of the number of indexed chunks (cheap).
    pub fn estimated_chunks(&self) -> Result<u64> {
        let cf = self.cf(CF_CHUNKS)?;
        Ok(self
            .db
            .property_int_value_cf(&cf, "rocksdb.estimate-num-keys")
            .map_err(|e| Error::index("reading index statistics", e))?
            .unwrap_or(0))
    }

    /// Test-only access to overwrite an index entry with arbitrary bytes.
    #[doc(hidden)]
    pub fn put_raw_location(&self, id: &ChunkId, value: &[u8]) -> Result<()> {
        let cf = self.cf(CF_CHUNKS)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&cf, id.as_bytes(), value);
        self.sync_write(batch, "overwriting an index entry")
    }
}

impl Drop for IndexDb {
    /// Flushes memtables on a clean close, so the next open does not replay
    /// the log into memory. Losing this flush loses nothing: the log has it.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "could not flush the index on close");
        }
        // Tell RocksDB's background work, and a recovery from a failed
        // write that its space-watching thread may be running, to stop
        // before the close waits for them: such a recovery waits for a
        // flush that a closing database never runs, and the close waits
        // for the recovery (RocksDB 11.8; it hung about one run in ten of
        // the fault tests). Nothing is lost: the log holds every write.
        self.db.cancel_all_background_work(false);
    }
}

fn classify_open_error(path: &Path, e: rocksdb::Error) -> Error {
    let text = e.to_string();
    if text.contains("lock")
        && (text.contains("Resource temporarily unavailable")
            || text.contains("No locks available")
            || text.contains("lock hold"))
    {
        return Error::Locked {
            path: path.to_path_buf(),
        };
    }
    Error::index(format!("opening the index at {}", path.display()), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_and_ref_encodings_round_trip() {
        let id = ChunkId::compute(ChunkKind::Data, b"x");
        let loc = ChunkLocation {
            pack: PackId(42),
            offset: 1 << 33,
            stored_len: 77,
            raw_len: 65536,
            kind: ChunkKind::Node,
        };
        assert_eq!(ChunkLocation::decode(&id, &loc.encode()).unwrap(), loc);
        let value = RefValue {
            root: id,
            generation: 9,
            updated_unix_nanos: 123,
        };
        assert_eq!(RefValue::decode("r", &value.encode()).unwrap(), value);
        assert!(ChunkLocation::decode(&id, &[0u8; 5]).is_err());
    }

    #[test]
    fn a_second_open_of_the_same_index_reports_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = IndexDb::open(dir.path(), OpenMode::Create, 1 << 20).unwrap();
        let second = IndexDb::open(dir.path(), OpenMode::Existing, 1 << 20);
        assert!(
            matches!(second, Err(Error::Locked { .. })),
            "{:?}",
            second.err()
        );
    }
}
