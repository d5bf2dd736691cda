//! Capturing a memory image: each page classified as zero, equal to the
//! parent's page at the same offset, or new; only new pages are stored.
//!
//! The parent is compared by the page hashes its maps hold, so none of
//! its pages is read. Maps are captured in parallel (one per task, on the
//! caller's rayon pool); each reads its 16 MiB of the file once, in
//! windows that stay in the CPU's cache, and skips the file's holes (zero
//! pages by definition: the memory a VM never touched in a RAM file
//! written sparse, a sparse copy's zero pages) without reading them.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use cas::{ChunkId, Node, Writer, MAX_NODE_LINKS};
use rayon::prelude::*;

use crate::error::{io, Error, Result};
use crate::image::{
    data_entry, entry_ref, header_of, page_hash, CaptureStats, DirFile, DirHeader, ImageHeader,
    MapNode, PageHash, PageRef, CELLS_PER_MAP, FORMAT_VERSION, MAX_CELL_CHUNKS, MAX_MAP_PAGES,
    MEMORY_DIR, MEMORY_IMAGE, PAGE_SIZE, ZERO_ENTRY,
};

/// Most files one checkpoint directory may hold.
pub const MAX_DIR_FILES: usize = 100_000;

/// What a capture stored: its root node (an image record, or a
/// checkpoint directory node) and what it cost.
#[derive(Clone, Debug)]
pub struct Captured {
    pub id: ChunkId,
    /// Bytes of the image (of all files, for a directory).
    pub size: u64,
    pub stats: CaptureStats,
    /// Files, for a checkpoint directory.
    pub files: Option<u64>,
}

/// Cell and map shape for a store: cells of the store's fixed chunk size
/// (whole pages), maps of at most [`CELLS_PER_MAP`] cells and
/// [`MAX_MAP_PAGES`] pages.
pub fn layout(writer: &Writer) -> (usize, usize) {
    let fixed = writer.store().config().chunking.fixed_size as usize;
    let cell_pages = (fixed / PAGE_SIZE).clamp(1, 0xffff);
    let cells_per_map = (MAX_MAP_PAGES / cell_pages).clamp(1, CELLS_PER_MAP);
    (cell_pages, cells_per_map)
}

/// The parent an image is compared with.
struct Parent {
    maps: Vec<ChunkId>,
}

/// Stores the memory image in `file` through `writer` (durable after
/// the writer's commit), compared page by page with image record
/// `parent` if given.
pub fn capture_file(writer: &Writer, file: &File, parent: Option<&ChunkId>) -> Result<Captured> {
    let size = file
        .metadata()
        .map_err(io("reading the image's size"))?
        .len();
    let (cell_pages, cells_per_map) = layout(writer);
    let map_bytes = (cell_pages * cells_per_map * PAGE_SIZE) as u64;
    let maps = size.div_ceil(map_bytes) as usize;
    if maps > MAX_NODE_LINKS {
        return Err(Error::Invalid(format!(
            "an image of {size} bytes is larger than the {} bytes one image may hold",
            MAX_NODE_LINKS as u64 * map_bytes
        )));
    }
    let parent_id = parent;
    let parent = match parent {
        None => None,
        Some(id) => {
            let node = writer.store().get_verified_node(id)?;
            let (header, maps) = header_of(*id, node.node())?;
            writer.pin_node(&node)?;
            if header.cell_pages as usize != cell_pages
                || header.cells_per_map as usize != cells_per_map
            {
                tracing::warn!(
                    parent = %id,
                    "the parent image was cut in other cells; every page is compared as new"
                );
                None
            } else {
                Some(Parent { maps })
            }
        }
    };
    let results: Vec<(ChunkId, CaptureStats)> = (0..maps)
        .into_par_iter()
        .map_init(Vec::new, |buf, m| {
            let start = m as u64 * map_bytes;
            let len = (size - start).min(map_bytes) as usize;
            let parent_map = match &parent {
                Some(p) if m < p.maps.len() => {
                    let node = writer.store().get_verified_node(&p.maps[m])?;
                    writer.pin_node(&node)?;
                    Some(MapNode::decode(p.maps[m], node.node())?)
                }
                _ => None,
            };
            let cell_bytes = cell_pages * PAGE_SIZE;
            let data = data_extents(file, start, len)?;
            let mut source = MapReader {
                file,
                start,
                len,
                cell_bytes,
                data: &data,
                next_extent: 0,
                buf,
                window_start: None,
            };
            capture_map(writer, &mut source, cell_pages, parent_map.as_ref())
        })
        .collect::<Result<_>>()?;
    let mut stats = CaptureStats::default();
    let mut links = Vec::with_capacity(results.len());
    for (id, map_stats) in results {
        links.push(id);
        stats.add(&map_stats);
    }
    let header = ImageHeader {
        version: FORMAT_VERSION,
        size,
        page_size: PAGE_SIZE as u32,
        cell_pages: cell_pages as u32,
        cells_per_map: cells_per_map as u32,
        parent: parent_id.filter(|_| parent.is_some()).map(|id| id.to_hex()),
        stats,
    };
    let body = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
    let outcome = writer.put_node(&Node::new(MEMORY_IMAGE, links, body))?;
    Ok(Captured {
        id: outcome.id,
        size,
        stats,
        files: None,
    })
}

