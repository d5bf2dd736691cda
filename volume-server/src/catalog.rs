//! Volumes in the store: each a chain of commits, its head moved only by
//! compare-and-swap, its recent history kept alive by a retention ref.
//!
//! - `volume/NAME` names the head commit: a [`VOLUME_COMMIT`] node whose
//!   link 0 is the commit's tree and whose body is its [`CommitRecord`]
//!   (JSON). The ref's generation is the head's version: a commit is
//!   written only if the head is still the one it merged into, else it
//!   merges again with the newer head ([`Volumes::commit`]).
//! - A record names its parent commit by id in its body, not by link, so
//!   that old commits can be let go: `volkeep/NAME` names a
//!   [`VOLUME_HISTORY`] node linking the volume's newest commits — by
//!   default [`KEEP_COMMITS`], `--keep-commits` of the server (the
//!   retention rule); what neither ref (nor a live session's refs and
//!   pins) reaches is reclaimed by the store's GC. The history ref moves
//!   with the head, in the same synced write.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use cas::{ChunkId, Node, NodeType, RefExpectation, RefValue, Store};
use layerfs::cowfs::SharedSpace;
use layerfs::memtree::{implicit_dir_attrs, MemTree};
use layerfs::{merge_trees, Conflict};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Node type of a commit (link 0: its tree; body: [`CommitRecord`]).
pub const VOLUME_COMMIT: NodeType = NodeType(7);
/// Node type of a volume's retained history (links: commits, newest first).
pub const VOLUME_HISTORY: NodeType = NodeType(8);
/// Ref prefix of volume heads.
pub const VOLUME_REF_PREFIX: &str = "volume/";
/// Ref prefix of volumes' retained histories.
pub const HISTORY_REF_PREFIX: &str = "volkeep/";
/// Ref prefix naming, for a volume kept in step with a bucket, the
/// bucket's commit that its head last agreed with (the base of the next
/// merge; see [`crate::remote_sync`]).
pub const SYNC_REF_PREFIX: &str = "volsync/";
/// Commits a volume keeps by default (its head and the 999 before it);
/// older ones are reclaimed by GC unless something else names their
/// trees.
pub const KEEP_COMMITS: usize = 1000;
/// Longest volume name.
pub const MAX_NAME_LEN: usize = 128;
/// How many times a commit merges again after losing a race before it
/// gives up (each loss means another commit landed in between).
const MAX_RETRIES: usize = 1000;

/// Why a commit was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitKind {
    /// The volume was created (an empty tree).
    Create,
    /// A session's changes were merged in.
    Commit,
    /// An older commit's tree was made the head again.
    Restore,
    /// A file was written or removed from outside the sandboxes.
    Edit,
}

/// What a commit records (the body of its node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub volume: String,
    /// 1 for the volume's first commit, then one more each commit.
    pub seq: u64,
    pub kind: CommitKind,
    /// The commit before it (absent for the first).
    pub parent: Option<ChunkId>,
    /// When it was made, nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// Who made it (a session id, `snapctl`, …).
    pub author: String,
    /// Paths whose entries differ from the parent's tree.
    pub paths_changed: u64,
    /// The merge's conflicts (empty when there was nothing to merge).
    pub conflicts: Vec<Conflict>,
    /// The volume's quota in bytes (0: none), carried from commit to
    /// commit.
    pub quota_bytes: u64,
    /// File bytes the commit's tree holds, kept for a volume with a quota
    /// (moved by what each commit changed; absent without a quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// A session's commit: the session's capture that was merged (named,
    /// not linked). A session recovered after a crash in the middle of a
    /// commit learns from it whether that commit landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<ChunkId>,
}

/// A commit as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub id: ChunkId,
    pub tree: ChunkId,
    pub record: CommitRecord,
}

/// A volume's head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub commit: Commit,
    /// The head ref's generation: the volume's version.
    pub version: u64,
}

/// What [`Volumes::commit`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The new head (or the old one when there was nothing to commit).
    pub head: Head,
    /// Whether a commit was written (false: the session changed nothing).
    pub wrote: bool,
    /// Times the head moved under the merge and it merged again.
    pub retries: usize,
}

