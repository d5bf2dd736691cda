//! fsck: checks packs, frames, the index and refs, names every damaged or
//! missing chunk and what references it, and rebuilds the index from the
//! packs when asked.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::frame::{self, FRAME_HEADER_LEN};
use crate::id::{ChunkId, ChunkKind};
use crate::index::{ChunkLocation, IndexDb, OpenMode};
use crate::pack::{self, PackId, PACK_HEADER_LEN};
use crate::recovery::location_of;
use crate::store::Store;

/// Index entries written per batch during a rebuild.
const REBUILD_BATCH: usize = 16_384;

/// One thing fsck found wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// A pack's header or footer is wrong, or its trailer disagrees with its
    /// frames.
    PackDamaged {
        pack: PackId,
        offset: u64,
        reason: String,
    },
    /// Bytes in a pack that hold no valid frame.
    FramesDamaged {
        pack: PackId,
        offset: u64,
        end: u64,
        reason: String,
    },
    /// The index cannot be read.
    IndexUnreadable { detail: String },
    /// An index entry points at a frame that is missing or corrupt.
    ChunkCorrupt {
        id: ChunkId,
        pack: PackId,
        offset: u64,
        reason: String,
    },
    /// A chunk reachable from a ref is not in the store.
    MissingChunk {
        id: ChunkId,
        referenced_by_ref: String,
        parent: Option<ChunkId>,
    },
    /// A chunk reachable from a ref is corrupt (details in its
    /// `ChunkCorrupt` entry).
    DamagedReachableChunk {
        id: ChunkId,
        referenced_by_ref: String,
        parent: Option<ChunkId>,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let via = |parent: &Option<ChunkId>| match parent {
            Some(p) => format!(" via node {p}"),
            None => " (its root)".to_string(),
        };
        match self {
            Problem::PackDamaged {
                pack,
                offset,
                reason,
            } => {
                write!(f, "pack {pack} is damaged at offset {offset}: {reason}")
            }
            Problem::FramesDamaged {
                pack,
                offset,
                end,
                reason,
            } => write!(
                f,
                "pack {pack} bytes {offset}..{end} hold no valid frame: {reason}"
            ),
            Problem::IndexUnreadable { detail } => write!(f, "the index cannot be read: {detail}"),
            Problem::ChunkCorrupt {
                id,
                pack,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "chunk {id} (pack {pack}, offset {offset}) is corrupt: {reason}"
                )
            }
            Problem::MissingChunk {
                id,
                referenced_by_ref,
                parent,
            } => write!(
                f,
                "chunk {id} is missing; ref '{referenced_by_ref}' reaches it{}",
                via(parent)
            ),
            Problem::DamagedReachableChunk {
                id,
                referenced_by_ref,
                parent,
            } => write!(
                f,
                "chunk {id} is corrupt; ref '{referenced_by_ref}' reaches it{}",
                via(parent)
            ),
        }
    }
}

/// What fsck checked and found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FsckReport {
    pub packs: u64,
    pub frames: u64,
    pub indexed_chunks: u64,
    /// Valid frames no index entry points at (dead copies awaiting GC).
    pub unindexed_frames: u64,
    pub refs: u64,
    pub reachable_chunks: u64,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// How thorough fsck is.
#[derive(Clone, Copy, Debug)]
pub struct FsckOptions {
    /// Decompress and hash every indexed chunk (otherwise only crc32).
    pub verify_data: bool,
}

impl Default for FsckOptions {
    fn default() -> Self {
        FsckOptions { verify_data: true }
    }
}

