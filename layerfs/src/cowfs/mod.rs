//! The filesystem core: inode operations over an immutable lower tree and a
//! writable upper layer on local disk. The FUSE frontend (and, later, the
//! 9P server) call these; neither resolves a sandbox path on the host.
//!
//! - Lower directories are read from their tree nodes the first time they
//!   are needed; nothing is loaded up front, so mounting costs the same for
//!   any image.
//! - File data is copied up in 64 KiB blocks: changing one byte of a large
//!   lower file copies the block around it into the file's upper data file
//!   (a sparse file under `upper/data/`), never the whole file.
//! - Deleting a lower entry only changes the mount's in-memory namespace;
//!   the lower tree is never modified.
//! - A quota bounds the bytes the upper layer holds; a write past it fails
//!   with ENOSPC before anything is written.
//!
//! The parts: [`types`] (the public types), [`lower`] (loading the image
//! tree), [`names`] (inodes, names, journal records and snapshot marks),
//! [`namespace`] (lookups, attributes, creating, linking, renaming,
//! listing), [`io`] (file data, syncing, locks), [`xattr`], [`file`] (a
//! file's blocks), [`datafile`] (its upper data file), [`journal`],
//! [`recovery`], [`snapshot`] (capture and storing), [`locks`].

pub mod acl;
mod datafile;
mod file;
mod io;
mod journal;
pub mod locks;
mod lower;
mod names;
mod namespace;
mod rebase;
mod recovery;
mod snapshot;
mod types;
mod xattr;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use cas::{ChunkId, Store};
use parking_lot::Mutex;

use crate::memtree::TreeReader;
use crate::tree::{validate_name, Attrs, DirNode, Entry, InodeKind, Timestamp, MAX_PATH_LEN};
pub use datafile::{SharedSpace, OPEN_DATA_FILES};
pub(crate) use file::start_shared_threads;
use file::FileData;
pub use file::{CachedAbove, BLOCK_SIZE};
use journal::{JAttrs, Journal, NewKind, Record};
pub use locks::{LockTable, LockType, PosixLock};
pub use rebase::{Frozen, Rebased};
pub use recovery::RecoveryReport;

/// Reads the upper-layer journal at `path` as recovery does and returns
/// (length of its intact prefix, bytes of torn tail after it). For
/// fuzzing and tools; recovery itself is [`CowFs::recover`].
#[doc(hidden)]
pub fn read_journal(path: &Path) -> std::io::Result<(u64, u64)> {
    journal::read(path).map(|c| (c.valid_len, c.torn_bytes))
}
pub use snapshot::{Capture, Stored};
pub use types::{
    Caller, DirEntryOut, DirEntryRef, Errno, FileKind, FsResult, Ino, MountConfig, RenameFlags,
    SetAttr, Stat, StatFs, TimeSet, XattrMode, DEFAULT_INODE_QUOTA, ROOT_INO,
};

#[derive(Debug)]
enum NodeKind {
    Dir(DirState),
    File(Arc<FileData>),
    Other(InodeKind),
}

#[derive(Debug)]
struct Node {
    attrs: Attrs,
    nlink: u32,
    kind: NodeKind,
    /// Open handles (a file whose last name is removed lives until closed).
    opens: u32,
    /// One current name: (parent, name), or (0, empty) when it has none
    /// (removed while open). Journal records name entries by path, found
    /// through this.
    link: (Ino, Vec<u8>),
    /// Its other names in loaded directories (an inode with several
    /// names): one takes the place of `link` when that name goes.
    more_links: Vec<(Ino, Vec<u8>)>,
}

/// A lower directory's place in the stored tree it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    /// The inode of that tree's root (the mount's root, or a graft).
    root: Ino,
    /// Its path from there (empty for the root itself).
    path: Vec<u8>,
}

