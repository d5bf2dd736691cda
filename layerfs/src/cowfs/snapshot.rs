//! Snapshots of a live mount.
//!
//! [`CowFs::capture`] freezes the namespace under a path at one point in
//! time. It holds the mount's lock while it walks what the mount has
//! loaded, seals the upper data of every changed file into a layer (no
//! bytes are copied: the data file itself is sealed and the file goes on
//! with a new one) and journals the seal. Directories whose entries the
//! mount never instantiated are captured as their lower tree ids, so the
//! cost follows what the mount touched, not the size of the image.
//!
//! [`Capture::store`] then writes, in the background, the blobs of sealed
//! layers and the nodes of the directories around them; unchanged files
//! and subtrees keep their ids, so a snapshot adds only what changed.
//! [`CowFs::converted`] finally replaces each layer by its blob (after the
//! caller made the blobs durable), which ends the layer's data file.
//!
//! [`CowFs::capture_incremental`] (a volume session's commits and
//! reloads) goes further: each loaded directory records the names edited
//! in it since its stored node was written (or since it was read from
//! the lower tree), and the capture walks those names alone; storing it
//! patches the stored node's pages ([`crate::memtree`]'s
//! `store_patched`). A file changed in each of 1,000 directories of 1,000
//! entries costs 1,000 names and 1,000 pages, not a million entries; the
//! tree stored is the one a whole capture stores, and the paths changed
//! are counted on the way (so a commit needs no diff). Hard links fall
//! back to whole directories (which of an inode's names is written as
//! the inode is only decided right when every name is walked).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use cas::{ChunkId, Chunking, Store, Writer};
use parking_lot::Mutex;
use rayon::prelude::*;

use super::file::FileData;
use super::file::{journal_base, Base, FrozenFile, Layer};
use super::journal::{JAttrs, Record};
use super::{
    CowFs, DirState, Errno, FsResult, Ino, MountConfig, Node, NodeKind, Origin, State, ROOT_INO,
};
use crate::content::Content;
use crate::memtree::{join, show, store_entries, store_patched, TreeReader};
use crate::tree::{encode_dir, Attrs, DirNode, Entry, Inode, InodeKind};
use crate::{Error, Result};

/// A frozen view of a directory of a mount, ready to be stored.
pub struct Capture {
    nodes: Vec<CNode>,
    /// The directories walked (node index, inode): once stored, each is
    /// the node written for it.
    walked: Vec<(usize, Ino)>,
    /// This capture's number in its mount.
    generation: u64,
    /// The capture is of a stored tree's whole root (the mount's root or a
    /// graft), so live link counts hold; else names are counted.
    whole_tree: bool,
    /// Layers this capture sealed.
    sealed: Vec<Arc<Layer>>,
    /// Bytes of upper data the sealed layers hold.
    sealed_bytes: u64,
}

#[derive(Clone)]
enum CNode {
    /// A directory the mount loaded: its entries, by name.
    Dir {
        attrs: Attrs,
        entries: Vec<(Vec<u8>, usize)>,
    },
    /// A loaded directory written as a stored node (`base`, which the
    /// directory showed, save for these names) with `changes` applied:
    /// each name set to a captured node, or removed (`None`).
    Patched {
        attrs: Attrs,
        base: ChunkId,
        changes: Vec<(Vec<u8>, Option<usize>)>,
    },
    /// A lower directory whose entries the mount never instantiated, or
    /// one nothing changed under since a stored capture wrote it
    /// (`changed`: the same directory with new attributes), taken whole
    /// by its node id.
    LowerDir {
        id: ChunkId,
        changed: Option<DirNode>,
        /// Where it came from, for the hard links in it; `None` for a
        /// subtree with no hard links (nothing in it names a path).
        origin: Option<LowerOrigin>,
    },
    File {
        attrs: Attrs,
        nlink: u32,
        file: FrozenFile,
        /// Its first name in the lower tree (where lower hard links in
        /// unread directories point).
        lower_path: Option<Vec<u8>>,
    },
    Other {
        attrs: Attrs,
        nlink: u32,
        kind: InodeKind,
        lower_path: Option<Vec<u8>>,
    },
}

/// Where a lower directory came from: hard links in it name targets by
/// path in `tree`; unless it sits at its own path in a capture of that
/// tree's root (`in_place`), storing it re-encodes it if it holds any.
#[derive(Clone)]
struct LowerOrigin {
    tree: ChunkId,
    path: Vec<u8>,
    in_place: bool,
}

/// What [`Capture::store`] wrote.
pub struct Stored {
    /// The snapshot's tree.
    pub tree: ChunkId,
    /// Files whose bytes were stored as new blobs.
    pub files_stored: u64,
    /// Bytes of those files (before deduplication).
    pub bytes_stored: u64,
    /// Bytes the store did not hold yet.
    pub new_bytes: u64,
    layers: Vec<(Arc<Layer>, Option<ChunkId>)>,
    /// The node written for each walked directory, whether names in it
    /// are hard links, and the capture's number (see
    /// [`CowFs::converted`]).
    dirs: Vec<(Ino, ChunkId, bool)>,
    generation: u64,
    /// Paths that differ from the tree the capture's patched directories
    /// came from (the tree of the mount's last converted capture, or its
    /// lower tree), as [`crate::diff_trees`] would count them; `None`
    /// when a changed directory was walked whole (count by a diff).
    pub paths_changed: Option<u64>,
}

impl Stored {
    /// The same result, with no layers to switch: [`CowFs::converted`]
    /// then leaves the mount's sealed layers local (for a caller that
    /// cannot keep this tree alive as long as the mount lives).
    pub fn keep_layers(mut self) -> Stored {
        self.layers.clear();
        self.dirs.clear();
        self
    }
}

#[derive(Clone)]
struct Walk {
    seen: HashMap<Ino, usize>,
    records: Vec<Record>,
    lower_paths: HashMap<Ino, Vec<u8>>,
    /// The captured directory's inode and its path from the mount's root.
    root: Ino,
    root_path_len: usize,
    /// Loaded directories with a stored base are written as that base
    /// with their edited names applied ([`CowFs::capture_incremental`]).
    incremental: bool,
}