/// The volumes of one store.
pub struct Volumes {
    store: Store,
    /// Commits each volume keeps (at least 1).
    keep_commits: usize,
    /// The space the sessions of each volume with a quota share, while
    /// any lives, with the sequence number of the head its limit follows.
    spaces: Mutex<HashMap<String, (Weak<SharedSpace>, u64)>>,
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Checks a volume name: 1–128 letters, digits, `-`, `_` and `.`, not
/// starting with `.`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(()),
        false => Err(Error::BadName(name.into())),
    }
}

impl Volumes {
    /// The volumes kept in `store`, each keeping its newest
    /// [`KEEP_COMMITS`] commits.
    pub fn new(store: Store) -> Volumes {
        Self::with_retention(store, KEEP_COMMITS)
    }

    /// The volumes kept in `store`, each keeping its newest `keep_commits`
    /// commits (at least its head): older commits are let go at the next
    /// commit and reclaimed by the store's GC.
    pub fn with_retention(store: Store, keep_commits: usize) -> Volumes {
        Volumes {
            store,
            keep_commits: keep_commits.max(1),
            spaces: Mutex::new(HashMap::new()),
        }
    }

    /// The space the sessions of volume `name` share (`None`: the volume
    /// has no quota): the volume's quota less what its head holds. Every
    /// session of the volume draws on it ([`layerfs::cowfs::CowFs::share_space`]),
    /// so that together they write no more than fits; each commit moves
    /// its limit.
    pub fn space(&self, name: &str) -> Result<Option<Arc<SharedSpace>>> {
        let head = self.head(name)?;
        let quota = head.commit.record.quota_bytes;
        if quota == 0 {
            return Ok(None);
        }
        let mut spaces = self.spaces.lock();
        if let Some(space) = spaces.get(name).and_then(|(w, _)| w.upgrade()) {
            return Ok(Some(space));
        }
        let held = self.head_bytes(&head)?;
        let space = Arc::new(SharedSpace::new(quota.saturating_sub(held)));
        spaces.insert(
            name.into(),
            (Arc::downgrade(&space), head.commit.record.seq),
        );
        Ok(Some(space))
    }

    /// Bytes the sessions of volume `name` hold uncommitted (`None`: no
    /// session of a volume with a quota lives).
    pub fn uncommitted_bytes(&self, name: &str) -> Option<u64> {
        let spaces = self.spaces.lock();
        spaces
            .get(name)
            .and_then(|(w, _)| w.upgrade())
            .map(|s| s.used())
    }

    /// File bytes the head's tree holds (kept in the record for a volume
    /// with a quota; counted otherwise).
    pub fn head_bytes(&self, head: &Head) -> Result<u64> {
        match head.commit.record.bytes {
            Some(bytes) => Ok(bytes),
            None => Ok(layerfs::tree_bytes(&self.store, head.commit.tree)?),
        }
    }

    /// The `bytes` of a commit of `tree` on top of `head`: kept for a
    /// volume with a quota, by what changed.
    pub(crate) fn bytes_after(&self, head: &Head, tree: ChunkId) -> Result<Option<u64>> {
        if head.commit.record.quota_bytes == 0 {
            return Ok(None);
        }
        let before = self.head_bytes(head)?;
        let delta = layerfs::bytes_delta(&self.store, head.commit.tree, tree)?;
        Ok(Some(delta.apply(before)))
    }

    /// Refuses an edit from outside that would grow volume `name` past
    /// its quota (what sessions hold uncommitted counts too).
    pub(crate) fn check_room(&self, name: &str, head: &Head, record: &CommitRecord) -> Result<()> {
        let (quota, Some(after)) = (record.quota_bytes, record.bytes) else {
            return Ok(());
        };
        let before = self.head_bytes(head)?;
        if quota == 0 || after <= before {
            return Ok(());
        }
        let pending = self.uncommitted_bytes(name).unwrap_or(0);
        let free = quota.saturating_sub(before).saturating_sub(pending);
        if after - before > free {
            return Err(Error::QuotaExceeded {
                volume: name.into(),
                needed: after - before,
                free,
            });
        }
        Ok(())
    }

    /// A head moved to a commit with `record`: the sessions' shared space
    /// follows it.
    fn head_moved(&self, name: &str, record: &CommitRecord) {
        let mut spaces = self.spaces.lock();
        let Some((space, seq)) = spaces.get_mut(name) else {
            return;
        };
        let Some(live) = space.upgrade() else {
            spaces.remove(name);
            return;
        };
        if record.seq > *seq {
            *seq = record.seq;
            let held = record.bytes.unwrap_or(0);
            live.set_limit(record.quota_bytes.saturating_sub(held));
        }
    }

