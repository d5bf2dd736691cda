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

mod datafile;
mod file;
mod journal;
pub mod locks;
mod recovery;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cas::{ChunkId, Store};
use parking_lot::Mutex;

use crate::memtree::TreeReader;
use crate::tree::{validate_name, Attrs, DirNode, Entry, InodeKind, Timestamp, MAX_PATH_LEN};
pub use datafile::OPEN_DATA_FILES;
use file::FileData;
pub use file::BLOCK_SIZE;
use journal::{JAttrs, Journal, NewKind, Record};
pub use locks::{LockTable, LockType, PosixLock};
pub use recovery::RecoveryReport;

/// Reads the upper-layer journal at `path` as recovery does and returns
/// (length of its intact prefix, bytes of torn tail after it). For
/// fuzzing and tools; recovery itself is [`CowFs::recover`].
#[doc(hidden)]
pub fn read_journal(path: &Path) -> std::io::Result<(u64, u64)> {
    journal::read(path).map(|c| (c.valid_len, c.torn_bytes))
}
pub use snapshot::{Capture, Stored};

/// An inode number. The root is [`ROOT_INO`].
pub type Ino = u64;
/// The root directory's inode number (as FUSE expects).
pub const ROOT_INO: Ino = 1;

/// An operation's failure, as an errno value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
}

/// Result of an inode operation.
pub type FsResult<T> = std::result::Result<T, Errno>;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// An inode's attributes, as `stat` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u64,
}

/// Who is asking: the owner new inodes get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// Attribute changes (`chmod`, `chown`, `truncate`, `utimensat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// Flags of `rename`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with EEXIST if the target exists.
    pub noreplace: bool,
    /// Swap the two names atomically.
    pub exchange: bool,
}

/// One directory entry as [`CowFs::readdir_each`] lends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntryRef<'a> {
    /// Offset to resume after this entry.
    pub offset: u64,
    pub ino: Ino,
    pub kind: FileKind,
    pub name: &'a [u8],
}

/// One directory entry returned by [`CowFs::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryOut {
    /// Offset to resume after this entry; stable while the directory changes.
    pub offset: u64,
    pub ino: Ino,
    pub kind: FileKind,
    pub name: Vec<u8>,
}

/// Filesystem-wide figures for `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// How a mount is set up.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Directory for the upper layer (created; must be empty if it exists).
    pub upper_dir: PathBuf,
    /// Most bytes the upper layer may hold.
    pub quota_bytes: u64,
    /// Most inodes the sandbox may make (files, directories, symlinks,
    /// device nodes; the image's own are not counted): past it, making
    /// one fails with ENOSPC, as on a filesystem out of inodes. It bounds
    /// the inodes the daemon holds for the mount, with the image's.
    pub inode_quota: u64,
}

/// The inode quota a mount gets unless told otherwise (ext4 on a 16 GiB
/// disk has as many).
pub const DEFAULT_INODE_QUOTA: u64 = 1 << 20;

/// `setxattr` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    Set,
    /// Fail with EEXIST if present.
    Create,
    /// Fail with ENODATA if absent.
    Replace,
}

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
    parent: Ino,
    by_name: BTreeMap<Vec<u8>, (Ino, u64)>,
    by_offset: BTreeMap<u64, Vec<u8>>,
    next_offset: u64,
    subdirs: u32,
}

/// Readdir offsets 1 and 2 are `.` and `..`.
const FIRST_ENTRY_OFFSET: u64 = 3;

