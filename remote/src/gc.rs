//! Garbage collection of the bucket, safe against pushes from other nodes.
//!
//! **Mark.** A collection reads every ref's newest version and marks what
//! the roots reach (reading nodes through the collecting node's store).
//! Every chunk the index objects list and nothing reaches is dead.
//!
//! **Condemn.** It writes a record `gc/NANOS.json` (create-only) naming
//! the dead chunks and the packs holding only dead chunks, with its time.
//! Nothing is deleted yet.
//!
//! **Sweep**, in a later collection once a record is older than the grace
//! period: mark again from the refs as they are now, and delete each pack
//! of the record none of whose chunks is now live; a merged index object
//! replaces the index objects read, then those and the record are deleted.
//!
//! **Writers re-validate.** A push treats a chunk that any record calls
//! dead as absent (it uploads it again), and just before it writes its
//! refs it reads the records once more: if one written since it started
//! calls dead a chunk it reused, it walks again. Marking is transitive, so
//! checking the chunks it reused (not what they reach) is enough.
//!
//! The failure this prevents: node B pushes a tree reusing chunk X that no
//! ref reached, while node A collects. Without the records, A deletes X's
//! pack after B checked X was there and before B's ref exists, and B's new
//! ref names missing data. With them, either B saw the record (and
//! uploaded X again), or B's ref was written before the sweep's second
//! mark (the grace period is far longer than the moment between B's last
//! check and its ref), which then keeps X.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cas::{ChunkId, ChunkKind, Store};
use futures::StreamExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::{self, PackListing};
use crate::layout;
use crate::tier::Remote;

const GC_DIR: &str = "gc";
const RECORD_FORMAT: &str = "strata-gc-v1";

/// A condemnation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    format: String,
    created_unix_nanos: u64,
    /// Packs holding only dead chunks when it was written (for people).
    packs: Vec<u64>,
    /// The chunks it condemns: dead, and condemned by no younger record.
    pub(crate) dead: Vec<ChunkId>,
}

/// What a collection did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteGcReport {
    /// Chunks the bucket's refs reach.
    pub live_chunks: u64,
    /// Listed chunks nothing reaches (now condemned).
    pub dead_chunks: u64,
    /// Packs condemned by this collection.
    pub condemned_packs: u64,
    /// Packs deleted (condemned by an earlier collection, past the grace
    /// period, still dead).
    pub swept_packs: u64,
    pub swept_bytes: u64,
    /// Packs an old record condemned that a ref reaches again.
    pub spared_packs: u64,
    pub millis: u64,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// An index object's number and contents.
type IndexObject = (u64, Vec<PackListing>);

fn record_path(created: u64) -> Path {
    Path::from(format!("{GC_DIR}/{created:020}.json"))
}

