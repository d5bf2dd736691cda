//! A session: one sandbox's copy-on-write view of a volume, and its
//! commits.
//!
//! A session is a [`CowFs`] mount over the head the session started from,
//! with its own upper layer (and its journal: an fsync'd write is durable
//! in the session before fsync returns). [`Session::commit`] captures the
//! mount (sealing changed files; the sandbox goes on at once), stores the
//! capture as a tree and merges it into the volume's head
//! ([`Volumes::commit`]). The stored capture becomes the session's new
//! base, so that the next commit carries only what changed since.
//!
//! The base is kept alive in the store by the ref `volsession/ID` (and
//! the tree the mount started on by `vollower/ID`) for as long as the
//! session lives (the merged head need not contain it: a
//! conflict or a concurrent delete changes it), so GC never takes what
//! the next merge must read. [`Session::close`] commits and then lets it
//! go; a session whose commit fails keeps its upper layer and its ref.
//!
//! A reload moves the mount onto a new tree while files stay open on the
//! old one (an open file keeps reading what it opened, even one the
//! sandbox deleted). The trees the session leaves are pinned by a lease of
//! the session ([`cas::Writer`]) until the session ends, so GC never takes
//! what an open file reads; nothing needs to outlive a crash, which closes
//! every file.

use std::sync::Arc;

use cas::{ChunkId, RefExpectation};
use layerfs::cowfs::{CowFs, Errno, MountConfig, SharedSpace};
use parking_lot::Mutex;

use crate::catalog::{validate_name, Committed, Volumes};
use crate::{Error, Result};

/// Ref prefix of live sessions' bases.
pub const SESSION_REF_PREFIX: &str = "volsession/";
/// Ref prefix of live sessions' lower trees (the head each started on).
pub const LOWER_REF_PREFIX: &str = "vollower/";
/// Ref prefix of a session's capture while its commit is under way.
pub const PENDING_REF_PREFIX: &str = "volpending/";
/// Ref prefix of the tree a reload moves a session onto, while it does.
pub const NEXT_REF_PREFIX: &str = "volnext/";
/// Ref prefix of the head a reload merged onto (the session's next base),
/// while it does.
pub const NEXT_BASE_REF_PREFIX: &str = "volnextbase/";

/// Upper-layer bytes past which a reload stores the session's changes
/// before holding it still (so that the pause follows what changed in
/// between, not everything uncommitted).
const EARLY_STORE_BYTES: u64 = 8 << 20;

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// The head the session now works over.
    pub head: crate::Head,
    /// Conflicts between the session's uncommitted changes and the head,
    /// each resolved in the session's view as a commit would resolve it.
    pub conflicts: Vec<layerfs::Conflict>,
    /// What changed in the mount.
    pub rebased: layerfs::cowfs::Rebased,
}

/// One sandbox's view of a volume.
pub struct Session {
    volumes: Arc<Volumes>,
    volume: String,
    id: String,
    fs: Arc<CowFs>,
    /// The tree the session's changes are relative to; held while a
    /// commit runs, so that commits of one session go one at a time.
    base: Mutex<ChunkId>,
    /// The tree whose directory nodes the mount's directories were last
    /// recorded as (its last converted capture, or the tree it was
    /// opened or rebased on; `None`: not known, after a recovery). When
    /// it is the base, a commit's capture counts the paths it changed and
    /// no diff is needed (taken with `base` held).
    patched_from: Mutex<Option<ChunkId>>,
    /// A read-only view of an old commit: never committed or reloaded.
    read_only: bool,
    /// Pins the trees reloads moved the mount off, for the session's life
    /// (files opened before a reload may read them).
    left_trees: cas::Writer,
    /// The space the volume's sessions share (a volume with a quota).
    space: Option<Arc<SharedSpace>>,
    /// Bytes the session's captures moved out of its upper layer that no
    /// head holds yet (a reload's, a failed commit's), kept taken in
    /// `space` until a commit lands them.
    held: Mutex<u64>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(space) = &self.space {
            space.release(*self.held.get_mut() + self.fs.used_bytes());
        }
    }
}

