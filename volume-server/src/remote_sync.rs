//! Volumes kept in step with a bucket that many nodes share.
//!
//! A tracked volume has its head in the bucket too, as the remote ref
//! `volume/NAME`, which moves only by a conditional write
//! ([`remote::Remote::push_root`]): a node moves it from the generation it
//! read, or loses and starts again. Each node also keeps, in the local ref
//! `volsync/NAME`, the bucket commit its own head last agreed with: the
//! base of its next merge. A sync ([`VolumeSync::sync`]) then does one of:
//!
//! - nothing, when the local head is the bucket's;
//! - a push, when only this node moved: the local head, if its parent is
//!   the bucket's head (one commit since), else a new commit of the local
//!   tree on top of the bucket's head;
//! - a pull, when only the bucket moved: the bucket's commit becomes the
//!   local head (its chunks are fetched when read);
//! - a merge, when both moved: the three-way merge of trees (base: the
//!   agreed commit's tree, ours: the local head's, theirs: the bucket's —
//!   the rules of [`layerfs::merge_trees`], conflicts keep both versions)
//!   is committed on top of the bucket's head and pushed; the local head
//!   then moves to it, or, if a session committed here meanwhile, that
//!   change is merged in too.
//!
//! A push that loses the race (another node moved the ref since it was
//! read) reads again and merges again, so no node's commit is ever lost.
//! A crash between the bucket write and the local one is harmless: the
//! next sync merges the same change again, which changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use cas::{ChunkId, RefExpectation};
use layerfs::{merge_trees, Conflict};
use parking_lot::Mutex;
use remote::Remote;
use serde::{Deserialize, Serialize};

use crate::catalog::{
    now_nanos, sync_ref, validate_name, volume_ref, Commit, CommitKind, CommitRecord, Head,
    SYNC_REF_PREFIX,
};
use crate::{Error, Result, Volumes};

/// How many times a sync reads again after losing a race.
const MAX_RETRIES: usize = 1000;

/// What a sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncOutcome {
    /// The local head was the bucket's already.
    Unchanged,
    /// The volume was put in the bucket for the first time.
    Created,
    /// Only this node had moved: its head is now the bucket's.
    Pushed,
    /// Only the bucket had moved: its head is now this node's.
    Pulled,
    /// Both had moved: the merge is now the head of both.
    Merged,
}

/// A sync's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    pub volume: String,
    pub outcome: SyncOutcome,
    /// The commit both now agree on (the bucket's head).
    pub commit: ChunkId,
    /// Its sequence number.
    pub seq: u64,
    /// The bucket ref's generation.
    pub generation: u64,
    /// The merge's conflicts (each keeps both versions).
    pub conflicts: Vec<Conflict>,
    /// Times the bucket moved under the sync and it read again.
    pub retries: usize,
    /// Pack bytes uploaded.
    pub bytes_uploaded: u64,
}

/// What the caller asks of [`VolumeSync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Start tracking a local volume (it must exist here).
    Push,
    /// Start tracking a bucket volume (it must exist in the bucket).
    Pull,
    /// Bring a tracked volume in step.
    Sync,
}

/// The tracked volumes of one store and the bucket they sync with.
pub struct VolumeSync {
    volumes: Arc<Volumes>,
    remote: Remote,
    /// One sync per volume at a time on this node.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Names conflict copies made by this node's merges.
    tag: String,
}

impl VolumeSync {
    /// Syncs `volumes` with `remote` (attached to their store already).
    pub fn new(volumes: Arc<Volumes>, remote: Remote) -> VolumeSync {
        let host = remote::refs::host_name();
        let tag: String = format!("sync-{host}")
            .chars()
            .map(|c| match c.is_ascii_alphanumeric() || c == '-' {
                true => c,
                false => '-',
            })
            .take(64)
            .collect();
        VolumeSync {
            volumes,
            remote,
            locks: Mutex::new(HashMap::new()),
            tag,
        }
    }

    /// The bucket.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The volumes that are tracked (kept in step with the bucket).
    pub fn tracked(&self) -> Result<Vec<String>> {
        Ok(self
            .volumes
            .store()
            .list_refs(SYNC_REF_PREFIX)?
            .into_iter()
            .filter_map(|(name, _)| name.strip_prefix(SYNC_REF_PREFIX).map(str::to_string))
            .collect())
    }