impl CowFs {
    /// Freezes the tree under `path` (empty: the whole mount), as it is
    /// now: every change made before this call is in it, none made after.
    /// Changed files are sealed (see the module documentation); the mount
    /// goes on at once.
    pub fn capture(&self, path: &[u8]) -> FsResult<Capture> {
        let seq = self
            .file_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.capture_as(path, self.epoch, seq)
    }

    /// Declares that incremental captures will be taken of this mount:
    /// from now on a write marks its file changed before it changes the
    /// data (see [`CowFs::capture_incremental`]). Call it before the
    /// sandbox writes, so that no write is under way unmarked when the
    /// first incremental capture runs.
    pub fn use_incremental_captures(&self) {
        self.incremental
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// [`CowFs::capture`] whose cost follows what changed: a loaded
    /// directory that a stored capture wrote before (or that was read
    /// from the lower tree) is captured as that node and the names edited
    /// in it since, so a change to one file of a directory of 100,000
    /// entries captures one entry and stores one page. Its storing gives
    /// the same tree as [`CowFs::capture`]'s would. Such a capture cannot
    /// be mounted before it is stored ([`Capture::restorable`]).
    pub fn capture_incremental(&self, path: &[u8]) -> FsResult<Capture> {
        self.use_incremental_captures();
        let seq = self
            .file_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.state.lock();
        self.capture_walk(&mut st, path, self.epoch, seq, true)
    }

    /// [`CowFs::capture`] as seal `seq` of session `epoch` (recovery
    /// replays a journaled seal with the numbers it had).
    pub(super) fn capture_as(&self, path: &[u8], epoch: u64, seq: u64) -> FsResult<Capture> {
        let mut st = self.state.lock();
        self.capture_locked(&mut st, path, epoch, seq)
    }

    /// [`CowFs::capture_as`] with the mount's state already locked.
    pub(super) fn capture_locked(
        &self,
        st: &mut State,
        path: &[u8],
        epoch: u64,
        seq: u64,
    ) -> FsResult<Capture> {
        self.capture_walk(st, path, epoch, seq, false)
    }

    /// A capture, incremental or whole (see
    /// [`CowFs::capture_incremental`]).
    pub(super) fn capture_walk(
        &self,
        st: &mut State,
        path: &[u8],
        epoch: u64,
        seq: u64,
        incremental: bool,
    ) -> FsResult<Capture> {
        st.captures += 1;
        let generation = st.captures;
        let mut at = ROOT_INO;
        let mut root_path = Vec::new();
        for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            at = self.child(st, at, part)?.ok_or(Errno::ENOENT)?;
            root_path = join(&root_path, part);
        }
        self.ready(st, at)?;
        if !matches!(self.node(st, at)?.kind, NodeKind::Dir(_)) {
            return Err(Errno::ENOTDIR);
        }
        let lower_paths = st
            .lower_paths
            .iter()
            .filter(|((root, _), _)| *root == at)
            .map(|((_, p), i)| (*i, p.clone()))
            .collect();
        let mut cap = Capture {
            whole_tree: st.tree_roots.contains_key(&at),
            nodes: Vec::new(),
            walked: Vec::new(),
            generation,
            sealed: Vec::new(),
            sealed_bytes: 0,
        };
        let mut walk = Walk {
            seen: HashMap::new(),
            records: Vec::new(),
            lower_paths,
            root: at,
            root_path_len: if root_path.is_empty() {
                0
            } else {
                root_path.len() + 1
            },
            // A file with several names may have one in a directory the
            // capture walks and one in a part it takes from a stored node;
            // which name is written as the inode is only decided right
            // when every name is walked. (A mount that ever had one
            // captures whole.)
            incremental: incremental && !st.multi_named,
        };
        self.capture_node(st, at, &root_path, (epoch, seq), &mut cap, &mut walk)?;
        if let Some(journal) = self.journal.get() {
            // Files changed but not journaled yet get their state first, so
            // that replaying the seal seals exactly what this one did.
            walk.records.push(Record::SealAll {
                path: root_path,
                epoch,
                seq,
            });
            journal.append_all(&walk.records);
        }
        Ok(cap)
    }