impl Session {
    /// Starts session `id` (letters, digits, `-`, `_`) on volume `volume`'s
    /// head, its upper layer in `config.upper_dir`.
    pub fn open(
        volumes: Arc<Volumes>,
        volume: &str,
        id: &str,
        config: MountConfig,
    ) -> Result<Session> {
        let head = volumes.head(volume)?;
        Self::open_at(volumes, volume, id, config, head.commit.tree)
    }

    /// Starts session `id` of volume `volume` over tree `base` (the head's,
    /// or an old commit's for a read-only view).
    pub fn open_at(
        volumes: Arc<Volumes>,
        volume: &str,
        id: &str,
        config: MountConfig,
        base: ChunkId,
    ) -> Result<Session> {
        validate_name(id).map_err(|_| Error::BadSession(id.into()))?;
        let store = volumes.store().clone();
        // The mount reads its lower tree for its whole life; its base moves.
        store.set_ref(&lower_ref(id), base, RefExpectation::Any)?;
        store.set_ref(&session_ref(id), base, RefExpectation::Any)?;
        let fs = CowFs::new(store, base, config)?;
        Session::running(volumes, volume, id, fs, base, Some(base))
    }

    /// Reopens session `id` of volume `volume` after the server stopped
    /// without closing it (a crash, a kill): its upper layer in
    /// `config.upper_dir` is recovered from its journal — everything the
    /// sandbox fsync'd is there — over the tree the session started on,
    /// and its base is the one its last commit left. Commit or close it to
    /// bring what it holds into the volume.
    pub fn recover(
        volumes: Arc<Volumes>,
        volume: &str,
        id: &str,
        config: MountConfig,
    ) -> Result<Session> {
        validate_name(id).map_err(|_| Error::BadSession(id.into()))?;
        volumes.head(volume)?;
        let store = volumes.store().clone();
        let found = |name: String| -> Result<ChunkId> {
            match store.get_ref(&name)? {
                Some(value) => Ok(value.root),
                None => Err(Error::Session(format!(
                    "no session '{id}' to recover ({name} is missing)"
                ))),
            }
        };
        let lower = found(lower_ref(id))?;
        let mut base = found(session_ref(id))?;
        // A crash in the middle of a commit: whether the head moved with
        // the pending capture is in the newest commit of this session.
        if let Some(pending) = store.get_ref(&pending_ref(id))? {
            let landed = volumes
                .history(volume, usize::MAX)?
                .into_iter()
                .find(|c| c.record.author == id)
                .is_some_and(|c| c.record.capture == Some(pending.root));
            if landed {
                store.set_ref(&session_ref(id), pending.root, RefExpectation::Any)?;
                base = pending.root;
            }
            delete_ref(&store, &pending_ref(id))?;
            tracing::info!(session = id, landed, "a commit was under way at the crash");
        }
        let (fs, report) = CowFs::recover(store.clone(), lower, config)?;
        // A reload the crash interrupted (its tree is not the session's
        // lower tree yet): the session's base is the head it merged onto.
        if let Some((tree, note)) = report.rebased {
            if tree != lower {
                if let Some(head) = note {
                    store.set_ref(&session_ref(id), head, RefExpectation::Any)?;
                    base = head;
                }
                store.set_ref(&lower_ref(id), tree, RefExpectation::Any)?;
            }
        }
        for name in [next_ref(id), next_base_ref(id)] {
            delete_ref(&store, &name)?;
        }
        tracing::info!(session = id, volume, ?report, "volume session recovered");
        Session::running(volumes, volume, id, fs, base, None)
    }