#[derive(Debug, Default)]
struct DirState {
    /// A lower directory whose node has not been read yet: its attributes
    /// are placeholders until [`CowFs::ready`] reads it.
    unread: Option<ChunkId>,
    /// The lower directory node this directory was read from: while its
    /// entries are not instantiated (`unread` or `pending`), a snapshot
    /// stores it by this id.
    lower_id: Option<ChunkId>,
    /// Where it came from: its stored tree's root in this mount and its
    /// path in that tree (hard links in a tree name targets by such paths).
    origin: Option<Origin>,
    /// Decoded lower directory whose entries are not instantiated yet.
    pending: Option<Box<DirNode>>,
    /// The node a stored capture wrote for this directory, and that
    /// capture's number: while nothing under it changed since, the next
    /// capture takes this node whole.
    stored: Option<(ChunkId, u64)>,
    /// Whether names of the stored node above are hard links (or
    /// inodes with several names).
    stored_linked: bool,
    /// Whether names of the lower node (`lower_id`) are hard links.
    lower_linked: bool,
    /// Names edited here (boxed: most directories have none).
    edits: Option<Box<Edits>>,
    parent: Ino,
    by_name: BTreeMap<Vec<u8>, (Ino, u64)>,
    by_offset: BTreeMap<u64, Vec<u8>>,
    next_offset: u64,
    subdirs: u32,
}

/// The names of a directory whose entries may differ from its stored
/// node (or, never stored, from its lower node): an incremental capture
/// writes those names alone over that node
/// ([`CowFs::capture_incremental`]).
#[derive(Debug, Default)]
struct Edits {
    /// Each with the number of captures taken before its latest change.
    stamped: BTreeMap<Vec<u8>, u64>,
    /// Names added or removed and not yet stamped (the next mark of the
    /// directory, or capture of it, stamps them).
    unstamped: Vec<Vec<u8>>,
}

/// Readdir offsets 1 and 2 are `.` and `..`.
const FIRST_ENTRY_OFFSET: u64 = 3;

/// The journal's file name in the upper directory.
const JOURNAL_FILE: &str = "journal";

/// The extended attribute that holds a file's capabilities: a write, a
/// truncation or a change of owner drops it, as on a local filesystem.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

impl DirState {
    fn new(parent: Ino) -> DirState {
        DirState {
            parent,
            next_offset: FIRST_ENTRY_OFFSET,
            ..DirState::default()
        }
    }

    fn insert(&mut self, name: Vec<u8>, ino: Ino) {
        let offset = self.next_offset;
        self.next_offset += 1;
        if let Some((_, old)) = self.by_name.insert(name.clone(), (ino, offset)) {
            self.by_offset.remove(&old);
        }
        self.edits().unstamped.push(name.clone());
        self.by_offset.insert(offset, name);
    }

    fn remove(&mut self, name: &[u8]) -> Option<Ino> {
        let (ino, offset) = self.by_name.remove(name)?;
        self.by_offset.remove(&offset);
        self.edits().unstamped.push(name.to_vec());
        Some(ino)
    }

    fn edits(&mut self) -> &mut Edits {
        self.edits.get_or_insert_with(Box::default)
    }

    /// Stamps the names changed here since the last stamp with `now`.
    fn stamp(&mut self, now: u64) {
        if let Some(edits) = &mut self.edits {
            for name in edits.unstamped.drain(..) {
                edits.stamped.insert(name, now);
            }
        }
    }

    /// Records that entry `name` changed at `now`.
    fn edited(&mut self, name: &[u8], now: u64) {
        let edits = self.edits();
        match edits.stamped.get_mut(name) {
            Some(at) => *at = (*at).max(now),
            None => {
                edits.stamped.insert(name.to_vec(), now);
            }
        }
    }

    /// The names edited at or after `since`, in name order.
    fn edited_since(&self, since: u64) -> Vec<Vec<u8>> {
        self.edits.as_ref().map_or_else(Vec::new, |edits| {
            edits
                .stamped
                .iter()
                .filter(|(_, at)| **at >= since)
                .map(|(name, _)| name.clone())
                .collect()
        })
    }

    /// Forgets the edits stamped before `generation` (a capture of that
    /// number wrote them).
    fn forget_edits_before(&mut self, generation: u64) {
        if let Some(edits) = &mut self.edits {
            edits.stamped.retain(|_, at| *at >= generation);
            if edits.stamped.is_empty() && edits.unstamped.is_empty() {
                self.edits = None;
            }
        }
    }

    fn get(&self, name: &[u8]) -> Option<Ino> {
        self.by_name.get(name).map(|(ino, _)| *ino)
    }
}

