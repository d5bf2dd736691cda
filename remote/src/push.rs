//! Push and pull: moving refs, and everything they reach, between a
//! node's store and the bucket.
//!
//! A push writes in the order that keeps the bucket consistent at every
//! instant (`cas/FORMAT.md`, "The bucket"): the packs holding every chunk
//! the refs reach that the bucket lacks, then one index object listing
//! them, then each ref's next version. A push that fails part-way leaves
//! packs (or an index object) that no ref names, which cost space until
//! remote GC, never a ref to missing data.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use cas::{ChunkId, ChunkKind, PackBuilder, PackId, RefExpectation, Store};
use serde::{Deserialize, Serialize};

use crate::bucket::RequestCounts;
use crate::error::{Error, Result};
use crate::gc;
use crate::index::{self, PackListing};
use crate::layout;
use crate::refs::{self, RemoteRef};
use crate::tier::Remote;

/// Prefix of pin refs: `pin/NODE/NAME` keeps what node NODE pulled as
/// NAME in the bucket, for remote GC marks from every ref.
pub const PIN_PREFIX: &str = "pin/";

/// What a push did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PushReport {
    /// The refs as now in the bucket.
    pub refs: Vec<RemoteRef>,
    /// Chunks the refs reach (stopping at chunks the bucket had).
    pub chunks_walked: u64,
    /// Chunks uploaded.
    pub chunks_uploaded: u64,
    /// Chunks the bucket already had.
    pub chunks_present: u64,
    /// Pack bytes uploaded.
    pub bytes_uploaded: u64,
    /// Packs uploaded.
    pub packs: u64,
    pub millis: u64,
    /// Requests this push made.
    pub requests: RequestCounts,
}

fn delta(after: RequestCounts, before: RequestCounts) -> RequestCounts {
    RequestCounts {
        puts: after.puts - before.puts,
        gets: after.gets - before.gets,
        lists: after.lists - before.lists,
        deletes: after.deletes - before.deletes,
        retries: after.retries - before.retries,
        bytes_up: after.bytes_up - before.bytes_up,
        bytes_down: after.bytes_down - before.bytes_down,
    }
}

impl Remote {
    /// Pushes the local refs `names`: uploads what they reach that the
    /// bucket lacks, then moves each remote ref to the local root.
    pub fn push(&self, store: &Store, names: &[String]) -> Result<PushReport> {
        let started = Instant::now();
        let before = self.counts();
        let mut roots = Vec::with_capacity(names.len());
        for name in names {
            let value = store
                .get_ref(name)?
                .ok_or_else(|| Error::Store(cas::Error::RefNotFound { name: name.clone() }))?;
            roots.push((name.clone(), value.root));
        }
        let ids: Vec<ChunkId> = roots.iter().map(|(_, r)| *r).collect();
        let mut report = self.upload(store, &ids, &names.join(", "))?;
        for (name, root) in roots {
            report.refs.push(self.set_remote_ref(&name, root)?);
        }
        report.millis = started.elapsed().as_millis() as u64;
        report.requests = delta(self.counts(), before);
        Ok(report)
    }

    /// Uploads what `root` reaches that the bucket lacks, then moves remote
    /// ref `name` to it only if the ref matches `expect`: a lost race is
    /// [`Error::RefConflict`] (what was uploaded stays for the next try,
    /// or for remote GC). Volume heads move this way.
    pub fn push_root(
        &self,
        store: &Store,
        name: &str,
        root: ChunkId,
        expect: RefExpectation,
    ) -> Result<PushReport> {
        let started = Instant::now();
        let before = self.counts();
        cas::validate_ref_name(name)?;
        let mut report = self.upload(store, &[root], name)?;
        report.refs.extend(self.set_ref(name, Some(root), expect)?);
        report.millis = started.elapsed().as_millis() as u64;
        report.requests = delta(self.counts(), before);
        Ok(report)
    }