    fn running(
        volumes: Arc<Volumes>,
        volume: &str,
        id: &str,
        fs: CowFs,
        base: ChunkId,
        patched_from: Option<ChunkId>,
    ) -> Result<Session> {
        // Before the sandbox writes: see `CowFs::use_incremental_captures`.
        fs.use_incremental_captures();
        let space = volumes.space(volume)?;
        if let Some(space) = &space {
            fs.share_space(space.clone());
        }
        let left_trees = volumes.store().writer(&format!(
            "volume session {id}: trees its open files may read"
        ));
        Ok(Session {
            space,
            held: Mutex::new(0),
            left_trees,
            volumes,
            volume: volume.into(),
            id: id.into(),
            fs: Arc::new(fs),
            base: Mutex::new(base),
            patched_from: Mutex::new(patched_from),
            read_only: false,
        })
    }

    /// Converts the mount's sealed layers to `stored`: the bytes that
    /// leaves the upper layer stay taken in the shared space (held) until
    /// a commit lands them in the head.
    fn convert(
        &self,
        frozen: Option<&mut layerfs::cowfs::Frozen<'_>>,
        stored: &layerfs::cowfs::Stored,
    ) -> std::result::Result<(), Errno> {
        let before = self.fs.used_bytes();
        match frozen {
            Some(frozen) => frozen.converted(stored)?,
            None => self.fs.converted(stored)?,
        }
        let released = before.saturating_sub(self.fs.used_bytes());
        if let Some(space) = &self.space {
            space.hold(released);
            *self.held.lock() += released;
        }
        Ok(())
    }

    /// The same session as a read-only view: its commits and reloads do
    /// nothing (its mount must refuse changes).
    pub fn into_read_only(mut self) -> Session {
        self.read_only = true;
        self
    }