    #[allow(clippy::too_many_arguments)]
    fn capture_node(
        &self,
        st: &mut State,
        ino: Ino,
        path: &[u8],
        seal: (u64, u64),
        cap: &mut Capture,
        walk: &mut Walk,
    ) -> FsResult<usize> {
        let node = st.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        // Only non-directories with several names can be met twice.
        if node.nlink > 1 && !matches!(node.kind, NodeKind::Dir(_)) {
            if let Some(&index) = walk.seen.get(&ino) {
                return Ok(index);
            }
        }
        let index = cap.nodes.len();
        let cnode = match &node.kind {
            NodeKind::Dir(dir) => {
                let rel = path.get(walk.root_path_len..).unwrap_or_default();
                let origin = dir.origin.as_ref().and_then(|o| {
                    let tree = st.tree_roots.get(&o.root)?;
                    Some(LowerOrigin {
                        tree: *tree,
                        path: o.path.clone(),
                        in_place: o.root == walk.root && o.path == rel,
                    })
                });
                let stamp = st.changed.get(&ino).copied();
                // Loaded, but nothing under it changed since the mount
                // began: stored by its lower id, without a walk (as a
                // directory never read).
                let clean = st.all_changed_at.is_none() && stamp.is_none();
                // Nothing under it changed since a stored capture wrote
                // it: that node, whole, unless names in it are hard links
                // (their other names may be walked, and one inode must
                // not be written twice).
                let unchanged_since = |generation: u64| {
                    stamp.is_none_or(|s| s < generation)
                        && st.all_changed_at.is_none_or(|a| a < generation)
                };
                let reusable = match dir.stored {
                    Some((id, generation)) if unchanged_since(generation) => {
                        let linked = has_linked_names(&TreeReader::new(&self.store), id)
                            .map_err(|e| self.eio(e))?;
                        (!linked).then_some(id)
                    }
                    _ => None,
                };
                match (dir.lower_id, &dir.unread, &dir.pending, reusable) {
                    (Some(id), unread, None, _) if unread.is_some() || clean => CNode::LowerDir {
                        id,
                        changed: None,
                        origin,
                    },
                    (Some(id), None, Some(pending), _) => CNode::LowerDir {
                        id,
                        changed: (pending.attrs != node.attrs).then(|| DirNode {
                            attrs: node.attrs.clone(),
                            entry_count: pending.entry_count,
                            layout: pending.layout.clone(),
                        }),
                        origin,
                    },
                    (_, None, None, Some(id)) => CNode::LowerDir {
                        id,
                        changed: None,
                        origin: None,
                    },
                    (_, None, None, _) if walk.incremental => {
                        if let Some(index) = self.capture_patched(st, ino, path, seal, cap, walk)? {
                            return Ok(index);
                        }
                        return self.capture_whole_dir(st, ino, path, seal, cap, walk);
                    }
                    _ => return self.capture_whole_dir(st, ino, path, seal, cap, walk),
                }
            }
            NodeKind::File(data) => {
                let data = data.clone();
                if data.is_dirty() && self.journaling() && data.has_upper_state() {
                    let (size, lower_limit, present) = data.layout();
                    walk.records.push(Record::FileState {
                        path: path.to_vec(),
                        file: data.file_name(),
                        base: journal_base(&data.base(), &self.data_dir),
                        size,
                        lower_limit,
                        present,
                        attrs: JAttrs::from(&node.attrs),
                    });
                }
                let (epoch, seq) = seal;
                let (file, layer) = data.freeze(|old| sealed_name(old, epoch, seq));
                if let Some((layer, present_blocks)) = layer {
                    cap.sealed_bytes += (present_blocks * super::BLOCK_SIZE).min(layer.size());
                    data.take_dirty();
                    cap.sealed.push(layer);
                }
                CNode::File {
                    attrs: node.attrs.clone(),
                    nlink: node.nlink,
                    file,
                    lower_path: walk.lower_paths.get(&ino).cloned(),
                }
            }
            NodeKind::Other(kind) => CNode::Other {
                attrs: node.attrs.clone(),
                nlink: node.nlink,
                kind: kind.clone(),
                lower_path: walk.lower_paths.get(&ino).cloned(),
            },
        };
        if node.nlink > 1 {
            walk.seen.insert(ino, index);
        }
        cap.nodes.push(cnode);
        Ok(index)
    }

    /// Captures loaded directory `ino` entry by entry.
    fn capture_whole_dir(
        &self,
        st: &mut State,
        ino: Ino,
        path: &[u8],
        seal: (u64, u64),
        cap: &mut Capture,
        walk: &mut Walk,
    ) -> FsResult<usize> {
        let index = cap.nodes.len();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let attrs = node.attrs.clone();
        let NodeKind::Dir(dir) = &mut node.kind else {
            return Err(Errno::ENOTDIR);
        };
        // Every name is written: the pending ones are stamped as changed
        // before this capture.
        dir.stamp(st.captures - 1);
        let children: Vec<(Vec<u8>, Ino)> = dir
            .by_name
            .iter()
            .map(|(name, (child, _))| (name.clone(), *child))
            .collect();
        cap.nodes.push(CNode::Dir {
            attrs,
            entries: Vec::new(),
        });
        cap.walked.push((index, ino));
        let mut entries = Vec::with_capacity(children.len());
        for (name, child) in children {
            let c = self.capture_child(st, child, path, &name, seal, cap, walk)?;
            entries.push((name, c));
        }
        if let CNode::Dir { entries: e, .. } = &mut cap.nodes[index] {
            *e = entries;
        }
        Ok(index)
    }

    /// Captures loaded directory `ino` as its base node and the names
    /// edited since (see [`CowFs::capture_incremental`]); `None` when it
    /// has no base that allows it (never stored nor read from below,
    /// hard links among its names or its edits, or a change seen by
    /// several directories since), and nothing was captured.
    fn capture_patched(
        &self,
        st: &mut State,
        ino: Ino,
        path: &[u8],
        seal: (u64, u64),
        cap: &mut Capture,
        walk: &mut Walk,
    ) -> FsResult<Option<usize>> {
        let now = st.captures - 1;
        let all_changed_at = st.all_changed_at;
        let in_place = |origin: &Option<super::Origin>| {
            origin.as_ref().is_none_or(|o| {
                o.root == walk.root
                    && o.path.as_slice() == path.get(walk.root_path_len..).unwrap_or_default()
            })
        };
        let Some(node) = st.nodes.get_mut(&ino) else {
            return Err(Errno::ENOENT);
        };
        let attrs = node.attrs.clone();
        let NodeKind::Dir(dir) = &mut node.kind else {
            return Err(Errno::ENOTDIR);
        };
        dir.stamp(now);
        let (base, since) = match (dir.stored, dir.lower_id) {
            (Some((id, generation)), _) => {
                if dir.stored_linked || all_changed_at.is_some_and(|a| a >= generation) {
                    return Ok(None);
                }
                (id, generation)
            }
            (None, Some(id)) => {
                if dir.lower_linked || all_changed_at.is_some() || !in_place(&dir.origin) {
                    return Ok(None);
                }
                (id, 0)
            }
            (None, None) => return Ok(None),
        };
        let edited: Vec<(Vec<u8>, Option<Ino>)> = dir
            .edited_since(since)
            .into_iter()
            .map(|name| {
                let child = dir.get(&name);
                (name, child)
            })
            .collect();
        let linked = edited.iter().any(|(_, child)| {
            child
                .and_then(|c| st.nodes.get(&c))
                .is_some_and(|n| n.nlink > 1 && !matches!(n.kind, NodeKind::Dir(_)))
        });
        if linked {
            return Ok(None);
        }
        let index = cap.nodes.len();
        cap.nodes.push(CNode::Patched {
            attrs,
            base,
            changes: Vec::new(),
        });
        cap.walked.push((index, ino));
        let mut changes = Vec::with_capacity(edited.len());
        for (name, child) in edited {
            let c = match child {
                Some(child) => Some(self.capture_child(st, child, path, &name, seal, cap, walk)?),
                None => None,
            };
            changes.push((name, c));
        }
        if let CNode::Patched { changes: c, .. } = &mut cap.nodes[index] {
            *c = changes;
        }
        Ok(Some(index))
    }

