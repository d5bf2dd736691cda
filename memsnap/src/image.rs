//! The stored form of a memory image (`memsnap/FORMAT.md` has the byte
//! layout) and its in-memory page table.
//!
//! An image is cut into *cells* of the store's fixed chunk size (64 KiB by
//! default, a whole number of 4 KiB pages). Each page is zero, or names a
//! page of a data chunk; a cell's new pages are packed into one chunk, and
//! a page that equals the parent's keeps the parent's reference. Cells are
//! grouped into *map* nodes of [`CELLS_PER_MAP`] cells (16 MiB of memory
//! at the defaults), each listing every chunk its cells use (so GC keeps
//! them) and a 128-bit hash of each non-zero page (so a child's capture
//! compares its pages with the parent's without reading them). A map that
//! did not change is the parent's node, by id.

use std::sync::{Arc, OnceLock};

use cas::{ChunkId, Node, NodeType, Store};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Node type of an image record (body: JSON [`ImageHeader`]; links: its
/// maps in order).
pub const MEMORY_IMAGE: NodeType = NodeType(9);
/// Node type of a map (body: binary, see FORMAT.md; links: data chunks).
pub const MEMORY_MAP: NodeType = NodeType(10);
/// Node type of a checkpoint directory (body: JSON [`DirHeader`]; links:
/// one image record per file, in the header's order).
pub const MEMORY_DIR: NodeType = NodeType(11);

/// Bytes per page: the unit of classification and of fault service.
pub const PAGE_SIZE: usize = 4096;
/// Cells per map node.
pub const CELLS_PER_MAP: usize = 256;
/// Most distinct chunks one cell's pages may come from. A cell that would
/// need more (a page of each of many ancestors) is stored anew, so reading
/// a cell never fans out further than this.
pub const MAX_CELL_CHUNKS: usize = 4;
/// Version of the map body and of the image header.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of a page hash (truncated BLAKE3).
pub const PAGE_HASH_LEN: usize = 16;
/// Largest page size a client may map (1 GiB huge pages).
pub const MAX_CLIENT_PAGE_SIZE: usize = 1 << 30;

/// A page's hash: the first 128 bits of its BLAKE3 hash.
pub type PageHash = [u8; PAGE_HASH_LEN];

/// Map entry of a zero page.
pub(crate) const ZERO_ENTRY: u32 = u32::MAX;

/// The hash of one page's bytes.
pub fn page_hash(page: &[u8]) -> PageHash {
    let full = blake3::hash(page);
    let mut hash = [0u8; PAGE_HASH_LEN];
    hash.copy_from_slice(&full.as_bytes()[..PAGE_HASH_LEN]);
    hash
}

/// How the pages of one capture were classified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCounts {
    /// All-zero pages (stored as nothing).
    pub zero: u64,
    /// Pages equal to the parent's page at the same offset (stored as a
    /// reference).
    pub parent: u64,
    /// Other pages (stored, compressed and deduplicated).
    pub new: u64,
}

impl PageCounts {
    fn add(&mut self, other: &PageCounts) {
        self.zero += other.zero;
        self.parent += other.parent;
        self.new += other.new;
    }
}

/// What one capture stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStats {
    pub pages: PageCounts,
    /// Data chunks this capture wrote (the store did not hold them).
    pub chunks_written: u64,
    /// Bytes of those chunks before compression.
    pub new_bytes: u64,
    /// Bytes of those chunks as stored (compressed), plus the map nodes
    /// written.
    pub stored_bytes: u64,
}

impl CaptureStats {
    pub(crate) fn add(&mut self, other: &CaptureStats) {
        self.pages.add(&other.pages);
        self.chunks_written += other.chunks_written;
        self.new_bytes += other.new_bytes;
        self.stored_bytes += other.stored_bytes;
    }
}

/// The body of an image record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageHeader {
    pub version: u32,
    /// Bytes of the image (the last page may be partial).
    pub size: u64,
    pub page_size: u32,
    /// Pages per cell.
    pub cell_pages: u32,
    pub cells_per_map: u32,
    /// The parent image record this one was compared with, if any.
    #[serde(default)]
    pub parent: Option<String>,
    pub stats: CaptureStats,
}

impl ImageHeader {
    /// Bytes of memory one map covers.
    pub fn map_bytes(&self) -> u64 {
        self.cell_pages as u64 * self.cells_per_map as u64 * PAGE_SIZE as u64
    }

    /// Pages in the image (the last one may be partial).
    pub fn pages(&self) -> u64 {
        self.size.div_ceil(PAGE_SIZE as u64)
    }

    /// Maps the image has.
    pub fn maps(&self) -> u64 {
        self.size.div_ceil(self.map_bytes())
    }
}