/// The parts of the `len` bytes at `start` of `file` that hold data (as
/// ranges from `start`), by `SEEK_DATA` and `SEEK_HOLE` (a VM's RAM file
/// written sparse). What lies outside them reads as zeros without
/// reading. All of it on a filesystem that does not tell.
fn data_extents(file: &File, start: u64, len: usize) -> Result<Vec<Range<usize>>> {
    let fd = file.as_raw_fd();
    let end = start + len as u64;
    let seek = |offset: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        // SAFETY: lseek on a descriptor we borrow, integer arguments. Its
        // change of the shared file position is harmless: the capture
        // reads with positioned reads only.
        let at = unsafe { libc::lseek(fd, offset, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            // No data from `offset` on.
            Some(libc::ENXIO) => Ok(None),
            _ => Err(err),
        }
    };
    let mut extents = Vec::new();
    let mut at = start;
    while at < end {
        let data = match seek(at, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // The filesystem does not know holes: all data.
            Err(_) if at == start => return Ok(std::iter::once(0..len).collect()),
            Err(e) => return Err(io(format!("finding data in the image at byte {at}"))(e)),
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)
            .map_err(io(format!("finding holes in the image at byte {data}")))?
            .map_or(end, |h| h.clamp(data + 1, end));
        extents.push((data - start) as usize..(hole - start) as usize);
        at = hole;
    }
    Ok(extents)
}

/// Cells of a map's pages, read from the image a window at a time: a
/// window small enough to stay in the CPU's cache while its cells are
/// classified, hashed and compressed (measured: 16 MiB reads made the
/// 4 GiB benchmark image's capture 5–10% slower).
struct MapReader<'a> {
    file: &'a File,
    /// Offset of the map in the file, and its bytes (the last page may be
    /// partial).
    start: u64,
    len: usize,
    cell_bytes: usize,
    /// The map's data extents ([`data_extents`]): a cell outside them is
    /// not read, and a window stops at the cell where one ends.
    data: &'a [Range<usize>],
    /// The first extent that ends after the last cell asked about (cells
    /// are asked about in order).
    next_extent: usize,
    buf: &'a mut Vec<u8>,
    /// Where the window in `buf` starts in the map; `None` until the first
    /// read.
    window_start: Option<usize>,
}

/// Bytes read at once: 32 cells of 64 KiB, within a core's L2 cache.
const WINDOW_BYTES: usize = 2 << 20;

impl MapReader<'_> {
    /// Pages of the map.
    fn pages(&self) -> usize {
        self.len.div_ceil(PAGE_SIZE)
    }

    /// The bytes of cell `cell` (whole pages, zero-padded past the end of
    /// the file; the map's last cell may be shorter), reading the next
    /// window when the cell is outside this one; `None` when the cell lies
    /// in a hole of the file (all zero, not read). Cells are asked for in
    /// order.
    fn cell(&mut self, cell: usize) -> Result<Option<&[u8]>> {
        let padded = self.pages() * PAGE_SIZE;
        let from = cell * self.cell_bytes;
        let to = (from + self.cell_bytes).min(padded);
        while self
            .data
            .get(self.next_extent)
            .is_some_and(|d| d.end <= from)
        {
            self.next_extent += 1;
        }
        let Some(extent) = self.data.get(self.next_extent) else {
            return Ok(None);
        };
        if extent.start >= to {
            return Ok(None);
        }
        let inside = self
            .window_start
            .is_some_and(|w| from >= w && to <= w + self.buf.len());
        if !inside {
            let cells_per_window = (WINDOW_BYTES / self.cell_bytes).max(1);
            let extent_end = extent.end.next_multiple_of(self.cell_bytes);
            let window_end = (from + cells_per_window * self.cell_bytes)
                .min(extent_end)
                .max(to)
                .min(padded);
            let data_end = window_end.min(self.len);
            self.buf.resize(window_end - from, 0);
            let at = self.start + from as u64;
            self.file
                .read_exact_at(&mut self.buf[..data_end - from], at)
                .map_err(io(format!("reading the image at byte {at}")))?;
            self.buf[data_end - from..].fill(0);
            self.window_start = Some(from);
        }
        let w = self.window_start.unwrap_or(0);
        Ok(Some(&self.buf[from - w..to - w]))
    }
}