    /// Captures entry `name` of the directory at `dir_path`; its path is
    /// only built where it is needed (directories, sealed files).
    #[allow(clippy::too_many_arguments)]
    fn capture_child(
        &self,
        st: &mut State,
        ino: Ino,
        dir_path: &[u8],
        name: &[u8],
        seal: (u64, u64),
        cap: &mut Capture,
        walk: &mut Walk,
    ) -> FsResult<usize> {
        let needs_path = match st.nodes.get(&ino).map(|n| &n.kind) {
            Some(NodeKind::Dir(_)) => true,
            Some(NodeKind::File(data)) => data.has_upper_state(),
            _ => false,
        };
        if needs_path {
            self.capture_node(st, ino, &join(dir_path, name), seal, cap, walk)
        } else {
            self.capture_node(st, ino, &[], seal, cap, walk)
        }
    }

    /// After the blobs of `stored` are durable in the store: journals that
    /// each sealed layer is now its blob (durably) and replaces the layers
    /// by their blobs, removing their data files.
    pub fn converted(&self, stored: &Stored) -> FsResult<()> {
        let mut st = self.state.lock();
        self.converted_locked(&mut st, stored)
    }

    /// [`CowFs::converted`] with the mount's state locked.
    pub(super) fn converted_locked(&self, st: &mut State, stored: &Stored) -> FsResult<()> {
        // The directories the capture wrote are those nodes while nothing
        // under them changes: the next capture takes them whole. (The
        // caller keeps the stored tree alive as long as the mount lives.)
        for (ino, id, linked) in &stored.dirs {
            if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(ino).map(|n| &mut n.kind) {
                dir.stored = Some((*id, stored.generation));
                dir.stored_linked = *linked;
                // Edits before the capture are in the node now.
                dir.forget_edits_before(stored.generation);
            }
        }
        if stored.layers.is_empty() {
            // Still synced: the capture's own records (seals, renames)
            // become durable, so the mount never recovers to a state older
            // than a snapshot the caller was told is durable.
            return self.sync_journal();
        }
        let records: Vec<Record> = stored
            .layers
            .iter()
            .map(|(layer, blob)| Record::Converted {
                name: layer.name().to_string(),
                blob: *blob,
            })
            .collect();
        if let Some(journal) = self.journal.get() {
            journal.append_all(&records);
        }
        self.sync_journal()?;
        for (layer, blob) in &stored.layers {
            layer.convert(*blob);
        }
        Ok(())
    }
}

impl Capture {
    /// Whether a mount can be made of this capture before it is stored
    /// ([`CowFs::from_capture`]): it is of a whole tree and every lower
    /// directory in it sits at its own place, so the hard links inside
    /// those resolve as they did in the captured mount.
    pub fn restorable(&self) -> bool {
        self.whole_tree
            && self.nodes.iter().all(|n| match n {
                CNode::Patched { .. } => false,
                CNode::LowerDir {
                    origin: Some(origin),
                    ..
                } => origin.in_place && Some(origin.tree) == self.origin_tree(),
                _ => true,
            })
    }

    /// The stored tree the capture's lower directories come from.
    fn origin_tree(&self) -> Option<ChunkId> {
        self.nodes.iter().find_map(|n| match n {
            CNode::LowerDir {
                origin: Some(origin),
                ..
            } => Some(origin.tree),
            _ => None,
        })
    }
}