    /// Uploads every chunk `roots` reach that the bucket lacks (or that a
    /// collection condemned), re-validating what it reused, and writes the
    /// index object listing the new packs: after it, refs to `roots` may
    /// be written. `what` names the push in errors.
    fn upload(&self, store: &Store, roots: &[ChunkId], what: &str) -> Result<PushReport> {
        let started = Instant::now();
        self.refresh()?;
        let mut report = PushReport::default();
        // Chunks a collection condemned count as absent (they are
        // uploaded again); a record written while this push ran that
        // condemns a chunk it reused makes it walk again.
        let records = self.gc_records()?;
        let mut dead = gc::dead_set(&records);
        let mut seen = gc::record_names(&records);
        let mut listings = Vec::new();
        for attempt in 0.. {
            let mut reused = Vec::new();
            listings.extend(self.upload_closure(
                store,
                roots.iter().copied(),
                &dead,
                &mut reused,
                &mut report,
            )?);
            let fresh: Vec<_> = self
                .gc_records()?
                .into_iter()
                .filter(|(path, _)| !seen.contains(path.as_ref()))
                .collect();
            seen.extend(gc::record_names(&fresh));
            let newly_dead = gc::dead_set(&fresh);
            if !reused.iter().any(|id| newly_dead.contains(id)) {
                break;
            }
            if attempt == 3 {
                return Err(Error::RefConflict {
                    name: what.into(),
                    expected: "a bucket not being collected under this push".into(),
                    found: "collections condemning what it reuses, again and again".into(),
                });
            }
            dead.extend(newly_dead);
        }
        let grace = std::time::Duration::from_millis(self.inner.config.gc_grace_ms);
        if started.elapsed() > grace / 2 {
            return Err(Error::Config(format!(
                "the push took {:.0?}, more than half the bucket's GC grace period ({grace:?}): \
                 what it checked may be collected before its refs exist; run it again",
                started.elapsed()
            )));
        }
        if !listings.is_empty() {
            let number = layout::fresh_number();
            let bytes = Bytes::from(index::encode(&listings));
            let bucket = self.inner.bucket.clone();
            let created = bucket
                .clone()
                .run(async move { bucket.put_new_or_same(&layout::index(number), bytes).await })?;
            if !created {
                return Err(Error::Corrupt {
                    object: layout::index(number).to_string(),
                    reason: "an index object of this random name exists already".into(),
                });
            }
            self.inner.index.add(&listings);
            self.inner.index.mark_read(number);
        }
        Ok(report)
    }

    /// Moves remote ref `name` to `root` whatever it was, retrying a lost
    /// race (the last push wins, as for a local ref).
    fn set_remote_ref(&self, name: &str, root: ChunkId) -> Result<RemoteRef> {
        let bucket = self.inner.bucket.clone();
        let name = name.to_string();
        bucket
            .clone()
            .run(async move { refs::put(&bucket, &name, root).await })
    }

    /// Moves remote ref `name` by a conditional write (see [`refs`]). The
    /// caller makes sure the bucket holds everything `root` reaches.
    pub fn set_ref(
        &self,
        name: &str,
        root: Option<ChunkId>,
        expect: RefExpectation,
    ) -> Result<Option<RemoteRef>> {
        let bucket = self.inner.bucket.clone();
        let name = name.to_string();
        bucket
            .clone()
            .run(async move { refs::set(&bucket, &name, root, expect).await })
    }

    /// Remote ref `name`, if it exists.
    pub fn get_ref(&self, name: &str) -> Result<Option<RemoteRef>> {
        let bucket = self.inner.bucket.clone();
        let name = name.to_string();
        bucket
            .clone()
            .run(async move { refs::get(&bucket, &name).await })
    }

    /// Remote refs whose names start with `prefix`.
    pub fn list_refs(&self, prefix: &str) -> Result<Vec<RemoteRef>> {
        let bucket = self.inner.bucket.clone();
        let prefix = prefix.to_string();
        bucket
            .clone()
            .run(async move { refs::list(&bucket, &prefix).await })
    }

    /// Uploads every chunk reachable from `roots` that the bucket lacks,
    /// in packs, several at once; returns the packs uploaded.
    fn upload_closure(
        &self,
        store: &Store,
        roots: impl Iterator<Item = ChunkId>,
        dead: &HashSet<ChunkId>,
        reused: &mut Vec<ChunkId>,
        report: &mut PushReport,
    ) -> Result<Vec<PackListing>> {
        let config = &self.inner.config;
        let mut stack: Vec<ChunkId> = roots.collect();
        stack.reverse();
        let mut visited = HashSet::new();
        let mut builder: Option<(u64, PackBuilder)> = None;
        let mut node_builder: Option<(u64, PackBuilder)> = None;
        let mut uploads: VecDeque<tokio::task::JoinHandle<Result<PackListing>>> = VecDeque::new();
        let mut listings = Vec::new();
        let wait_one = |uploads: &mut VecDeque<tokio::task::JoinHandle<Result<PackListing>>>,
                        listings: &mut Vec<PackListing>|
         -> Result<()> {
            if let Some(handle) = uploads.pop_front() {
                let listing = self.inner.bucket.run(async move {
                    handle
                        .await
                        .map_err(|e| Error::Config(format!("an upload task failed: {e}")))?
                })?;
                listings.push(listing);
            }
            Ok(())
        };
        while let Some(id) = stack.pop() {
            if !visited.insert(id) {
                continue;
            }
            report.chunks_walked += 1;
            if self.inner.index.contains(&id) && !dead.contains(&id) {
                // Its closure is in the bucket too: pushes upload closures,
                // and collections condemn closures.
                report.chunks_present += 1;
                reused.push(id);
                continue;
            }
            let (kind, frame) = match store.local_frame(&id)? {
                Some((location, frame)) => (location.kind, frame),
                // Condemned in the bucket and not here: copied back.
                None if self.inner.index.contains(&id) => {
                    let frame = self.fetch(&id)?;
                    let kind = cas::check_frame(&frame)
                        .map_err(|reason| Error::Corrupt {
                            object: format!("the frame of chunk {id}"),
                            reason,
                        })?
                        .kind;
                    (kind, frame)
                }
                None => return Err(Error::ChunkMissing { id }),
            };
            if kind == ChunkKind::Node {
                let node = store.get_node(&id)?;
                stack.extend(node.links.iter().rev().copied());
            }
            // Nodes go to packs of their own: a reader of the tree gets
            // its directories in a few requests.
            let slot = if kind == ChunkKind::Node {
                &mut node_builder
            } else {
                &mut builder
            };
            let (_, pack) = slot.get_or_insert_with(|| {
                let number = layout::fresh_number();
                (number, PackBuilder::new(PackId(number)))
            });
            pack.append(&frame)?;
            report.chunks_uploaded += 1;
            if pack.len() >= config.pack_bytes {
                if let Some((number, pack)) = slot.take() {
                    if uploads.len() >= config.parallel {
                        wait_one(&mut uploads, &mut listings)?;
                    }
                    uploads.push_back(self.start_upload(number, pack, report));
                }
            }
        }
        for (number, pack) in [builder.take(), node_builder.take()].into_iter().flatten() {
            uploads.push_back(self.start_upload(number, pack, report));
        }
        while !uploads.is_empty() {
            wait_one(&mut uploads, &mut listings)?;
        }
        Ok(listings)
    }