/// How one page of a cell is stored.
#[derive(Clone, Copy)]
enum Class {
    Zero,
    Parent { chunk: ChunkId, page: usize },
    New,
}

/// Stores one map's pages (read through `source`) and its node.
fn capture_map(
    writer: &Writer,
    source: &mut MapReader,
    cell_pages: usize,
    parent: Option<&MapNode>,
) -> Result<(ChunkId, CaptureStats)> {
    let pages = source.pages();
    let mut stats = CaptureStats::default();
    let mut map = MapNode {
        cell_pages,
        entries: Vec::with_capacity(pages),
        hashes: Vec::with_capacity(pages),
        links: Vec::new(),
    };
    let mut link_of: HashMap<ChunkId, usize> = HashMap::new();
    let mut classes: Vec<Class> = Vec::with_capacity(cell_pages);
    let mut packed: Vec<u8> = Vec::with_capacity(cell_pages * PAGE_SIZE);
    for (cell, cell_start) in (0..pages).step_by(cell_pages).enumerate() {
        let cell_end = (cell_start + cell_pages).min(pages);
        // A cell in a hole of a sparse file is zero without reading it.
        let (hole, bytes) = match source.cell(cell)? {
            Some(bytes) => (false, bytes),
            None => (true, &[][..]),
        };
        let page_bytes = |p: usize| &bytes[(p - cell_start) * PAGE_SIZE..][..PAGE_SIZE];
        classes.clear();
        let mut sources: Vec<ChunkId> = Vec::new();
        let mut new_pages = 0usize;
        for p in cell_start..cell_end {
            if hole || cas::is_all_zero(page_bytes(p)) {
                classes.push(Class::Zero);
                map.hashes.push([0; 16]);
                continue;
            }
            let page = page_bytes(p);
            let hash: PageHash = page_hash(page);
            let same = parent.and_then(|pm| match pm.entries.get(p).map(|e| entry_ref(*e)) {
                Some(PageRef::Data { link, page }) if pm.hashes[p] == hash => {
                    Some((pm.links[link], page))
                }
                _ => None,
            });
            map.hashes.push(hash);
            match same {
                Some((chunk, page)) => {
                    if !sources.contains(&chunk) {
                        sources.push(chunk);
                    }
                    classes.push(Class::Parent { chunk, page });
                }
                None => {
                    new_pages += 1;
                    classes.push(Class::New);
                }
            }
        }
        for class in &classes {
            match class {
                Class::Zero => stats.pages.zero += 1,
                Class::Parent { .. } => stats.pages.parent += 1,
                Class::New => stats.pages.new += 1,
            }
        }
        // Too many sources: the whole cell is stored anew, from this
        // image's own bytes (equal to the parent's where it matched).
        if sources.len() + usize::from(new_pages > 0) > MAX_CELL_CHUNKS {
            for class in classes.iter_mut() {
                if matches!(class, Class::Parent { .. }) {
                    *class = Class::New;
                }
            }
            new_pages = classes.iter().filter(|c| matches!(c, Class::New)).count();
        }
        let new_link = if new_pages > 0 {
            packed.clear();
            for (i, class) in classes.iter().enumerate() {
                if matches!(class, Class::New) {
                    packed.extend_from_slice(page_bytes(cell_start + i));
                }
            }
            let outcome = writer.put_data(&packed)?;
            if outcome.written {
                stats.chunks_written += 1;
                stats.new_bytes += packed.len() as u64;
                stats.stored_bytes += outcome.stored_bytes;
            }
            Some(outcome.id)
        } else {
            None
        };
        let mut next_new = 0usize;
        for class in &classes {
            map.entries.push(match *class {
                Class::Zero => ZERO_ENTRY,
                Class::Parent { chunk, page } => {
                    data_entry(link_index(&mut map.links, &mut link_of, chunk), page)
                }
                Class::New => {
                    next_new += 1;
                    // Links are numbered in page order, so an unchanged
                    // map encodes exactly as its parent's did.
                    let chunk = new_link.expect("a cell with new pages");
                    data_entry(
                        link_index(&mut map.links, &mut link_of, chunk),
                        next_new - 1,
                    )
                }
            });
        }
    }
    let node = map.to_node();
    let outcome = writer.put_node(&node)?;
    if outcome.written {
        stats.stored_bytes += node.body.len() as u64 + 32 * node.links.len() as u64;
    }
    Ok((outcome.id, stats))
}