/// The journal's file name in the upper directory.
const JOURNAL_FILE: &str = "journal";

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
        self.by_offset.insert(offset, name);
    }

    fn remove(&mut self, name: &[u8]) -> Option<Ino> {
        let (ino, offset) = self.by_name.remove(name)?;
        self.by_offset.remove(&offset);
        Some(ino)
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
    lower: ChunkId,
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
        _ => {
            let d = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            }
        }
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
                nlink: 2,
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
            lower,
            data_dir: config.upper_dir.join("data"),
            quota: config.quota_bytes,
            inode_quota: config.inode_quota,
            files: Arc::default(),
            state: Mutex::new(state),
            locks: Mutex::new(LockTable::default()),
            epoch,
            file_seq: AtomicU64::new(1),
            journal: OnceLock::new(),
        }
    }

    /// The lower tree.
    pub fn lower(&self) -> ChunkId {
        self.lower
    }

    /// Bytes the upper layer holds.
    pub fn used_bytes(&self) -> u64 {
        self.files.used.load(Ordering::Relaxed)
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
        tracing::error!(lower = %self.lower, "{err}");
        Errno::EIO
    }

    // ------------------------------------------------------------ loading

    /// Reads the node of lower directory `ino` if only its id is known yet,
    /// filling in its attributes. Every operation calls this for the
    /// inodes it is given before it reads or changes their attributes, so
    /// listing a directory costs one read, not one per subdirectory.
    fn ready(&self, st: &mut State, ino: Ino) -> FsResult<()> {
        let unread = match st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(dir)) => dir.unread.take(),
            Some(_) => return Ok(()),
            None => return Err(Errno::ENOENT),
        };
        let Some(id) = unread else {
            return Ok(());
        };
        let node = match TreeReader::new(&self.store).dir(id) {
            Ok(node) => node,
            Err(e) => {
                if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                    dir.unread = Some(id);
                }
                return Err(self.eio(e));
            }
        };
        // Its link count (2 + subdirectories) is known once its entries
        // are: a large directory's pages are read here.
        let subdirs = match self.subdirs_of(&node) {
            Ok(n) => n,
            Err(e) => {
                if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                    dir.unread = Some(id);
                }
                return Err(e);
            }
        };
        if let Some(n) = st.nodes.get_mut(&ino) {
            n.nlink = 2 + subdirs as u32;
            n.attrs = node.attrs.clone();
            if let NodeKind::Dir(dir) = &mut n.kind {
                dir.pending = Some(Box::new(node));
            }
        }
        Ok(())
    }

    /// How many subdirectories a stored directory has (a large directory's
    /// pages are read).
    fn subdirs_of(&self, node: &DirNode) -> FsResult<usize> {
        let count = |entries: &[(Vec<u8>, Entry)]| {
            entries
                .iter()
                .filter(|(_, e)| matches!(e, Entry::Dir(_)))
                .count()
        };
        match &node.layout {
            crate::tree::DirLayout::Inline(entries) => Ok(count(entries)),
            crate::tree::DirLayout::Pages(_) => TreeReader::new(&self.store)
                .entries(node)
                .map(|entries| count(&entries))
                .map_err(|e| self.eio(e)),
        }
    }

    /// Instantiates the entries of lower directory `ino` if not done yet.
    fn load_dir(&self, st: &mut State, ino: Ino) -> FsResult<()> {
        self.ready(st, ino)?;
        let pending = match st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(dir)) => dir.pending.take(),
            Some(_) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        };
        let Some(pending) = pending else {
            return Ok(());
        };
        let reader = TreeReader::new(&self.store);
        let entries = reader.entries(&pending).map_err(|e| self.eio(e))?;
        // A directory with no origin is a stored subtree without hard
        // links (a capture took it whole): nothing in it is registered
        // for hard-link resolution.
        let origin = match st.nodes.get(&ino).map(|n| &n.kind) {
            Some(NodeKind::Dir(dir)) => dir.origin.clone(),
            _ => None,
        };
        let child_origin = |name: &[u8]| {
            origin.as_ref().map(|origin| {
                let mut path = origin.path.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                (origin.root, path)
            })
        };
        for (name, entry) in entries {
            let child = match entry {
                Entry::Dir(id) => {
                    let mut dir = DirState::new(ino);
                    dir.unread = Some(id);
                    dir.lower_id = Some(id);
                    if let Some((root, path)) = child_origin(&name) {
                        st.lower_dirs.insert((root, path.clone()), st.next_ino);
                        dir.origin = Some(Origin { root, path });
                    }
                    let child = self.add_node(
                        st,
                        Attrs::default(),
                        2,
                        NodeKind::Dir(dir),
                        (ino, name.clone()),
                    );
                    if let Some(NodeKind::Dir(parent)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind)
                    {
                        parent.subdirs += 1;
                    }
                    child
                }
                Entry::Inode(inode) => {
                    let kind = match inode.kind {
                        InodeKind::File { size, blob } => {
                            NodeKind::File(Arc::new(FileData::lower(
                                size,
                                blob,
                                self.data_dir.clone(),
                                self.data_name_for(st.next_ino),
                                self.files.clone(),
                            )))
                        }
                        other => NodeKind::Other(other),
                    };
                    let child =
                        self.add_node(st, inode.attrs, inode.nlink, kind, (ino, name.clone()));
                    if inode.nlink > 1 {
                        if let Some(key) = child_origin(&name) {
                            st.lower_paths.insert(key, child);
                        }
                    }
                    child
                }
                Entry::HardLink { target } => {
                    let Some(root) = origin.as_ref().map(|o| o.root) else {
                        return Err(self.eio(format!(
                            "hard link to {} in a directory taken whole by a capture",
                            String::from_utf8_lossy(&target)
                        )));
                    };
                    let target = match st.lower_paths.get(&(root, target.clone())) {
                        Some(&ino) => ino,
                        None => {
                            // The target's directory has not been loaded
                            // yet: walk to it.
                            self.resolve_lower(st, root, &target)?
                        }
                    };
                    self.add_name(st, target, ino, &name);
                    target
                }
            };
            if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                dir.insert(name, child);
            }
        }
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.nlink = 2 + match &node.kind {
                NodeKind::Dir(d) => d.subdirs,
                _ => 0,
            };
        }
        Ok(())
    }

    /// Finds a lower hard-link target by its path in the tree rooted at
    /// `root`: through the directories of that path as they came from the
    /// tree (wherever they are now), loading them as needed.
    fn resolve_lower(&self, st: &mut State, root: Ino, path: &[u8]) -> FsResult<Ino> {
        let missing = |fs: &Self| {
            fs.eio(format!(
                "hard-link target {} missing",
                String::from_utf8_lossy(path)
            ))
        };
        let (dir_path, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        let mut at = root;
        let mut prefix: Vec<u8> = Vec::new();
        for part in dir_path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(part);
            at = match st.lower_dirs.get(&(root, prefix.clone())) {
                Some(&ino) if st.nodes.contains_key(&ino) => ino,
                _ => {
                    self.load_dir(st, at)?;
                    match st.lower_dirs.get(&(root, prefix.clone())) {
                        Some(&ino) if st.nodes.contains_key(&ino) => ino,
                        _ => return Err(missing(self)),
                    }
                }
            };
        }
        self.load_dir(st, at)?;
        if let Some(&ino) = st.lower_paths.get(&(root, path.to_vec())) {
            if st.nodes.contains_key(&ino) {
                return Ok(ino);
            }
        }
        self.dir_mut(st, at)?.get(name).ok_or_else(|| missing(self))
    }

    /// The name of `ino`'s first upper data file in this session.
    fn data_name_for(&self, ino: Ino) -> String {
        format!("{}-{ino}", self.epoch)
    }

    fn add_node(
        &self,
        st: &mut State,
        attrs: Attrs,
        nlink: u32,
        kind: NodeKind,
        link: (Ino, Vec<u8>),
    ) -> Ino {
        let ino = st.next_ino;
        st.next_ino += 1;
        st.nodes.insert(
            ino,
            Node {
                attrs,
                nlink,
                kind,
                opens: 0,
                link,
                more_links: Vec::new(),
            },
        );
        ino
    }

    // ------------------------------------------------------------ journal

    fn log(&self, record: Record) {
        if let Some(journal) = self.journal.get() {
            journal.append(&record);
        }
    }

    fn journaling(&self) -> bool {
        self.journal.get().is_some()
    }

    /// The current path of `ino` from the root (`Some(empty)` for the
    /// root), or `None` when it has no name (removed but open).
    fn path_of(&self, st: &State, ino: Ino) -> Option<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = ino;
        let mut steps = 0;
        while at != ROOT_INO {
            let node = st.nodes.get(&at)?;
            let (parent, name) = match (&node.link, node.more_links.first()) {
                ((0, _), Some((parent, name))) => (*parent, name.as_slice()),
                ((0, _), None) => return None,
                ((parent, name), _) => (*parent, name.as_slice()),
            };
            parts.push(name);
            at = parent;
            steps += 1;
            if steps > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts.join(&b'/'))
    }

    /// Records that `ino` has a further name, `name` in `parent`.
    fn add_name(&self, st: &mut State, ino: Ino, parent: Ino, name: &[u8]) {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return;
        };
        let known = |(p, n): &(Ino, Vec<u8>)| *p == parent && n == name;
        if node.link.0 == 0 {
            node.link = (parent, name.to_vec());
        } else if !known(&node.link) && !node.more_links.iter().any(known) {
            node.more_links.push((parent, name.to_vec()));
        }
    }

    /// Records that `ino`'s name `name` in `parent` is gone.
    fn remove_name(&self, st: &mut State, ino: Ino, parent: Ino, name: &[u8]) {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return;
        };
        if node.link.0 == parent && node.link.1 == name {
            node.link = node.more_links.pop().unwrap_or((0, Vec::new()));
        } else {
            node.more_links
                .retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// Records that `ino`'s name `from` is now `to` (a rename).
    fn move_name(&self, st: &mut State, ino: Ino, from: (Ino, &[u8]), to: (Ino, &[u8])) {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return;
        };
        let to = (to.0, to.1.to_vec());
        if node.link.0 == from.0 && node.link.1 == from.1 {
            node.link = to;
        } else if let Some(other) = node
            .more_links
            .iter_mut()
            .find(|(p, n)| *p == from.0 && n == from.1)
        {
            *other = to;
        } else {
            node.link = to;
        }
    }

    fn child_path(&self, st: &State, parent: Ino, name: &[u8]) -> Option<Vec<u8>> {
        let mut path = self.path_of(st, parent)?;
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        Some(path)
    }

    /// Journals `ino`'s attributes.
    fn log_attrs(&self, st: &State, ino: Ino) {
        if !self.journaling() {
            return;
        }
        if let (Some(path), Some(node)) = (self.path_of(st, ino), st.nodes.get(&ino)) {
            self.log(Record::Attrs {
                path,
                attrs: JAttrs::from(&node.attrs),
            });
        }
    }

    /// Journals a file's contents layout (and attributes).
    fn log_data(&self, st: &State, ino: Ino) {
        if !self.journaling() {
            return;
        }
        let Some(node) = st.nodes.get(&ino) else {
            return;
        };
        let NodeKind::File(data) = &node.kind else {
            return;
        };
        data.take_dirty();
        let Some(path) = self.path_of(st, ino) else {
            return;
        };
        let (size, lower_limit, present) = data.layout();
        self.log(Record::FileState {
            path,
            file: data.file_name(),
            base: file::journal_base(&data.base(), &self.data_dir),
            size,
            lower_limit,
            present,
            attrs: JAttrs::from(&node.attrs),
        });
    }

    /// Makes everything journaled so far durable.
    /// Registers a data file cut shorter, to be synced before the journal
    /// records its new size durably.
    fn sync_before_journal(&self, file: Arc<datafile::DataFile>) {
        if let Some(journal) = self.journal.get() {
            journal.sync_first(file);
        }
    }

    fn sync_journal(&self) -> FsResult<()> {
        match self.journal.get() {
            Some(journal) => journal.sync().map_err(|e| self.eio(e)),
            None => Ok(()),
        }
    }

    fn node<'s>(&self, st: &'s State, ino: Ino) -> FsResult<&'s Node> {
        st.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn stat_of(&self, st: &State, ino: Ino) -> FsResult<Stat> {
        let node = self.node(st, ino)?;
        let (size, rdev) = match &node.kind {
            NodeKind::File(data) => (data.size(), 0),
            NodeKind::Dir(_) => (4096, 0),
            NodeKind::Other(InodeKind::Symlink { target }) => (target.len() as u64, 0),
            NodeKind::Other(InodeKind::CharDevice { rdev })
            | NodeKind::Other(InodeKind::BlockDevice { rdev }) => (0, *rdev),
            NodeKind::Other(_) => (0, 0),
        };
        Ok(Stat {
            ino,
            kind: kind_of(&node.kind),
            perm: node.attrs.mode & 0o7777,
            nlink: node.nlink,
            uid: node.attrs.uid,
            gid: node.attrs.gid,
            size,
            blocks: size.div_ceil(512),
            atime: node.attrs.atime,
            mtime: node.attrs.mtime,
            ctime: node.attrs.ctime,
            rdev,
        })
    }

    fn dir_mut<'s>(&self, st: &'s mut State, ino: Ino) -> FsResult<&'s mut DirState> {
        match st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(dir)) => Ok(dir),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn child(&self, st: &mut State, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
        self.load_dir(st, parent)?;
        Ok(self.dir_mut(st, parent)?.get(name))
    }

    fn touch_dir_at(&self, st: &mut State, ino: Ino, t: Timestamp) {
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.attrs.mtime = t;
            node.attrs.ctime = t;
        }
        self.mark_changed(st, ino);
    }

    /// Records that `ino` changed: its directory (itself, for a directory)
    /// and every ancestor are marked. An inode with several names marks
    /// the whole mount (its other directories are not known here).
    fn mark_changed(&self, st: &mut State, ino: Ino) {
        let Some(node) = st.nodes.get(&ino) else {
            return;
        };
        let mut at = match &node.kind {
            NodeKind::Dir(_) => ino,
            _ if node.nlink > 1 || node.link.0 == 0 => {
                st.all_changed_at = Some(st.captures);
                return;
            }
            _ => node.link.0,
        };
        let now = st.captures;
        for _ in 0..=MAX_PATH_LEN {
            // A directory marked since the last capture has its ancestors
            // marked too.
            if st.changed.insert(at, now) == Some(now) || at == ROOT_INO {
                return;
            }
            at = match st.nodes.get(&at).map(|n| &n.kind) {
                Some(NodeKind::Dir(dir)) => dir.parent,
                _ => return,
            };
        }
    }

    // ---------------------------------------------------------- operations

    /// Finds `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Stat> {
        if name.len() > crate::tree::MAX_NAME_LEN {
            return Err(Errno::ENAMETOOLONG);
        }
        let mut st = self.state.lock();
        let ino = match name {
            b"." => parent,
            b".." => self.dir_mut(&mut st, parent)?.parent,
            _ => self.child(&mut st, parent, name)?.ok_or(Errno::ENOENT)?,
        };
        self.ready(&mut st, ino)?;
        self.stat_of(&st, ino)
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> FsResult<Stat> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        self.stat_of(&st, ino)
    }

    /// Changes attributes; a size change truncates or extends (zeros).
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Stat> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        let t = now();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if let Some(size) = set.size {
            match &node.kind {
                NodeKind::File(data) => {
                    if let Some(shrunk) = data.truncate(size)? {
                        self.sync_before_journal(shrunk);
                    }
                    node.attrs.mtime = t;
                }
                NodeKind::Dir(_) => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
        }
        if let Some(mode) = set.mode {
            node.attrs.mode = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            node.attrs.uid = uid;
        }
        if let Some(gid) = set.gid {
            node.attrs.gid = gid;
        }
        if set.uid.is_some() || set.gid.is_some() {
            // chown clears setuid, and setgid on group-executable files.
            if !matches!(node.kind, NodeKind::Dir(_)) {
                node.attrs.mode &= !0o4000;
                if node.attrs.mode & 0o010 != 0 {
                    node.attrs.mode &= !0o2000;
                }
            }
        }
        let resolve = |s: TimeSet| match s {
            TimeSet::Now => t,
            TimeSet::At(at) => at,
        };
        if let Some(a) = set.atime {
            node.attrs.atime = resolve(a);
        }
        if let Some(m) = set.mtime {
            node.attrs.mtime = resolve(m);
        }
        node.attrs.ctime = t;
        if let NodeKind::File(data) = &node.kind {
            if set.size.is_some() || set.mtime.is_some() {
                // Recovery adopts a data file's mtime that is newer than
                // the journal's: the data file must not keep an earlier
                // write's (or the truncation's own) time.
                data.set_upper_mtime(node.attrs.mtime);
            }
        }
        self.mark_changed(&mut st, ino);
        if set.size.is_some() {
            self.log_data(&st, ino);
        } else {
            self.log_attrs(&st, ino);
        }
        self.stat_of(&st, ino)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let st = self.state.lock();
        match &self.node(&st, ino)?.kind {
            NodeKind::Other(InodeKind::Symlink { target }) => Ok(target.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn new_attrs(
        &self,
        st: &State,
        parent: Ino,
        mode: u32,
        caller: Caller,
        is_dir: bool,
    ) -> FsResult<Attrs> {
        let parent_attrs = &self.node(st, parent)?.attrs;
        let mut mode = mode & 0o7777;
        let mut gid = caller.gid;
        if parent_attrs.mode & 0o2000 != 0 {
            gid = parent_attrs.gid;
            if is_dir {
                mode |= 0o2000;
            }
        }
        let t = now();
        Ok(Attrs {
            mode,
            uid: caller.uid,
            gid,
            atime: t,
            mtime: t,
            ctime: t,
            xattrs: BTreeMap::new(),
        })
    }

    fn create_node(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        caller: Caller,
        make: impl FnOnce(&Self, Ino) -> NodeKind,
    ) -> FsResult<Stat> {
        check_name(name)?;
        let mut st = self.state.lock();
        if self.child(&mut st, parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        // A recovery replays what was made within the quota then.
        if self.journaling() && st.made.len() as u64 >= self.inode_quota {
            return Err(Errno::ENOSPC);
        }
        let ino = st.next_ino;
        let kind = make(self, ino);
        let is_dir = matches!(kind, NodeKind::Dir(_));
        let attrs = self.new_attrs(&st, parent, mode, caller, is_dir)?;
        let t = attrs.ctime;
        let record = self.journaling().then(|| {
            let kind = match &kind {
                NodeKind::File(data) => NewKind::File {
                    file: data.file_name(),
                },
                NodeKind::Dir(_) => NewKind::Dir,
                NodeKind::Other(InodeKind::Symlink { target }) => NewKind::Symlink {
                    target: target.clone(),
                },
                NodeKind::Other(InodeKind::CharDevice { rdev }) => {
                    NewKind::CharDevice { rdev: *rdev }
                }
                NodeKind::Other(InodeKind::BlockDevice { rdev }) => {
                    NewKind::BlockDevice { rdev: *rdev }
                }
                NodeKind::Other(InodeKind::Socket) => NewKind::Socket,
                NodeKind::Other(_) => NewKind::Fifo,
            };
            (kind, JAttrs::from(&attrs))
        });
        let new = self.add_node(
            &mut st,
            attrs,
            if is_dir { 2 } else { 1 },
            kind,
            (parent, name.to_vec()),
        );
        debug_assert_eq!(new, ino);
        st.made.insert(ino);
        let dir = self.dir_mut(&mut st, parent)?;
        dir.insert(name.to_vec(), ino);
        if is_dir {
            dir.subdirs += 1;
            if let Some(p) = st.nodes.get_mut(&parent) {
                p.nlink += 1;
            }
        }
        self.touch_dir_at(&mut st, parent, t);
        if let (Some((kind, attrs)), Some(path)) = (record, self.child_path(&st, parent, name)) {
            self.log(Record::Create { path, kind, attrs });
        }
        self.stat_of(&st, ino)
    }

    /// Creates a regular file (and counts it open).
    pub fn create(&self, parent: Ino, name: &[u8], mode: u32, caller: Caller) -> FsResult<Stat> {
        let stat = self.create_node(parent, name, mode, caller, |fs, ino| {
            NodeKind::File(Arc::new(FileData::empty(
                fs.data_dir.clone(),
                fs.data_name_for(ino),
                fs.files.clone(),
            )))
        })?;
        self.open(stat.ino, false)?;
        Ok(stat)
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, caller: Caller) -> FsResult<Stat> {
        self.create_node(parent, name, mode, caller, |_, _| {
            NodeKind::Dir(DirState::new(parent))
        })
    }

    /// Creates a device node, fifo, socket or empty regular file.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> FsResult<Stat> {
        let inode = match kind {
            FileKind::CharDevice => InodeKind::CharDevice { rdev },
            FileKind::BlockDevice => InodeKind::BlockDevice { rdev },
            FileKind::Fifo => InodeKind::Fifo,
            FileKind::Socket => InodeKind::Socket,
            FileKind::File => {
                return self.create_node(parent, name, mode, caller, |fs, ino| {
                    NodeKind::File(Arc::new(FileData::empty(
                        fs.data_dir.clone(),
                        fs.data_name_for(ino),
                        fs.files.clone(),
                    )))
                })
            }
            _ => return Err(Errno::EINVAL),
        };
        self.create_node(parent, name, mode, caller, |_, _| NodeKind::Other(inode))
    }

    /// Creates a symlink.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> FsResult<Stat> {
        if target.is_empty() || target.contains(&0) {
            return Err(Errno::EINVAL);
        }
        if target.len() > MAX_PATH_LEN {
            return Err(Errno::ENAMETOOLONG);
        }
        let target = target.to_vec();
        self.create_node(parent, name, 0o777, caller, |_, _| {
            NodeKind::Other(InodeKind::Symlink { target })
        })
    }

    /// Gives `ino` a further name.
    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> FsResult<Stat> {
        check_name(name)?;
        let mut st = self.state.lock();
        if matches!(self.node(&st, ino)?.kind, NodeKind::Dir(_)) {
            return Err(Errno::EPERM);
        }
        if self.child(&mut st, parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let from = self.path_of(&st, ino);
        let t = now();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if node.nlink >= 65_000 {
            return Err(Errno::EMLINK);
        }
        node.nlink += 1;
        node.attrs.ctime = t;
        // Its first name's entry shows the new count too.
        st.all_changed_at = Some(st.captures);
        self.add_name(&mut st, ino, parent, name);
        self.dir_mut(&mut st, parent)?.insert(name.to_vec(), ino);
        self.touch_dir_at(&mut st, parent, t);
        if let (Some(from), Some(to)) = (from, self.child_path(&st, parent, name)) {
            self.log(Record::Link {
                from,
                to,
                time: t.into(),
            });
        }
        self.stat_of(&st, ino)
    }

    /// Removes one link of `ino`, whose name `name` in `parent` is already
    /// gone from the directory.
    fn drop_link(&self, st: &mut State, ino: Ino, parent: Ino, name: &[u8], t: Timestamp) {
        let mut gone = None;
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.nlink = node.nlink.saturating_sub(1);
            node.attrs.ctime = t;
            if node.nlink > 0 {
                // Its other names' entries show the new count.
                st.all_changed_at = Some(st.captures);
            }
            let gone_now = node.nlink == 0 && node.opens == 0;
            self.remove_name(st, ino, parent, name);
            if gone_now {
                gone = st.remove_node(ino);
            }
        }
        if let Some(node) = gone {
            self.locks.lock().forget(ino);
            if let NodeKind::File(data) = node.kind {
                data.discard();
            }
        }
    }

    /// Removes a non-directory name.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        let ino = self.child(&mut st, parent, name)?.ok_or(Errno::ENOENT)?;
        if matches!(self.node(&st, ino)?.kind, NodeKind::Dir(_)) {
            return Err(Errno::EISDIR);
        }
        let path = self.child_path(&st, parent, name);
        let t = now();
        self.dir_mut(&mut st, parent)?.remove(name);
        self.touch_dir_at(&mut st, parent, t);
        self.drop_link(&mut st, ino, parent, name, t);
        if let Some(path) = path {
            self.log(Record::Remove {
                path,
                time: t.into(),
            });
        }
        Ok(())
    }

    /// Places stored tree `tree` at `path` as a directory of this mount
    /// (copy-on-write like the rest: changes stay in the upper layer). The
    /// parent must exist; `path` must be absent or an empty directory,
    /// which it replaces. Returns the parent's inode and the new one.
    pub fn graft(&self, path: &[u8], tree: ChunkId) -> FsResult<(Ino, Ino)> {
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty())
            .collect();
        let (name, dirs) = parts.split_last().ok_or(Errno::EINVAL)?;
        check_name(name)?;
        let root = TreeReader::new(&self.store)
            .dir(tree)
            .map_err(|e| self.eio(e))?;
        let mut parent = ROOT_INO;
        {
            let mut st = self.state.lock();
            for part in dirs {
                parent = self.child(&mut st, parent, part)?.ok_or(Errno::ENOENT)?;
            }
            if !matches!(self.node(&st, parent)?.kind, NodeKind::Dir(_)) {
                return Err(Errno::ENOTDIR);
            }
        }
        match self.rmdir(parent, name) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::ENOTDIR) => return Err(Errno::EEXIST),
            Err(e) => return Err(e),
        }
        let mut st = self.state.lock();
        if self.child(&mut st, parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let mut dir = DirState::new(parent);
        dir.unread = Some(tree);
        dir.lower_id = Some(tree);
        let ino = st.next_ino;
        dir.origin = Some(Origin {
            root: ino,
            path: Vec::new(),
        });
        st.lower_dirs.insert((ino, Vec::new()), ino);
        st.tree_roots.insert(ino, tree);
        let t = now();
        let added = self.add_node(
            &mut st,
            root.attrs,
            2,
            NodeKind::Dir(dir),
            (parent, name.to_vec()),
        );
        debug_assert_eq!(added, ino);
        let pdir = self.dir_mut(&mut st, parent)?;
        pdir.insert(name.to_vec(), ino);
        pdir.subdirs += 1;
        if let Some(p) = st.nodes.get_mut(&parent) {
            p.nlink += 1;
        }
        self.touch_dir_at(&mut st, parent, t);
        // Attributes and link count as for any lower directory.
        self.ready(&mut st, ino)?;
        if let Some(path) = self.child_path(&st, parent, name) {
            self.log(Record::Graft {
                path,
                tree,
                time: t.into(),
            });
        }
        Ok((parent, ino))
    }

    fn is_empty_dir(&self, st: &mut State, ino: Ino) -> FsResult<bool> {
        self.load_dir(st, ino)?;
        Ok(self.dir_mut(st, ino)?.by_name.is_empty())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(Errno::EINVAL);
        }
        if name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        let mut st = self.state.lock();
        let ino = self.child(&mut st, parent, name)?.ok_or(Errno::ENOENT)?;
        if !matches!(self.node(&st, ino)?.kind, NodeKind::Dir(_)) {
            return Err(Errno::ENOTDIR);
        }
        if !self.is_empty_dir(&mut st, ino)? {
            return Err(Errno::ENOTEMPTY);
        }
        let path = self.child_path(&st, parent, name);
        let t = now();
        let dir = self.dir_mut(&mut st, parent)?;
        dir.remove(name);
        dir.subdirs = dir.subdirs.saturating_sub(1);
        if let Some(p) = st.nodes.get_mut(&parent) {
            p.nlink = p.nlink.saturating_sub(1);
        }
        self.touch_dir_at(&mut st, parent, t);
        st.remove_node(ino);
        if let Some(path) = path {
            self.log(Record::Remove {
                path,
                time: t.into(),
            });
        }
        Ok(())
    }

    /// Is `ancestor` on the path from `ino` up to the root?
    fn is_ancestor(&self, st: &State, ancestor: Ino, mut ino: Ino) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            match st.nodes.get(&ino).map(|n| &n.kind) {
                Some(NodeKind::Dir(d)) => ino = d.parent,
                _ => return false,
            }
        }
    }

    /// Renames, with `noreplace` and `exchange` as `renameat2`.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        check_name(new_name)?;
        if flags.noreplace && flags.exchange {
            return Err(Errno::EINVAL);
        }
        let mut st = self.state.lock();
        let ino = self.child(&mut st, parent, name)?.ok_or(Errno::ENOENT)?;
        let target = self.child(&mut st, new_parent, new_name)?;
        self.ready(&mut st, ino)?;
        if let Some(other) = target {
            self.ready(&mut st, other)?;
        }
        let moving_dir = matches!(self.node(&st, ino)?.kind, NodeKind::Dir(_));
        if target == Some(ino) {
            return Ok(()); // same inode: nothing to do
        }
        if moving_dir && self.is_ancestor(&st, ino, new_parent) {
            return Err(Errno::EINVAL);
        }
        let t = now();
        let record = if self.journaling() {
            match (
                self.child_path(&st, parent, name),
                self.child_path(&st, new_parent, new_name),
            ) {
                (Some(from), Some(to)) => Some(Record::Rename {
                    from,
                    to,
                    noreplace: flags.noreplace,
                    exchange: flags.exchange,
                    time: t.into(),
                }),
                _ => None,
            }
        } else {
            None
        };
        if flags.exchange {
            let other = target.ok_or(Errno::ENOENT)?;
            let other_dir = matches!(self.node(&st, other)?.kind, NodeKind::Dir(_));
            if other_dir && self.is_ancestor(&st, other, parent) {
                return Err(Errno::EINVAL);
            }
            self.dir_mut(&mut st, parent)?.insert(name.to_vec(), other);
            self.dir_mut(&mut st, new_parent)?
                .insert(new_name.to_vec(), ino);
            if moving_dir != other_dir && parent != new_parent {
                self.adjust_subdirs(&mut st, parent, if other_dir { 1 } else { -1 });
                self.adjust_subdirs(&mut st, new_parent, if moving_dir { 1 } else { -1 });
            }
            self.set_parent(&mut st, ino, new_parent);
            self.set_parent(&mut st, other, parent);
            self.move_name(&mut st, ino, (parent, name), (new_parent, new_name));
            self.move_name(&mut st, other, (new_parent, new_name), (parent, name));
            self.touch_dir_at(&mut st, parent, t);
            self.touch_dir_at(&mut st, new_parent, t);
            self.mark_changed(&mut st, ino);
            self.mark_changed(&mut st, other);
            if let Some(record) = record {
                self.log(record);
            }
            return Ok(());
        }
        if let Some(existing) = target {
            if flags.noreplace {
                return Err(Errno::EEXIST);
            }
            let existing_dir = matches!(self.node(&st, existing)?.kind, NodeKind::Dir(_));
            match (moving_dir, existing_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => {
                    if !self.is_empty_dir(&mut st, existing)? {
                        return Err(Errno::ENOTEMPTY);
                    }
                    self.dir_mut(&mut st, new_parent)?.remove(new_name);
                    self.adjust_subdirs(&mut st, new_parent, -1);
                    st.remove_node(existing);
                }
                (false, false) => {
                    self.dir_mut(&mut st, new_parent)?.remove(new_name);
                    self.drop_link(&mut st, existing, new_parent, new_name, t);
                }
            }
        }
        self.dir_mut(&mut st, parent)?.remove(name);
        self.dir_mut(&mut st, new_parent)?
            .insert(new_name.to_vec(), ino);
        if moving_dir && parent != new_parent {
            self.adjust_subdirs(&mut st, parent, -1);
            self.adjust_subdirs(&mut st, new_parent, 1);
            self.set_parent(&mut st, ino, new_parent);
        }
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.attrs.ctime = t;
        }
        self.move_name(&mut st, ino, (parent, name), (new_parent, new_name));
        self.touch_dir_at(&mut st, parent, t);
        self.touch_dir_at(&mut st, new_parent, t);
        self.mark_changed(&mut st, ino);
        if let Some(record) = record {
            self.log(record);
        }
        Ok(())
    }

    fn adjust_subdirs(&self, st: &mut State, dir: Ino, delta: i32) {
        if let Some(node) = st.nodes.get_mut(&dir) {
            if let NodeKind::Dir(d) = &mut node.kind {
                d.subdirs = d.subdirs.saturating_add_signed(delta);
                node.nlink = 2 + d.subdirs;
            }
        }
    }

    fn set_parent(&self, st: &mut State, ino: Ino, parent: Ino) {
        if let Some(NodeKind::Dir(d)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            d.parent = parent;
        }
    }

    /// Opens `ino`; `truncate` empties a file first (O_TRUNC).
    pub fn open(&self, ino: Ino, truncate: bool) -> FsResult<()> {
        let mut st = self.state.lock();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.opens += 1;
        if truncate {
            if let NodeKind::File(data) = &node.kind {
                match data.truncate(0) {
                    Ok(Some(shrunk)) => self.sync_before_journal(shrunk),
                    Ok(None) => {}
                    Err(e) => {
                        node.opens -= 1;
                        return Err(e);
                    }
                }
                let t = now();
                node.attrs.mtime = t;
                node.attrs.ctime = t;
                data.set_upper_mtime(t);
                self.mark_changed(&mut st, ino);
                self.log_data(&st, ino);
            }
        }
        Ok(())
    }

    /// Closes a handle opened by [`CowFs::open`] or [`CowFs::create`].
    pub fn release(&self, ino: Ino) {
        let mut st = self.state.lock();
        if let Some(Node {
            kind: NodeKind::File(data),
            nlink: 1..,
            ..
        }) = st.nodes.get(&ino)
        {
            if data.is_dirty() {
                self.log_data(&st, ino);
            }
        }
        let mut gone = None;
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
            if node.opens == 0 && node.nlink == 0 {
                gone = st.remove_node(ino);
            } else if let (0, NodeKind::File(data)) = (node.opens, &node.kind) {
                // Closed by the sandbox: the mount keeps no descriptor for
                // it (see `datafile`).
                data.close_idle();
            }
        }
        if let Some(node) = gone {
            self.locks.lock().forget(ino);
            if let NodeKind::File(data) = node.kind {
                data.discard();
            }
        }
    }

    /// The lock that would block `probe` on `ino`, if any (`F_GETLK`,
    /// `Tgetlock`).
    pub fn getlk(&self, ino: Ino, probe: &PosixLock) -> FsResult<Option<PosixLock>> {
        self.node(&self.state.lock(), ino)?;
        Ok(self.locks.lock().test(ino, probe))
    }

    /// Sets or releases a POSIX byte-range lock on `ino` without waiting
    /// (`F_SETLK`, `Tlock`); `EAGAIN` when another owner holds a
    /// conflicting one. See [`locks`].
    pub fn setlk(&self, ino: Ino, lock: PosixLock) -> FsResult<()> {
        self.node(&self.state.lock(), ino)?;
        self.locks.lock().set(ino, lock)
    }

    /// Sets, converts or releases a whole-file `flock` lock of `owner`
    /// without waiting.
    pub fn flock(&self, ino: Ino, owner: u64, typ: LockType) -> FsResult<()> {
        self.node(&self.state.lock(), ino)?;
        self.locks.lock().flock(ino, owner, typ)
    }

    /// Drops every lock `owner` holds on `ino` (on close).
    pub fn release_locks(&self, ino: Ino, owner: u64) {
        self.locks.lock().release_owner(ino, owner);
    }

    fn file(&self, ino: Ino) -> FsResult<Arc<FileData>> {
        let st = self.state.lock();
        match &self.node(&st, ino)?.kind {
            NodeKind::File(data) => Ok(data.clone()),
            NodeKind::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let data = self.file(ino)?;
        data.read(&self.store, offset, size as usize)
            .map_err(|e| self.eio(e))
    }

    /// Writes `bytes` at `offset`; all or nothing (ENOSPC past the quota).
    pub fn write(&self, ino: Ino, offset: u64, bytes: &[u8]) -> FsResult<usize> {
        let data = self.file(ino)?;
        if bytes.is_empty() {
            return Ok(0); // as Linux: no effect, times unchanged
        }
        data.write(&self.store, offset, bytes, self.quota)?;
        let mut st = self.state.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            let t = now();
            node.attrs.mtime = t;
            node.attrs.ctime = t;
        }
        self.mark_changed(&mut st, ino);
        Ok(bytes.len())
    }

    /// Makes `ino`'s data durable in the upper layer.
    /// Its attributes and name, and everything journaled before, are
    /// durable too (as ext4's ordered mode gives).
    pub fn fsync(&self, ino: Ino) -> FsResult<()> {
        self.sync_file(ino, false)
    }

    /// `fdatasync`: `ino`'s bytes and what is needed to read them back
    /// (size, block layout) are durable; a changed mtime alone is not
    /// journaled, so overwriting in place costs one sync of the data.
    pub fn fdatasync(&self, ino: Ino) -> FsResult<()> {
        self.sync_file(ino, true)
    }

    fn sync_file(&self, ino: Ino, data_only: bool) -> FsResult<()> {
        if let Ok(data) = self.file(ino) {
            // Size or blocks changed: the journal must say so, once the
            // bytes are durable. An overwrite in place needs no record:
            // its mtime rides as the data file's own, made durable with
            // the bytes by one fsync of the data file.
            let layout_changed = data.layout_dirty();
            let mtime = (!data_only && !layout_changed)
                .then(|| self.node(&self.state.lock(), ino).map(|n| n.attrs.mtime))
                .transpose()?;
            data.sync(data_only, mtime)?;
            if layout_changed {
                let st = self.state.lock();
                self.log_data(&st, ino);
            }
        }
        self.sync_journal()
    }

    /// Makes directory `ino`'s entries durable (and everything journaled
    /// before).
    pub fn fsyncdir(&self, ino: Ino) -> FsResult<()> {
        self.node(&self.state.lock(), ino)?;
        self.sync_journal()
    }

    /// `fallocate`: mode 0 allocates (charging the quota for every block
    /// of the range, all or nothing, and extending the size), so writes
    /// there never lack space; PUNCH_HOLE (with KEEP_SIZE) frees a range,
    /// which then reads as zeros. KEEP_SIZE alone reserves nothing: a
    /// write there is charged when made.
    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let data = self.file(ino)?;
        offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if mode == 0 {
            data.allocate(&self.store, offset, len, self.quota)?;
        } else if mode == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE {
            data.punch(&self.store, offset, len, self.quota)?;
        } else if mode == libc::FALLOC_FL_KEEP_SIZE {
            return Ok(());
        } else {
            return Err(Errno::EOPNOTSUPP);
        }
        // As ext4: a successful allocation or punch changes mtime and ctime.
        let mut st = self.state.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            let t = now();
            node.attrs.mtime = t;
            node.attrs.ctime = t;
            data.set_upper_mtime(t);
        }
        self.mark_changed(&mut st, ino);
        self.log_data(&st, ino);
        Ok(())
    }

    /// `lseek` with SEEK_DATA / SEEK_HOLE.
    pub fn lseek(&self, ino: Ino, offset: u64, whence: i32) -> FsResult<u64> {
        let data = self.file(ino)?;
        data.seek_data_hole(&self.store, offset, whence == libc::SEEK_HOLE)
            .map_err(|e| if e == Errno::ENXIO { e } else { self.eio(e.0) })
    }

    /// Entries of directory `ino` after `offset` (0 = from the start).
    pub fn readdir(&self, ino: Ino, offset: u64) -> FsResult<Vec<DirEntryOut>> {
        let mut out = Vec::new();
        self.readdir_each(ino, offset, |entry| {
            out.push(DirEntryOut {
                offset: entry.offset,
                ino: entry.ino,
                kind: entry.kind,
                name: entry.name.to_vec(),
            });
            false
        })?;
        Ok(out)
    }

    /// Calls `emit` with each entry of directory `ino` after `offset`, in
    /// offset order, until it returns `true` (its buffer is full): a reply
    /// costs what it holds, not the size of the directory.
    pub fn readdir_each(
        &self,
        ino: Ino,
        offset: u64,
        mut emit: impl FnMut(DirEntryRef<'_>) -> bool,
    ) -> FsResult<()> {
        let mut st = self.state.lock();
        self.load_dir(&mut st, ino)?;
        let dir = match &self.node(&st, ino)?.kind {
            NodeKind::Dir(d) => d,
            _ => return Err(Errno::ENOTDIR),
        };
        if offset < 1
            && emit(DirEntryRef {
                offset: 1,
                ino,
                kind: FileKind::Dir,
                name: b".",
            })
        {
            return Ok(());
        }
        if offset < 2
            && emit(DirEntryRef {
                offset: 2,
                ino: dir.parent,
                kind: FileKind::Dir,
                name: b"..",
            })
        {
            return Ok(());
        }
        for (&off, name) in dir.by_offset.range(offset.max(2) + 1..) {
            let Some(&(child, _)) = dir.by_name.get(name) else {
                continue;
            };
            let kind = st
                .nodes
                .get(&child)
                .map(|n| kind_of(&n.kind))
                .unwrap_or(FileKind::File);
            if emit(DirEntryRef {
                offset: off,
                ino: child,
                kind,
                name,
            }) {
                break;
            }
        }
        Ok(())
    }

    /// Filesystem figures; the quota is the size.
    pub fn statfs(&self) -> StatFs {
        let block = 4096u64;
        let used = self.used_bytes().div_ceil(block);
        let blocks = self.quota / block;
        let st = self.state.lock();
        StatFs {
            block_size: block as u32,
            blocks,
            blocks_free: blocks.saturating_sub(used),
            files: self.inode_quota,
            files_free: self.inode_quota.saturating_sub(st.made.len() as u64),
            name_max: 255,
        }
    }

    /// Extended attribute `name` of `ino`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        self.node(&st, ino)?
            .attrs
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Errno::ENODATA)
    }

    /// Names of `ino`'s extended attributes.
    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        Ok(self.node(&st, ino)?.attrs.xattrs.keys().cloned().collect())
    }

    /// Sets an extended attribute.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> FsResult<()> {
        if name.is_empty() || name.len() > 255 || name.contains(&0) {
            return Err(Errno::ERANGE);
        }
        if value.len() > crate::tree::MAX_XATTR_VALUE {
            return Err(Errno::Errno2BIG);
        }
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let exists = node.attrs.xattrs.contains_key(name);
        match (mode, exists) {
            (XattrMode::Create, true) => return Err(Errno::EEXIST),
            (XattrMode::Replace, false) => return Err(Errno::ENODATA),
            _ => {}
        }
        let mut next = node.attrs.xattrs.clone();
        next.insert(name.to_vec(), value.to_vec());
        if crate::tree::validate_xattrs(&next).is_err() {
            return Err(Errno::ENOSPC);
        }
        node.attrs.xattrs = next;
        node.attrs.ctime = now();
        self.mark_changed(&mut st, ino);
        if let Some(path) = self.journaling().then(|| self.path_of(&st, ino)).flatten() {
            self.log(Record::Xattr {
                path,
                name: name.to_vec(),
                value: Some(value.to_vec()),
            });
            self.log_attrs(&st, ino);
        }
        Ok(())
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.attrs.xattrs.remove(name).ok_or(Errno::ENODATA)?;
        node.attrs.ctime = now();
        self.mark_changed(&mut st, ino);
        if let Some(path) = self.journaling().then(|| self.path_of(&st, ino)).flatten() {
            self.log(Record::Xattr {
                path,
                name: name.to_vec(),
                value: None,
            });
            self.log_attrs(&st, ino);
        }
        Ok(())
    }

    /// The upper layer's directory for file data.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Errno {
    /// E2BIG (argument list too long; an xattr value over 64 KiB).
    #[allow(non_upper_case_globals)]
    pub const Errno2BIG: Errno = Errno(libc::E2BIG);
}
