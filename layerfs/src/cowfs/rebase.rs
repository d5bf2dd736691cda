//! Moving a live mount onto another stored tree without unmounting it.
//!
//! A volume session reloads this way: its changes are captured and stored
//! (tree `from`, which the mount shows exactly at that moment), merged
//! with the volume's newest head into tree `to`, and the mount is rebased
//! from `from` to `to` in place. Only the directories on paths where the
//! two trees differ are read and changed (equal subtree ids are never
//! descended), so the cost follows the change, not the volume's size:
//!
//! - a directory the mount never loaded just shows its new node;
//! - a loaded directory keeps its inode (a process's working directory in
//!   it stays valid) and its changed entries are swapped;
//! - a file whose contents changed gets a new inode under its name; the
//!   old one lives on, nameless, for as long as it is open, so an open
//!   file keeps reading what it opened;
//! - a file whose attributes alone changed keeps its inode.
//!
//! The whole move happens under the mount's lock ([`CowFs::freeze`]), so
//! nothing the sandbox does can fall between the capture and the move.
//! It is journaled as one record: recovery starts again from `to` and
//! replays only what came after.
//!
//! Hard links are not rebased: a mount holding an inode with several
//! names, or trees that differ in such entries, refuse with EOPNOTSUPP
//! (nothing changed); commit and mount again instead.

use parking_lot::MutexGuard;

use super::journal::Record;
use super::snapshot::{has_hard_links, Capture, Stored};
use super::*;

/// A mount held still: no operation of the sandbox runs while this lives.
/// For captures, conversions and a rebase that must see the same state.
pub struct Frozen<'a> {
    fs: &'a CowFs,
    st: MutexGuard<'a, State>,
}

/// What a rebase did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebased {
    /// Names added, removed or replaced, and files whose attributes
    /// changed.
    pub entries_changed: u64,
    /// Loaded directories whose entries were compared.
    pub dirs_compared: u64,
    /// Entries a kernel client may have cached that changed: (directory
    /// inode, name). A FUSE frontend invalidates them.
    pub invalidate_entries: Vec<(Ino, Vec<u8>)>,
    /// Inodes whose attributes changed.
    pub invalidate_inodes: Vec<Ino>,
}

/// One change a rebase makes, planned before anything is changed.
enum Step {
    /// A directory the mount has not loaded shows node `to` from now on.
    Unloaded { ino: Ino, to: ChunkId },
    /// A loaded directory is node `to` (its entries are brought level by
    /// `Name` steps).
    Loaded {
        ino: Ino,
        to: ChunkId,
        attrs: Attrs,
        /// Whether names of `to` are hard links.
        linked: bool,
    },
    /// Name `name` of directory `parent` goes from `old` to `new`.
    Name {
        parent: Ino,
        name: Vec<u8>,
        old: Option<Entry>,
        new: Option<Entry>,
    },
}

impl CowFs {
    /// Holds the mount still until the result is dropped (see
    /// [`Frozen`]). Keep it short: every operation of the sandbox waits.
    pub fn freeze(&self) -> Frozen<'_> {
        Frozen {
            fs: self,
            st: self.state.lock(),
        }
    }
}