    /// Whether volume `name` is tracked.
    pub fn is_tracked(&self, name: &str) -> Result<bool> {
        Ok(self.volumes.store().get_ref(&sync_ref(name))?.is_some())
    }

    /// Puts local volume `name` in the bucket and tracks it from now on (a
    /// tracked one is synced).
    pub fn push(&self, name: &str) -> Result<SyncReport> {
        self.run(name, Mode::Push)
    }

    /// Makes the bucket's volume `name` a volume here and tracks it from
    /// now on (a tracked one is synced).
    pub fn pull(&self, name: &str) -> Result<SyncReport> {
        self.run(name, Mode::Pull)
    }

    /// Brings tracked volume `name` in step with the bucket.
    pub fn sync(&self, name: &str) -> Result<SyncReport> {
        self.run(name, Mode::Sync)
    }

    fn run(&self, name: &str, mode: Mode) -> Result<SyncReport> {
        validate_name(name)?;
        let lock = self.locks.lock().entry(name.into()).or_default().clone();
        let _one_at_a_time = lock.lock();
        for retries in 0..MAX_RETRIES {
            match self.attempt(name, mode)? {
                Some(mut report) => {
                    report.retries = retries;
                    return Ok(report);
                }
                None => continue,
            }
        }
        Err(Error::Contended(name.into()))
    }