/// One file of a checkpoint directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirFile {
    /// Path from the directory, `/`-separated, no `.` or `..`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
}

/// The body of a checkpoint directory node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirHeader {
    pub version: u32,
    pub files: Vec<DirFile>,
    pub stats: CaptureStats,
}

/// A decoded map: each page's entry and hash.
#[derive(Clone, Debug)]
pub(crate) struct MapNode {
    pub cell_pages: usize,
    /// Per page: [`ZERO_ENTRY`], or `link << 16 | page in chunk`.
    pub entries: Vec<u32>,
    /// Per page: its hash (zeros for zero pages).
    pub hashes: Vec<PageHash>,
    pub links: Vec<ChunkId>,
}

/// Where a page's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageRef {
    Zero,
    Data { link: usize, page: usize },
}

pub(crate) fn entry_ref(entry: u32) -> PageRef {
    if entry == ZERO_ENTRY {
        PageRef::Zero
    } else {
        PageRef::Data {
            link: (entry >> 16) as usize,
            page: (entry & 0xffff) as usize,
        }
    }
}

pub(crate) fn data_entry(link: usize, page: usize) -> u32 {
    debug_assert!(link < 0xffff && page <= 0xffff);
    ((link as u32) << 16) | page as u32
}

const MAP_HEADER_LEN: usize = 8;
/// Most pages one map covers (bounds a map node's size: 4,096 × 20 bytes).
pub const MAX_MAP_PAGES: usize = 4096;

impl MapNode {
    /// Encodes the map as a node.
    pub fn to_node(&self) -> Node {
        let nonzero = self.entries.iter().filter(|&&e| e != ZERO_ENTRY).count();
        let mut body =
            Vec::with_capacity(MAP_HEADER_LEN + self.entries.len() * 4 + nonzero * PAGE_HASH_LEN);
        body.push(FORMAT_VERSION as u8);
        body.push(0);
        body.extend_from_slice(&(self.cell_pages as u16).to_le_bytes());
        body.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for entry in &self.entries {
            body.extend_from_slice(&entry.to_le_bytes());
        }
        for (entry, hash) in self.entries.iter().zip(&self.hashes) {
            if *entry != ZERO_ENTRY {
                body.extend_from_slice(hash);
            }
        }
        Node::new(MEMORY_MAP, self.links.clone(), body)
    }

    /// Decodes and checks map node `id`.
    pub fn decode(id: ChunkId, node: &Node) -> Result<MapNode> {
        let corrupt = |reason: String| Error::Corrupt { node: id, reason };
        if node.node_type != MEMORY_MAP {
            return Err(corrupt(format!("type {} is not a map", node.node_type.0)));
        }
        let body = &node.body;
        if body.len() < MAP_HEADER_LEN || body[0] as u32 != FORMAT_VERSION {
            return Err(corrupt("bad header or version".into()));
        }
        let cell_pages = u16::from_le_bytes([body[2], body[3]]) as usize;
        let count = u32::from_le_bytes([body[4], body[5], body[6], body[7]]) as usize;
        if cell_pages == 0 || count == 0 || count > MAX_MAP_PAGES.max(cell_pages) {
            return Err(corrupt(format!(
                "{count} pages in cells of {cell_pages} pages"
            )));
        }
        let entries_end = MAP_HEADER_LEN + count * 4;
        if body.len() < entries_end {
            return Err(corrupt("truncated entries".into()));
        }
        let entries: Vec<u32> = body[MAP_HEADER_LEN..entries_end]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let nonzero = entries.iter().filter(|&&e| e != ZERO_ENTRY).count();
        if body.len() != entries_end + nonzero * PAGE_HASH_LEN {
            return Err(corrupt(format!(
                "{} body bytes for {nonzero} page hashes",
                body.len()
            )));
        }
        let mut stored = body[entries_end..].chunks_exact(PAGE_HASH_LEN);
        let mut hashes = Vec::with_capacity(count);
        for entry in &entries {
            match entry_ref(*entry) {
                PageRef::Zero => hashes.push([0; PAGE_HASH_LEN]),
                PageRef::Data { link, page } => {
                    if link >= node.links.len() || page >= cell_pages {
                        return Err(corrupt(format!(
                            "entry (link {link}, page {page}) outside {} links of {cell_pages} pages",
                            node.links.len()
                        )));
                    }
                    let mut hash = [0u8; PAGE_HASH_LEN];
                    hash.copy_from_slice(stored.next().expect("counted above"));
                    hashes.push(hash);
                }
            }
        }
        Ok(MapNode {
            cell_pages,
            entries,
            hashes,
            links: node.links.clone(),
        })
    }
}