impl Frozen<'_> {
    /// [`CowFs::capture`] of the whole mount.
    pub fn capture(&mut self) -> FsResult<Capture> {
        let seq = self
            .fs
            .file_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.fs
            .capture_locked(&mut self.st, b"", self.fs.epoch, seq)
    }

    /// [`CowFs::capture_incremental`] of the whole mount.
    pub fn capture_incremental(&mut self) -> FsResult<Capture> {
        let seq = self
            .fs
            .file_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.fs.use_incremental_captures();
        self.fs
            .capture_walk(&mut self.st, b"", self.fs.epoch, seq, true)
    }

    /// [`CowFs::converted`].
    pub fn converted(&mut self, stored: &Stored) -> FsResult<()> {
        self.fs.converted_locked(&mut self.st, stored)
    }

    /// Moves the mount from tree `from` — a stored capture of it taken
    /// under this freeze and [converted](Frozen::converted), so that the
    /// mount shows exactly `from` — onto tree `to` (see the module
    /// documentation). `note` is journaled with the move and given back
    /// by recovery ([`RecoveryReport::rebased`]). Returns once the move
    /// is durable in the journal. On error nothing changed.
    pub fn rebase(
        &mut self,
        from: ChunkId,
        to: ChunkId,
        note: Option<ChunkId>,
    ) -> FsResult<Rebased> {
        let fs = self.fs;
        let st = &mut *self.st;
        fs.check_rebasable(st)?;
        let mut report = Rebased::default();
        let mut steps = Vec::new();
        if from != to {
            let reader = TreeReader::new(&fs.store);
            fs.plan(st, &reader, ROOT_INO, from, to, &mut steps, &mut report)?;
        }
        // Durable before the mount changes: a crash from here on recovers
        // onto `to`.
        if let Some(journal) = fs.journal.get() {
            journal.append(&Record::Rebase { tree: to, note });
        }
        fs.sync_journal()?;
        let generation = st.captures + 1;
        for step in steps {
            fs.apply(st, step, generation, &mut report);
        }
        fs.rebuild_origins(st, to);
        st.captures = generation;
        *fs.lower.lock() = to;
        Ok(report)
    }
}

impl CowFs {
    /// Refuses (EOPNOTSUPP) a mount whose hard links a rebase could not keep
    /// right, and (EBUSY) one holding file data that is not in the store
    /// (a capture whose storing failed): recovery after a rebase starts
    /// from the stored tree.
    fn check_rebasable(&self, st: &State) -> FsResult<()> {
        if !st.lower_paths.is_empty() {
            return Err(Errno::EOPNOTSUPP);
        }
        for node in st.nodes.values() {
            match &node.kind {
                NodeKind::File(data) => {
                    if node.nlink > 1 {
                        return Err(Errno::EOPNOTSUPP);
                    }
                    if node.nlink > 0 && !data.is_in_store() {
                        return Err(Errno::EBUSY);
                    }
                }
                NodeKind::Other(_) if node.nlink > 1 => return Err(Errno::EOPNOTSUPP),
                _ => {}
            }
        }
        // An unloaded directory away from where its tree had it names its
        // hard-link targets by paths that no longer hold.
        let reader = TreeReader::new(&self.store);
        for (&ino, node) in &st.nodes {
            let NodeKind::Dir(dir) = &node.kind else {
                continue;
            };
            if dir.unread.is_none() && dir.pending.is_none() {
                continue;
            }
            let in_place = dir.origin.as_ref().is_some_and(|o| {
                o.root == ROOT_INO && Some(o.path.clone()) == self.path_of(st, ino)
            });
            if let (false, Some(id)) = (in_place, dir.lower_id) {
                if has_hard_links(&reader, id).map_err(|e| self.eio(e))? {
                    return Err(Errno::EOPNOTSUPP);
                }
            }
        }
        Ok(())
    }

