//! Reading a stored image: pages by number (for the page server) and
//! eager restore into a sparse file (zero pages are holes).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cas::{ChunkId, Store};
use rayon::prelude::*;

use crate::capture::dir_of;
use crate::error::{io, Error, Result};
use crate::image::{ImageIndex, PageSource, MEMORY_DIR, MEMORY_IMAGE, PAGE_SIZE};

/// What a memory snapshot's root node is.
#[derive(Clone, Debug)]
pub enum RootKind {
    /// One memory image.
    Image,
    /// A checkpoint directory: these files, each an image.
    Dir(Vec<(crate::image::DirFile, ChunkId)>),
}

/// The kind of root node `id`.
pub fn root_kind(store: &Store, id: &ChunkId) -> Result<RootKind> {
    let node = store.get_node(id)?;
    match node.node_type {
        MEMORY_IMAGE => Ok(RootKind::Image),
        MEMORY_DIR => {
            let (header, links) = dir_of(*id, &node)?;
            Ok(RootKind::Dir(header.files.into_iter().zip(links).collect()))
        }
        other => Err(Error::Corrupt {
            node: *id,
            reason: format!("type {} is not a memory image", other.0),
        }),
    }
}

#[derive(Clone)]
struct ByteWeight;

impl quick_cache::Weighter<ChunkId, Bytes> for ByteWeight {
    fn weight(&self, _: &ChunkId, value: &Bytes) -> u64 {
        value.len().max(1) as u64
    }
}

/// A loaded image whose pages can be read by number; decoded chunks are
/// kept in a cache of a fixed byte budget, shared by every reader.
pub struct ImageReader {
    store: Store,
    index: ImageIndex,
    cache: quick_cache::sync::Cache<ChunkId, Bytes, ByteWeight>,
}

impl ImageReader {
    /// Loads image record `id`, with `cache_bytes` of decoded chunks.
    pub fn open(store: &Store, id: &ChunkId, cache_bytes: u64) -> Result<ImageReader> {
        let index = ImageIndex::load(store, id)?;
        let items = (cache_bytes / (16 * PAGE_SIZE as u64)).max(16) as usize;
        Ok(ImageReader {
            store: store.clone(),
            index,
            cache: quick_cache::sync::Cache::with_weighter(items, cache_bytes.max(1), ByteWeight),
        })
    }

    /// The page table.
    pub fn index(&self) -> &ImageIndex {
        &self.index
    }

    /// Bytes of the image.
    pub fn size(&self) -> u64 {
        self.index.size()
    }

    /// The decoded, verified data chunk `id`.
    pub fn chunk(&self, id: &ChunkId) -> Result<Bytes> {
        if let Some(bytes) = self.cache.get(id) {
            return Ok(bytes);
        }
        let bytes = self.store.get(id)?;
        if bytes.len() % PAGE_SIZE != 0 {
            return Err(Error::Corrupt {
                node: self.index.id,
                reason: format!("chunk {id} is {} bytes, not whole pages", bytes.len()),
            });
        }
        self.cache.insert(*id, bytes.clone());
        Ok(bytes)
    }

    /// Reads image bytes from `offset` into `buf` (zero pages read as
    /// zeros); the count read, short only at the end of the image.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.size();
        if offset >= size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset) as usize;
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let in_page = (at % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - in_page).min(len - done);
            match self.page(at / PAGE_SIZE as u64)? {
                Some(page) => buf[done..done + n].copy_from_slice(&page[in_page..in_page + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(len)
    }

    /// Page `number`'s bytes (`PAGE_SIZE` of them), or `None` for a zero
    /// page or past the end.
    pub fn page(&self, number: u64) -> Result<Option<Bytes>> {
        match self.index.page(number)? {
            None | Some(PageSource::Zero) => Ok(None),
            Some(PageSource::Chunk { chunk, page }) => {
                let bytes = self.chunk(&chunk)?;
                let start = page as usize * PAGE_SIZE;
                if start + PAGE_SIZE > bytes.len() {
                    return Err(Error::Corrupt {
                        node: self.index.id,
                        reason: format!(
                            "page {number} is page {page} of chunk {chunk}, which has {} pages",
                            bytes.len() / PAGE_SIZE
                        ),
                    });
                }
                Ok(Some(bytes.slice(start..start + PAGE_SIZE)))
            }
        }
    }
}

/// What an eager restore wrote.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RestoreStats {
    /// Bytes of the restored image (or images).
    pub size: u64,
    /// Bytes written (the rest are holes).
    pub written: u64,
    pub files: u64,
}

/// Pages restored per task (4 MiB).
const RESTORE_SPAN_PAGES: u64 = 1024;