impl CowFs {
    /// A new mount showing exactly what `capture` holds, made before the
    /// capture is stored (a restore or fork of a snapshot still
    /// converting). Sealed files are read from their layers (shared, read
    /// only, with the captured mount; they become blobs in place when the
    /// capture is stored), lower directories stay unread. Its journal is
    /// replayed over the snapshot's tree once stored: its files' bases are
    /// journaled as "what the lower tree has". Requires
    /// [`Capture::restorable`].
    pub fn from_capture(
        store: Store,
        capture: &Capture,
        config: MountConfig,
    ) -> crate::Result<CowFs> {
        if !capture.restorable() {
            return Err(crate::Error::BadPath {
                path: "/".into(),
                reason: "this capture has directories out of their place; mount it once stored"
                    .into(),
            });
        }
        Self::prepare_upper(&config)?;
        let origin = capture
            .origin_tree()
            .unwrap_or_else(|| ChunkId::from_bytes([0; 32]));
        let mut st = State {
            next_ino: ROOT_INO + 1,
            tree_roots: HashMap::from([(ROOT_INO, origin)]),
            ..State::default()
        };
        let fs = CowFs::with_state(store, origin, &config, 1, State::default());
        let mut ino_of: HashMap<usize, Ino> = HashMap::from([(0, ROOT_INO)]);
        // (capture index, its inode, parent, name, path from the root)
        type Pending = (usize, Ino, Ino, Vec<u8>, Vec<u8>);
        let mut stack: Vec<Pending> = vec![(0, ROOT_INO, 0, Vec::new(), Vec::new())];
        let mut further: Vec<(Ino, Ino, Vec<u8>)> = Vec::new();
        while let Some((index, ino, parent, name, path)) = stack.pop() {
            let link = (parent, name);
            let dir_parent = if parent == 0 { ROOT_INO } else { parent };
            let node = match &capture.nodes[index] {
                CNode::Dir { attrs, entries } => {
                    let mut dir = DirState::new(dir_parent);
                    dir.origin = Some(Origin {
                        root: ROOT_INO,
                        path: path.clone(),
                    });
                    st.lower_dirs.insert((ROOT_INO, path.clone()), ino);
                    for (child_name, child) in entries {
                        let child_ino = match ino_of.get(child) {
                            Some(&known) => {
                                // A further name of an inode met before.
                                further.push((known, ino, child_name.clone()));
                                known
                            }
                            None => {
                                let child_ino = st.next_ino;
                                st.next_ino += 1;
                                ino_of.insert(*child, child_ino);
                                stack.push((
                                    *child,
                                    child_ino,
                                    ino,
                                    child_name.clone(),
                                    join(&path, child_name),
                                ));
                                child_ino
                            }
                        };
                        if matches!(
                            capture.nodes[*child],
                            CNode::Dir { .. } | CNode::LowerDir { .. }
                        ) {
                            dir.subdirs += 1;
                        }
                        dir.insert(child_name.clone(), child_ino);
                    }
                    Node {
                        attrs: attrs.clone(),
                        nlink: 2 + dir.subdirs,
                        kind: NodeKind::Dir(dir),
                        opens: 0,
                        link,
                        more_links: Vec::new(),
                    }
                }
                CNode::Patched { .. } => {
                    return Err(crate::Error::BadPath {
                        path: show(&path),
                        reason: "an incremental capture is mounted once stored".into(),
                    })
                }
                CNode::LowerDir {
                    id,
                    changed,
                    origin,
                } => {
                    let mut dir = DirState::new(dir_parent);
                    dir.lower_id = Some(*id);
                    if let Some(origin) = origin {
                        dir.origin = Some(Origin {
                            root: ROOT_INO,
                            path: origin.path.clone(),
                        });
                        st.lower_dirs.insert((ROOT_INO, origin.path.clone()), ino);
                    }
                    let (attrs, nlink) = match changed {
                        Some(node) => {
                            let nlink =
                                2 + fs.subdirs_of(node).map_err(|e| crate::Error::BadPath {
                                    path: show(&path),
                                    reason: format!(
                                        "reading its directory node failed (errno {})",
                                        e.0
                                    ),
                                })? as u32;
                            dir.pending = Some(Box::new(node.clone()));
                            (node.attrs.clone(), nlink)
                        }
                        None => {
                            // Read on first use, as any lower directory.
                            dir.unread = Some(*id);
                            (Attrs::default(), 2)
                        }
                    };
                    Node {
                        attrs,
                        nlink,
                        kind: NodeKind::Dir(dir),
                        opens: 0,
                        link,
                        more_links: Vec::new(),
                    }
                }
                CNode::File {
                    attrs,
                    nlink,
                    lower_path,
                    ..
                }
                | CNode::Other {
                    attrs,
                    nlink,
                    lower_path,
                    ..
                } => {
                    if let Some(p) = lower_path {
                        st.lower_paths.insert((ROOT_INO, p.clone()), ino);
                    }
                    let kind = match &capture.nodes[index] {
                        CNode::File { file, .. } => NodeKind::File(Arc::new(FileData::over(
                            file.size,
                            file.base.clone(),
                            fs.data_dir.clone(),
                            fs.data_name_for(ino),
                            fs.files.clone(),
                        ))),
                        CNode::Other { kind, .. } => NodeKind::Other(kind.clone()),
                        _ => unreachable!("matched as a file or other inode above"),
                    };
                    Node {
                        attrs: attrs.clone(),
                        nlink: *nlink,
                        kind,
                        opens: 0,
                        link,
                        more_links: Vec::new(),
                    }
                }
            };
            st.nodes.insert(ino, node);
        }
        st.multi_named = !further.is_empty()
            || st
                .nodes
                .values()
                .any(|n| n.nlink > 1 && !matches!(n.kind, NodeKind::Dir(_)));
        for (ino, parent, name) in further {
            if let Some(node) = st.nodes.get_mut(&ino) {
                node.more_links.push((parent, name));
            }
        }
        *fs.state.lock() = st;
        fs.start_journal(&config)?;
        Ok(fs)
    }
}

/// The data file a sealed file goes on in: its data file's name (without
/// an earlier seal's suffix) and the seal's session and number — the same
/// when recovery replays the seal.
fn sealed_name(old: &str, epoch: u64, seq: u64) -> String {
    let stem = old.split("-s").next().unwrap_or(old);
    format!("{stem}-s{epoch}.{seq}")
}

/// Streams `size` bytes read by `read` into a new blob.
fn write_stream(
    writer: &Writer,
    size: u64,
    read: impl Fn(u64, &mut [u8]) -> std::result::Result<(), String>,
) -> Result<(ChunkId, u64)> {
    let mut out = writer.blob_writer(Chunking::ContentDefined);
    let mut buf = vec![0u8; size.min(1 << 20) as usize];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        read(pos, &mut buf[..n]).map_err(|e| Error::BadPath {
            path: "(snapshot)".into(),
            reason: format!("reading frozen file data: {e}"),
        })?;
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("storing frozen file data", e))?;
        pos += n as u64;
    }
    let info = out.finish()?;
    Ok((info.id, info.new_bytes))
}

/// How one file was stored.
struct FileOut {
    blob: Option<ChunkId>,
    stored: bool,
    new_bytes: u64,
    layers: Vec<(Arc<Layer>, Option<ChunkId>)>,
}