impl Store {
    /// Checks the whole store. Problems are reported, not fixed.
    pub fn fsck(&self, options: FsckOptions, progress: &dyn Fn(&str, u64)) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        self.commit()?;
        check_packs(self, &mut report, progress)?;
        let damaged = check_index(self, options, &mut report, progress)?;
        check_refs(self, &damaged, &mut report)?;
        Ok(report)
    }

    /// Rebuilds the chunk index from the packs alone: every frame whose
    /// header and crc check is indexed. Refs are kept. No writer may be
    /// active. Returns the number of chunks indexed.
    pub fn rebuild_index(&self, progress: &dyn Fn(&str, u64)) -> Result<u64> {
        let inner = &*self.inner;
        if !inner.leases.list().is_empty() {
            return Err(Error::InvalidConfig(
                "the index cannot be rebuilt while writers are active".into(),
            ));
        }
        let _gc = inner.gc_lock.lock();
        self.commit()?;
        inner.index.clear_chunks()?;
        self.clear_cache();
        let mut seen: HashMap<ChunkId, ChunkLocation> = HashMap::new();
        let mut batch = Vec::new();
        let mut total = 0;
        for id in pack::list_packs(&inner.packs_dir)? {
            progress("rebuilding index from pack", id.0);
            let Ok(file) = pack::open_pack(&inner.packs_dir, id) else {
                continue;
            };
            if pack::check_header(&file, id).is_err() {
                tracing::error!(pack = %id, "skipping a pack with a damaged header");
                continue;
            }
            let end = frame_area_end(&file, id)?;
            let scan = pack::scan_frames(&file, id, end)?;
            for frame in scan.frames {
                // A later copy (GC relocation) wins over an earlier one.
                let location = location_of(id, &frame);
                seen.insert(frame.id, location);
                batch.push((frame.id, location));
                if batch.len() >= REBUILD_BATCH {
                    inner.index.record_locations(&batch, None)?;
                    total += batch.len() as u64;
                    batch.clear();
                }
            }
        }
        inner.index.record_locations(&batch, None)?;
        total += batch.len() as u64;
        tracing::info!(
            frames = total,
            chunks = seen.len(),
            "index rebuilt from packs"
        );
        Ok(seen.len() as u64)
    }
}

/// Repairs an index that no longer opens (RocksDB's own salvage, keeping
/// refs where their files survive), then rebuilds the chunk index from the
/// packs. For use when [`Store::open`] fails with a damaged index.
pub fn repair_index(home: &Path, progress: &dyn Fn(&str, u64)) -> Result<Store> {
    crate::store::read_marker(home)?;
    let index_dir = home.join("index");
    let index = match IndexDb::open(&index_dir, OpenMode::Existing, 8 << 20) {
        Ok(index) => index,
        Err(e @ (Error::NotAStore { .. } | Error::Locked { .. })) => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "the index does not open; running RocksDB repair");
            IndexDb::repair(&index_dir)?;
            IndexDb::open(&index_dir, OpenMode::Existing, 8 << 20)?
        }
    };
    // Empty the chunk index before the store opens: crash recovery looks
    // chunks up, and must not trip over the damaged tables.
    index.clear_chunks()?;
    drop(index);
    let store = Store::open(home, crate::OpenOptions::default())?;
    store.rebuild_index(progress)?;
    Ok(store)
}

/// Where a pack's frames end: its trailer, or its length if unsealed.
fn frame_area_end(file: &std::fs::File, id: PackId) -> Result<u64> {
    Ok(match pack::read_footer(file, id)? {
        Some(footer) => footer.trailer_offset,
        None => file
            .metadata()
            .map_err(|e| Error::io(format!("reading pack {id}"), e))?
            .len(),
    })
}

fn check_packs(store: &Store, report: &mut FsckReport, progress: &dyn Fn(&str, u64)) -> Result<()> {
    let inner = &*store.inner;
    let packs = pack::list_packs(&inner.packs_dir)?;
    let active = inner.active_pack_floor();
    for id in packs {
        progress("checking pack", id.0);
        report.packs += 1;
        let file = pack::open_pack(&inner.packs_dir, id)
            .map_err(|e| Error::io(format!("opening pack {id}"), e))?;
        if let Err(e) = pack::check_header(&file, id) {
            report.problems.push(Problem::PackDamaged {
                pack: id,
                offset: 0,
                reason: e.to_string(),
            });
            continue;
        }
        let footer = pack::read_footer(&file, id)?;
        let end = frame_area_end(&file, id)?;
        let scan = pack::scan_frames(&file, id, end)?;
        for (offset, end, reason) in &scan.damaged {
            report.problems.push(Problem::FramesDamaged {
                pack: id,
                offset: *offset,
                end: *end,
                reason: reason.clone(),
            });
        }
        match footer {
            Some(footer) => match pack::read_trailer(&file, id, &footer) {
                Ok(trailer) if scan.damaged.is_empty() && trailer != scan.frames => {
                    report.problems.push(Problem::PackDamaged {
                        pack: id,
                        offset: footer.trailer_offset,
                        reason: "the trailer does not list the frames the pack holds".into(),
                    });
                }
                Ok(_) => {}
                Err(e) => report.problems.push(Problem::PackDamaged {
                    pack: id,
                    offset: footer.trailer_offset,
                    reason: e.to_string(),
                }),
            },
            None if id < active => report.problems.push(Problem::PackDamaged {
                pack: id,
                offset: end,
                reason: "a pack other than the active one has no valid footer".into(),
            }),
            None => {}
        }
        for frame in &scan.frames {
            report.frames += 1;
            // A damaged index entry is reported by the index check.
            if inner.index.location(&frame.id).ok().flatten() != Some(location_of(id, frame)) {
                report.unindexed_frames += 1;
            }
        }
        if end < PACK_HEADER_LEN {
            report.problems.push(Problem::PackDamaged {
                pack: id,
                offset: 0,
                reason: "shorter than a pack header".into(),
            });
        }
    }
    Ok(())
}

