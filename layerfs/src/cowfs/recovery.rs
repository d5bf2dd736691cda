//! Recovering a mount from its upper layer: the journal is replayed, in
//! order, through the same operations that wrote it, over the same lower
//! tree; then the mount continues in a new epoch, appending to the journal.

use std::collections::HashMap;
use std::sync::Arc;

use cas::{ChunkId, Store};

use super::file::{Base, FileData, Layer, LayerLayout};
use super::journal::{self, JAttrs, JBase, Journal, NewKind, Record};
use super::{
    Caller, CowFs, Errno, FileKind, FsResult, Ino, MountConfig, NodeKind, RenameFlags, XattrMode,
    JOURNAL_FILE, ROOT_INO,
};
use crate::tree::Timestamp;

/// What a recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryReport {
    /// Records replayed.
    pub records: usize,
    /// Records that no longer applied (each logged with its reason).
    pub skipped: usize,
    /// Bytes of a record torn by the crash, cut off.
    pub torn_bytes: u64,
    /// Upper data files no entry refers to (removed).
    pub orphan_files: usize,
    /// The new session's epoch.
    pub epoch: u64,
    /// The journal's last rebase, if it has one: the tree the recovery
    /// started from instead of the mount's first lower tree (records
    /// before it were not replayed), and the note journaled with it.
    pub rebased: Option<(ChunkId, Option<ChunkId>)>,
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

impl CowFs {
    /// Reopens the mount whose upper layer is in `config.upper_dir`, over
    /// the same lower tree it was made from.
    pub fn recover(
        store: Store,
        lower: ChunkId,
        config: MountConfig,
    ) -> crate::Result<(CowFs, RecoveryReport)> {
        let journal_path = config.upper_dir.join(JOURNAL_FILE);
        let contents = journal::read(&journal_path)
            .map_err(|e| crate::Error::io(format!("reading {}", journal_path.display()), e))?;
        let last_epoch = contents
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Epoch(e) => Some(*e),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // A rebase starts the namespace again from its tree: only what
        // came after it is replayed.
        let rebase = contents
            .records
            .iter()
            .rposition(|r| matches!(r, Record::Rebase { .. }));
        let rebased = rebase.and_then(|at| match contents.records[at] {
            Record::Rebase { tree, note } => Some((tree, note)),
            _ => None,
        });
        let lower = rebased.map_or(lower, |(tree, _)| tree);
        let fs = CowFs::unjournaled(store, lower, &config, last_epoch + 1)?;
        // Before the replay touches them.
        let upper_mtimes = FileData::upper_mtimes(&fs.data_dir);
        let mut report = RecoveryReport {
            records: contents.records.len(),
            torn_bytes: contents.torn_bytes,
            epoch: fs.epoch,
            rebased,
            ..RecoveryReport::default()
        };
        let mut layers = HashMap::new();
        for record in contents
            .records
            .into_iter()
            .skip(rebase.map_or(0, |at| at + 1))
        {
            let what = format!("{record:?}");
            if let Err(e) = fs.replay(record, &mut layers) {
                report.skipped += 1;
                tracing::warn!(
                    upper = %config.upper_dir.display(),
                    "journal record no longer applies (errno {}): {what:.200}",
                    e.0
                );
            }
        }
        fs.scrub_upper_files()?;
        fs.adopt_upper_mtimes(&upper_mtimes);
        // Replay set attributes and data directly: snapshots of a
        // recovered mount walk everything it has loaded.
        fs.state.lock().all_changed_at = Some(0);
        report.orphan_files = fs.remove_orphan_data();
        let journal = Journal::reopen(&journal_path, contents.valid_len)
            .map_err(|e| crate::Error::io(format!("reopening {}", journal_path.display()), e))?;
        journal.append(&Record::Epoch(fs.epoch));
        journal
            .sync()
            .map_err(|e| crate::Error::io(format!("writing {}", journal_path.display()), e))?;
        let _ = fs.journal.set(journal);
        Ok((fs, report))
    }

