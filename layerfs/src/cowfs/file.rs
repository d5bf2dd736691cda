//! One regular file's data: a base (a blob in the store, or a sealed
//! layer a snapshot froze), and an upper data file holding the 64 KiB
//! blocks written since (copied up on first write).
//!
//! A snapshot seals a changed file: its upper data file and block map
//! become an immutable [`Layer`] over the old base, and the file goes on
//! with an empty upper data file over that layer. Sealing costs no copy;
//! once the snapshot's tree is stored the layer is replaced, in place, by
//! the blob holding its bytes ([`Layer::convert`]).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, FileTimes, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{SendError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use cas::{ChunkId, Store};
use parking_lot::{Mutex, RwLock};

use super::datafile::{DataFile, MountFiles};

use super::{Errno, FsResult};
use crate::content::Content;
use crate::tree::Timestamp;

/// Copy-up granularity: a write copies at most the blocks it touches.
pub const BLOCK_SIZE: u64 = 64 << 10;
/// How far ahead of a sequential reader lower chunks are loaded.
const READ_AHEAD: u64 = 16 << 20;
/// Largest file size accepted (as ext4's 16 TiB).
const MAX_FILE_SIZE: u64 = 16 << 40;

/// Opens an upper data file for reading and writing (`create`: making it
/// if absent). Reads must not move its atime, the mark of an mtime given
/// by [`FileData::sync`]; O_NOATIME needs ownership of the file, so
/// without it the file is opened plainly (and recovery may then miss an
/// in-place overwrite's mtime, never take a wrong one: a read sets the
/// atime to the time of the read, which differs from the mtime).
pub(crate) fn open_data_file(path: &Path, create: bool) -> std::io::Result<File> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        opened => opened,
    }
}

/// Stored content (a blob, or a memory image) as a file's base, opened on
/// first read.
pub(crate) struct BlobBase {
    id: Option<ChunkId>,
    content: OnceLock<Content>,
}

impl std::fmt::Debug for BlobBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobBase({:?})", self.id)
    }
}

impl BlobBase {
    pub(crate) fn new(id: Option<ChunkId>) -> Arc<BlobBase> {
        Arc::new(BlobBase {
            id,
            content: OnceLock::new(),
        })
    }

    pub(crate) fn id(&self) -> Option<ChunkId> {
        self.id
    }

    fn content(&self, store: &Store) -> Result<&Content, String> {
        if let Some(content) = self.content.get() {
            return Ok(content);
        }
        let id = self.id.ok_or("file has no lower data")?;
        let content = Content::open(store, &id).map_err(|e| e.to_string())?;
        Ok(self.content.get_or_init(|| content))
    }

    fn read(
        &self,
        store: &Store,
        start: u64,
        buf: &mut [u8],
        mut loaded: Option<&mut Vec<(u64, ChunkId)>>,
    ) -> Result<(), String> {
        if self.id.is_none() {
            buf.fill(0);
            return Ok(());
        }
        let content = self.content(store)?;
        let mut done = 0;
        while done < buf.len() {
            let n = content
                .read_at_noting(start + done as u64, &mut buf[done..], loaded.as_deref_mut())
                .map_err(|e| e.to_string())?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }
}

/// Where a file's bytes below its lower limit come from.
#[derive(Clone, Debug)]
pub(crate) enum Base {
    Blob(Arc<BlobBase>),
    Layer(Arc<Layer>),
}

impl Base {
    pub(crate) fn blob(id: Option<ChunkId>) -> Base {
        Base::Blob(BlobBase::new(id))
    }

    fn read(&self, store: &Store, start: u64, buf: &mut [u8]) -> Result<(), String> {
        self.read_noting(store, start, buf, None)
    }

