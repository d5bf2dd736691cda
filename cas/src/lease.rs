//! Leases and the GC tracker: how chunks that no ref reaches yet are kept
//! alive.
//!
//! An operation in flight (an import, a snapshot conversion) writes chunks
//! long before the ref that will reach them exists. Everything it writes or
//! pins is recorded in its lease, and GC marks from live leases as it marks
//! from refs. While a GC runs, every chunk any writer touches is also
//! recorded in the tracker, so chunks touched after GC took its snapshot of
//! refs and leases are marked too before anything is swept.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::id::ChunkId;

/// The chunks one lease pins.
#[derive(Default)]
pub(crate) struct LeaseSet {
    ids: Mutex<HashSet<ChunkId>>,
}

impl LeaseSet {
    pub(crate) fn insert(&self, id: ChunkId) {
        self.ids.lock().insert(id);
    }

    fn snapshot(&self) -> Vec<ChunkId> {
        self.ids.lock().iter().copied().collect()
    }
}

/// What GC learns about a lease.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeaseInfo {
    /// Process-local lease number.
    pub id: u64,
    /// What the operation holding it said it was doing.
    pub purpose: String,
    /// Chunks it pins.
    pub pinned: usize,
}

/// All live leases of an open store, and the GC tracker.
#[derive(Default)]
pub(crate) struct Leases {
    next: AtomicU64,
    live: Mutex<HashMap<u64, (String, Arc<LeaseSet>)>>,
    /// `Some` while a GC runs: every chunk touched since it started.
    tracker: Mutex<Option<HashSet<ChunkId>>>,
}

impl Leases {
    /// Registers a new lease.
    pub(crate) fn acquire(&self, purpose: &str) -> (u64, Arc<LeaseSet>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let set = Arc::new(LeaseSet::default());
        self.live
            .lock()
            .insert(id, (purpose.to_string(), Arc::clone(&set)));
        (id, set)
    }

    /// Ends a lease; its chunks are collectable unless something else
    /// reaches them.
    pub(crate) fn release(&self, id: u64) {
        self.live.lock().remove(&id);
    }

    /// Records that `id` was written or pinned under `lease`. Must happen
    /// before the caller looks the chunk up in the index (see gc.rs).
    pub(crate) fn touch(&self, lease: &LeaseSet, id: ChunkId) {
        lease.insert(id);
        if let Some(tracker) = self.tracker.lock().as_mut() {
            tracker.insert(id);
        }
    }

    /// Records a touch outside any lease (a ref being set).
    pub(crate) fn touch_untracked(&self, id: ChunkId) {
        if let Some(tracker) = self.tracker.lock().as_mut() {
            tracker.insert(id);
        }
    }

    /// Starts tracking for a GC and returns every chunk live leases pin.
    /// Tracking starts first, so nothing touched in between is missed.
    pub(crate) fn begin_gc(&self) -> Vec<ChunkId> {
        *self.tracker.lock() = Some(HashSet::new());
        let sets: Vec<Arc<LeaseSet>> = self
            .live
            .lock()
            .values()
            .map(|(_, set)| Arc::clone(set))
            .collect();
        sets.iter().flat_map(|set| set.snapshot()).collect()
    }

    /// Takes what was touched since the last call. With `then` given and
    /// nothing new touched, runs `then` while still holding the tracker
    /// lock, so no touch can slip in between the check and `then` (the
    /// sweep's deletion).
    pub(crate) fn drain_touched_or<T>(&self, then: impl FnOnce() -> T) -> Result<T, Vec<ChunkId>> {
        let mut guard = self.tracker.lock();
        let tracker = guard.get_or_insert_with(HashSet::new);
        if tracker.is_empty() {
            return Ok(then());
        }
        Err(tracker.drain().collect())
    }

    /// Stops tracking.
    pub(crate) fn end_gc(&self) {
        *self.tracker.lock() = None;
    }

    /// Describes the live leases.
    pub(crate) fn list(&self) -> Vec<LeaseInfo> {
        let mut out: Vec<LeaseInfo> = self
            .live
            .lock()
            .iter()
            .map(|(id, (purpose, set))| LeaseInfo {
                id: *id,
                purpose: purpose.clone(),
                pinned: set.ids.lock().len(),
            })
            .collect();
        out.sort_by_key(|l| l.id);
        out
    }
}