    /// How many commits each volume keeps.
    pub fn keep_commits(&self) -> usize {
        self.keep_commits
    }

    /// The store they live in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates volume `name`, empty; an error if it exists.
    pub fn create(&self, name: &str, quota_bytes: u64) -> Result<Head> {
        validate_name(name)?;
        let writer = self.store.writer("volume create");
        let mut attrs = implicit_dir_attrs();
        attrs.mode = 0o755;
        let tree = MemTree::new(attrs).store(&writer)?;
        let record = CommitRecord {
            volume: name.into(),
            seq: 1,
            kind: CommitKind::Create,
            parent: None,
            time_unix_nanos: now_nanos(),
            author: "create".into(),
            paths_changed: 0,
            conflicts: Vec::new(),
            quota_bytes,
            bytes: Some(0),
            capture: None,
        };
        let id = self.put_commit(&writer, tree, &record)?;
        let history = writer
            .put_node(&Node::new(VOLUME_HISTORY, vec![id], Vec::new()))?
            .id;
        let set = writer.set_refs(&[
            (&head_ref(name), Some(id), RefExpectation::Absent),
            (&history_ref(name), Some(history), RefExpectation::Any),
        ]);
        let version = match set {
            Ok(values) => values[0].as_ref().map_or(1, |v| v.generation),
            Err(cas::Error::RefConflict { .. }) => return Err(Error::Exists(name.into())),
            Err(e) => return Err(e.into()),
        };
        Ok(Head {
            commit: Commit { id, tree, record },
            version,
        })
    }

    /// Every volume's head, by name.
    pub fn list(&self) -> Result<Vec<Head>> {
        let mut out = Vec::new();
        for (name, value) in self.store.list_refs(VOLUME_REF_PREFIX)? {
            let Some(_) = name.strip_prefix(VOLUME_REF_PREFIX) else {
                continue;
            };
            out.push(self.head_at(&value)?);
        }
        Ok(out)
    }

    /// Volume `name`'s head.
    pub fn head(&self, name: &str) -> Result<Head> {
        validate_name(name)?;
        match self.store.get_ref(&head_ref(name))? {
            Some(value) => self.head_at(&value),
            None => Err(Error::NotFound(name.into())),
        }
    }

    fn head_at(&self, value: &RefValue) -> Result<Head> {
        Ok(Head {
            commit: self.commit_at(value.root)?,
            version: value.generation,
        })
    }

    /// Commit `id`, read back.
    pub fn commit_at(&self, id: ChunkId) -> Result<Commit> {
        let node = self.store.get_node(&id)?;
        if node.node_type != VOLUME_COMMIT || node.links.len() != 1 {
            return Err(Error::Corrupt(format!("{id} is not a volume commit")));
        }
        let record: CommitRecord = serde_json::from_slice(&node.body)
            .map_err(|e| Error::Corrupt(format!("commit {id}: {e}")))?;
        Ok(Commit {
            id,
            tree: node.links[0],
            record,
        })
    }