    /// Plans the rebase of loaded directory `ino` from node `a` to `b`.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        st: &mut State,
        reader: &TreeReader<'_>,
        ino: Ino,
        a: ChunkId,
        b: ChunkId,
        steps: &mut Vec<Step>,
        report: &mut Rebased,
    ) -> FsResult<()> {
        let mismatch = |what: &str| {
            self.eio(format!(
                "rebase: the mount does not show the tree it was captured as ({what})"
            ))
        };
        let live: Vec<(Vec<u8>, Ino)> = match st.nodes.get(&ino).map(|n| &n.kind) {
            Some(NodeKind::Dir(dir)) if dir.unread.is_some() || dir.pending.is_some() => {
                steps.push(Step::Unloaded { ino, to: b });
                return Ok(());
            }
            Some(NodeKind::Dir(dir)) => dir
                .by_name
                .iter()
                .map(|(name, (child, _))| (name.clone(), *child))
                .collect(),
            _ => return Err(mismatch("a directory is not one")),
        };
        report.dirs_compared += 1;
        let old_node = reader.dir(a).map_err(|e| self.eio(e))?;
        let new_node = reader.dir(b).map_err(|e| self.eio(e))?;
        let old: BTreeMap<Vec<u8>, Entry> = reader
            .entries(&old_node)
            .map_err(|e| self.eio(e))?
            .into_iter()
            .collect();
        let mut new: BTreeMap<Vec<u8>, Entry> = reader
            .entries(&new_node)
            .map_err(|e| self.eio(e))?
            .into_iter()
            .collect();
        if old.len() != live.len() {
            return Err(mismatch("entry counts differ"));
        }
        steps.push(Step::Loaded {
            ino,
            to: b,
            attrs: new_node.attrs,
            linked: new.values().any(|e| match e {
                Entry::HardLink { .. } => true,
                Entry::Inode(inode) => inode.nlink > 1,
                Entry::Dir(_) => false,
            }),
        });
        let live: HashMap<Vec<u8>, Ino> = live.into_iter().collect();
        let linked = |e: &Option<Entry>| match e {
            Some(Entry::HardLink { .. }) => true,
            Some(Entry::Inode(inode)) => inode.nlink > 1,
            _ => false,
        };
        let mut names: Vec<Vec<u8>> = old.keys().cloned().collect();
        names.extend(new.keys().filter(|n| !old.contains_key(*n)).cloned());
        for name in names {
            let before = old.get(&name).cloned();
            let after = new.remove(&name);
            if before == after {
                continue;
            }
            let child = live.get(&name).copied();
            if child.is_some() != before.is_some() {
                return Err(mismatch("a name differs"));
            }
            match (&before, &after, child) {
                (Some(Entry::Dir(x)), Some(Entry::Dir(y)), Some(child)) => {
                    self.plan(st, reader, child, *x, *y, steps, report)?;
                }
                _ => {
                    if linked(&before) || linked(&after) {
                        return Err(Errno::EOPNOTSUPP);
                    }
                    steps.push(Step::Name {
                        parent: ino,
                        name,
                        old: before,
                        new: after,
                    });
                }
            }
        }
        Ok(())
    }

    fn apply(&self, st: &mut State, step: Step, generation: u64, report: &mut Rebased) {
        match step {
            Step::Unloaded { ino, to } => {
                if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                    dir.unread = Some(to);
                    dir.pending = None;
                    dir.lower_id = Some(to);
                    dir.stored = None;
                    dir.edits = None;
                }
                report.invalidate_inodes.push(ino);
            }
            Step::Loaded {
                ino,
                to,
                attrs,
                linked,
            } => {
                if let Some(node) = st.nodes.get_mut(&ino) {
                    node.attrs = attrs;
                    if let NodeKind::Dir(dir) = &mut node.kind {
                        dir.lower_id = Some(to);
                        dir.stored = Some((to, generation));
                        dir.stored_linked = linked;
                    }
                }
                report.invalidate_inodes.push(ino);
            }
            Step::Name {
                parent,
                name,
                old,
                new,
            } => {
                report.entries_changed += 1;
                let child = match st.nodes.get(&parent).map(|n| &n.kind) {
                    Some(NodeKind::Dir(dir)) => dir.get(&name),
                    _ => None,
                };
                // The same inode with new attributes keeps its number.
                if let (Some(ino), Some(Entry::Inode(a)), Some(Entry::Inode(b))) =
                    (child, &old, &new)
                {
                    if a.kind == b.kind {
                        if let Some(node) = st.nodes.get_mut(&ino) {
                            node.attrs = b.attrs.clone();
                        }
                        report.invalidate_inodes.push(ino);
                        return;
                    }
                }
                let t = now();
                if let Some(ino) = child {
                    self.remove_entry(st, parent, &name, ino, t);
                }
                if let Some(entry) = new {
                    self.add_entry(st, parent, name.clone(), entry);
                }
                report.invalidate_entries.push((parent, name));
            }
        }
    }

    /// Takes entry `name` (inode `ino`) out of `parent`; a directory goes
    /// with everything under it, an open file lives on without a name.
    fn remove_entry(&self, st: &mut State, parent: Ino, name: &[u8], ino: Ino, t: Timestamp) {
        if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            dir.remove(name);
        }
        let is_dir = matches!(st.nodes.get(&ino).map(|n| &n.kind), Some(NodeKind::Dir(_)));
        if !is_dir {
            self.drop_link(st, ino, parent, name, t);
            return;
        }
        if let Some(p) = st.nodes.get_mut(&parent) {
            p.nlink = p.nlink.saturating_sub(1);
            if let NodeKind::Dir(dir) = &mut p.kind {
                dir.subdirs = dir.subdirs.saturating_sub(1);
            }
        }
        let mut stack = vec![ino];
        while let Some(at) = stack.pop() {
            let Some(node) = st.remove_node(at) else {
                continue;
            };
            self.locks.lock().forget(at);
            let NodeKind::Dir(dir) = node.kind else {
                continue;
            };
            for (child_name, (child, _)) in dir.by_name {
                match st.nodes.get(&child).map(|n| &n.kind) {
                    Some(NodeKind::Dir(_)) => stack.push(child),
                    Some(_) => self.drop_link(st, child, at, &child_name, t),
                    None => {}
                }
            }
        }
    }

    /// Adds `name` to `parent` as stored entry `entry` (no hard links).
    fn add_entry(&self, st: &mut State, parent: Ino, name: Vec<u8>, entry: Entry) {
        let child = match entry {
            Entry::Dir(id) => {
                let mut dir = DirState::new(parent);
                dir.unread = Some(id);
                dir.lower_id = Some(id);
                let child = self.add_node(
                    st,
                    Attrs::default(),
                    2,
                    NodeKind::Dir(dir),
                    (parent, name.clone()),
                );
                if let Some(p) = st.nodes.get_mut(&parent) {
                    p.nlink += 1;
                    if let NodeKind::Dir(dir) = &mut p.kind {
                        dir.subdirs += 1;
                    }
                }
                child
            }
            Entry::Inode(inode) => {
                let kind = self.lower_kind(st, inode.kind);
                self.add_node(st, inode.attrs, inode.nlink, kind, (parent, name.clone()))
            }
            // Refused by the plan.
            Entry::HardLink { .. } => return,
        };
        if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&parent).map(|n| &mut n.kind) {
            dir.insert(name, child);
        }
    }

    /// After a rebase the mount shows tree `tree` exactly: every directory
    /// comes from it, at its current path (hard links found in
    /// directories loaded later resolve there).
    fn rebuild_origins(&self, st: &mut State, tree: ChunkId) {
        st.lower_dirs.clear();
        st.lower_paths.clear();
        st.tree_roots = HashMap::from([(ROOT_INO, tree)]);
        let mut stack: Vec<(Ino, Vec<u8>)> = vec![(ROOT_INO, Vec::new())];
        while let Some((ino, path)) = stack.pop() {
            let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) else {
                continue;
            };
            dir.origin = Some(Origin {
                root: ROOT_INO,
                path: path.clone(),
            });
            let children: Vec<(Vec<u8>, Ino)> = dir
                .by_name
                .iter()
                .map(|(name, (child, _))| (name.clone(), *child))
                .collect();
            st.lower_dirs.insert((ROOT_INO, path.clone()), ino);
            for (name, child) in children {
                if matches!(
                    st.nodes.get(&child).map(|n| &n.kind),
                    Some(NodeKind::Dir(_))
                ) {
                    let mut child_path = path.clone();
                    if !child_path.is_empty() {
                        child_path.push(b'/');
                    }
                    child_path.extend_from_slice(&name);
                    stack.push((child, child_path));
                }
            }
            // Link counts of loaded directories follow their entries.
            if let Some(node) = st.nodes.get_mut(&ino) {
                if let NodeKind::Dir(dir) = &node.kind {
                    if dir.unread.is_none() && dir.pending.is_none() {
                        node.nlink = 2 + dir.subdirs;
                    }
                }
            }
        }
    }
}