/// Reads and checks image record `id`.
pub fn read_header(store: &Store, id: &ChunkId) -> Result<(ImageHeader, Vec<ChunkId>)> {
    let node = store.get_node(id)?;
    header_of(*id, &node)
}

pub(crate) fn header_of(id: ChunkId, node: &Node) -> Result<(ImageHeader, Vec<ChunkId>)> {
    let corrupt = |reason: String| Error::Corrupt { node: id, reason };
    if node.node_type != MEMORY_IMAGE {
        return Err(corrupt(format!(
            "type {} is not a memory image",
            node.node_type.0
        )));
    }
    let header: ImageHeader =
        serde_json::from_slice(&node.body).map_err(|e| corrupt(format!("header: {e}")))?;
    if header.version != FORMAT_VERSION
        || header.page_size as usize != PAGE_SIZE
        || header.cell_pages == 0
        || header.cell_pages > 0xffff
        || header.cells_per_map == 0
        || header.cells_per_map as usize > CELLS_PER_MAP
        || header.cells_per_map as usize * header.cell_pages as usize
            > MAX_MAP_PAGES.max(header.cell_pages as usize)
    {
        return Err(corrupt(format!("unsupported header {header:?}")));
    }
    if node.links.len() as u64 != header.maps() {
        return Err(corrupt(format!(
            "{} maps for an image of {} bytes",
            node.links.len(),
            header.size
        )));
    }
    Ok((header, node.links.clone()))
}

/// A page's place in a loaded image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSource {
    Zero,
    /// Page `page` of data chunk `chunk`.
    Chunk {
        chunk: ChunkId,
        page: u32,
    },
}

/// One map's part of the page table: its entries and the chunks they
/// link to (the page hashes are not kept).
#[derive(Debug)]
struct LoadedMap {
    entries: Vec<u32>,
    links: Vec<ChunkId>,
}

/// An image's page table: the record is read when it is opened, each map
/// (16 MiB of pages) on the first look-up of one of its pages — so a page
/// server is ready after one node read, however large the image.
pub struct ImageIndex {
    pub id: ChunkId,
    pub header: ImageHeader,
    store: Store,
    maps: Vec<ChunkId>,
    loaded: Vec<OnceLock<Arc<LoadedMap>>>,
    map_pages: u64,
}

impl std::fmt::Debug for ImageIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageIndex")
            .field("id", &self.id)
            .field("header", &self.header)
            .field("maps", &self.maps.len())
            .finish()
    }
}

impl ImageIndex {
    /// Opens image record `id`'s page table (its maps load as needed).
    pub fn load(store: &Store, id: &ChunkId) -> Result<ImageIndex> {
        let (header, maps) = read_header(store, id)?;
        let map_pages = header.cell_pages as u64 * header.cells_per_map as u64;
        Ok(ImageIndex {
            id: *id,
            loaded: maps.iter().map(|_| OnceLock::new()).collect(),
            maps,
            header,
            store: store.clone(),
            map_pages,
        })
    }

    /// Map `index`, read and checked on first use.
    fn map(&self, index: usize) -> Result<&LoadedMap> {
        if let Some(map) = self.loaded[index].get() {
            return Ok(map);
        }
        let map_id = self.maps[index];
        let node = self.store.get_node(&map_id)?;
        let map = MapNode::decode(map_id, &node)?;
        let total = self.header.pages();
        let expected = (total - index as u64 * self.map_pages).min(self.map_pages) as usize;
        if map.entries.len() != expected || map.cell_pages != self.header.cell_pages as usize {
            return Err(Error::Corrupt {
                node: map_id,
                reason: format!(
                    "{} pages of cells of {}, where the image needs {expected} of {}",
                    map.entries.len(),
                    map.cell_pages,
                    self.header.cell_pages
                ),
            });
        }
        let loaded = Arc::new(LoadedMap {
            entries: map.entries,
            links: map.links,
        });
        // Two threads may race to load a map; both loaded the same bytes.
        let _ = self.loaded[index].set(loaded);
        Ok(self.loaded[index].get().expect("set above"))
    }

    /// Bytes of the image.
    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// Pages of the image.
    pub fn page_count(&self) -> u64 {
        self.header.pages()
    }

    /// Where page `number`'s bytes are (`None` past the end).
    pub fn page(&self, number: u64) -> Result<Option<PageSource>> {
        if number >= self.header.pages() {
            return Ok(None);
        }
        let map = self.map((number / self.map_pages) as usize)?;
        let entry = map.entries[(number % self.map_pages) as usize];
        Ok(Some(match entry_ref(entry) {
            PageRef::Zero => PageSource::Zero,
            PageRef::Data { link, page } => PageSource::Chunk {
                chunk: map.links[link],
                page: page as u32,
            },
        }))
    }
}