/// Verifies every index entry against its frame; returns the damaged ids.
fn check_index(
    store: &Store,
    options: FsckOptions,
    report: &mut FsckReport,
    progress: &dyn Fn(&str, u64),
) -> Result<HashSet<ChunkId>> {
    let inner = &*store.inner;
    let mut damaged = HashSet::new();
    let result = inner.index.for_each_chunk(|id, location| {
        report.indexed_chunks += 1;
        if report.indexed_chunks % 4096 == 0 {
            progress("verifying chunk", report.indexed_chunks);
        }
        let location = match location {
            Ok(location) => location,
            Err(e) => {
                report.problems.push(Problem::IndexUnreadable {
                    detail: e.to_string(),
                });
                damaged.insert(id);
                return Ok(true);
            }
        };
        let verdict = if options.verify_data {
            inner.read_frame(&id, &location).map(|_| ())
        } else {
            check_frame_crc(store, &id, &location)
        };
        if let Err(e) = verdict {
            let reason = match e {
                Error::CorruptChunk { reason, .. } => reason,
                Error::PackMissing { .. } => "its pack file is missing".into(),
                other => other.to_string(),
            };
            report.problems.push(Problem::ChunkCorrupt {
                id,
                pack: location.pack,
                offset: location.offset,
                reason,
            });
            damaged.insert(id);
        }
        Ok(true)
    });
    if let Err(e) = result {
        report.problems.push(Problem::IndexUnreadable {
            detail: e.to_string(),
        });
    }
    Ok(damaged)
}

fn check_frame_crc(store: &Store, id: &ChunkId, location: &ChunkLocation) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let corrupt = |reason: String| Error::CorruptChunk {
        id: *id,
        pack: location.pack,
        offset: location.offset,
        reason,
    };
    let file =
        pack::open_pack(store.packs_dir(), location.pack).map_err(|_| Error::PackMissing {
            id: *id,
            pack: location.pack,
        })?;
    let mut buf = vec![0u8; FRAME_HEADER_LEN + location.stored_len as usize];
    file.read_exact_at(&mut buf, location.offset)
        .map_err(|_| corrupt("the frame runs past the end of the pack".into()))?;
    let header = frame::check(&buf).map_err(corrupt)?;
    if header.id != *id {
        return Err(corrupt(
            "the index points at the frame of another chunk".into(),
        ));
    }
    Ok(())
}

/// Walks every ref and reports reachable chunks that are missing or
/// damaged, with the ref and parent node that reach them.
fn check_refs(store: &Store, damaged: &HashSet<ChunkId>, report: &mut FsckReport) -> Result<()> {
    let inner = &*store.inner;
    let refs = match inner.index.list_refs("") {
        Ok(refs) => refs,
        Err(e) => {
            report.problems.push(Problem::IndexUnreadable {
                detail: e.to_string(),
            });
            return Ok(());
        }
    };
    let mut visited = HashSet::new();
    for (name, value) in refs {
        report.refs += 1;
        let mut stack: Vec<(ChunkId, Option<ChunkId>)> = vec![(value.root, None)];
        while let Some((id, parent)) = stack.pop() {
            if !visited.insert(id) {
                continue;
            }
            let location = match inner.locate(&id) {
                Ok(Some(location)) => location,
                Ok(None) => {
                    report.problems.push(Problem::MissingChunk {
                        id,
                        referenced_by_ref: name.clone(),
                        parent,
                    });
                    continue;
                }
                Err(e) => {
                    report.problems.push(Problem::IndexUnreadable {
                        detail: e.to_string(),
                    });
                    continue;
                }
            };
            if damaged.contains(&id) {
                report.problems.push(Problem::DamagedReachableChunk {
                    id,
                    referenced_by_ref: name.clone(),
                    parent,
                });
                continue;
            }
            // The remote tier checks its own (`snapctl remote fsck`).
            if location.kind == ChunkKind::Node && !location.pack.is_remote() {
                match inner.node_links(&id) {
                    Ok(links) => stack.extend(links.into_iter().map(|l| (l, Some(id)))),
                    Err(_) => report.problems.push(Problem::DamagedReachableChunk {
                        id,
                        referenced_by_ref: name.clone(),
                        parent,
                    }),
                }
            }
        }
    }
    report.reachable_chunks = visited.len() as u64;
    Ok(())
}