/// Writes image record `id` to `target` as a sparse file: made beside it
/// and renamed over it once complete, so `target` is never half-written.
/// Not synced: the restored file is a copy the snapshot can make again.
pub fn restore_image(
    store: &Store,
    id: &ChunkId,
    target: &Path,
    mode: u32,
) -> Result<RestoreStats> {
    // Decoding chunk by chunk needs no more than a few in flight per task.
    let reader = Arc::new(ImageReader::open(store, id, 64 << 20)?);
    let temp = temp_beside(target)?;
    let result = write_sparse(&reader, &temp, mode).and_then(|stats| {
        std::fs::rename(&temp, target).map_err(io(format!(
            "renaming {} to {}",
            temp.display(),
            target.display()
        )))?;
        Ok(stats)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn temp_beside(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} names no file", target.display())))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".strata-{}", std::process::id()));
    Ok(target.with_file_name(temp_name))
}

fn write_sparse(reader: &ImageReader, path: &Path, mode: u32) -> Result<RestoreStats> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    let size = reader.size();
    file.set_len(size)
        .map_err(io(format!("sizing {}", path.display())))?;
    let pages = reader.index().page_count();
    let spans = pages.div_ceil(RESTORE_SPAN_PAGES);
    let written: u64 = (0..spans)
        .into_par_iter()
        .map(|span| {
            let first = span * RESTORE_SPAN_PAGES;
            let end = (first + RESTORE_SPAN_PAGES).min(pages);
            write_span(reader, &file, first, end, size)
        })
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))?;
    Ok(RestoreStats {
        size,
        written,
        files: 1,
    })
}

/// Writes pages `first..end`: each run of pages that lie one after the
/// other in one chunk is written straight from the decoded chunk, one
/// write per run (no copy through a buffer); zero pages stay holes.
fn write_span(reader: &ImageReader, file: &File, first: u64, end: u64, size: u64) -> Result<u64> {
    let mut written = 0u64;
    // The run being gathered: chunk, its first page in the chunk, the
    // image page it starts at, and its length in pages.
    let mut run: Option<(ChunkId, u32, u64, u32)> = None;
    let mut flush = |run: &mut Option<(ChunkId, u32, u64, u32)>| -> Result<()> {
        let Some((chunk, in_chunk, at, count)) = run.take() else {
            return Ok(());
        };
        let bytes = reader.chunk(&chunk)?;
        let from = in_chunk as usize * PAGE_SIZE;
        let to = from + count as usize * PAGE_SIZE;
        if to > bytes.len() {
            return Err(Error::Corrupt {
                node: reader.index().id,
                reason: format!(
                    "pages {in_chunk}..{} of chunk {chunk}, which has {} pages",
                    in_chunk + count,
                    bytes.len() / PAGE_SIZE
                ),
            });
        }
        let offset = at * PAGE_SIZE as u64;
        let len = ((to - from) as u64).min(size - offset) as usize;
        file.write_all_at(&bytes[from..from + len], offset)
            .map_err(io(format!("writing the image at byte {offset}")))?;
        written += len as u64;
        Ok(())
    };
    for number in first..end {
        match reader.index().page(number)? {
            Some(PageSource::Chunk { chunk, page }) => match &mut run {
                Some((c, in_chunk, at, count))
                    if *c == chunk
                        && *in_chunk + *count == page
                        && *at + *count as u64 == number =>
                {
                    *count += 1
                }
                _ => {
                    flush(&mut run)?;
                    run = Some((chunk, page, number, 1));
                }
            },
            _ => flush(&mut run)?,
        }
    }
    flush(&mut run)?;
    Ok(written)
}

/// Writes memory snapshot root `id` (an image record or a checkpoint
/// directory) back: an image to file `target`, a directory's files under
/// directory `target` (which must not exist or be empty).
pub fn restore(store: &Store, id: &ChunkId, target: &Path) -> Result<RestoreStats> {
    match root_kind(store, id)? {
        RootKind::Image => restore_image(store, id, target, 0o600),
        RootKind::Dir(files) => {
            match std::fs::read_dir(target) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(Error::Invalid(format!(
                            "{} is not empty; restore a checkpoint directory into a new one",
                            target.display()
                        )));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(target)
                        .map_err(io(format!("creating {}", target.display())))?;
                }
                Err(e) => return Err(io(format!("reading {}", target.display()))(e)),
            }
            let mut total = RestoreStats::default();
            for (file, image) in files {
                let path = target.join(&file.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(io(format!("creating {}", parent.display())))?;
                }
                let stats = restore_image(store, &image, &path, file.mode & 0o7777)?;
                total.size += stats.size;
                total.written += stats.written;
                total.files += 1;
            }
            Ok(total)
        }
    }
}
