//! Garbage collection: mark from refs and leases, sweep what nothing
//! reaches, and compact packs whose dead share passes a threshold, while
//! writers keep writing.
//!
//! Why no reachable chunk is lost:
//! 1. GC first commits everything pending, then turns on the tracker
//!    (every chunk any writer touches from now on is recorded), then
//!    snapshots refs and leases and marks everything they reach.
//! 2. A writer touches a chunk *before* looking it up in the index, and a
//!    ref is touched before it is written. So a chunk a writer relies on
//!    was either marked, or is in the tracker, or was written anew because
//!    the writer's lookup came after its deletion.
//! 3. Each batch of deletions runs under the tracker lock and only when the
//!    tracker is empty; anything in it is marked (with everything it links
//!    to) first.
//! 4. Packs are only deleted or compacted below the active pack as it was
//!    when GC started, after the sweep: no new chunk lands there, and a
//!    compacted chunk is re-appended and committed before its old pack goes.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::frame;
use crate::id::{ChunkId, ChunkKind};
use crate::index::ChunkLocation;
use crate::pack::{self, PackId};
use crate::store::{Inner, Store};

/// Deletions applied per index write during the sweep.
const SWEEP_BATCH: usize = 4_096;

/// What a GC run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Chunks reachable from refs and leases.
    pub reachable_chunks: u64,
    /// Chunks removed from the index.
    pub swept_chunks: u64,
    /// Their stored bytes (frames).
    pub swept_bytes: u64,
    /// Pack files deleted because nothing in them was alive.
    pub packs_deleted: u64,
    /// Pack files rewritten because their dead share passed the threshold.
    pub packs_compacted: u64,
    /// Live chunks copied out of compacted packs.
    pub chunks_relocated: u64,
    /// Bytes of pack files freed on disk.
    pub bytes_reclaimed: u64,
    /// Wall time in milliseconds.
    pub millis: u64,
}

/// Turns the tracker off however GC ends.
struct TrackerGuard<'a>(&'a Inner);

impl Drop for TrackerGuard<'_> {
    fn drop(&mut self) {
        self.0.leases.end_gc();
    }
}

impl Store {
    /// Runs a full garbage collection. Only one runs at a time; writers
    /// and readers continue meanwhile.
    pub fn gc(&self) -> Result<GcReport> {
        let inner = &*self.inner;
        let _one_at_a_time = inner.gc_lock.lock();
        let started = Instant::now();
        // Packs below the floor are sealed; committing after reading it makes
        // every chunk in them indexed before the sweep counts what is live.
        let floor = inner.active_pack_floor();
        self.commit()?;
        let lease_roots = inner.leases.begin_gc();
        let _tracker = TrackerGuard(inner);

        let mut marked = HashSet::new();
        let ref_roots: Vec<ChunkId> = inner
            .index
            .list_refs("")?
            .into_iter()
            .map(|(_, value)| value.root)
            .collect();
        mark(inner, &mut marked, ref_roots, false)?;
        mark(inner, &mut marked, lease_roots, true)?;

        let mut report = GcReport::default();
        let live_by_pack = sweep(inner, &mut marked, &mut report)?;
        report.reachable_chunks = marked.len() as u64;
        compact(self, floor, &live_by_pack, &mut report)?;
        report.millis = started.elapsed().as_millis() as u64;
        tracing::info!(?report, "gc finished");
        Ok(report)
    }
}

/// Marks `roots` and everything they link to. `roots_may_be_missing` is
/// set for chunks touched by writers: a writer touches a chunk before it
/// writes it, so such a root may not be stored yet (it stays marked, so it
/// survives the sweep once it lands). A missing or unreadable chunk below a
/// stored node, or a missing ref root, is damage and stops GC: what it links
/// to is unknown, so nothing may be swept.
fn mark(
    inner: &Inner,
    marked: &mut HashSet<ChunkId>,
    roots: Vec<ChunkId>,
    roots_may_be_missing: bool,
) -> Result<()> {
    let mut stack: Vec<(ChunkId, bool)> = roots
        .into_iter()
        .map(|id| (id, roots_may_be_missing))
        .collect();
    while let Some((id, may_be_missing)) = stack.pop() {
        if !marked.insert(id) {
            continue;
        }
        let Some(location) = inner.locate(&id)? else {
            if may_be_missing {
                continue;
            }
            return Err(gc_stopped(format!("reachable chunk {id} is missing")));
        };
        // A remote node's closure is remote: nothing below it needs a
        // local copy (a local duplicate may go; reads fetch it back).
        if location.kind == ChunkKind::Node && !location.pack.is_remote() {
            let links = inner
                .node_links(&id)
                .map_err(|e| gc_stopped(format!("reachable node {id} is unreadable: {e}")))?;
            stack.extend(
                links
                    .into_iter()
                    .filter(|l| !marked.contains(l))
                    .map(|l| (l, false)),
            );
        }
    }
    Ok(())
}