impl Remote {
    /// The condemnation records in the bucket, with their names.
    pub(crate) fn gc_records(&self) -> Result<Vec<(Path, Record)>> {
        let bucket = self.inner.bucket.clone();
        bucket.clone().run(async move {
            let listed = bucket.list(&Path::from(GC_DIR)).await?;
            let mut out = Vec::new();
            for meta in listed {
                let Some(bytes) = bucket.get(&meta.location).await? else {
                    continue; // swept meanwhile
                };
                let record: Record =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        object: meta.location.to_string(),
                        reason: e.to_string(),
                    })?;
                if record.format != RECORD_FORMAT {
                    return Err(Error::Incompatible(format!(
                        "{} has format {}",
                        meta.location, record.format
                    )));
                }
                out.push((meta.location, record));
            }
            Ok(out)
        })
    }

    /// Marks what `roots` reach, reading nodes through `store`; `kinds`
    /// is every listed chunk's kind.
    fn mark(
        &self,
        store: &Store,
        roots: Vec<ChunkId>,
        kinds: &HashMap<ChunkId, ChunkKind>,
    ) -> Result<HashSet<ChunkId>> {
        let mut live = HashSet::new();
        let mut stack = roots;
        while let Some(id) = stack.pop() {
            if !live.insert(id) {
                continue;
            }
            let Some(kind) = kinds.get(&id) else {
                return Err(Error::Corrupt {
                    object: "index/".into(),
                    reason: format!(
                        "chunk {id}, reachable from a ref, is in no index object; nothing was deleted"
                    ),
                });
            };
            if *kind == ChunkKind::Node {
                stack.extend(store.get_node(&id)?.links);
            }
        }
        Ok(live)
    }

    /// One collection: sweeps what records older than the grace period
    /// (`gc_grace_ms`) condemned and nothing reaches again, then condemns
    /// what nothing reaches now.
    pub fn gc(&self, store: &Store) -> Result<RemoteGcReport> {
        let started = Instant::now();
        let grace = Duration::from_millis(self.inner.config.gc_grace_ms);
        let mut report = RemoteGcReport::default();
        // Refs first, then the index: a push writes its index object
        // before its ref, so every chunk a listed ref reaches is listed.
        let records = self.gc_records()?;
        let roots: Vec<ChunkId> = self.list_refs("")?.into_iter().map(|r| r.root).collect();
        let listings = self.read_index_objects()?;
        self.refresh()?;
        let mut by_pack: HashMap<u64, &PackListing> = HashMap::new();
        let mut kinds = HashMap::new();
        for (_, packs) in &listings {
            for pack in packs {
                by_pack.insert(pack.number, pack);
                for entry in &pack.entries {
                    kinds.insert(entry.id, entry.kind);
                }
            }
        }
        let live = self.mark(store, roots, &kinds)?;
        report.live_chunks = live.len() as u64;
        let now = now_nanos();
        let is_old =
            |r: &Record| now.saturating_sub(r.created_unix_nanos) >= grace.as_nanos() as u64;
        // Chunks condemned for longer than the grace period.
        let old_dead: HashSet<ChunkId> = records
            .iter()
            .filter(|(_, r)| is_old(r))
            .flat_map(|(_, r)| r.dead.iter().copied())
            .collect();
        let swept_records: Vec<Path> = records
            .iter()
            .filter(|(_, r)| is_old(r))
            .map(|(p, _)| p.clone())
            .collect();
        // A pack goes when every chunk in it was condemned long enough ago
        // and nothing reaches it now.
        let mut delete: HashSet<u64> = HashSet::new();
        for (number, listing) in &by_pack {
            if !listing.entries.iter().all(|e| old_dead.contains(&e.id)) {
                continue;
            }
            if listing.entries.iter().any(|e| live.contains(&e.id)) {
                report.spared_packs += 1;
            } else {
                delete.insert(*number);
            }
        }
        if !delete.is_empty() || !swept_records.is_empty() {
            self.sweep(&listings, &delete, &swept_records, &mut report)?;
        }

        // Condemn what is dead now and no record that stays condemns yet
        // (so that collections in a row do not repeat themselves).
        let still_condemned: HashSet<ChunkId> = records
            .iter()
            .filter(|(_, r)| !is_old(r))
            .flat_map(|(_, r)| r.dead.iter().copied())
            .collect();
        let mut dead = Vec::new();
        let mut packs = Vec::new();
        for (number, listing) in &by_pack {
            if delete.contains(number) {
                continue;
            }
            let mut all_dead = true;
            for entry in &listing.entries {
                if live.contains(&entry.id) {
                    all_dead = false;
                } else {
                    dead.push(entry.id);
                }
            }
            if all_dead {
                packs.push(*number);
            }
        }
        dead.sort();
        dead.dedup();
        report.dead_chunks = dead.len() as u64;
        report.condemned_packs = packs.len() as u64;
        dead.retain(|id| !still_condemned.contains(id));
        if !dead.is_empty() {
            let created = now_nanos();
            let record = Record {
                format: RECORD_FORMAT.into(),
                created_unix_nanos: created,
                packs,
                dead,
            };
            let bytes =
                Bytes::from(serde_json::to_vec(&record).map_err(|e| Error::Config(e.to_string()))?);
            let bucket = self.inner.bucket.clone();
            bucket
                .clone()
                .run(async move { bucket.put_new_or_same(&record_path(created), bytes).await })?;
        }
        report.millis = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Every index object, decoded, with its number.
    fn read_index_objects(&self) -> Result<Vec<IndexObject>> {
        let bucket = self.inner.bucket.clone();
        let parallel = self.inner.config.parallel;
        bucket.clone().run(async move {
            let listed = bucket.list(&Path::from(layout::INDEX)).await?;
            let numbers: Vec<u64> = listed
                .iter()
                .filter_map(|m| layout::index_number(&m.location))
                .collect();
            let fetched: Vec<Result<Option<IndexObject>>> = futures::stream::iter(numbers)
                .map(|number| {
                    let bucket = bucket.clone();
                    async move {
                        let path = layout::index(number);
                        Ok(match bucket.get(&path).await? {
                            Some(bytes) => Some((number, index::decode(&bytes, path.as_ref())?)),
                            None => None,
                        })
                    }
                })
                .buffer_unordered(parallel)
                .collect()
                .await;
            fetched.into_iter().filter_map(Result::transpose).collect()
        })
    }

    /// Replaces the index objects read by one merged object without the
    /// packs to delete, then deletes the old index objects, the packs and
    /// the swept records, in that order (a reader never finds a live
    /// chunk unlisted).
    fn sweep(
        &self,
        listings: &[IndexObject],
        delete: &HashSet<u64>,
        records: &[Path],
        report: &mut RemoteGcReport,
    ) -> Result<()> {
        let mut kept: Vec<PackListing> = Vec::new();
        let mut seen = HashSet::new();
        for (_, packs) in listings {
            for pack in packs {
                if delete.contains(&pack.number) {
                    report.swept_bytes += pack.len;
                } else if seen.insert(pack.number) {
                    kept.push(pack.clone());
                }
            }
        }
        report.swept_packs = delete.len() as u64;
        let old: Vec<u64> = listings.iter().map(|(n, _)| *n).collect();
        let delete: Vec<u64> = delete.iter().copied().collect();
        let records = records.to_vec();
        let merged = layout::fresh_number();
        let bytes = Bytes::from(index::encode(&kept));
        let bucket = self.inner.bucket.clone();
        bucket.clone().run(async move {
            if !kept.is_empty()
                && !bucket
                    .put_new_or_same(&layout::index(merged), bytes)
                    .await?
            {
                return Err(Error::Corrupt {
                    object: layout::index(merged).to_string(),
                    reason: "an index object of this random name exists already".into(),
                });
            }
            for number in old {
                bucket.delete(&layout::index(number)).await?;
            }
            for pack in delete {
                bucket.delete(&layout::pack(pack)).await?;
            }
            for record in records {
                bucket.delete(&record).await?;
            }
            Ok(())
        })?;
        self.inner.index.mark_read(merged);
        Ok(())
    }
}

/// The chunks any record calls dead.
pub(crate) fn dead_set(records: &[(Path, Record)]) -> HashSet<ChunkId> {
    records
        .iter()
        .flat_map(|(_, r)| r.dead.iter().copied())
        .collect()
}

/// Names of the records, to tell new ones apart.
pub(crate) fn record_names(records: &[(Path, Record)]) -> HashSet<String> {
    records.iter().map(|(p, _)| p.to_string()).collect()
}