#[derive(Default)]
struct State {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    /// The inodes the sandbox made that exist (counted against the inode
    /// quota).
    made: std::collections::HashSet<Ino>,
    /// Inode of each lower inode with several names, by its tree's root
    /// and its first path there, once instantiated.
    lower_paths: HashMap<(Ino, Vec<u8>), Ino>,
    /// Lower directories by origin, once instantiated (hard-link targets
    /// are found through these even after renames).
    lower_dirs: HashMap<(Ino, Vec<u8>), Ino>,
    /// The stored tree of each tree root (the mount's root, grafts).
    tree_roots: HashMap<Ino, ChunkId>,
    /// Directories whose subtree changed since the mount began (a changed
    /// node marks its directory and every ancestor), each with the number
    /// of captures taken before its latest change: a capture stores a
    /// loaded directory never marked by its lower id, and one unchanged
    /// since the capture that stored it by that stored node's id — either
    /// way without a walk.
    changed: HashMap<Ino, u64>,
    /// Something changed that several directories show (an inode with
    /// several names), or the mount was recovered, after this many
    /// captures: the next capture walks every loaded directory.
    all_changed_at: Option<u64>,
    /// Captures taken of this mount.
    captures: u64,
    /// A non-directory with several names has existed in this mount
    /// (never cleared): incremental captures then walk whole directories.
    multi_named: bool,
}

impl State {
    /// Removes an inode that is gone (no name, not open).
    fn remove_node(&mut self, ino: Ino) -> Option<Node> {
        self.made.remove(&ino);
        self.nodes.remove(&ino)
    }
}

/// A copy-on-write filesystem: one mount's view.
pub struct CowFs {
    store: Store,
    /// The tree the mount shows under its upper layer (moved by
    /// [`CowFs::rebase`]).
    lower: Mutex<ChunkId>,
    data_dir: PathBuf,
    quota: u64,
    inode_quota: u64,
    files: Arc<datafile::MountFiles>,
    state: Mutex<State>,
    locks: Mutex<LockTable>,
    /// This session's number: data files it creates are `EPOCH-INO`.
    epoch: u64,
    /// Numbers the further data files of this session (after seals).
    file_seq: AtomicU64,
    /// Incremental captures are taken of this mount: a write marks its
    /// file changed before it changes the data too, so that a capture
    /// racing the write finds the file among the edited names (and seals
    /// what a whole capture, replayed by recovery, would).
    incremental: std::sync::atomic::AtomicBool,
    /// The metadata journal (absent while a recovery replays it).
    journal: OnceLock<Journal>,
}

/// The time file times are stamped with: the kernel's tick-grained clock
/// (`CLOCK_REALTIME_COARSE`), as the kernel stamps its own files. Within a
/// tick, successive writes leave a file's mtime as it is, so an in-place
/// `fsync` rarely has a new mtime to make durable (see `sync_file`).
fn now() -> Timestamp {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives on the stack.
    let coarse = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0;
    match coarse.then(|| Timestamp::new(ts.tv_sec, ts.tv_nsec as u32)) {
        Some(Some(t)) => t,
        _ => Timestamp::now(),
    }
}

fn kind_of(kind: &NodeKind) -> FileKind {
    match kind {
        NodeKind::Dir(_) => FileKind::Dir,
        NodeKind::File(_) => FileKind::File,
        NodeKind::Other(InodeKind::Symlink { .. }) => FileKind::Symlink,
        NodeKind::Other(InodeKind::CharDevice { .. }) => FileKind::CharDevice,
        NodeKind::Other(InodeKind::BlockDevice { .. }) => FileKind::BlockDevice,
        NodeKind::Other(InodeKind::Fifo) => FileKind::Fifo,
        NodeKind::Other(InodeKind::Socket) => FileKind::Socket,
        NodeKind::Other(InodeKind::File { .. }) => FileKind::File,
    }
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > crate::tree::MAX_NAME_LEN {
        return Err(Errno::ENAMETOOLONG);
    }
    validate_name(name).map_err(|_| Errno::EINVAL)
}

impl CowFs {
    /// A mount of tree `lower` with an empty upper layer in
    /// `config.upper_dir`. Reads only the root directory node.
    pub fn new(store: Store, lower: ChunkId, config: MountConfig) -> crate::Result<CowFs> {
        Self::prepare_upper(&config)?;
        let fs = CowFs::unjournaled(store, lower, &config, 1)?;
        fs.start_journal(&config)?;
        Ok(fs)
    }