fn store_file(store: &Store, writer: &Writer, file: &FrozenFile) -> Result<FileOut> {
    let mut out = FileOut {
        blob: None,
        stored: false,
        new_bytes: 0,
        layers: Vec::new(),
    };
    if file.size == 0 {
        return Ok(out);
    }
    let (id, len) = match &file.base {
        Base::Blob(b) => match b.id() {
            Some(id) => (Some(id), Content::open(store, &id)?.len()),
            None => (None, 0),
        },
        Base::Layer(layer) => match layer.converted() {
            Some(id) => (id, layer.size()),
            None => {
                let (id, new) = write_stream(writer, layer.size(), |pos, buf| {
                    layer.read_at(store, pos, buf)
                })?;
                let id = (layer.size() > 0).then_some(id);
                out.stored = true;
                out.new_bytes += new;
                out.layers.push((layer.clone(), id));
                (id, layer.size())
            }
        },
    };
    if id.is_some() && len == file.size {
        out.blob = id;
        return Ok(out);
    }
    // The file is a prefix of its base, or extends it with zeros.
    let base_blob = id.map(|id| Content::open(store, &id)).transpose()?;
    let (blob, new) = write_stream(writer, file.size, |pos, buf| {
        let mut done = 0;
        if let Some(blob) = &base_blob {
            while done < buf.len() {
                match blob.read_at(pos + done as u64, &mut buf[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        buf[done..].fill(0);
        Ok(())
    })?;
    out.blob = Some(blob);
    out.stored = true;
    out.new_bytes += new;
    Ok(out)
}

impl Capture {
    /// Bytes of upper data the capture sealed (what changed in file
    /// contents since the previous capture).
    pub fn sealed_bytes(&self) -> u64 {
        self.sealed_bytes
    }

    /// Files whose contents the capture sealed.
    pub fn sealed_files(&self) -> usize {
        self.sealed.len()
    }

    /// Directories the capture walked entry by entry (the others it took
    /// whole, by the id of a stored node): the cost of the capture.
    pub fn walked_dirs(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, CNode::Dir { .. }))
            .count()
    }

    /// Directories the capture took as a stored node and the names
    /// edited in it ([`CowFs::capture_incremental`]).
    pub fn patched_dirs(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, CNode::Patched { .. }))
            .count()
    }

    pub(super) fn sealed_layers(&self) -> &[Arc<Layer>] {
        &self.sealed
    }

    /// Writes the captured tree with `writer`: blobs for sealed files (in
    /// parallel), then the directory nodes around them. Nothing is durable
    /// until the caller commits the writer.
    pub fn store(&self, store: &Store, writer: &Writer) -> Result<Stored> {
        let expanded = self.expanded(store)?;
        let nodes: &[CNode] = expanded.as_deref().unwrap_or(&self.nodes);
        let files: Vec<(usize, &FrozenFile)> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match n {
                CNode::File { file, .. } => Some((i, file)),
                _ => None,
            })
            .collect();
        let outs: Vec<(usize, FileOut)> = files
            .par_iter()
            .map(|(i, file)| store_file(store, writer, file).map(|o| (*i, o)))
            .collect::<Result<_>>()?;
        let mut stored = Stored {
            tree: ChunkId::from_bytes([0; 32]),
            files_stored: 0,
            bytes_stored: 0,
            new_bytes: 0,
            layers: Vec::new(),
            dirs: Vec::new(),
            generation: self.generation,
            paths_changed: None,
        };
        let mut blobs: HashMap<usize, Option<ChunkId>> = HashMap::with_capacity(outs.len());
        for (i, out) in outs {
            if out.stored {
                stored.files_stored += 1;
                if let CNode::File { file, .. } = &nodes[i] {
                    stored.bytes_stored += file.size;
                }
            }
            stored.new_bytes += out.new_bytes;
            stored.layers.extend(out.layers);
            blobs.insert(i, out.blob);
        }
        let (dir_ids, paths_changed) = store_dirs(store, nodes, self.whole_tree, writer, &blobs)?;
        stored.paths_changed = paths_changed;
        stored.tree = dir_ids
            .get(&0)
            .map(|(id, _)| *id)
            .ok_or_else(|| Error::BadPath {
                path: "/".into(),
                reason: "the captured root was not stored".into(),
            })?;
        stored.dirs = self
            .walked
            .iter()
            .filter_map(|(index, ino)| {
                let (id, linked) = dir_ids.get(index)?;
                Some((*ino, *id, *linked))
            })
            .collect();
        Ok(stored)
    }

    /// The nodes to store, when some lower directories must be re-encoded:
    /// those not in place whose subtree holds hard links (their targets
    /// are paths in the tree they came from) are read into nodes, each
    /// link resolved to its inode there.
    fn expanded(&self, store: &Store) -> Result<Option<Vec<CNode>>> {
        let reader = TreeReader::new(store);
        let mut out: Option<Vec<CNode>> = None;
        for i in 0..self.nodes.len() {
            let CNode::LowerDir {
                id,
                changed,
                origin: Some(origin),
            } = &self.nodes[i]
            else {
                continue;
            };
            if origin.in_place {
                continue;
            }
            if !has_hard_links(&reader, *id)? {
                continue;
            }
            let nodes = out.get_or_insert_with(|| self.nodes.clone());
            let attrs = changed.as_ref().map(|c| c.attrs.clone());
            let mut within = HashMap::new();
            let dir = expand_dir(
                &reader,
                nodes,
                *id,
                attrs,
                origin.tree,
                &origin.path,
                &mut within,
            )?;
            nodes[i] = dir;
        }
        Ok(out)
    }
}

/// Whether the subtree of directory `id` holds hard-link entries
/// (remembered per subtree id: unchanged subtrees are asked once).
pub(super) fn has_hard_links(reader: &TreeReader<'_>, id: ChunkId) -> Result<bool> {
    static KNOWN: OnceLock<Mutex<HashMap<ChunkId, bool>>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(&answer) = known.lock().get(&id) {
        return Ok(answer);
    }
    let dir = reader.dir(id)?;
    let mut answer = false;
    for (_, entry) in reader.entries(&dir)? {
        answer = match entry {
            Entry::HardLink { .. } => true,
            Entry::Dir(child) => has_hard_links(reader, child)?,
            Entry::Inode(_) => false,
        };
        if answer {
            break;
        }
    }
    let mut known = known.lock();
    if known.len() > 1 << 20 {
        known.clear();
    }
    known.insert(id, answer);
    Ok(answer)
}