    /// [`Base::read`]; with `loaded`, adds to it the chunks of a blob base
    /// this call read from their packs, with where each ends.
    fn read_noting(
        &self,
        store: &Store,
        start: u64,
        buf: &mut [u8],
        loaded: Option<&mut Vec<(u64, ChunkId)>>,
    ) -> Result<(), String> {
        match self {
            Base::Blob(b) => b.read(store, start, buf, loaded),
            Base::Layer(l) => l.read(store, start, buf),
        }
    }
}

/// A sealed file state: immutable bytes of a file as a snapshot froze them.
#[derive(Debug)]
pub(crate) struct Layer {
    /// Its data file's name (in the mount's data directory).
    name: String,
    path: PathBuf,
    size: u64,
    state: RwLock<LayerState>,
}

#[derive(Debug)]
enum LayerState {
    /// Blocks in `present` come from the data file, bytes below
    /// `lower_limit` otherwise from `base`, the rest are zeros.
    Local {
        file: Option<Arc<DataFile>>,
        present: Vec<u64>,
        lower_limit: u64,
        base: Base,
    },
    /// Stored: the layer's bytes are this blob.
    Converted(Arc<BlobBase>),
}

/// How a journal describes a layer.
pub(crate) struct LayerLayout {
    pub name: String,
    pub size: u64,
    pub lower_limit: u64,
    pub present: Vec<u64>,
    pub base: Base,
}

impl Layer {
    /// A layer as journaled (its data file is opened if it exists).
    pub(crate) fn restored(
        dir: &std::path::Path,
        files: &Arc<MountFiles>,
        layout: LayerLayout,
    ) -> Arc<Layer> {
        let path = dir.join(&layout.name);
        let file = path
            .symlink_metadata()
            .is_ok()
            .then(|| DataFile::closed(path.clone(), files));
        Arc::new(Layer {
            name: layout.name,
            path,
            size: layout.size,
            state: RwLock::new(LayerState::Local {
                file,
                present: layout.present,
                lower_limit: layout.lower_limit,
                base: layout.base,
            }),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The blob holding the layer's bytes, once converted.
    pub(crate) fn converted(&self) -> Option<Option<ChunkId>> {
        match &*self.state.read() {
            LayerState::Converted(b) => Some(b.id()),
            LayerState::Local { .. } => None,
        }
    }

    fn read(&self, store: &Store, start: u64, buf: &mut [u8]) -> Result<(), String> {
        match &*self.state.read() {
            LayerState::Converted(b) => b.read(store, start, buf, None),
            LayerState::Local {
                file,
                present,
                lower_limit,
                base,
            } => read_blocks(
                store,
                file.as_deref(),
                (present, *lower_limit, base),
                start,
                buf,
                None,
            ),
        }
    }

    /// Reads `[offset, offset + buf.len())` of the layer (for conversion).
    pub(crate) fn read_at(&self, store: &Store, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let end = (offset + buf.len() as u64).min(self.size);
        let n = end.saturating_sub(offset) as usize;
        buf[n..].fill(0);
        if n > 0 {
            self.read(store, offset, &mut buf[..n])?;
        }
        Ok(())
    }

    /// Replaces the layer by `blob`, which holds exactly its bytes, and
    /// removes its data file (in the background: a commit converts a
    /// layer per changed file under the mount's lock, and an unlink costs
    /// ext4 tens of microseconds; a crash first leaves an orphan the next
    /// recovery sweeps). Readers see the same bytes throughout.
    pub(crate) fn convert(&self, blob: Option<ChunkId>) {
        let mut state = self.state.write();
        if matches!(*state, LayerState::Local { .. }) {
            *state = LayerState::Converted(BlobBase::new(blob));
            remove_data_file(self.path.clone(), true);
        }
    }

    /// Every data file this layer's chain still reads (for recovery's
    /// orphan sweep).
    pub(crate) fn local_files(&self, out: &mut Vec<String>) {
        if let LayerState::Local { base, .. } = &*self.state.read() {
            out.push(self.name.clone());
            if let Base::Layer(l) = base {
                l.local_files(out);
            }
        }
    }
}

/// How the journal of the mount whose data directory is `own` names
/// `base`: a layer of another mount (a mount restored from a capture not
/// stored yet) is not in this journal, so it is named as "the base the file
/// has in the lower tree" — which it is, once that capture is stored.
pub(crate) fn journal_base(base: &Base, own: &std::path::Path) -> super::journal::JBase {
    use super::journal::JBase;
    match base {
        Base::Blob(b) => JBase::Blob(b.id()),
        Base::Layer(l) => match l.converted() {
            Some(id) => JBase::Blob(id),
            None if l.path.parent() == Some(own) => JBase::Layer(l.name.clone()),
            None => JBase::Current,
        },
    }
}

fn is_present(present: &[u64], block: u64) -> bool {
    let (word, bit) = ((block / 64) as usize, block % 64);
    present.get(word).is_some_and(|w| w & (1 << bit) != 0)
}

/// Reads `buf.len()` bytes at `offset` of a file made of present blocks in
/// `file`, `base` below `lower_limit`, and zeros elsewhere; with `loaded`,
/// notes the chunks of a blob base read from their packs (see
/// [`Base::read_noting`]).
fn read_blocks(
    store: &Store,
    file: Option<&DataFile>,
    (present, lower_limit, base): (&[u64], u64, &Base),
    offset: u64,
    out: &mut [u8],
    mut loaded: Option<&mut Vec<(u64, ChunkId)>>,
) -> Result<(), String> {
    let end = offset + out.len() as u64;
    let mut pos = offset;
    while pos < end {
        let block = pos / BLOCK_SIZE;
        let block_end = ((block + 1) * BLOCK_SIZE).min(end);
        let slice = &mut out[(pos - offset) as usize..(block_end - offset) as usize];
        if is_present(present, block) {
            match file {
                Some(file) => {
                    let fd = file.fd().map_err(|e| {
                        format!("opening upper data {}: {e}", file.path().display())
                    })?;
                    FileData::read_upper(&fd, pos, slice)?
                }
                None => slice.fill(0),
            }
        } else if pos < lower_limit {
            let lower_end = block_end.min(lower_limit);
            let n = (lower_end - pos) as usize;
            base.read_noting(store, pos, &mut slice[..n], loaded.as_deref_mut())?;
            slice[n..].fill(0);
        } else {
            slice.fill(0);
        }
        pos = block_end;
    }
    Ok(())
}

pub(crate) struct FileData {
    files: Arc<MountFiles>,
    /// The data directory (upper data files live there).
    dir: PathBuf,
    inner: RwLock<Inner>,
    /// Where the next sequential read would start, and how far read-ahead
    /// has been asked for (see [`FileData::read_ahead`]).
    next_read: Arc<AtomicU64>,
    prefetched_to: AtomicU64,
    /// Changed since its state was last journaled.
    dirty: AtomicBool,
    /// Size, lower limit or present blocks changed since last journaled
    /// (what `fdatasync` must make durable besides the bytes).
    layout_dirty: AtomicBool,
    /// The mtime this process last gave the data file.
    upper_mtime: Mutex<Option<Timestamp>>,
    /// The errno of a failed sync of the data file: sticky, since the
    /// bytes that sync was to make durable may be lost (Linux drops pages
    /// whose write-back failed and reports that once), so no later sync
    /// may report success for them.
    sync_failure: AtomicI32,
    /// Chunks a read-ahead for a reader with a page cache above loaded
    /// (where each ends in the file), oldest first: dropped from the
    /// chunk cache once that reader has read past them (see
    /// [`CachedAbove`]).
    streamed: Arc<Mutex<VecDeque<(u64, ChunkId)>>>,
}

/// Whether the reader keeps what it reads in a cache of its own: the
/// kernel's page cache of a FUSE mount does; a 9P client (the kernel's
/// without `cache=`, or a program) does not, so the chunk cache is its
/// page cache.
///
/// A sequential reader with a cache of its own does not leave the chunks
/// its read-ahead loaded in the chunk cache once it has read past them:
/// they would be a second copy of pages the kernel holds, and streaming a
/// large file would push out the chunks other mounts share, and fill the
/// cache with fresh memory the daemon pays page faults for (a third of
/// its time in a cold 1 GiB read). Chunks found cached, or loaded for
/// other readers, stay. As a database's sequential scan reads through a
/// small ring of buffers instead of its shared buffer pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachedAbove {
    Yes,
    No,
}

/// Most chunks remembered in [`FileData::streamed`]; older ones simply
/// stay cached.
const MAX_STREAMED: usize = 4096;

/// Adds chunks a stream loaded to `streamed`: those ending at or before
/// `reader_at` (the reader is past them) leave the chunk cache now, the
/// others wait for the reader, in the order of their ends (read-aheads
/// finish out of order, and the reader releases from the front: a chunk
/// far ahead at the front would hold every chunk behind it in the cache).
fn add_streamed(
    streamed: &mut VecDeque<(u64, ChunkId)>,
    store: &Store,
    loaded: Vec<(u64, ChunkId)>,
    reader_at: u64,
) {
    for (chunk_end, id) in loaded {
        if chunk_end <= reader_at {
            store.uncache(&id);
        } else {
            let at = streamed.partition_point(|&(end, _)| end <= chunk_end);
            streamed.insert(at, (chunk_end, id));
        }
    }
    let excess = streamed.len().saturating_sub(MAX_STREAMED);
    streamed.drain(..excess);
}

impl std::fmt::Debug for FileData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.read();
        f.debug_struct("FileData")
            .field("name", &inner.name)
            .field("base", &inner.base)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    /// The upper data file's name in the data directory.
    name: String,
    base: Base,
    size: u64,
    /// Bytes at or past this offset never come from the base.
    lower_limit: u64,
    /// Blocks whose bytes are in the upper file.
    present: Vec<u64>,
    /// Present blocks that are holes in the upper file (punched, or zeros
    /// over lower data): they read as zeros and are not charged.
    holes: Vec<u64>,
    upper: Option<Arc<DataFile>>,
    /// Bytes charged to the quota for this file.
    charged: u64,
    /// The upper file was created and its directory entry not yet synced.
    created: bool,
}

impl Inner {
    fn new(name: String, base: Base, size: u64, lower_limit: u64) -> Inner {
        Inner {
            name,
            base,
            size,
            lower_limit,
            present: Vec::new(),
            holes: Vec::new(),
            upper: None,
            charged: 0,
            created: false,
        }
    }