fn link_index(
    links: &mut Vec<ChunkId>,
    link_of: &mut HashMap<ChunkId, usize>,
    id: ChunkId,
) -> usize {
    *link_of.entry(id).or_insert_with(|| {
        links.push(id);
        links.len() - 1
    })
}

/// Stores every regular file under `dir` (a runtime's checkpoint
/// directory) as one memory snapshot; each file is compared with the file
/// of the same path in checkpoint directory node `parent`, if given.
/// Anything but regular files and directories is refused.
pub fn capture_dir(writer: &Writer, dir: &Path, parent: Option<&ChunkId>) -> Result<Captured> {
    let parent_files: HashMap<String, ChunkId> = match parent {
        None => HashMap::new(),
        Some(id) => {
            let node = writer.store().get_verified_node(id)?;
            let (header, links) = dir_of(*id, node.node())?;
            writer.pin_node(&node)?;
            header
                .files
                .into_iter()
                .map(|f| f.path)
                .zip(links)
                .collect()
        }
    };
    let mut paths = Vec::new();
    list_files(dir, "", &mut paths)?;
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    let mut links = Vec::with_capacity(paths.len());
    let mut stats = CaptureStats::default();
    let mut size = 0u64;
    for (path, mode) in paths {
        let full = dir.join(&path);
        let file = File::open(&full).map_err(io(format!("opening {}", full.display())))?;
        let captured = capture_file(writer, &file, parent_files.get(&path))?;
        stats.add(&captured.stats);
        size += captured.size;
        links.push(captured.id);
        files.push(DirFile {
            path,
            mode,
            size: captured.size,
        });
    }
    let count = files.len() as u64;
    let header = DirHeader {
        version: FORMAT_VERSION,
        files,
        stats,
    };
    let body = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
    let outcome = writer.put_node(&Node::new(MEMORY_DIR, links, body))?;
    Ok(Captured {
        id: outcome.id,
        size,
        stats,
        files: Some(count),
    })
}

/// Appends the regular files under `dir` (`prefix` is their path from the
/// top) with their permission bits.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<(String, u32)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let entries = std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::Invalid(format!(
                "{}: file names in a checkpoint directory must be UTF-8",
                entry.path().display()
            )));
        };
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = entry
            .metadata()
            .map_err(io(format!("reading {}", entry.path().display())))?;
        if meta.is_dir() {
            list_files(&entry.path(), &path, out)?;
        } else if meta.is_file() {
            if out.len() >= MAX_DIR_FILES {
                return Err(Error::Invalid(format!(
                    "more than {MAX_DIR_FILES} files in a checkpoint directory"
                )));
            }
            out.push((path, meta.permissions().mode() & 0o7777));
        } else {
            return Err(Error::Invalid(format!(
                "{}: a checkpoint directory holds only regular files and directories",
                entry.path().display()
            )));
        }
    }
    Ok(())
}

/// Decodes checkpoint directory node `id`.
pub(crate) fn dir_of(id: ChunkId, node: &Node) -> Result<(DirHeader, Vec<ChunkId>)> {
    let corrupt = |reason: String| Error::Corrupt { node: id, reason };
    if node.node_type != MEMORY_DIR {
        return Err(corrupt(format!(
            "type {} is not a checkpoint directory",
            node.node_type.0
        )));
    }
    let header: DirHeader =
        serde_json::from_slice(&node.body).map_err(|e| corrupt(format!("header: {e}")))?;
    if header.version != FORMAT_VERSION || header.files.len() != node.links.len() {
        return Err(corrupt(format!(
            "version {} with {} files for {} links",
            header.version,
            header.files.len(),
            node.links.len()
        )));
    }
    for file in &header.files {
        if file.path.is_empty()
            || file.path.starts_with('/')
            || file
                .path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(corrupt(format!("bad path {:?}", file.path)));
        }
    }
    Ok((header, node.links.clone()))
}
