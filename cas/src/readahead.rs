//! Read-ahead of many chunks at once.
//!
//! A sequential reader of a large blob needs thousands of chunks (64 KiB
//! on average) that sit next to each other in a few packs. Reading them
//! one `pread` at a time through the page cache costs a zeroed buffer, a
//! copy out of the page cache and the page cache's own bookkeeping per
//! frame, and leaves the disk's speed to the kernel's read-ahead heuristics
//! (on this project's virtual disks, buffered reads of a cold file moved
//! between 0.3 and 2 GB/s while direct reads held 1.8–2.4 GB/s).
//!
//! So a read-ahead groups the frames it needs into pieces of at most
//! [`PIECE_BYTES`] (frames of one pack, in pack order, with small gaps),
//! claims each frame's slot in the chunk cache (a reader that reaches a
//! claimed chunk waits for it instead of reading it again), reads each
//! piece with one `O_DIRECT` read into an aligned buffer, and verifies
//! every frame as a slice of that buffer. Pieces are read and verified
//! side by side on a pool of their own (two threads per CPU). A raw
//! frame's chunk stays a slice of its piece's buffer; a piece's memory is
//! freed when the last of its chunks leaves the cache (at most
//! [`PIECE_BYTES`] plus one alignment unit per piece).
//!
//! Where `O_DIRECT` is refused (a file system without it), a piece is one
//! buffered read instead. Any failure only skips the frames concerned: the
//! read that needs such a chunk reads it as always and reports the error.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quick_cache::sync::GuardResult;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::frame::FRAME_HEADER_LEN;
use crate::id::{ChunkId, ChunkKind};
use crate::index::ChunkLocation;
use crate::pack::{self, PackId};
use crate::store::{verify_frame, Inner};

/// A piece (frames read in one system call) spans at most this many bytes,
/// unless a single frame is larger.
const PIECE_BYTES: u64 = 1 << 20;

/// Frames of one pack closer than this are read in one piece (the bytes
/// between are read and dropped).
const GAP: u64 = 64 << 10;

/// The alignment of an `O_DIRECT` read's offset, length and buffer: 4 KiB
/// covers devices with 512-byte and with 4 KiB logical blocks.
const ALIGN: u64 = 4096;