    fn is_present(&self, block: u64) -> bool {
        is_present(&self.present, block)
    }

    fn is_hole(&self, block: u64) -> bool {
        is_present(&self.holes, block)
    }

    /// A present block whose bytes take space in the upper file.
    fn is_charged(&self, block: u64) -> bool {
        self.is_present(block) && !self.is_hole(block)
    }

    fn set_present(&mut self, block: u64) {
        set_bit(&mut self.present, block);
        clear_bit(&mut self.holes, block);
    }

    /// Marks a block present and a hole: it reads as zeros and costs
    /// nothing.
    fn set_hole(&mut self, block: u64) {
        set_bit(&mut self.present, block);
        set_bit(&mut self.holes, block);
    }

    /// Clears every block at or after `first`.
    fn clear_from(&mut self, first: u64) {
        for bits in [&mut self.present, &mut self.holes] {
            let word = (first / 64) as usize;
            if word < bits.len() {
                bits[word] &= (1u64 << (first % 64)) - 1;
                bits.truncate(word + 1);
            }
        }
    }

    /// Bytes the upper file holds for a file of `size` whose charged
    /// blocks are these plus the blocks in `extra` (a write or an
    /// allocation about to happen).
    fn charge_for(&self, size: u64, extra: std::ops::Range<u64>) -> u64 {
        let charged: u64 = self
            .present
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !self.holes.get(i).copied().unwrap_or(0)).count_ones()))
            .sum();
        let added = extra.clone().filter(|b| !self.is_charged(*b)).count() as u64;
        let mut charge = (charged + added) * BLOCK_SIZE;
        let tail = size % BLOCK_SIZE;
        let last = size / BLOCK_SIZE;
        if tail != 0 && (self.is_charged(last) || extra.contains(&last)) {
            charge -= BLOCK_SIZE - tail;
        }
        charge
    }

    /// Whether `[offset, end)` fits in the quota once every block of
    /// `first..=last` is charged and the file is `new_size` bytes.
    fn fits(
        &self,
        files: &MountFiles,
        quota: u64,
        new_size: u64,
        blocks: std::ops::Range<u64>,
    ) -> bool {
        files.room_for(self.charged, self.charge_for(new_size, blocks), quota)
    }
}