    /// Whether this is a read-only view.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The mount the sandbox works in.
    pub fn fs(&self) -> &Arc<CowFs> {
        &self.fs
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The volume it is a session of.
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// Removes what session `id` keeps in `store` (its refs), for a
    /// session that never held anything durable.
    pub fn forget(store: &cas::Store, id: &str) -> Result<()> {
        for name in [
            pending_ref(id),
            session_ref(id),
            lower_ref(id),
            next_ref(id),
            next_base_ref(id),
        ] {
            delete_ref(store, &name)?;
        }
        Ok(())
    }

    /// The tree the session's uncommitted changes are relative to.
    pub fn base(&self) -> ChunkId {
        *self.base.lock()
    }

    /// Merges everything the session changed since its last commit into
    /// the volume's head; returns once the new head is durable.
    ///
    /// The order makes a crash at any point recoverable: the capture is
    /// stored and kept by `volpending/ID`; the session's journal is made
    /// durable through the capture (so that a recovered session holds at
    /// least what the head may be given); the head moves, recording the
    /// capture; only then does the capture become the base
    /// (`volsession/ID`). A session recovered with a pending capture finds
    /// in the history whether the head moved with it ([`Session::recover`]).
    pub fn commit(&self) -> Result<Committed> {
        if self.read_only {
            return Ok(Committed {
                head: self.volumes.head(&self.volume)?,
                wrote: false,
                retries: 0,
            });
        }
        let mut base = self.base.lock();
        let store = self.volumes.store();
        let started = std::time::Instant::now();
        let capture = self
            .fs
            .capture_incremental(b"")
            .map_err(|e| Error::Session(format!("capturing the session: errno {}", e.0)))?;
        let t1 = started.elapsed();
        let writer = store.writer("volume session");
        let stored = capture.store(store, &writer)?;
        let t2 = started.elapsed();
        let ours = stored.tree;
        // Counted against the tree the patched directories came from:
        // the paths changed since the base when that is the base.
        let mut patched_from = self.patched_from.lock();
        let paths_changed = stored
            .paths_changed
            .filter(|_| *patched_from == Some(*base));
        // Durable with the ref that keeps it (one synced write).
        writer.set_ref(&pending_ref(&self.id), ours, RefExpectation::Any)?;
        let t3 = started.elapsed();
        // The sealed layers switch to their blobs (kept by the pending
        // ref, then by the base) and the directories are recorded as
        // stored (the next capture takes unchanged ones whole); the
        // journal is synced through the capture.
        self.convert(None, &stored)
            .map_err(|e| Error::Session(format!("after storing the capture: errno {}", e.0)))?;
        let t5 = started.elapsed();
        *patched_from = Some(ours);
        drop(patched_from);
        let tag = conflict_tag(&self.id);
        let committed = self.volumes.commit_counted(
            &self.volume,
            *base,
            ours,
            paths_changed,
            &self.id,
            &tag,
        )?;
        // The head holds what the session held back: the space's limit
        // moved with it.
        if let Some(space) = &self.space {
            space.release(std::mem::take(&mut *self.held.lock()));
        }
        let t6 = started.elapsed();
        writer.set_refs(&[
            (&session_ref(&self.id), Some(ours), RefExpectation::Any),
            (&pending_ref(&self.id), None, RefExpectation::Any),
        ])?;
        let t7 = started.elapsed();
        tracing::debug!(
            session = self.id,
            capture_us = t1.as_micros() as u64,
            store_us = (t2 - t1).as_micros() as u64,
            durable_us = (t3 - t2).as_micros() as u64,
            convert_us = (t5 - t3).as_micros() as u64,
            head_us = (t6 - t5).as_micros() as u64,
            refs_us = (t7 - t6).as_micros() as u64,
            "commit"
        );
        *base = ours;
        Ok(committed)
    }

    /// Moves the session onto the volume's newest head, keeping its
    /// uncommitted changes (nothing is committed): the head's changes
    /// since the session's base are merged into the session's view as a
    /// commit would merge them, conflicts included (both versions kept,
    /// listed in the result), and the mount is rebased in place
    /// ([`layerfs::cowfs::Frozen::rebase`]): open files keep reading what
    /// they opened, directories keep their inodes.
    ///
    /// The sandbox is held still from the final capture to the move; a
    /// session holding more than 8 MiB has its changes stored before
    /// that, so the pause follows what changed meanwhile and what the
    /// head changed.
    ///
    /// Crash safety: the merged tree is kept by `volnext/ID` and the head
    /// by `volnextbase/ID` before the mount's journal records the move;
    /// recovery finds the move in the journal ([`Session::recover`]).
    pub fn reload(&self) -> Result<Reloaded> {
        if self.read_only {
            return Err(Error::Session(
                "a read-only view of an old commit does not reload".into(),
            ));
        }
        let mut base = self.base.lock();
        let store = self.volumes.store();
        let failed = |what: &str, e: Errno| {
            Error::Session(match e {
                Errno::EOPNOTSUPP => format!(
                    "{what}: the session or the head has hard links in changed paths, \
                     which a reload cannot move; commit and mount again instead"
                ),
                Errno::EBUSY => {
                    format!("{what}: the session holds data whose commit failed; commit it first")
                }
                e => format!("{what}: errno {}", e.0),
            })
        };
        let writer = store.writer("volume reload");
        // When the session holds much, most of it is stored before the
        // sandbox is held still.
        if self.fs.used_bytes() > EARLY_STORE_BYTES {
            let early = self
                .fs
                .capture_incremental(b"")
                .map_err(|e| failed("capturing the session", e))?;
            let stored = early.store(store, &writer)?;
            writer.set_ref(&pending_ref(&self.id), stored.tree, RefExpectation::Any)?;
            self.convert(None, &stored)
                .map_err(|e| failed("after storing the capture", e))?;
            *self.patched_from.lock() = Some(stored.tree);
        }

        let mut frozen = self.fs.freeze();
        let capture = frozen
            .capture_incremental()
            .map_err(|e| failed("capturing the session", e))?;
        let stored = capture.store(store, &writer)?;
        let ours = stored.tree;
        writer.set_ref(&pending_ref(&self.id), ours, RefExpectation::Any)?;
        self.convert(Some(&mut frozen), &stored)
            .map_err(|e| failed("after storing the capture", e))?;
        let head = self.volumes.head(&self.volume)?;
        let theirs = head.commit.tree;
        let merged =
            layerfs::merge_trees(store, &writer, *base, ours, theirs, &conflict_tag(&self.id))?;
        writer.set_refs(&[
            (&next_ref(&self.id), Some(merged.tree), RefExpectation::Any),
            (&next_base_ref(&self.id), Some(theirs), RefExpectation::Any),
        ])?;
        *self.patched_from.lock() = Some(ours);
        let rebased = frozen
            .rebase(ours, merged.tree, Some(theirs))
            .map_err(|e| failed("moving the session", e))?;
        *self.patched_from.lock() = Some(merged.tree);
        drop(frozen);
        // Files opened before the move read the trees it leaves.
        let lower = store.get_ref(&lower_ref(&self.id))?.map(|v| v.root);
        for tree in lower.into_iter().chain([*base]) {
            self.left_trees.pin(&tree)?;
        }
        writer.set_refs(&[
            (&lower_ref(&self.id), Some(merged.tree), RefExpectation::Any),
            (&session_ref(&self.id), Some(theirs), RefExpectation::Any),
        ])?;
        // `volnext`, `volnextbase` and `volpending` now name what
        // `vollower` and `volsession` name, or trees inside it: they stay
        // until the next commit or reload, or the session's end (each
        // removal would cost a sync).
        *base = theirs;
        Ok(Reloaded {
            head,
            conflicts: merged.conflicts,
            rebased,
        })
    }

    /// Ends the session: commits, then lets its base go. On error the
    /// session is left as it was (its upper layer and its ref kept) for a
    /// later attempt.
    /// The session is not to be used after this succeeds.
    pub fn close(&self) -> Result<Committed> {
        let committed = self.commit()?;
        Self::forget(self.volumes.store(), &self.id)?;
        Ok(committed)
    }
}

/// Removes ref `name` if it exists.
fn delete_ref(store: &cas::Store, name: &str) -> Result<()> {
    match store.delete_ref(name, RefExpectation::Any) {
        Ok(_) | Err(cas::Error::RefNotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn pending_ref(id: &str) -> String {
    format!("{PENDING_REF_PREFIX}{id}")
}

fn session_ref(id: &str) -> String {
    format!("{SESSION_REF_PREFIX}{id}")
}

fn next_ref(id: &str) -> String {
    format!("{NEXT_REF_PREFIX}{id}")
}

fn next_base_ref(id: &str) -> String {
    format!("{NEXT_BASE_REF_PREFIX}{id}")
}

fn lower_ref(id: &str) -> String {
    format!("{LOWER_REF_PREFIX}{id}")
}

/// The tag conflict copies get: when (UTC, to the second) and who.
fn conflict_tag(session: &str) -> String {
    // "2026-12-04T04:30:10Z" -> "20261204-043010".
    let when: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter_map(|c| match c {
            'T' => Some('-'),
            c if c.is_ascii_digit() => Some(c),
            _ => None,
        })
        .collect();
    let id: String = session
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    format!("{when}-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_tags_are_valid_names() {
        let tag = conflict_tag("s/1 weird");
        assert!(tag.ends_with("-s1weird"), "{tag}");
        assert!(tag.len() <= 64);
        // YYYYMMDD-HHMMSS-ID
        let (date, rest) = tag.split_once('-').unwrap();
        assert_eq!(date.len(), 8, "{tag}");
        assert!(date.starts_with("20"), "{tag}");
        assert_eq!(rest.split_once('-').unwrap().0.len(), 6, "{tag}");
    }
}