/// Threads that read and verify pieces: two per CPU, since each waits on
/// the disk for about half its time (measured on 2 CPUs: 4 threads read a
/// cold 1 GiB file through a mount at 1.14–1.18 GB/s, 2 threads at
/// 0.94–1.01).
fn read_threads() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The pool pieces are read on (`None` if it cannot be built: then the
/// global pool reads them).
fn read_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(read_threads())
            .thread_name(|i| format!("cas-read-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Packs opened with `O_DIRECT`, and whether their file system refused it.
pub(crate) struct DirectPacks {
    files: quick_cache::sync::Cache<PackId, Arc<File>>,
    refused: AtomicBool,
}

impl DirectPacks {
    pub(crate) fn new(capacity: usize) -> DirectPacks {
        DirectPacks {
            files: quick_cache::sync::Cache::new(capacity),
            refused: AtomicBool::new(false),
        }
    }

    pub(crate) fn clear(&self) {
        self.files.clear();
    }

    pub(crate) fn forget(&self, pack: PackId) {
        self.files.remove(&pack);
    }

    /// Pack `pack` opened with `O_DIRECT`; `None` once the file system has
    /// refused the flag (then pieces are read through the page cache).
    fn open(&self, dir: &std::path::Path, pack: PackId) -> std::io::Result<Option<Arc<File>>> {
        if self.refused.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let opened = self.files.get_or_insert_with(&pack, || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(pack::pack_path(dir, pack))
                .map(Arc::new)
        });
        match opened {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.refused.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// One frame a read-ahead wants: its chunk and where the index puts it.
#[derive(Clone, Copy)]
struct Wanted {
    id: ChunkId,
    at: ChunkLocation,
}

impl Wanted {
    fn end(&self) -> u64 {
        self.at.offset + FRAME_HEADER_LEN as u64 + u64::from(self.at.stored_len)
    }
}

impl Inner {
    /// See [`crate::Store::load_ahead`].
    pub(crate) fn load_ahead(self: &Arc<Self>, ids: &[ChunkId]) -> Vec<ChunkId> {
        let pieces = self.pieces(ids);
        if pieces.is_empty() {
            return Vec::new();
        }
        let Some(pool) = read_pool() else {
            return self.load_pieces(&pieces);
        };
        if pool.current_thread_index().is_some() {
            return pool.install(|| self.load_pieces(&pieces));
        }
        // Handed to the pool, waited for by blocking this thread. Not
        // `install`: called from another pool's worker (a read-ahead the
        // mount spawned on the global pool), `install` keeps that worker
        // busy with other jobs of its pool while it waits, so it picks up
        // the next read-ahead of the same file and returns only once that
        // one has, and the reader cannot release what the first one
        // loaded until the whole stream is read (measured: a 48 MiB file
        // all in the chunk cache at once).
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let inner = Arc::clone(self);
        pool.spawn(move || {
            let _ = done.send(inner.load_pieces(&pieces));
        });
        wait.recv().unwrap_or_default()
    }

    /// The frames of `ids` to read ahead, grouped into pieces.
    fn pieces(&self, ids: &[ChunkId]) -> Vec<Vec<Wanted>> {
        let mut pieces: Vec<Vec<Wanted>> = Vec::new();
        for id in ids {
            if self.chunk_cache.peek(id).is_some() {
                continue;
            }
            // Indexed chunks only: one awaiting its commit may still be in
            // the active pack's dirty pages, which a direct read would
            // force out.
            let Ok(Some(at)) = self.index.location(id) else {
                continue;
            };
            if at.kind != ChunkKind::Data || at.pack.is_remote() {
                continue;
            }
            let wanted = Wanted { id: *id, at };
            match pieces.last_mut() {
                Some(piece)
                    if piece.last().is_some_and(|last| {
                        last.at.pack == at.pack
                            && at.offset >= last.end()
                            && at.offset - last.end() < GAP
                    }) && wanted.end() - piece[0].at.offset <= PIECE_BYTES =>
                {
                    piece.push(wanted)
                }
                _ => pieces.push(vec![wanted]),
            }
        }
        pieces
    }

    /// Loads pieces side by side on the current pool.
    fn load_pieces(&self, pieces: &[Vec<Wanted>]) -> Vec<ChunkId> {
        pieces
            .par_iter()
            .flat_map_iter(|piece| self.load_piece(piece))
            .collect()
    }

    /// Claims, reads and verifies the frames of one piece; returns the
    /// chunks it put in the cache.
    fn load_piece(&self, piece: &[Wanted]) -> Vec<ChunkId> {
        // Claim the chunks nobody has yet; never wait for one another
        // thread is reading (two read-aheads claiming in different orders
        // must not wait on each other).
        let mut claimed = Vec::with_capacity(piece.len());
        for wanted in piece {
            if let GuardResult::Guard(guard) = self
                .chunk_cache
                .get_value_or_guard(&wanted.id, Some(Duration::ZERO))
            {
                claimed.push((wanted, guard));
            }
        }
        let (Some((first, _)), Some((last, _))) = (claimed.first(), claimed.last()) else {
            return Vec::new();
        };
        let (start, end) = (first.at.offset, last.end());
        let (bytes, base) = match self.read_span(&first.id, first.at.pack, start, end) {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!("read-ahead of pack {}: {e}", first.at.pack);
                return Vec::new();
            }
        };
        let mut loaded = Vec::with_capacity(claimed.len());
        for (wanted, guard) in claimed {
            let from = base + (wanted.at.offset - start) as usize;
            let to = base + (wanted.end() - start) as usize;
            match verify_frame(&wanted.id, &wanted.at, bytes.slice(from..to)) {
                Ok(chunk) => {
                    let _ = guard.insert(chunk);
                    loaded.push(wanted.id);
                }
                // Dropping the claim lets the reader read it and report.
                Err(e) => tracing::debug!("read-ahead: {e}"),
            }
        }
        loaded
    }

    /// Bytes `[start, end)` of pack `pack`, as a buffer and the index in it
    /// where byte `start` is.
    /// (`first`: a chunk in it, named if the pack is missing).
    fn read_span(
        &self,
        first: &ChunkId,
        pack: PackId,
        start: u64,
        end: u64,
    ) -> Result<(Bytes, usize)> {
        let read_err = |e| Error::io(format!("reading pack {pack}"), e);
        let Some(file) = self
            .direct_packs
            .open(&self.packs_dir, pack)
            .map_err(read_err)?
        else {
            let mut buf = vec![0u8; (end - start) as usize];
            let file = self.pack_file(first, pack)?;
            file.read_exact_at(&mut buf, start).map_err(read_err)?;
            return Ok((Bytes::from(buf), 0));
        };
        let aligned_start = start - start % ALIGN;
        let aligned_len = (end - aligned_start).div_ceil(ALIGN) * ALIGN;
        let bytes = read_direct(&file, aligned_start, aligned_len as usize).map_err(read_err)?;
        let base = (start - aligned_start) as usize;
        if bytes.len() < base + (end - start) as usize {
            return Err(read_err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok((bytes, base))
    }
}

/// Piece buffers kept for reuse, at most this many (idle, they hold
/// `MAX_POOLED` × ([`PIECE_BYTES`] + 2 × [`ALIGN`]) bytes). A fresh buffer
/// costs a page fault and a page the kernel zeroes per 4 KiB on its first
/// read (measured: 9 % of a cold sequential read), a reused one neither.
const MAX_POOLED: usize = 64;

/// The capacity of a pooled buffer: a whole piece, its alignment padding
/// and the rounding of its end.
const POOLED_CAPACITY: usize = (PIECE_BYTES + 2 * ALIGN) as usize;

static POOL: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());

/// The bytes of one piece read, `buf[pad..]`, in a buffer that goes back
/// to the pool when the last chunk sliced from it is dropped.
struct PieceBuffer {
    buf: Vec<u8>,
    pad: usize,
}

impl AsRef<[u8]> for PieceBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.pad..]
    }
}

impl Drop for PieceBuffer {
    fn drop(&mut self) {
        if self.buf.capacity() == POOLED_CAPACITY {
            let mut pool = POOL.lock();
            if pool.len() < MAX_POOLED {
                pool.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// An empty buffer with room for `len` bytes after its alignment padding:
/// a pooled one when that is large enough.
fn piece_buffer(len: usize) -> Vec<u8> {
    if len + ALIGN as usize > POOLED_CAPACITY {
        return Vec::with_capacity(len + ALIGN as usize);
    }
    let pooled = POOL.lock().pop();
    match pooled {
        Some(mut buf) => {
            buf.clear();
            buf
        }
        None => Vec::with_capacity(POOLED_CAPACITY),
    }
}

/// Reads up to `len` bytes at `offset` (both multiples of [`ALIGN`]) of a
/// file opened with `O_DIRECT`, into a buffer that holds them from an
/// [`ALIGN`] boundary. Stops early only at the end of the file.
fn read_direct(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = piece_buffer(len);
    let pad = buf.as_ptr().align_offset(ALIGN as usize);
    buf.resize(pad, 0);
    let mut got = 0usize;
    while got < len {
        let spare = &mut buf.spare_capacity_mut()[..len - got];
        // SAFETY: the kernel writes at most `spare.len()` bytes at
        // `spare`'s pointer, which lies in the vector's own capacity
        // (at least `pad + len` bytes, of which `pad + got` are in use),
        // and reads no memory of ours; the descriptor is open for the call.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                (offset + got as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel initialised the `n` bytes just past the
        // vector's length (`n <= spare.len()`, within its capacity).
        unsafe { buf.set_len(buf.len() + n as usize) };
        got += n as usize;
    }
    Ok(Bytes::from_owner(PieceBuffer { buf, pad }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Chunking, Store, StoreConfig};

    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Where `O_DIRECT` is refused, pieces are read through the page cache
    /// and the window loads the same, verified chunks.
    #[test]
    fn without_direct_reads_a_window_loads_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
        let data = pseudo_random(6 << 20);
        let writer = store.writer("test");
        let info = writer
            .write_blob(&mut &data[..], Chunking::ContentDefined)
            .unwrap();
        writer.commit().unwrap();
        store.clear_cache();
        store
            .inner
            .direct_packs
            .refused
            .store(true, Ordering::Relaxed);
        let blob = store.blob(&info.id).unwrap();
        let loaded = blob.prefetch_noting(0, data.len() as u64).unwrap();
        assert!(loaded.len() > 50);
        assert!(store.inner.direct_packs.files.is_empty());
        assert!(loaded.iter().all(|(_, id)| store.is_cached(id)));
        let mut buf = vec![0u8; data.len()];
        assert_eq!(blob.read_at(0, &mut buf).unwrap(), data.len());
        assert!(buf == data);
    }

    /// A buffer goes back to the pool when its last slice is dropped; read
    /// again, it holds the new bytes (its old contents never show), and a
    /// slice outlives the buffer's other handles.
    #[test]
    fn reused_piece_buffers_hold_only_the_bytes_just_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = pseudo_random(3 << 20);
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        for round in 0..3usize {
            let offset = (round as u64) << 20;
            let bytes = read_direct(&file, offset, 1 << 20).unwrap();
            assert!(bytes[..] == data[offset as usize..][..1 << 20]);
            let slice = bytes.slice(100..200);
            drop(bytes);
            assert!(slice[..] == data[offset as usize + 100..][..100]);
        }
        // Past the end: a short read, not an error.
        let bytes = read_direct(&file, 3 << 20, 1 << 20).unwrap();
        assert!(bytes.is_empty());
    }
}