fn gc_stopped(reason: String) -> Error {
    Error::IndexCorrupt {
        detail: format!("garbage collection stopped before deleting anything: {reason}"),
    }
}

/// Removes unmarked chunks from the index; returns live frame bytes per pack.
fn sweep(
    inner: &Inner,
    marked: &mut HashSet<ChunkId>,
    report: &mut GcReport,
) -> Result<HashMap<PackId, u64>> {
    let mut live_by_pack: HashMap<PackId, u64> = HashMap::new();
    let mut candidates: Vec<(ChunkId, ChunkLocation)> = Vec::new();
    inner.index.for_each_chunk(|id, location| {
        let location = location?;
        if marked.contains(&id) {
            *live_by_pack.entry(location.pack).or_default() += frame_len(&location);
        } else {
            candidates.push((id, location));
        }
        Ok(true)
    })?;
    for batch in candidates.chunks(SWEEP_BATCH) {
        loop {
            let attempt = inner.leases.drain_touched_or(|| {
                let doomed: Vec<ChunkId> = batch
                    .iter()
                    .filter(|(id, _)| !marked.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                inner.index.remove_chunks(&doomed).map(|_| doomed.len())
            });
            match attempt {
                Ok(removed) => {
                    removed?;
                    break;
                }
                Err(touched) => mark(inner, marked, touched, true)?,
            }
        }
        for (id, location) in batch {
            if marked.contains(id) {
                *live_by_pack.entry(location.pack).or_default() += frame_len(location);
            } else {
                report.swept_chunks += 1;
                report.swept_bytes += frame_len(location);
            }
        }
    }
    Ok(live_by_pack)
}

fn frame_len(location: &ChunkLocation) -> u64 {
    frame::FRAME_HEADER_LEN as u64 + u64::from(location.stored_len)
}

/// Deletes dead packs and rewrites mostly-dead ones, below `floor` only.
fn compact(
    store: &Store,
    floor: PackId,
    live_by_pack: &HashMap<PackId, u64>,
    report: &mut GcReport,
) -> Result<()> {
    let inner = &*store.inner;
    let threshold = inner.options.gc_compact_dead_share.clamp(0.0, 1.0);
    let mut doomed = Vec::new();
    for id in pack::list_packs(&inner.packs_dir)? {
        if id >= floor {
            continue;
        }
        let path = pack::pack_path(&inner.packs_dir, id);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("reading pack {id}"), e))?
            .len();
        let live = live_by_pack.get(&id).copied().unwrap_or(0);
        if live == 0 {
            doomed.push((id, size));
            continue;
        }
        let dead_share = 1.0 - live as f64 / size.max(1) as f64;
        if dead_share < threshold {
            continue;
        }
        match relocate_live_chunks(inner, id) {
            Ok(moved) => {
                report.chunks_relocated += moved;
                report.packs_compacted += 1;
                doomed.push((id, size));
            }
            Err(e) => {
                tracing::error!(pack = %id, error = %e, "not compacting a pack that does not read cleanly")
            }
        }
    }
    if doomed.is_empty() {
        return Ok(());
    }
    // Relocated chunks must be durable and indexed before their old copies go.
    store.commit()?;
    for (id, size) in doomed {
        let path = pack::pack_path(&inner.packs_dir, id);
        std::fs::remove_file(&path).map_err(|e| Error::io(format!("deleting pack {id}"), e))?;
        inner.forget_pack(id);
        report.packs_deleted += 1;
        report.bytes_reclaimed += size;
    }
    pack::sync_dir(&inner.packs_dir)
}

/// Copies every chunk the index still places in pack `id` to the active
/// pack (verbatim frames, verified first). Returns how many moved.
fn relocate_live_chunks(inner: &Inner, id: PackId) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = pack::open_pack(&inner.packs_dir, id)
        .map_err(|e| Error::io(format!("opening pack {id}"), e))?;
    let footer = pack::read_footer(&file, id)?.ok_or_else(|| Error::CorruptPack {
        pack: id,
        offset: 0,
        reason: "pack below the active pack is not sealed".into(),
    })?;
    let mut moved = 0;
    for entry in pack::read_trailer(&file, id, &footer)? {
        let here = crate::recovery::location_of(id, &entry);
        if inner.index.location(&entry.id)? != Some(here) {
            continue;
        }
        let mut frame_bytes = vec![0u8; entry.frame_len() as usize];
        file.read_exact_at(&mut frame_bytes, entry.offset)
            .map_err(|e| Error::io(format!("reading pack {id}"), e))?;
        let (header, _) =
            frame::decode(frame_bytes.clone()).map_err(|reason| Error::CorruptChunk {
                id: entry.id,
                pack: id,
                offset: entry.offset,
                reason,
            })?;
        if header.id != entry.id {
            return Err(Error::CorruptPack {
                pack: id,
                offset: entry.offset,
                reason: "trailer and frame disagree".into(),
            });
        }
        inner.append_frame(entry.id, entry.kind, &frame_bytes)?;
        moved += 1;
    }
    Ok(moved)
}