    /// The inode at `path` (from the root).
    fn resolve(&self, path: &[u8]) -> FsResult<Ino> {
        let mut at = ROOT_INO;
        for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            at = self.lookup(at, part)?.ino;
        }
        Ok(at)
    }

    fn resolve_parent<'p>(&self, path: &'p [u8]) -> FsResult<(Ino, &'p [u8])> {
        let (dir, name) = split(path);
        if name.is_empty() {
            return Err(Errno::EINVAL);
        }
        Ok((self.resolve(dir)?, name))
    }

    fn set_times(&self, ino: Ino, mtime: Option<Timestamp>, ctime: Timestamp) {
        let mut st = self.state.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            if let Some(m) = mtime {
                node.attrs.mtime = m;
            }
            node.attrs.ctime = ctime;
        }
        // What the replay changes is marked as the mount marked it: a seal
        // replayed later must walk to it, as the original capture did.
        self.mark_changed(&mut st, ino);
    }

    fn set_attrs(&self, ino: Ino, attrs: &JAttrs) {
        let mut st = self.state.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            attrs.apply(&mut node.attrs);
        }
        self.mark_changed(&mut st, ino);
    }

    /// Replaces `ino`'s file data.
    fn set_file_data(
        &self,
        ino: Ino,
        make: impl FnOnce(Base) -> FileData,
        layers: &HashMap<String, Arc<Layer>>,
    ) -> FsResult<()> {
        let mut st = self.state.lock();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let NodeKind::File(old) = &node.kind else {
            return Err(Errno::EINVAL);
        };
        let new = make(old.base());
        let old_name = old.file_name();
        if old_name == new.file_name() || layers.contains_key(&old_name) {
            // Its data file lives on (as the same file, or sealed).
            old.release_charge();
        } else {
            old.discard();
        }
        node.kind = NodeKind::File(Arc::new(new));
        self.mark_changed(&mut st, ino);
        Ok(())
    }

    fn base_of(&self, base: JBase, layers: &HashMap<String, Arc<Layer>>) -> FsResult<Base> {
        match base {
            JBase::Blob(id) => Ok(Base::blob(id)),
            JBase::Current => Err(Errno::EINVAL),
            JBase::Layer(name) => layers.get(&name).cloned().map(Base::Layer).ok_or_else(|| {
                tracing::warn!("journal names layer {name}, which no earlier record made");
                Errno::ENOENT
            }),
        }
    }

    /// Gives the file at `path` the journaled state: upper data file
    /// `file` with `layout` (size, lower limit, present blocks) over
    /// `base` (`None`: the file's current base).
    fn restore_file(
        &self,
        path: &[u8],
        file: String,
        base: Option<Base>,
        layout: (u64, u64, Vec<u64>),
        attrs: &JAttrs,
        layers: &HashMap<String, Arc<Layer>>,
    ) -> FsResult<()> {
        let ino = self.resolve(path)?;
        let dir = self.data_dir.clone();
        let files = self.files.clone();
        let (size, lower_limit, present) = layout;
        self.set_file_data(
            ino,
            |current| {
                let base = base.unwrap_or(current);
                FileData::restored(dir, file, files, base, size, lower_limit, present)
            },
            layers,
        )?;
        self.set_attrs(ino, attrs);
        Ok(())
    }

    fn replay(&self, record: Record, layers: &mut HashMap<String, Arc<Layer>>) -> FsResult<()> {
        match record {
            Record::Epoch(_) => Ok(()),
            Record::Create { path, kind, attrs } => {
                let (parent, name) = self.resolve_parent(&path)?;
                let caller = Caller {
                    uid: attrs.uid,
                    gid: attrs.gid,
                };
                let mode = attrs.mode;
                let ino = match kind {
                    NewKind::File { file } => {
                        let ino = self.create(parent, name, mode, caller)?.ino;
                        self.release(ino);
                        let dir = self.data_dir.clone();
                        let files = self.files.clone();
                        self.set_file_data(ino, |_| FileData::empty(dir, file, files), layers)?;
                        ino
                    }
                    NewKind::Dir => self.mkdir(parent, name, mode, caller)?.ino,
                    NewKind::Symlink { target } => self.symlink(parent, name, &target, caller)?.ino,
                    NewKind::CharDevice { rdev } => {
                        self.mknod(parent, name, FileKind::CharDevice, mode, rdev, caller)?
                            .ino
                    }
                    NewKind::BlockDevice { rdev } => {
                        self.mknod(parent, name, FileKind::BlockDevice, mode, rdev, caller)?
                            .ino
                    }
                    NewKind::Fifo => {
                        self.mknod(parent, name, FileKind::Fifo, mode, 0, caller)?
                            .ino
                    }
                    NewKind::Socket => {
                        self.mknod(parent, name, FileKind::Socket, mode, 0, caller)?
                            .ino
                    }
                };
                self.set_attrs(ino, &attrs);
                let t = attrs.ctime.into();
                self.set_times(parent, Some(t), t);
                Ok(())
            }
            Record::Link { from, to, time } => {
                let ino = self.resolve(&from)?;
                let (parent, name) = self.resolve_parent(&to)?;
                self.link(ino, parent, name)?;
                let t = time.into();
                self.set_times(ino, None, t);
                self.set_times(parent, Some(t), t);
                Ok(())
            }
            Record::Remove { path, time } => {
                let (parent, name) = self.resolve_parent(&path)?;
                let stat = self.lookup(parent, name)?;
                if stat.kind == FileKind::Dir {
                    self.rmdir(parent, name)?;
                } else {
                    self.unlink(parent, name)?;
                    self.set_times(stat.ino, None, time.into());
                }
                let t = time.into();
                self.set_times(parent, Some(t), t);
                Ok(())
            }
            Record::Rename {
                from,
                to,
                noreplace,
                exchange,
                time,
            } => {
                let (parent, name) = self.resolve_parent(&from)?;
                let (new_parent, new_name) = self.resolve_parent(&to)?;
                let ino = self.lookup(parent, name)?.ino;
                self.rename(
                    parent,
                    name,
                    new_parent,
                    new_name,
                    RenameFlags {
                        noreplace,
                        exchange,
                    },
                )?;
                let t = time.into();
                if !exchange {
                    self.set_times(ino, None, t);
                }
                self.set_times(parent, Some(t), t);
                self.set_times(new_parent, Some(t), t);
                Ok(())
            }
            Record::Attrs { path, attrs } => {
                let ino = self.resolve(&path)?;
                self.set_attrs(ino, &attrs);
                Ok(())
            }
            Record::Xattr { path, name, value } => {
                let ino = self.resolve(&path)?;
                match value {
                    Some(value) => self.setxattr(ino, &name, &value, XattrMode::Set),
                    None => match self.removexattr(ino, &name) {
                        Err(e) if e == Errno::ENODATA => Ok(()),
                        other => other,
                    },
                }
            }
            Record::Data {
                path,
                file,
                size,
                lower_limit,
                present,
                attrs,
            } => self.restore_file(
                &path,
                file,
                None,
                (size, lower_limit, present),
                &attrs,
                layers,
            ),
            Record::FileState {
                path,
                file,
                base,
                size,
                lower_limit,
                present,
                attrs,
            } => {
                let base = match base {
                    JBase::Current => None,
                    base => Some(self.base_of(base, layers)?),
                };
                self.restore_file(
                    &path,
                    file,
                    base,
                    (size, lower_limit, present),
                    &attrs,
                    layers,
                )
            }
            Record::Layer {
                name,
                size,
                lower_limit,
                present,
                base,
            } => {
                let base = self.base_of(base, layers)?;
                let layer = Layer::restored(
                    &self.data_dir,
                    &self.files,
                    LayerLayout {
                        name: name.clone(),
                        size,
                        lower_limit,
                        present,
                        base,
                    },
                );
                layers.insert(name, layer);
                Ok(())
            }
            Record::Seal {
                path,
                layer,
                size,
                lower_limit,
                present,
                base,
                file,
            } => {
                let base = match base {
                    JBase::Current => self.file(self.resolve(&path)?)?.base(),
                    base => self.base_of(base, layers)?,
                };
                let sealed = Layer::restored(
                    &self.data_dir,
                    &self.files,
                    LayerLayout {
                        name: layer.clone(),
                        size,
                        lower_limit,
                        present,
                        base,
                    },
                );
                layers.insert(layer, sealed.clone());
                let ino = self.resolve(&path)?;
                let dir = self.data_dir.clone();
                let files = self.files.clone();
                self.set_file_data(
                    ino,
                    |_| {
                        FileData::restored(
                            dir,
                            file,
                            files,
                            Base::Layer(sealed),
                            size,
                            size,
                            Vec::new(),
                        )
                    },
                    layers,
                )
            }
            Record::SealAll { path, epoch, seq } => {
                let capture = self.capture_as(&path, epoch, seq)?;
                for layer in capture.sealed_layers() {
                    layers.insert(layer.name().to_string(), layer.clone());
                }
                Ok(())
            }
            Record::Graft { path, tree, time } => {
                let (parent, _) = self.graft(&path, tree)?;
                let t = time.into();
                self.set_times(parent, Some(t), t);
                Ok(())
            }
            // Only the last one is in the replay, and it starts it.
            Record::Rebase { .. } => Ok(()),
            Record::Converted { name, blob } => {
                let layer = layers.get(&name).ok_or(Errno::ENOENT)?;
                layer.convert(blob);
                Ok(())
            }
        }
    }

    /// Removes from every upper data file the bytes its recovered layout
    /// does not account for (see [`FileData::scrub_unrecorded`]).
    fn scrub_upper_files(&self) -> crate::Result<()> {
        let st = self.state.lock();
        for node in st.nodes.values() {
            if let NodeKind::File(data) = &node.kind {
                data.scrub_unrecorded().map_err(|e| {
                    crate::Error::io(format!("cleaning up data file {}", data.upper_name()), e)
                })?;
            }
        }
        Ok(())
    }

    /// A file overwritten in place after its last journal record (and
    /// fsynced, or flushed by the kernel) carries its newer mtime as its
    /// data file's (see `FileData::sync`): where that, as found
    /// before the replay, is newer than what the journal says, it wins.
    fn adopt_upper_mtimes(&self, found: &HashMap<String, Timestamp>) {
        let mut st = self.state.lock();
        for node in st.nodes.values_mut() {
            let NodeKind::File(data) = &node.kind else {
                continue;
            };
            if let Some(&t) = found.get(&data.upper_name()) {
                if t > node.attrs.mtime {
                    node.attrs.mtime = t;
                    node.attrs.ctime = t;
                }
            }
        }
    }

    /// Removes upper data files that no entry refers to (files removed
    /// while open when the mount ended, blocks of a file never journaled).
    fn remove_orphan_data(&self) -> usize {
        let st = self.state.lock();
        let mut referenced = std::collections::HashSet::new();
        for node in st.nodes.values() {
            if let NodeKind::File(data) = &node.kind {
                referenced.insert(data.file_name());
                if let Base::Layer(layer) = data.base() {
                    let mut chain = Vec::new();
                    layer.local_files(&mut chain);
                    referenced.extend(chain);
                }
            }
        }
        let mut removed = 0;
        if let Ok(entries) = std::fs::read_dir(&self.data_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !referenced.contains(&name) && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}
