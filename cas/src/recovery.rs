//! Crash recovery of packs when a store opens.
//!
//! Packs below the index's `sealed_below` mark were sealed and synced before
//! the last commit, so only packs at or above it can hold a torn tail. Each
//! of those is scanned: a torn tail (invalid frames with no indexed frame
//! after them) is cut off, the last pack becomes the active pack again and
//! any other is sealed.
//!
//! Frames that reached a pack but not the index are left unindexed: a
//! commit indexes all its chunks in one atomic batch before it returns, so
//! such frames were never acknowledged, and frames that GC swept look the
//! same. Both are dead bytes that compaction reclaims.

use crate::error::Result;
use crate::index::{ChunkLocation, IndexDb};
use crate::pack::{self, ActivePack, PackId, TrailerEntry, PACK_HEADER_LEN};

/// Recovers the packs in `dir`; returns the pack to keep appending to (if
/// any) and the next pack number.
pub(crate) fn recover_packs(
    dir: &std::path::Path,
    index: &IndexDb,
) -> Result<(Option<ActivePack>, PackId)> {
    let packs = pack::list_packs(dir)?;
    let sealed_below = index.sealed_below()?;
    let last = packs.last().copied();
    let next = PackId(index.next_pack()?.0.max(last.map_or(1, |l| l.0 + 1)));
    let mut active = None;
    for &id in packs.iter().filter(|id| **id >= sealed_below) {
        let path = pack::pack_path(dir, id);
        let file = std::fs::File::open(&path)
            .map_err(|e| crate::Error::io(format!("opening pack {id} for recovery"), e))?;
        let len = file
            .metadata()
            .map_err(|e| crate::Error::io(format!("reading pack {id}"), e))?
            .len();
        if len < PACK_HEADER_LEN {
            // Created but its header never reached the disk: it holds nothing.
            tracing::warn!(pack = %id, "removing a pack file that holds no header");
            std::fs::remove_file(&path)
                .map_err(|e| crate::Error::io(format!("removing empty pack {id}"), e))?;
            continue;
        }
        if let Err(e) = pack::check_header(&file, id) {
            tracing::error!(pack = %id, error = %e, "pack header is damaged; leaving the pack for fsck");
            continue;
        }
        if pack::read_footer(&file, id)?.is_some() {
            continue;
        }
        let scan = pack::scan_frames(&file, id, len)?;
        let mut frames = Vec::with_capacity(scan.frames.len());
        let mut indexed_after_damage = false;
        let damage_start = scan.damaged.first().map(|d| d.0);
        if let Some(start) = damage_start {
            for frame in scan.frames.iter().filter(|f| f.offset > start) {
                if index.location(&frame.id)? == Some(location_of(id, frame)) {
                    indexed_after_damage = true;
                }
            }
        }
        let end = match damage_start {
            Some(start) if !indexed_after_damage => {
                // A torn tail: nothing after it was ever acknowledged.
                tracing::warn!(pack = %id, offset = start, "cutting off a torn pack tail");
                frames.extend(scan.frames.iter().filter(|f| f.offset < start));
                start
            }
            _ => {
                if damage_start.is_some() {
                    tracing::error!(pack = %id, "damaged frames inside a pack; sealing it as is for fsck to report");
                }
                frames.extend(scan.frames.iter().copied());
                len
            }
        };
        let clean = damage_start.is_none() || !indexed_after_damage;
        let resumed = ActivePack::resume(dir, id, frames, end)?;
        if Some(id) == last && clean {
            active = Some(resumed);
        } else {
            let file = resumed.seal()?;
            file.sync_data()
                .map_err(|e| crate::Error::io(format!("syncing recovered pack {id}"), e))?;
        }
    }
    let sealed_below = active.as_ref().map_or(next, |a: &ActivePack| a.id());
    index.record_locations(&[], Some(sealed_below))?;
    Ok((active, next))
}

pub(crate) fn location_of(pack: PackId, frame: &TrailerEntry) -> ChunkLocation {
    ChunkLocation {
        pack,
        offset: frame.offset,
        stored_len: frame.stored_len,
        raw_len: frame.raw_len,
        kind: frame.kind,
    }
}