/// Whether the subtree of directory `id` holds a name of an inode with
/// several names (a hard-link entry, or an inode whose link count is over
/// one); remembered per subtree id.
fn has_linked_names(reader: &TreeReader<'_>, id: ChunkId) -> Result<bool> {
    static KNOWN: OnceLock<Mutex<HashMap<ChunkId, bool>>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(&answer) = known.lock().get(&id) {
        return Ok(answer);
    }
    let dir = reader.dir(id)?;
    let mut answer = false;
    for (_, entry) in reader.entries(&dir)? {
        answer = match entry {
            Entry::HardLink { .. } => true,
            Entry::Inode(inode) => inode.nlink > 1,
            Entry::Dir(child) => has_linked_names(reader, child)?,
        };
        if answer {
            break;
        }
    }
    let mut known = known.lock();
    if known.len() > 1 << 20 {
        known.clear();
    }
    known.insert(id, answer);
    Ok(answer)
}

fn inode_node(inode: Inode) -> CNode {
    match inode.kind {
        InodeKind::File { size, blob } => CNode::File {
            attrs: inode.attrs,
            nlink: inode.nlink,
            file: FrozenFile {
                size,
                base: Base::blob(blob),
            },
            lower_path: None,
        },
        kind => CNode::Other {
            attrs: inode.attrs,
            nlink: inode.nlink,
            kind,
            lower_path: None,
        },
    }
}

/// The inode whose first name is `path` in tree `tree`.
fn inode_at(reader: &TreeReader<'_>, tree: ChunkId, path: &[u8]) -> Result<Inode> {
    let missing = || Error::BadPath {
        path: show(path),
        reason: "a hard link names this path, which holds no inode".into(),
    };
    let mut dir = reader.dir(tree)?;
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    for (i, part) in parts.iter().enumerate() {
        let entry = reader
            .entries(&dir)?
            .into_iter()
            .find(|(name, _)| name == part)
            .map(|(_, e)| e)
            .ok_or_else(missing)?;
        match entry {
            Entry::Dir(id) if i + 1 < parts.len() => dir = reader.dir(id)?,
            Entry::Inode(inode) if i + 1 == parts.len() => return Ok(inode),
            _ => return Err(missing()),
        }
    }
    Err(missing())
}

/// Reads lower directory `id` (origin `path` in `tree`) and everything
/// below it into nodes appended to `nodes`; returns its own node.
fn expand_dir(
    reader: &TreeReader<'_>,
    nodes: &mut Vec<CNode>,
    id: ChunkId,
    attrs: Option<Attrs>,
    tree: ChunkId,
    path: &[u8],
    within: &mut HashMap<Vec<u8>, usize>,
) -> Result<CNode> {
    let dir = reader.dir(id)?;
    let mut entries = Vec::new();
    for (name, entry) in reader.entries(&dir)? {
        let child_path = join(path, &name);
        let index = match entry {
            Entry::Dir(child) => {
                let node = expand_dir(reader, nodes, child, None, tree, &child_path, within)?;
                nodes.push(node);
                nodes.len() - 1
            }
            Entry::Inode(inode) => {
                nodes.push(inode_node(inode));
                within.insert(child_path, nodes.len() - 1);
                nodes.len() - 1
            }
            Entry::HardLink { target } => match within.get(&target) {
                Some(&index) => index,
                None => {
                    // Its inode lies outside: this tree gets a copy.
                    nodes.push(inode_node(inode_at(reader, tree, &target)?));
                    nodes.len() - 1
                }
            },
        };
        entries.push((name, index));
    }
    Ok(CNode::Dir {
        attrs: attrs.unwrap_or(dir.attrs),
        entries,
    })
}

/// Every (path, node) in depth-first name order, the order in which a
/// tree's first names of hard-linked inodes are chosen.
fn walk(nodes: &[CNode]) -> Vec<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut stack = vec![(Vec::new(), 0usize)];
    while let Some((path, index)) = stack.pop() {
        match &nodes[index] {
            CNode::Dir { entries, .. } => {
                for (name, child) in entries.iter().rev() {
                    stack.push((join(&path, name), *child));
                }
            }
            CNode::Patched { changes, .. } => {
                for (name, child) in changes.iter().rev() {
                    if let Some(child) = child {
                        stack.push((join(&path, name), *child));
                    }
                }
            }
            _ => {}
        }
        out.push((path, index));
    }
    out
}

/// Each stored directory's id and whether names in it are hard links, by
/// capture index.
type DirIds = HashMap<usize, (ChunkId, bool)>;