    /// Removes volume `name` (its trees are reclaimed by the next GC
    /// unless something else names them).
    pub fn remove(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        match self.store.delete_ref(&head_ref(name), RefExpectation::Any) {
            Ok(_) => {}
            Err(cas::Error::RefNotFound { .. }) => return Err(Error::NotFound(name.into())),
            Err(e) => return Err(e.into()),
        }
        for other in [history_ref(name), sync_ref(name)] {
            match self.store.delete_ref(&other, RefExpectation::Any) {
                Ok(_) | Err(cas::Error::RefNotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Makes `commit` (one that exists, made here or fetched from a
    /// bucket) the head of volume `name` if its head is still `expected`
    /// (`None`: only if the volume does not exist here), moving the refs
    /// `also` in the same synced write. `None`: the head moved meanwhile.
    pub(crate) fn adopt(
        &self,
        writer: &cas::Writer,
        name: &str,
        expected: Option<&Head>,
        commit: &Commit,
        also: &[(&str, Option<ChunkId>, RefExpectation)],
    ) -> Result<Option<Head>> {
        validate_name(name)?;
        let history = self.history_after(writer, name, commit.id)?;
        let head = head_ref(name);
        let keep = history_ref(name);
        let expect = expected.map_or(RefExpectation::Absent, |h| {
            RefExpectation::Generation(h.version)
        });
        let mut moves = vec![
            (head.as_str(), Some(commit.id), expect),
            (keep.as_str(), Some(history), RefExpectation::Any),
        ];
        moves.extend_from_slice(also);
        let version = match writer.set_refs(&moves) {
            Ok(values) => values[0].as_ref().map_or(0, |v| v.generation),
            Err(cas::Error::RefConflict { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.head_moved(name, &commit.record);
        Ok(Some(Head {
            commit: commit.clone(),
            version,
        }))
    }

    /// Merges the change a session made — from tree `base` (the head it
    /// started from or last committed or reloaded to) to tree `ours` —
    /// into volume `name`'s head, and moves the head to the result. A
    /// head that moves meanwhile is merged with again. Conflicts name
    /// their copies with `tag`.
    pub fn commit(
        &self,
        name: &str,
        base: ChunkId,
        ours: ChunkId,
        author: &str,
        tag: &str,
    ) -> Result<Committed> {
        self.commit_counted(name, base, ours, None, author, tag)
    }

    /// [`Volumes::commit`] given the number of paths that differ from
    /// `base` to `ours` (as [`layerfs::diff_trees`] counts them), when the
    /// caller knows it: a head still at `base` then needs no diff.
    pub fn commit_counted(
        &self,
        name: &str,
        base: ChunkId,
        ours: ChunkId,
        ours_changed: Option<u64>,
        author: &str,
        tag: &str,
    ) -> Result<Committed> {
        let writer = self.store.writer("volume commit");
        let mut retries = 0;
        loop {
            let head = self.head(name)?;
            if ours == base {
                return Ok(Committed {
                    head,
                    wrote: false,
                    retries,
                });
            }
            let merged = merge_trees(&self.store, &writer, base, ours, head.commit.tree, tag)?;
            let paths_changed = match ours_changed {
                // The head is the base: the merge is `ours`.
                Some(n) if head.commit.tree == base && merged.tree == ours => n,
                _ => layerfs::diff_trees(&self.store, head.commit.tree, merged.tree)?.len() as u64,
            };
            let record = CommitRecord {
                volume: name.into(),
                seq: head.commit.record.seq + 1,
                kind: CommitKind::Commit,
                parent: Some(head.commit.id),
                time_unix_nanos: now_nanos(),
                author: author.into(),
                paths_changed,
                conflicts: merged.conflicts,
                quota_bytes: head.commit.record.quota_bytes,
                bytes: self.bytes_after(&head, merged.tree)?,
                capture: Some(ours),
            };
            match self.advance(&writer, name, &head, merged.tree, record)? {
                Some(head) => {
                    return Ok(Committed {
                        head,
                        wrote: true,
                        retries,
                    })
                }
                None if retries < MAX_RETRIES => retries += 1,
                None => return Err(Error::Contended(name.into())),
            }
        }
    }

    /// Makes `tree` the head of volume `name` as a new commit of `kind`,
    /// whatever the head is now (a restore, an edit from outside already
    /// merged by the caller against `expected`).
    pub fn replace(
        &self,
        name: &str,
        expected: &Head,
        tree: ChunkId,
        kind: CommitKind,
        author: &str,
    ) -> Result<Option<Head>> {
        let writer = self.store.writer("volume replace");
        let record = self.record_for(name, expected, tree, kind, author)?;
        self.advance(&writer, name, expected, tree, record)
    }

    /// The record of a commit of `tree` on top of `head` (no conflicts).
    pub(crate) fn record_for(
        &self,
        name: &str,
        head: &Head,
        tree: ChunkId,
        kind: CommitKind,
        author: &str,
    ) -> Result<CommitRecord> {
        let paths_changed = layerfs::diff_trees(&self.store, head.commit.tree, tree)?.len() as u64;
        Ok(CommitRecord {
            volume: name.into(),
            seq: head.commit.record.seq + 1,
            kind,
            parent: Some(head.commit.id),
            time_unix_nanos: now_nanos(),
            author: author.into(),
            paths_changed,
            conflicts: Vec::new(),
            quota_bytes: head.commit.record.quota_bytes,
            bytes: self.bytes_after(head, tree)?,
            capture: None,
        })
    }

    /// Writes a commit on top of `head` and moves the head ref to it if it
    /// is still at `head`'s version (`None`: it moved).
    pub(crate) fn advance(
        &self,
        writer: &cas::Writer,
        name: &str,
        head: &Head,
        tree: ChunkId,
        record: CommitRecord,
    ) -> Result<Option<Head>> {
        let id = self.put_commit(writer, tree, &record)?;
        let history = self.history_after(writer, name, id)?;
        // The head and its history move together, in one synced write.
        let set = writer.set_refs(&[
            (
                &head_ref(name),
                Some(id),
                RefExpectation::Generation(head.version),
            ),
            (&history_ref(name), Some(history), RefExpectation::Any),
        ]);
        let version = match set {
            Ok(values) => values[0].as_ref().map_or(0, |v| v.generation),
            Err(cas::Error::RefConflict { .. }) => return Ok(None),
            Err(cas::Error::RefNotFound { .. }) => return Err(Error::NotFound(name.into())),
            Err(e) => return Err(e.into()),
        };
        self.head_moved(name, &record);
        Ok(Some(Head {
            commit: Commit { id, tree, record },
            version,
        }))
    }

    pub(crate) fn put_commit(
        &self,
        writer: &cas::Writer,
        tree: ChunkId,
        record: &CommitRecord,
    ) -> Result<ChunkId> {
        let body = serde_json::to_vec(record).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(writer
            .put_node(&Node::new(VOLUME_COMMIT, vec![tree], body))?
            .id)
    }

    /// Stores the retained history with `head` as its newest commit: the
    /// newest `keep_commits` commits ending at `head` (its ref is moved
    /// with the head's).
    fn history_after(&self, writer: &cas::Writer, name: &str, head: ChunkId) -> Result<ChunkId> {
        let mut keep = vec![head];
        if let Some(value) = self.store.get_ref(&history_ref(name))? {
            let node = self.store.get_verified_node(&value.root)?;
            // The new list links to what the old one did: no lookups.
            writer.pin_node(&node)?;
            keep.extend(node.node().links.iter().filter(|&&c| c != head));
        }
        keep.truncate(self.keep_commits);
        Ok(writer
            .put_node(&Node::new(VOLUME_HISTORY, keep, Vec::new()))?
            .id)
    }

    /// Makes the tree of commit `seq` of volume `name` (one still kept)
    /// its head again, as a new commit of kind `restore` on top of
    /// whatever the head is (the commits between stay in the history).
    pub fn restore(&self, name: &str, seq: u64, author: &str) -> Result<Head> {
        let mut found = None;
        for commit in self.history(name, self.keep_commits)? {
            if commit.record.seq == seq {
                found = Some(commit);
                break;
            }
        }
        let Some(old) = found else {
            return Err(Error::NoSuchCommit(name.into(), seq));
        };
        for _ in 0..MAX_RETRIES {
            let head = self.head(name)?;
            if let Some(head) = self.replace(name, &head, old.tree, CommitKind::Restore, author)? {
                return Ok(head);
            }
        }
        Err(Error::Contended(name.into()))
    }

    /// Volume `name`'s commits, newest first, at most `limit` (those still
    /// kept).
    pub fn history(&self, name: &str, limit: usize) -> Result<Vec<Commit>> {
        let mut out = Vec::new();
        let mut next = Some(self.head(name)?.commit.id);
        while let Some(id) = next {
            if out.len() >= limit || self.store.locate(&id)?.is_none() {
                break;
            }
            let commit = self.commit_at(id)?;
            next = commit.record.parent;
            out.push(commit);
        }
        Ok(out)
    }
}

fn head_ref(name: &str) -> String {
    format!("{VOLUME_REF_PREFIX}{name}")
}

fn history_ref(name: &str) -> String {
    format!("{HISTORY_REF_PREFIX}{name}")
}

/// The local ref naming the bucket commit volume `name` last agreed with.
pub(crate) fn sync_ref(name: &str) -> String {
    format!("{SYNC_REF_PREFIX}{name}")
}

/// The ref of volume `name`'s head (locally and in a bucket).
pub(crate) fn volume_ref(name: &str) -> String {
    head_ref(name)
}