    fn start_upload(
        &self,
        number: u64,
        pack: PackBuilder,
        report: &mut PushReport,
    ) -> tokio::task::JoinHandle<Result<PackListing>> {
        let (bytes, entries) = pack.finish();
        report.packs += 1;
        report.bytes_uploaded += bytes.len() as u64;
        let bucket = self.inner.bucket.clone();
        let multipart = self.inner.config.multipart_bytes;
        let part = (self.inner.config.pack_bytes / 2).max(5 << 20);
        let bytes = Bytes::from(bytes);
        self.inner.bucket.spawn(async move {
            let len = bytes.len() as u64;
            bucket
                .put(&layout::pack(number), bytes, multipart, part)
                .await?;
            Ok(PackListing {
                number,
                len,
                entries,
            })
        })
    }

    /// Pulls remote refs `names` into `store`: each local ref is pointed at
    /// the remote root, whose chunks are fetched when read (the store must
    /// have this tier attached). The root itself is fetched and verified
    /// first, so a pull of damaged or missing data fails here.
    pub fn pull(&self, store: &Store, names: &[String]) -> Result<Vec<RemoteRef>> {
        let mut pulled = Vec::with_capacity(names.len());
        let mut pins = Vec::with_capacity(names.len());
        for name in names {
            let value = self
                .get_ref(name)?
                .ok_or_else(|| Error::RefNotFound { name: name.clone() })?;
            // Pinned before the local ref exists (what this node reads
            // through it stays in the bucket whatever other nodes delete),
            // while the root is fetched.
            let bucket = self.inner.bucket.clone();
            let (pin, root) = (self.pin_name(name), value.root);
            pins.push(
                self.inner
                    .bucket
                    .spawn(async move { refs::put(&bucket, &pin, root).await }),
            );
            // The tree's directories start coming with its root.
            self.locate_root(&value.root)?
                .ok_or(Error::ChunkMissing { id: value.root })?;
            self.prefetch_nodes_of(&value.root);
            store.get_with_kind(&value.root)?;
            pulled.push(value);
        }
        for pin in pins {
            self.inner.bucket.run(async move {
                pin.await
                    .map_err(|e| Error::Config(format!("a pin task failed: {e}")))?
            })?;
        }
        let moves: Vec<(&str, Option<ChunkId>, RefExpectation)> = pulled
            .iter()
            .map(|r| (r.name.as_str(), Some(r.root), RefExpectation::Any))
            .collect();
        store.writer("pull").set_refs(&moves)?;
        Ok(pulled)
    }

    /// The pin ref by which this node keeps what it pulled as `name`:
    /// `pin/NODE/NAME` ([`Remote::node_name`]).
    pub fn pin_name(&self, name: &str) -> String {
        format!("{PIN_PREFIX}{}/{name}", self.node_name())
    }

    /// This node's pins: what it pulled, which remote GC keeps however
    /// the pulled refs move.
    pub fn pins(&self) -> Result<Vec<RemoteRef>> {
        self.list_refs(&format!("{PIN_PREFIX}{}/", self.node_name()))
    }

    /// Drops this node's pins of `names` (pulled refs), so that remote GC
    /// may take what nothing else reaches; the pins that existed.
    pub fn unpin(&self, names: &[String]) -> Result<Vec<String>> {
        let mut dropped = Vec::new();
        for name in names {
            let pin = self.pin_name(name);
            match self.set_ref(&pin, None, RefExpectation::Any) {
                Ok(_) => dropped.push(name.clone()),
                Err(Error::RefNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(dropped)
    }
}