fn set_bit(bits: &mut Vec<u64>, block: u64) {
    let (word, bit) = ((block / 64) as usize, block % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    bits[word] |= 1 << bit;
}

fn clear_bit(bits: &mut [u64], block: u64) {
    let (word, bit) = ((block / 64) as usize, block % 64);
    if let Some(w) = bits.get_mut(word) {
        *w &= !(1 << bit);
    }
}

/// `fallocate(2)` on an upper data file.
fn fallocate_upper(file: &File, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // valid while `file` is borrowed.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `[offset, offset + len)` of an upper data file read as zeros,
/// freeing its blocks where the filesystem can (else writing zeros).
fn punch_upper(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    match fallocate_upper(file, mode, offset, len) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            let zeros = vec![0u8; len.min(BLOCK_SIZE) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        other => other,
    }
}

/// The blocks of `present` that take no space in `file` (punched holes,
/// zeros over lower data, or past its end): what a punch left, found again
/// after a restart. Preallocated blocks take space (they are charged).
fn holes_in(file: &File, present: &[u64]) -> Vec<u64> {
    let extents = allocated_extents(file, 0, u64::MAX).unwrap_or_else(|| data_extents(file));
    let mut holes = Vec::new();
    let mut next = extents.iter().peekable();
    for block in 0..present.len() as u64 * 64 {
        if !is_present(present, block) {
            continue;
        }
        let (start, end) = (block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE);
        while next.peek().is_some_and(|&&(_, e)| e <= start) {
            next.next();
        }
        let allocated = next.peek().is_some_and(|&&(s, _)| s < end);
        if !allocated {
            set_bit(&mut holes, block);
        }
    }
    holes
}

/// Cuts `file` to `size` bytes if it is longer and punches every block
/// that holds data but is not in `present`.
/// The changes are synced: a second power cut must not bring back what
/// the first recovery removed.
fn scrub(file: &File, size: u64, present: &[u64]) -> std::io::Result<()> {
    let mut changed = false;
    if file.metadata()?.len() > size {
        file.set_len(size)?;
        changed = true;
    }
    let extents = allocated_extents(file, 0, u64::MAX).unwrap_or_else(|| data_extents(file));
    for (start, end) in extents {
        let (first, stop) = (start / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
        for block in (first..stop).filter(|&b| !is_present(present, b)) {
            punch_upper(file, block * BLOCK_SIZE, BLOCK_SIZE)?;
            changed = true;
        }
    }
    if changed {
        file.sync_data()?;
    }
    Ok(())
}

/// Whether any byte of `[start, end)` of `file` takes space on disk.
fn takes_space(file: &File, start: u64, end: u64) -> bool {
    match allocated_extents(file, start, end) {
        Some(extents) => extents.iter().any(|&(s, e)| s < end && e > start),
        None => data_extents(file)
            .iter()
            .any(|&(s, e)| s < end && e > start),
    }
}

/// The byte ranges of `file` within `[from, to)` that take space on disk
/// (written, preallocated or awaiting allocation), in order, from
/// `FS_IOC_FIEMAP`; `None` where the filesystem cannot tell.
fn allocated_extents(file: &File, from: u64, to: u64) -> Option<Vec<(u64, u64)>> {
    /// `struct fiemap_extent` (linux/fiemap.h).
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    /// `struct fiemap` followed by room for its extents.
    #[repr(C)]
    struct Map {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; 128],
    }
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_EXTENT_LAST: u32 = 0x1;
    let mut out = Vec::new();
    let mut from = from;
    while from < to {
        let mut map = Map {
            start: from,
            length: to - from,
            flags: 0,
            mapped_extents: 0,
            extent_count: 128,
            reserved: 0,
            extents: [Extent::default(); 128],
        };
        // SAFETY: FS_IOC_FIEMAP reads the header of `map` and writes at
        // most `extent_count` (128) extents into `map.extents`, which has
        // room for exactly that many; `map` lives across the call and the
        // descriptor is valid while `file` is borrowed.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Map) };
        if ret != 0 {
            return None;
        }
        let n = (map.mapped_extents as usize).min(map.extents.len());
        if n == 0 {
            return Some(out);
        }
        for e in &map.extents[..n] {
            out.push((e.logical, e.logical.saturating_add(e.length)));
        }
        let last = map.extents[n - 1];
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return Some(out);
        }
        from = last.logical.saturating_add(last.length);
    }
    Some(out)
}

/// The byte ranges of `file` that hold data, by `SEEK_DATA`/`SEEK_HOLE`
/// (where FIEMAP is not available; preallocated ranges then count as
/// holes).
fn data_extents(file: &File) -> Vec<(u64, u64)> {
    let seek = |offset: u64, whence: i32| -> Option<u64> {
        let offset = i64::try_from(offset).ok()?;
        // SAFETY: lseek on a descriptor valid while `file` is borrowed.
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        u64::try_from(at).ok()
    };
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(data) = seek(at, libc::SEEK_DATA) {
        let hole = seek(data, libc::SEEK_HOLE).unwrap_or(u64::MAX);
        out.push((data, hole));
        if hole == u64::MAX || hole <= data {
            break;
        }
        at = hole;
    }
    out
}

fn io(e: std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

/// What a snapshot froze of a file: `size` bytes of `base` (a blob or a
/// sealed layer).
#[derive(Clone, Debug)]
pub(crate) struct FrozenFile {
    pub size: u64,
    pub base: Base,
}

impl FileData {
    fn with_inner(dir: PathBuf, files: Arc<MountFiles>, inner: Inner) -> FileData {
        FileData {
            files,
            dir,
            inner: RwLock::new(inner),
            next_read: Arc::default(),
            prefetched_to: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            layout_dirty: AtomicBool::new(false),
            upper_mtime: Mutex::new(None),
            sync_failure: AtomicI32::new(0),
            streamed: Arc::default(),
        }
    }

    /// A new, empty file whose upper data would be `dir/name`.
    pub(crate) fn empty(dir: PathBuf, name: String, files: Arc<MountFiles>) -> FileData {
        FileData::with_inner(dir, files, Inner::new(name, Base::blob(None), 0, 0))
    }

    /// A file as a journal's `Data` record describes it: `size` bytes,
    /// the blocks marked in `present` (and everything at or past
    /// `lower_limit`) in the upper file `dir/name`, the rest from `base`.
    pub(crate) fn restored(
        dir: PathBuf,
        name: String,
        files: Arc<MountFiles>,
        base: Base,
        size: u64,
        lower_limit: u64,
        present: Vec<u64>,
    ) -> FileData {
        let upper = DataFile::open(dir.join(&name), &files, false).ok();
        let mut inner = Inner::new(name, base, size, lower_limit);
        // Present blocks without data in the data file were punched (or
        // zeroed over lower data): holes, read as zeros, not charged.
        inner.holes = match upper.as_ref().map(|file| file.fd()) {
            Some(Ok(fd)) => holes_in(&fd, &present),
            _ => present.clone(),
        };
        inner.present = present;
        // Recovery opens every file it restores: the bound closes the
        // oldest as it goes; none is held open for the sandbox yet.
        if let Some(file) = &upper {
            file.close_idle();
        }
        inner.upper = upper;
        let charge = inner.charge_for(size, 0..0);
        inner.charged = charge;
        files.charge(charge);
        FileData::with_inner(dir, files, inner)
    }

    /// A file whose bytes are all `size` bytes of blob `blob` (`None`:
    /// empty or all zeros).
    pub(crate) fn lower(
        size: u64,
        blob: Option<ChunkId>,
        dir: PathBuf,
        name: String,
        files: Arc<MountFiles>,
    ) -> FileData {
        let limit = if blob.is_some() { size } else { 0 };
        FileData::with_inner(dir, files, Inner::new(name, Base::blob(blob), size, limit))
    }

    /// A file whose bytes are `size` bytes of `base` (a file restored from
    /// a capture before it is stored).
    pub(crate) fn over(
        size: u64,
        base: Base,
        dir: PathBuf,
        name: String,
        files: Arc<MountFiles>,
    ) -> FileData {
        FileData::with_inner(dir, files, Inner::new(name, base, size, size))
    }

    /// The file's base.
    pub(crate) fn base(&self) -> Base {
        self.inner.read().base.clone()
    }

    /// The upper data file's name (in the mount's data directory).
    pub(crate) fn file_name(&self) -> String {
        self.inner.read().name.clone()
    }

    /// Size, lower limit and present-block bitmap, for the journal.
    pub(crate) fn layout(&self) -> (u64, u64, Vec<u64>) {
        let inner = self.inner.read();
        (inner.size, inner.lower_limit, inner.present.clone())
    }

    /// Whether the file changed since the last call, clearing the mark
    /// (and the layout mark: the caller journals the whole state).
    pub(crate) fn take_dirty(&self) -> bool {
        self.layout_dirty.store(false, Ordering::Release);
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Whether the file changed since last journaled.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Whether size or block layout changed since last journaled.
    pub(crate) fn layout_dirty(&self) -> bool {
        self.layout_dirty.load(Ordering::Acquire)
    }

    pub(crate) fn size(&self) -> u64 {
        self.inner.read().size
    }

    /// Whether every byte of the file is in the store: no upper bytes,
    /// over a blob (or a layer converted to one).
    pub(crate) fn is_in_store(&self) -> bool {
        let over_blob = match self.base() {
            Base::Blob(_) => true,
            Base::Layer(layer) => layer.converted().is_some(),
        };
        over_blob && !self.has_upper_state()
    }

    /// Whether [`FileData::freeze`] would seal a layer (the file has
    /// upper bytes or a changed size).
    pub(crate) fn has_upper_state(&self) -> bool {
        let inner = self.inner.read();
        !(inner.present.iter().all(|w| *w == 0) && inner.lower_limit >= inner.size)
    }

    /// Freezes the file's current bytes for a snapshot. A file with no
    /// upper bytes is frozen as its base; otherwise its upper data file
    /// becomes a sealed [`Layer`] (named as the data file was) and the file
    /// continues with an empty upper data file, named by `new_name` from
    /// the old name, over it. Returns the frozen state and the layer
    /// sealed (with how many blocks it holds), if any.
    pub(crate) fn freeze(
        &self,
        new_name: impl FnOnce(&str) -> String,
    ) -> (FrozenFile, Option<(Arc<Layer>, u64)>) {
        let mut inner = self.inner.write();
        if inner.present.iter().all(|w| *w == 0) && inner.lower_limit >= inner.size {
            return (
                FrozenFile {
                    size: inner.size,
                    base: inner.base.clone(),
                },
                None,
            );
        }
        let renamed = new_name(&inner.name);
        let name = std::mem::replace(&mut inner.name, renamed);
        let present = std::mem::take(&mut inner.present);
        // Holes read as zeros from the sealed data file too.
        inner.holes.clear();
        let blocks = present.iter().map(|w| u64::from(w.count_ones())).sum();
        let layer = Arc::new(Layer {
            path: self.dir.join(&name),
            name,
            size: inner.size,
            state: RwLock::new(LayerState::Local {
                file: inner.upper.take().inspect(|file| file.close_idle()),
                present,
                lower_limit: inner.lower_limit,
                base: inner.base.clone(),
            }),
        });
        inner.base = Base::Layer(layer.clone());
        inner.lower_limit = inner.size;
        inner.created = false;
        *self.upper_mtime.lock() = None;
        self.apply_charge(&mut inner, 0);
        (
            FrozenFile {
                size: inner.size,
                base: Base::Layer(layer.clone()),
            },
            Some((layer, blocks)),
        )
    }

    fn read_upper(file: &File, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading upper data: {e}")),
            }
        }
        Ok(())
    }

    /// After a read of `[offset, end)`: when reads run sequentially, asks a
    /// background thread to load the lower chunks of the next
    /// [`READ_AHEAD`] bytes, so fetching and verifying them overlaps with
    /// the reader's work instead of stalling its next request.
    fn read_ahead(
        &self,
        store: &Store,
        base: &BlobBase,
        end: u64,
        lower_limit: u64,
        cached_above: CachedAbove,
    ) {
        if end >= lower_limit {
            return;
        }
        let already = self.prefetched_to.load(Ordering::Relaxed);
        if already >= end + READ_AHEAD / 2 {
            return;
        }
        let from = already.max(end);
        let to = (end + READ_AHEAD).min(lower_limit);
        if from >= to || self.prefetched_to.fetch_max(to, Ordering::Relaxed) >= to {
            return;
        }
        let Ok(Content::Blob(blob)) = base.content(store).cloned() else {
            return;
        };
        let streamed = (cached_above == CachedAbove::Yes)
            .then(|| (self.streamed.clone(), self.next_read.clone(), store.clone()));
        rayon::spawn(move || match blob.prefetch_noting(from, to - from) {
            Err(e) => tracing::debug!("read-ahead: {e}"),
            Ok(loaded) => {
                if let Some((streamed, next_read, store)) = streamed {
                    // The reader may have passed some meanwhile.
                    let reader_at = next_read.load(Ordering::Relaxed);
                    add_streamed(&mut streamed.lock(), &store, loaded, reader_at);
                }
            }
        });
    }

    /// Adds the chunks a streaming read loaded itself to the streamed
    /// ones, and drops from the chunk cache those that end at or before
    /// `end` (the reader has them now).
    fn release_streamed(&self, store: &Store, end: u64, loaded: Vec<(u64, ChunkId)>) {
        let mut streamed = self.streamed.lock();
        add_streamed(&mut streamed, store, loaded, end);
        while let Some(&(chunk_end, id)) = streamed.front() {
            if chunk_end > end {
                break;
            }
            streamed.pop_front();
            store.uncache(&id);
        }
    }

    /// For read-ahead across files: this file's lower content and length
    /// when it is at most `max_len` and nothing has asked for it ahead yet
    /// (then it counts as asked for). Cheap (no store access): callers hold
    /// the mount's lock.
    pub(crate) fn claim_prefetch(&self, max_len: u64) -> Option<(Arc<BlobBase>, u64)> {
        let inner = self.inner.read();
        let len = inner.lower_limit.min(inner.size);
        if len == 0 || len > max_len || inner.upper.is_some() {
            return None;
        }
        let Base::Blob(base) = &inner.base else {
            return None;
        };
        base.id?;
        if self.prefetched_to.fetch_max(len, Ordering::Relaxed) >= len {
            return None;
        }
        Some((base.clone(), len))
    }

    /// Loads the chunks of a claimed file's first `len` bytes into the
    /// chunk cache (see [`FileData::claim_prefetch`]).
    pub(crate) fn prefetch_claimed(store: &Store, base: &BlobBase, len: u64) -> Result<(), String> {
        match base.content(store)? {
            Content::Blob(blob) => blob.prefetch(0, len).map_err(|e| e.to_string()),
            Content::Memory(_) => Ok(()),
        }
    }

    /// Up to `len` bytes at `offset`.
    pub(crate) fn read(&self, store: &Store, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let available = self.size().saturating_sub(offset).min(len as u64);
        let mut out = vec![0u8; available as usize];
        let n = self.read_into(store, offset, &mut out, CachedAbove::No)?;
        out.truncate(n);
        Ok(out)
    }

    /// Up to `buf.len()` bytes at `offset`, into `buf`; returns how many
    /// (fewer only at the end of the file). Every byte of `buf[..n]` is
    /// written, whatever `buf` held before.
    pub(crate) fn read_into(
        &self,
        store: &Store,
        offset: u64,
        buf: &mut [u8],
        cached_above: CachedAbove,
    ) -> Result<usize, String> {
        let inner = self.inner.read();
        if offset >= inner.size {
            return Ok(0);
        }
        let end = inner.size.min(offset.saturating_add(buf.len() as u64));
        let n = (end - offset) as usize;
        let sequential = self.next_read.swap(end, Ordering::Relaxed) == offset;
        if !sequential {
            // A reader starting over (a second pass, a seek) gets its
            // read-ahead again from where it now is.
            self.prefetched_to.store(end, Ordering::Relaxed);
        }
        // A sequential reader with a page cache above notes the chunks it
        // reads from their packs itself, as its read-ahead does.
        let streaming = sequential && cached_above == CachedAbove::Yes;
        let mut loaded = Vec::new();
        read_blocks(
            store,
            inner.upper.as_deref(),
            (&inner.present, inner.lower_limit, &inner.base),
            offset,
            &mut buf[..n],
            streaming.then_some(&mut loaded),
        )?;
        if let (Some(upper), CachedAbove::Yes) = (inner.upper.as_deref(), cached_above) {
            upper.read_through(offset, end);
        }
        if let Base::Blob(blob) = &inner.base {
            if blob.id().is_some() {
                if sequential {
                    self.read_ahead(store, blob, end, inner.lower_limit, cached_above);
                }
                if streaming {
                    self.release_streamed(store, end, loaded);
                }
            }
        }
        Ok(n)
    }

    fn upper<'i>(&self, inner: &'i mut Inner) -> FsResult<&'i DataFile> {
        if inner.upper.is_none() {
            let file = DataFile::open(self.dir.join(&inner.name), &self.files, true).map_err(io)?;
            // A new file's atime equals its mtime: clear the mark.
            file.write(|f| f.set_times(FileTimes::new().set_accessed(UNIX_EPOCH)))
                .map_err(io)?;
            inner.upper = Some(file);
            inner.created = true;
            *self.upper_mtime.lock() = None;
        }
        inner.upper.as_deref().ok_or(Errno::EIO)
    }

    fn apply_charge(&self, inner: &mut Inner, new_charge: u64) {
        if new_charge >= inner.charged {
            self.files.charge(new_charge - inner.charged);
        } else {
            self.files.uncharge(inner.charged - new_charge);
        }
        inner.charged = new_charge;
    }

    /// Writes all of `data` at `offset`, or nothing.
    pub(crate) fn write(
        &self,
        store: &Store,
        offset: u64,
        data: &[u8],
        quota: u64,
        cached_above: CachedAbove,
    ) -> FsResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let mut inner = self.inner.write();
        let new_size = inner.size.max(end);
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        // Quota: what the file will hold after this write.
        let new_charge = inner.charge_for(new_size, first..last + 1);
        if !inner.fits(&self.files, quota, new_size, first..last + 1) {
            return Err(Errno::ENOSPC);
        }
        // Copy up the lower bytes of partly written blocks. Blocks become
        // present only once the write has succeeded: until then a reader
        // (and a failed write) leaves them reading the lower bytes.
        let copy_limit = inner.lower_limit.min(inner.size);
        let mut layout_changed = new_size != inner.size;
        let mut newly_present = Vec::new();
        for block in first..=last {
            if inner.is_charged(block) {
                continue;
            }
            layout_changed = true;
            if inner.is_present(block) {
                // A hole: zeros already, charged once written.
                newly_present.push(block);
                continue;
            }
            let start = block * BLOCK_SIZE;
            let stop = (start + BLOCK_SIZE).min(copy_limit);
            let covered = offset <= start && end >= stop;
            if start < copy_limit && !covered {
                let mut buf = vec![0u8; (stop - start) as usize];
                inner.base.read(store, start, &mut buf).map_err(|e| {
                    tracing::error!("copy-up of {}: {e}", inner.name);
                    Errno::EIO
                })?;
                self.upper(&mut inner)?
                    .write(|f| f.write_all_at(&buf, start))
                    .map_err(io)?;
            }
            newly_present.push(block);
        }
        let upper = self.upper(&mut inner)?;
        let written = upper.write(|f| f.write_all_at(data, offset));
        if written.is_ok() {
            upper.wrote(offset, end, cached_above == CachedAbove::Yes);
        }
        if let Err(e) = written {
            // Holes the write reached partly must read as zeros again.
            if let Some(file) = inner.upper.clone() {
                for &block in newly_present.iter().filter(|&&b| inner.is_hole(b)) {
                    let _ = file.write(|f| punch_upper(f, block * BLOCK_SIZE, BLOCK_SIZE));
                }
            }
            return Err(io(e));
        }
        for block in newly_present {
            inner.set_present(block);
        }
        inner.size = new_size;
        self.apply_charge(&mut inner, new_charge);
        self.dirty.store(true, Ordering::Release);
        if layout_changed {
            self.layout_dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Sets the size: shrinking drops data past it, growing adds zeros
    /// (unallocated: growing costs nothing). Returns the upper data file
    /// when it was cut shorter: that cut must be durable before a journal
    /// record of the new size is (see [`super::journal::Journal::sync_first`]),
    /// or a power cut could leave the old bytes past the recorded size,
    /// where a later extension of the file would bring them back.
    pub(crate) fn truncate(&self, size: u64) -> FsResult<Option<Arc<DataFile>>> {
        if size > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let mut inner = self.inner.write();
        let mut shrunk = None;
        if size < inner.size {
            inner.lower_limit = inner.lower_limit.min(size);
            inner.clear_from(size.div_ceil(BLOCK_SIZE));
            if let Some(file) = inner.upper.clone() {
                file.write(|f| f.set_len(size)).map_err(io)?;
                // The cut may leave the new last block without a byte on
                // disk (its data was all past the cut): a hole, as a
                // restart would find it.
                let last = size / BLOCK_SIZE;
                if size % BLOCK_SIZE != 0
                    && inner.is_charged(last)
                    && !takes_space(&*file.fd().map_err(io)?, last * BLOCK_SIZE, size)
                {
                    inner.set_hole(last);
                }
                shrunk = Some(file);
            }
        }
        inner.size = size;
        let charge = inner.charge_for(size, 0..0);
        self.apply_charge(&mut inner, charge);
        self.dirty.store(true, Ordering::Release);
        self.layout_dirty.store(true, Ordering::Release);
        Ok(shrunk)
    }

    /// After a recovery: removes from the upper data file what the
    /// recovered layout does not account for — bytes past the file's size
    /// (a shrink that never reached the disk) and blocks that are not
    /// present (writes whose journal record was lost). Neither is read
    /// today, but a later write that extends the file, or fills part of
    /// such a block, would make them visible again.
    pub(crate) fn scrub_unrecorded(&self) -> std::io::Result<()> {
        let inner = self.inner.read();
        match &inner.upper {
            Some(file) => file.write(|f| scrub(f, inner.size, &inner.present)),
            None => Ok(()),
        }
    }

    /// Allocates `[offset, offset + len)` (`fallocate` mode 0): every
    /// block of it is copied up or reserved in the upper data file and
    /// charged, so later writes there never lack space; the size grows to
    /// cover it. All or nothing: ENOSPC past the quota.
    pub(crate) fn allocate(
        &self,
        store: &Store,
        offset: u64,
        len: u64,
        quota: u64,
    ) -> FsResult<()> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let mut inner = self.inner.write();
        let new_size = inner.size.max(end);
        let (first, last) = (offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
        if !inner.fits(&self.files, quota, new_size, first..last + 1) {
            return Err(Errno::ENOSPC);
        }
        let new_charge = inner.charge_for(new_size, first..last + 1);
        let copy_limit = inner.lower_limit.min(inner.size);
        let mut newly = Vec::new();
        for block in first..=last {
            if inner.is_charged(block) {
                continue;
            }
            let start = block * BLOCK_SIZE;
            if !inner.is_present(block) && start < copy_limit {
                // Lower bytes: allocating them is copying them up.
                let stop = (start + BLOCK_SIZE).min(copy_limit);
                let mut buf = vec![0u8; (stop - start) as usize];
                inner.base.read(store, start, &mut buf).map_err(|e| {
                    tracing::error!("copy-up of {}: {e}", inner.name);
                    Errno::EIO
                })?;
                self.upper(&mut inner)?
                    .write(|f| f.write_all_at(&buf, start))
                    .map_err(io)?;
            } else {
                let file = self.upper(&mut inner)?;
                let reserved = file
                    .write(|f| fallocate_upper(f, libc::FALLOC_FL_KEEP_SIZE, start, BLOCK_SIZE));
                match reserved {
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        // A filesystem that cannot reserve: zeros, written.
                        file.write(|f| f.write_all_at(&vec![0u8; BLOCK_SIZE as usize], start))
                            .map_err(io)?;
                    }
                    other => other.map_err(io)?,
                }
            }
            newly.push(block);
        }
        for block in newly {
            inner.set_present(block);
        }
        inner.size = new_size;
        self.apply_charge(&mut inner, new_charge);
        self.dirty.store(true, Ordering::Release);
        self.layout_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Punches a hole over `[offset, offset + len)` within the file: it
    /// reads as zeros and the blocks it covers wholly are freed (or, over
    /// lower data, never copied up) — it costs nothing. A partly covered
    /// block is zeroed in place; one still in the lower layer must be
    /// copied up first, the one cost a punch can have (ENOSPC past the
    /// quota, changing nothing).
    pub(crate) fn punch(&self, store: &Store, offset: u64, len: u64, quota: u64) -> FsResult<()> {
        #[derive(Clone, Copy, PartialEq)]
        enum Step {
            /// Freed: reads as zeros, costs nothing.
            Hole,
            /// Zeroed in place.
            Zero,
            /// Copied up from the lower layer, then zeroed in part.
            CopyUp,
        }
        let mut inner = self.inner.write();
        let size = inner.size;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(());
        }
        let copy_limit = inner.lower_limit.min(size);
        let mut steps = Vec::new();
        for block in offset / BLOCK_SIZE..=(end - 1) / BLOCK_SIZE {
            let start = block * BLOCK_SIZE;
            let whole = offset <= start && end >= (start + BLOCK_SIZE).min(size);
            // Lower bytes under the punched part of this block.
            let in_lower = !inner.is_present(block) && offset.max(start) < copy_limit;
            let step = match (whole, inner.is_present(block)) {
                (true, _) if inner.is_present(block) || in_lower => Step::Hole,
                (false, true) if inner.is_charged(block) => Step::Zero,
                (false, false) if in_lower => Step::CopyUp,
                _ => continue, // zeros already
            };
            steps.push((block, step));
        }
        // The charge afterwards, checked before anything changes.
        let (mut present, mut holes) = (inner.present.clone(), inner.holes.clone());
        for &(block, step) in &steps {
            match step {
                Step::Hole => {
                    set_bit(&mut present, block);
                    set_bit(&mut holes, block);
                }
                Step::CopyUp => set_bit(&mut present, block),
                Step::Zero => {}
            }
        }
        let new_charge = Inner {
            present,
            holes,
            ..Inner::new(String::new(), Base::blob(None), size, 0)
        }
        .charge_for(size, 0..0);
        if !self.files.room_for(inner.charged, new_charge, quota) {
            return Err(Errno::ENOSPC);
        }
        for (block, step) in steps {
            let start = block * BLOCK_SIZE;
            let (from, to) = (offset.max(start), end.min(start + BLOCK_SIZE));
            if step == Step::CopyUp {
                let stop = (start + BLOCK_SIZE).min(copy_limit);
                let mut buf = vec![0u8; (stop - start) as usize];
                inner.base.read(store, start, &mut buf).map_err(|e| {
                    tracing::error!("copy-up of {}: {e}", inner.name);
                    Errno::EIO
                })?;
                buf[(from - start) as usize..(to.min(stop) - start) as usize].fill(0);
                debug_assert!(from < stop, "a copy-up only where lower bytes are punched");
                self.upper(&mut inner)?
                    .write(|f| f.write_all_at(&buf, start))
                    .map_err(io)?;
                inner.set_present(block);
                continue;
            }
            let file = self.upper(&mut inner)?;
            match step {
                Step::Hole => {
                    file.write(|f| punch_upper(f, start, BLOCK_SIZE))
                        .map_err(io)?;
                    inner.set_hole(block);
                }
                _ => file
                    .write(|f| f.write_all_at(&vec![0u8; (to - from) as usize], from))
                    .map_err(io)?,
            }
        }
        self.apply_charge(&mut inner, new_charge);
        self.dirty.store(true, Ordering::Release);
        self.layout_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE. Files with lower data report it all as data
    /// (allowed by POSIX); files wholly in the upper layer ask the host.
    pub(crate) fn seek_data_hole(&self, _store: &Store, offset: u64, hole: bool) -> FsResult<u64> {
        let inner = self.inner.read();
        if offset >= inner.size {
            return Err(Errno::ENXIO);
        }
        if inner.lower_limit > 0 || inner.upper.is_none() {
            if inner.lower_limit == 0 && inner.upper.is_none() {
                // Never written: all hole.
                return if hole { Ok(offset) } else { Err(Errno::ENXIO) };
            }
            return Ok(if hole { inner.size } else { offset });
        }
        let file = inner.upper.as_ref().ok_or(Errno::EIO)?.fd().map_err(io)?;
        let whence = if hole {
            libc::SEEK_HOLE
        } else {
            libc::SEEK_DATA
        };
        // SAFETY: lseek on a file descriptor we own; no memory is touched.
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        if at < 0 {
            let err = std::io::Error::last_os_error();
            return Err(io(err));
        }
        Ok((at as u64).min(inner.size))
    }

    /// Makes the upper data durable; without `data_only`, the data file's
    /// own attributes too. With `mtime` (the file's), the data file is
    /// given that mtime first unless it has it already, so the sync makes
    /// the file's mtime durable as well (recovery adopts it: see
    /// [`FileData::upper_mtimes`]). Once a sync failed, every later one
    /// fails with the same error.
    pub(crate) fn sync(&self, data_only: bool, mtime: Option<Timestamp>) -> FsResult<()> {
        match self.sync_failure.load(Ordering::SeqCst) {
            0 => {}
            errno => return Err(Errno(errno)),
        }
        let result = self.sync_upper(data_only, mtime);
        if let Err(e) = result {
            tracing::error!(
                "syncing data file {} failed (errno {}): every later sync of this file fails too",
                self.upper_name(),
                e.0
            );
            let _ = self
                .sync_failure
                .compare_exchange(0, e.0, Ordering::SeqCst, Ordering::SeqCst);
        }
        result
    }

    fn sync_upper(&self, data_only: bool, mtime: Option<Timestamp>) -> FsResult<()> {
        // Synced outside the lock: writers to the file go on meanwhile.
        let upper = self.inner.read().upper.clone();
        if let Some(file) = upper {
            if !data_only {
                if let Some(mtime) = mtime {
                    self.give_upper_mtime(&*file.fd().map_err(io)?, mtime)?;
                }
            }
            file.sync(data_only).map_err(io)?;
        }
        self.sync_new_name()
    }

    /// Sets the data file's mtime (and, as the mark of it, its atime) to
    /// `mtime` unless this process last set it to that. Between, writes
    /// within one clock tick leave the data file's times as they are (the
    /// kernel stamps files with the same tick-grained clock as the file's
    /// mtime, see `CowFs::write`); a write in a later tick stamps the data
    /// file's mtime and, the file's mtime having moved too, the next sync
    /// gives it again.
    fn give_upper_mtime(&self, file: &File, mtime: Timestamp) -> FsResult<()> {
        let mut given = self.upper_mtime.lock();
        if *given != Some(mtime) {
            // atime = mtime marks the mtime as given here: a later write
            // that stamps the data file changes its mtime alone.
            let at = mtime.to_system_time();
            file.set_times(FileTimes::new().set_accessed(at).set_modified(at))
                .map_err(io)?;
            *given = Some(mtime);
        }
        Ok(())
    }

    /// Makes a new data file's name durable (once).
    fn sync_new_name(&self) -> FsResult<()> {
        let created = self.inner.read().created;
        if created {
            // The data file is new: make its name durable too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            self.inner.write().created = false;
        }
        Ok(())
    }

    /// Gives the data file (if there is one) the file's mtime `mtime` that
    /// a truncation, an allocation or an explicit `utimensat` set, so that
    /// recovery never prefers the time of an earlier write over it.
    /// (A failure is logged: the change itself stands, and recovery may
    /// then prefer an earlier write's time.)
    pub(crate) fn set_upper_mtime(&self, mtime: Timestamp) {
        let upper = self.inner.read().upper.clone();
        if let Some(file) = upper {
            let given = file
                .fd()
                .map_err(io)
                .and_then(|fd| self.give_upper_mtime(&fd, mtime));
            if let Err(e) = given {
                tracing::warn!(
                    "setting the mtime of data file {}: errno {}",
                    self.upper_name(),
                    e.0
                );
            }
        }
    }

    /// The mtime of every data file in `dir` by name that carries the mark
    /// of an mtime given by [`FileData::sync`] (or by a truncation or an
    /// explicit time change) and not moved by a write since: atime equal
    /// to mtime. Read before recovery replays anything into the files;
    /// where it is newer than the journal's, the file was synced after
    /// its last journal record.
    pub(crate) fn upper_mtimes(dir: &Path) -> HashMap<String, Timestamp> {
        let mut out = HashMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let (Ok(name), Ok(meta)) = (entry.file_name().into_string(), entry.metadata()) else {
                continue;
            };
            let marked = meta.atime() == meta.mtime() && meta.atime_nsec() == meta.mtime_nsec();
            if let Some(t) = Timestamp::new(meta.mtime(), meta.mtime_nsec() as u32) {
                if marked {
                    out.insert(name, t);
                }
            }
        }
        out
    }

    /// The data file's name in the data directory.
    pub(crate) fn upper_name(&self) -> String {
        self.inner.read().name.clone()
    }

    /// Gives back this file's quota charge, keeping its data file (another
    /// `FileData` takes it over).
    pub(crate) fn release_charge(&self) {
        let mut inner = self.inner.write();
        self.apply_charge(&mut inner, 0);
    }

    /// Closes the data file's descriptor, if it is not in use (the
    /// sandbox closed the file).
    pub(crate) fn close_idle(&self) {
        if let Some(file) = &self.inner.read().upper {
            file.close_idle();
        }
    }

    /// Drops the upper data of a file that no longer exists.
    pub(crate) fn discard(&self) {
        let mut inner = self.inner.write();
        let charged = inner.charged;
        inner.upper = None;
        inner.present.clear();
        self.apply_charge(&mut inner, 0);
        remove_data_file(self.dir.join(&inner.name), charged >= REMOVE_IN_BACKGROUND);
    }
}