    /// One try; `None`: something moved under it (here or in the bucket).
    fn attempt(&self, name: &str, mode: Mode) -> Result<Option<SyncReport>> {
        let store = self.volumes.store();
        let local = match self.volumes.head(name) {
            Ok(head) => Some(head),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let agreed = store.get_ref(&sync_ref(name))?.map(|v| v.root);
        if mode == Mode::Sync && agreed.is_none() {
            return Err(Error::NotTracked(name.into()));
        }
        let theirs = self.remote.get_ref(&volume_ref(name))?;
        let writer = store.writer("volume sync");
        let Some(theirs) = theirs else {
            let Some(local) = local else {
                return Err(match mode {
                    Mode::Pull => Error::NotInBucket(name.into()),
                    _ => Error::NotFound(name.into()),
                });
            };
            if agreed.is_some() {
                return Err(Error::RemovedRemotely(name.into()));
            }
            if mode == Mode::Pull {
                return Err(Error::NotInBucket(name.into()));
            }
            let Some(pushed) = self.push_commit(name, &local.commit, RefExpectation::Absent)?
            else {
                return Ok(None);
            };
            return self.agreed(&writer, name, SyncOutcome::Created, &local.commit, pushed);
        };
        let expect_theirs = RefExpectation::Generation(theirs.generation);
        if self.remote.locate_root(&theirs.root)?.is_none() {
            return Err(remote::Error::ChunkMissing { id: theirs.root }.into());
        }
        let remote_commit = self.volumes.commit_at(theirs.root)?;
        let Some(local) = local else {
            // Only in the bucket: it becomes a volume here too.
            if agreed.is_some() || mode == Mode::Push {
                return Err(Error::NotFound(name.into()));
            }
            self.remote.prefetch_nodes_of(&remote_commit.tree);
            return self.take_theirs(&writer, name, None, &remote_commit, theirs.generation);
        };
        if local.commit.id == theirs.root {
            return self.agreed(
                &writer,
                name,
                SyncOutcome::Unchanged,
                &local.commit,
                (theirs.generation, 0),
            );
        }
        // Both here and in the bucket, never synced: without a common base
        // only the same commit could be agreed on.
        let Some(agreed) = agreed else {
            return Err(Error::Diverged(name.into()));
        };
        if agreed == theirs.root && local.commit.record.parent == Some(theirs.root) {
            // One commit here since: it goes up as it is.
            let Some(pushed) = self.push_commit(name, &local.commit, expect_theirs)? else {
                return Ok(None);
            };
            return self.agreed(&writer, name, SyncOutcome::Pushed, &local.commit, pushed);
        }
        if local.commit.id == agreed {
            // Only the bucket moved.
            return self.take_theirs(
                &writer,
                name,
                Some(&local),
                &remote_commit,
                theirs.generation,
            );
        }
        // This node moved (by several commits, or the bucket moved too):
        // a commit on top of the bucket's head, of the merge.
        let base = self.volumes.commit_at(agreed)?.tree;
        let merged = merge_trees(
            store,
            &writer,
            base,
            local.commit.tree,
            remote_commit.tree,
            &self.tag,
        )?;
        let remote_head = Head {
            commit: remote_commit.clone(),
            version: theirs.generation,
        };
        let record = CommitRecord {
            volume: name.into(),
            seq: remote_commit.record.seq.max(local.commit.record.seq) + 1,
            kind: CommitKind::Commit,
            parent: Some(remote_commit.id),
            time_unix_nanos: now_nanos(),
            author: self.tag.clone(),
            paths_changed: layerfs::diff_trees(store, remote_commit.tree, merged.tree)?.len()
                as u64,
            conflicts: merged.conflicts.clone(),
            quota_bytes: remote_commit.record.quota_bytes,
            bytes: self.volumes.bytes_after(&remote_head, merged.tree)?,
            capture: None,
        };
        let id = self.volumes.put_commit(&writer, merged.tree, &record)?;
        let commit = Commit {
            id,
            tree: merged.tree,
            record,
        };
        let Some(pushed) = self.push_commit(name, &commit, expect_theirs)? else {
            return Ok(None);
        };
        let outcome = match remote_commit.id == agreed {
            true => SyncOutcome::Pushed,
            false => SyncOutcome::Merged,
        };
        let agree = sync_ref(name);
        let moved = self.volumes.adopt(
            &writer,
            name,
            Some(&local),
            &commit,
            &[(&agree, Some(id), RefExpectation::Any)],
        )?;
        if moved.is_none() {
            // A session committed here meanwhile: what the bucket now
            // holds beyond the local head we read is merged into it.
            self.volumes
                .commit(name, local.commit.tree, commit.tree, &self.tag, &self.tag)?;
            writer.set_refs(&[(&agree, Some(id), RefExpectation::Any)])?;
        }
        let mut report = report(name, outcome, &commit, pushed, Vec::new());
        report.conflicts = merged.conflicts;
        Ok(Some(report))
    }

    /// Records that this node agrees with the bucket on `commit`.
    fn agreed(
        &self,
        writer: &cas::Writer,
        name: &str,
        outcome: SyncOutcome,
        commit: &Commit,
        pushed: (u64, u64),
    ) -> Result<Option<SyncReport>> {
        writer.set_refs(&[(&sync_ref(name), Some(commit.id), RefExpectation::Any)])?;
        Ok(Some(report(name, outcome, commit, pushed, Vec::new())))
    }

    /// Makes the bucket's `commit` the head here if the head is still
    /// `expected` (`None`: absent), agreeing on it in the same write.
    fn take_theirs(
        &self,
        writer: &cas::Writer,
        name: &str,
        expected: Option<&Head>,
        commit: &Commit,
        generation: u64,
    ) -> Result<Option<SyncReport>> {
        let agree = sync_ref(name);
        let moved = self.volumes.adopt(
            writer,
            name,
            expected,
            commit,
            &[(&agree, Some(commit.id), RefExpectation::Any)],
        )?;
        Ok(moved.map(|_| {
            report(
                name,
                SyncOutcome::Pulled,
                commit,
                (generation, 0),
                Vec::new(),
            )
        }))
    }

    /// Uploads `commit` and what it reaches, and moves the bucket's head
    /// to it if it is as expected: `(generation, bytes uploaded)`, or
    /// `None` when another node moved it first.
    fn push_commit(
        &self,
        name: &str,
        commit: &Commit,
        expect: RefExpectation,
    ) -> Result<Option<(u64, u64)>> {
        match self
            .remote
            .push_root(self.volumes.store(), &volume_ref(name), commit.id, expect)
        {
            Ok(report) => Ok(Some((
                report.refs.first().map_or(0, |r| r.generation),
                report.bytes_uploaded,
            ))),
            Err(remote::Error::RefConflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn report(
    name: &str,
    outcome: SyncOutcome,
    commit: &Commit,
    (generation, bytes_uploaded): (u64, u64),
    conflicts: Vec<Conflict>,
) -> SyncReport {
    SyncReport {
        volume: name.into(),
        outcome,
        commit: commit.id,
        seq: commit.record.seq,
        generation,
        conflicts,
        retries: 0,
        bytes_uploaded,
    }
}