/// Writes the directory nodes of a capture; returns the id of each
/// directory node by index (the root is index 0), and whether names in
/// it are hard links (always so for a node taken whole: not looked at).
fn store_dirs(
    store: &Store,
    nodes: &[CNode],
    whole_tree: bool,
    writer: &Writer,
    blobs: &HashMap<usize, Option<ChunkId>>,
) -> Result<(DirIds, Option<u64>)> {
    let order = walk(nodes);
    let mut names: HashMap<usize, u32> = HashMap::new();
    for (_, index) in &order {
        *names.entry(*index).or_insert(0) += 1;
    }
    // Link counts: the live ones for a whole tree (names in lower
    // directories stored by id are not walked), else the names here.
    let nlink_of = |index: usize, live: u32| if whole_tree { live } else { names[&index] };
    // First name of each non-directory: its lower first name when the
    // capture still has it there (lower hard links in unread
    // directories name it), else the first in walk order.
    let mut first: HashMap<usize, Vec<u8>> = HashMap::new();
    for (path, index) in &order {
        let lower = match &nodes[*index] {
            CNode::File { lower_path, .. } | CNode::Other { lower_path, .. } => lower_path,
            _ => continue,
        };
        if lower.as_deref() == Some(path.as_slice()) {
            first.insert(*index, path.clone());
        } else {
            first.entry(*index).or_insert_with(|| path.clone());
        }
    }
    let reader = TreeReader::new(store);
    let entry_of = |dir_ids: &HashMap<usize, (ChunkId, bool)>,
                    child: usize,
                    child_path: &[u8]|
     -> Result<Entry> {
        Ok(match &nodes[child] {
            CNode::Dir { .. } | CNode::LowerDir { .. } | CNode::Patched { .. } => {
                let (id, _) = dir_ids.get(&child).ok_or_else(|| Error::BadPath {
                    path: show(child_path),
                    reason: "a directory appears under two names".into(),
                })?;
                Entry::Dir(*id)
            }
            CNode::File {
                attrs, nlink, file, ..
            } => {
                if first[&child] == child_path {
                    Entry::Inode(Inode {
                        attrs: attrs.clone(),
                        nlink: nlink_of(child, *nlink),
                        kind: InodeKind::File {
                            size: file.size,
                            blob: blobs.get(&child).copied().flatten(),
                        },
                    })
                } else {
                    Entry::HardLink {
                        target: first[&child].clone(),
                    }
                }
            }
            CNode::Other {
                attrs, nlink, kind, ..
            } => {
                if first[&child] == child_path {
                    Entry::Inode(Inode {
                        attrs: attrs.clone(),
                        nlink: nlink_of(child, *nlink),
                        kind: kind.clone(),
                    })
                } else {
                    Entry::HardLink {
                        target: first[&child].clone(),
                    }
                }
            }
        })
    };
    let linked = |entry: &Entry| match entry {
        Entry::HardLink { .. } => true,
        Entry::Inode(inode) => inode.nlink > 1,
        Entry::Dir(_) => false,
    };
    type Written = ((ChunkId, bool), Option<crate::memtree::Patch>);
    let write_dir = |dir_ids: &HashMap<usize, (ChunkId, bool)>,
                     path: &[u8],
                     index: usize|
     -> Result<Option<Written>> {
        Ok(Some(match &nodes[index] {
            CNode::LowerDir {
                id, changed: None, ..
            } => ((*id, true), None),
            CNode::LowerDir {
                changed: Some(node),
                ..
            } => ((writer.put_node(&encode_dir(node))?.id, true), None),
            CNode::Dir { attrs, entries } => {
                let mut out = Vec::with_capacity(entries.len());
                for (name, child) in entries {
                    let entry = entry_of(dir_ids, *child, &join(path, name))?;
                    out.push((name.clone(), entry));
                }
                let any_linked = out.iter().any(|(_, e)| linked(e));
                let id = store_entries(writer, attrs.clone(), out, path)?;
                ((id, any_linked), None)
            }
            CNode::Patched {
                attrs,
                base,
                changes,
            } => {
                let mut out = Vec::with_capacity(changes.len());
                for (name, child) in changes {
                    let entry = match child {
                        Some(child) => Some(entry_of(dir_ids, *child, &join(path, name))?),
                        None => None,
                    };
                    out.push((name.clone(), entry));
                }
                // The capture took no linked base and no linked edit.
                let any_linked = out.iter().any(|(_, e)| e.as_ref().is_some_and(linked));
                let (id, patch) = store_patched(&reader, writer, *base, attrs.clone(), &out, path)?;
                ((id, any_linked), Some(patch))
            }
            _ => return Ok(None),
        }))
    };
    // Directories by height (a directory after every directory under
    // it), those of one height written in parallel.
    let is_dir = |index: usize| {
        matches!(
            nodes[index],
            CNode::Dir { .. } | CNode::LowerDir { .. } | CNode::Patched { .. }
        )
    };
    let mut height: HashMap<usize, usize> = HashMap::new();
    let mut levels: Vec<Vec<(&[u8], usize)>> = Vec::new();
    for (path, index) in order.iter().rev() {
        let children: Box<dyn Iterator<Item = usize>> = match &nodes[*index] {
            CNode::Dir { entries, .. } => Box::new(entries.iter().map(|(_, c)| *c)),
            CNode::Patched { changes, .. } => Box::new(changes.iter().filter_map(|(_, c)| *c)),
            CNode::LowerDir { .. } => Box::new(std::iter::empty()),
            _ => continue,
        };
        let h = children
            .filter(|c| is_dir(*c))
            .map(|c| height.get(&c).map_or(0, |h| h + 1))
            .max()
            .unwrap_or(0);
        height.insert(*index, h);
        if levels.len() <= h {
            levels.resize_with(h + 1, Vec::new);
        }
        levels[h].push((path.as_slice(), *index));
    }
    let mut dir_ids: HashMap<usize, (ChunkId, bool)> = HashMap::new();
    let mut patches: HashMap<usize, crate::memtree::Patch> = HashMap::new();
    for level in levels {
        let written: Vec<(usize, Option<Written>)> = level
            .par_iter()
            .map(|(path, index)| Ok((*index, write_dir(&dir_ids, path, *index)?)))
            .collect::<Result<_>>()?;
        for (index, out) in written {
            if let Some((id, patch)) = out {
                dir_ids.insert(index, id);
                if let Some(patch) = patch {
                    patches.insert(index, patch);
                }
            }
        }
    }
    let paths_changed = patched_paths_changed(nodes, &patches);
    Ok((dir_ids, paths_changed))
}

/// The paths that differ between the patched directories' bases and the
/// stored tree, counted as [`crate::diff_trees`] counts them, when the
/// root and every directory under it that changed were patched (else
/// unknown).
fn patched_paths_changed(
    nodes: &[CNode],
    patches: &HashMap<usize, crate::memtree::Patch>,
) -> Option<u64> {
    let mut total = 0;
    let mut stack = vec![0usize];
    while let Some(index) = stack.pop() {
        let (CNode::Patched { changes, .. }, Some(patch)) = (&nodes[index], patches.get(&index))
        else {
            return None;
        };
        total += patch.changed;
        for name in &patch.descend {
            let at = changes
                .binary_search_by(|(n, _)| n.as_slice().cmp(name))
                .ok()?;
            let child = changes[at].1?;
            stack.push(child);
        }
    }
    Some(total)
}