/// Data files holding at least this much are removed in the background.
const REMOVE_IN_BACKGROUND: u64 = 8 << 20;

/// Removes a data file no longer read, in place or by a background
/// thread: freeing a large file's blocks can take the disk milliseconds,
/// and the caller holds its mount's lock (every request of the mount would
/// wait). A crash before the thread gets to it leaves an orphan the next
/// recovery sweeps; data-file names are never reused, so a late removal
/// cannot hit a newer file.
fn remove_data_file(path: PathBuf, in_background: bool) {
    let path = match in_background {
        true => match remover() {
            Some(remover) => match remover.send(path) {
                Ok(()) => return,
                Err(SendError(path)) => path,
            },
            None => path,
        },
        false => path,
    };
    let _ = std::fs::remove_file(path);
}

/// The background thread of [`remove_data_file`], started on first use;
/// `None` if none starts (then files are removed in place).
fn remover() -> &'static Option<Sender<PathBuf>> {
    static REMOVER: OnceLock<Option<Sender<PathBuf>>> = OnceLock::new();
    REMOVER.get_or_init(start_remover)
}

/// Starts the threads this module starts on first use (the data-file
/// remover), so that they are started by the caller and take its CPU
/// affinity and scheduling class, not those of a thread serving requests
/// (see `fuse::ring`).
pub(crate) fn start_shared_threads() {
    let _ = remover();
    super::datafile::start_shared_threads();
}

fn start_remover() -> Option<Sender<PathBuf>> {
    let (send, receive) = std::sync::mpsc::channel::<PathBuf>();
    std::thread::Builder::new()
        .name("layerfs-remove".into())
        .spawn(move || {
            for path in receive {
                let _ = std::fs::remove_file(path);
            }
        })
        .ok()
        .map(|_| send)
}