    /// Checks that a new mount's upper directory is empty and makes its
    /// data directory.
    fn prepare_upper(config: &MountConfig) -> crate::Result<()> {
        let data_dir = config.upper_dir.join("data");
        if config.upper_dir.exists()
            && fs::read_dir(&config.upper_dir)
                .map_err(|e| crate::Error::io("reading the upper directory", e))?
                .next()
                .is_some()
        {
            return Err(crate::Error::BadPath {
                path: config.upper_dir.display().to_string(),
                reason: "the upper directory of a new mount must be empty".into(),
            });
        }
        fs::create_dir_all(&data_dir)
            .map_err(|e| crate::Error::io(format!("creating {}", data_dir.display()), e))
    }

    /// Creates a new mount's journal and attaches it.
    fn start_journal(&self, config: &MountConfig) -> crate::Result<()> {
        let journal_path = config.upper_dir.join(JOURNAL_FILE);
        let journal = Journal::create(&journal_path)
            .map_err(|e| crate::Error::io(format!("creating {}", journal_path.display()), e))?;
        journal.append(&Record::Epoch(self.epoch));
        let _ = self.journal.set(journal);
        Ok(())
    }

    /// The in-memory part of a mount, with no journal attached yet.
    fn unjournaled(
        store: Store,
        lower: ChunkId,
        config: &MountConfig,
        epoch: u64,
    ) -> crate::Result<CowFs> {
        let root = TreeReader::new(&store).dir(lower)?;
        // Its link count counts its subdirectories, as every directory's.
        let subdirs = TreeReader::new(&store)
            .entries(&root)?
            .iter()
            .filter(|(_, e)| matches!(e, crate::tree::Entry::Dir(_)))
            .count();
        let mut dir = DirState::new(ROOT_INO);
        let attrs = root.attrs.clone();
        dir.pending = Some(Box::new(root));
        dir.lower_id = Some(lower);
        dir.origin = Some(Origin {
            root: ROOT_INO,
            path: Vec::new(),
        });
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                attrs,
                nlink: 2 + subdirs as u32,
                kind: NodeKind::Dir(dir),
                opens: 0,
                link: (0, Vec::new()),
                more_links: Vec::new(),
            },
        );
        let state = State {
            nodes,
            next_ino: ROOT_INO + 1,
            lower_paths: HashMap::new(),
            lower_dirs: HashMap::from([((ROOT_INO, Vec::new()), ROOT_INO)]),
            tree_roots: HashMap::from([(ROOT_INO, lower)]),
            ..State::default()
        };
        Ok(CowFs::with_state(store, lower, config, epoch, state))
    }

    fn with_state(
        store: Store,
        lower: ChunkId,
        config: &MountConfig,
        epoch: u64,
        state: State,
    ) -> CowFs {
        CowFs {
            store,
            lower: Mutex::new(lower),
            data_dir: config.upper_dir.join("data"),
            quota: config.quota_bytes,
            inode_quota: config.inode_quota,
            files: Arc::default(),
            state: Mutex::new(state),
            locks: Mutex::new(LockTable::default()),
            epoch,
            file_seq: AtomicU64::new(1),
            incremental: std::sync::atomic::AtomicBool::new(false),
            journal: OnceLock::new(),
        }
    }

    /// The lower tree.
    pub fn lower(&self) -> ChunkId {
        *self.lower.lock()
    }

    /// Bytes the upper layer holds.
    pub fn used_bytes(&self) -> u64 {
        self.files.used()
    }

    /// Makes the mount draw on `space` besides its own quota (the
    /// sessions of a volume share the volume's quota): what it holds now
    /// is charged to `space`, and so is every later change. Call before
    /// the mount serves; false (and nothing changed) if it already draws
    /// on a space.
    pub fn share_space(&self, space: Arc<SharedSpace>) -> bool {
        self.files.share(space)
    }

    /// Inodes the sandbox made that exist (counted against the inode
    /// quota).
    pub fn inodes_made(&self) -> u64 {
        self.state.lock().made.len() as u64
    }

    /// Upper data files this mount holds open now (at most about
    /// [`OPEN_DATA_FILES`]).
    pub fn open_data_files(&self) -> usize {
        self.files.open_descriptors()
    }

    fn eio(&self, err: impl std::fmt::Display) -> Errno {
        tracing::error!(lower = %self.lower(), "{err}");
        Errno::EIO
    }

    /// The upper layer's directory for file data.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}
