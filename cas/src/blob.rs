//! Blobs: byte streams stored as ordered extents of chunks.
//!
//! A blob of one chunk is that data chunk itself. Anything else is a tree of
//! blob nodes: a level-0 node lists up to [`BLOB_FANOUT`] extents (offset,
//! length, data chunk), a level-n node lists level-(n-1) nodes with the
//! ranges they cover. Offsets in a node are relative to the node's own
//! start, and bytes no extent covers read as zeros, so all-zero chunks are
//! never stored and sparse data stays sparse. A read at any offset descends
//! the tree by binary search; a 100 GiB blob needs no object larger than one
//! node (about 192 KiB).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;

use crate::chunker::{is_all_zero, Chunker, Chunking};
use crate::config::MAX_CHUNK_LEN;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ChunkKind};
use crate::node::{Node, NodeType};
use crate::store::{Store, Writer};

/// Deepest blob tree accepted when reading (4,096^8 extents is beyond any
/// real blob; the bound stops a malicious node from recursing forever).
const MAX_BLOB_DEPTH: u8 = 8;
/// Input buffered before a batch of chunks is hashed and compressed in
/// parallel.
const BATCH_BYTES: usize = 8 << 20;
/// Chunks fetched in parallel by a streaming read.
const READ_WINDOW: usize = 16;

/// One extent of a blob node: a range and the chunk (or child node) with
/// its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    start: u64,
    len: u64,
    id: ChunkId,
}

/// A decoded blob node.
#[derive(Debug)]
pub(crate) struct BlobNode {
    level: u8,
    span: u64,
    entries: Vec<Entry>,
}

const BLOB_BODY_HEADER: usize = 16;

impl BlobNode {
    fn to_node(&self) -> Node {
        let mut body = Vec::with_capacity(BLOB_BODY_HEADER + self.entries.len() * 16);
        body.push(self.level);
        body.extend_from_slice(&[0u8; 7]);
        body.extend_from_slice(&self.span.to_le_bytes());
        for entry in &self.entries {
            body.extend_from_slice(&entry.start.to_le_bytes());
            body.extend_from_slice(&entry.len.to_le_bytes());
        }
        Node::new(
            NodeType::BLOB,
            self.entries.iter().map(|e| e.id).collect(),
            body,
        )
    }

    fn from_node(id: ChunkId, node: Node) -> Result<BlobNode> {
        let bad = |reason: &str| Error::MalformedNode {
            id,
            reason: reason.to_string(),
        };
        if node.node_type != NodeType::BLOB {
            return Err(Error::WrongKind {
                id,
                found: "non-blob node",
                wanted: "a blob",
            });
        }
        let body = &node.body;
        if body.len() != BLOB_BODY_HEADER + node.links.len() * 16 {
            return Err(bad("blob node body length does not match its links"));
        }
        let level = body[0];
        if level >= MAX_BLOB_DEPTH {
            return Err(bad("blob tree too deep"));
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
        let span = u64_at(8);
        let mut entries = Vec::with_capacity(node.links.len());
        let mut end = 0u64;
        for (i, link) in node.links.iter().enumerate() {
            let start = u64_at(BLOB_BODY_HEADER + i * 16);
            let len = u64_at(BLOB_BODY_HEADER + i * 16 + 8);
            let stop = start
                .checked_add(len)
                .ok_or_else(|| bad("extent overflows"))?;
            if len == 0 || start < end || stop > span {
                return Err(bad(
                    "extents are empty, overlapping, unsorted or out of range",
                ));
            }
            if level == 0 && len > MAX_CHUNK_LEN as u64 {
                return Err(bad("extent longer than a chunk can be"));
            }
            end = stop;
            entries.push(Entry {
                start,
                len,
                id: *link,
            });
        }
        Ok(BlobNode {
            level,
            span,
            entries,
        })
    }

    /// Index of the entry covering `pos` (relative), or where the next entry
    /// starts if `pos` is in a hole.
    fn find(&self, pos: u64) -> std::result::Result<usize, u64> {
        let after = self.entries.partition_point(|e| e.start <= pos);
        if after > 0 {
            let entry = &self.entries[after - 1];
            if pos < entry.start + entry.len {
                return Ok(after - 1);
            }
        }
        Err(self.entries.get(after).map_or(self.span, |e| e.start))
    }
}

/// Decoded blob nodes, kept so repeated reads do not re-parse them.
pub(crate) struct BlobNodeCache {
    cache: quick_cache::sync::Cache<ChunkId, Arc<BlobNode>, NodeWeight>,
}

#[derive(Clone)]
struct NodeWeight;

impl quick_cache::Weighter<ChunkId, Arc<BlobNode>> for NodeWeight {
    fn weight(&self, _: &ChunkId, node: &Arc<BlobNode>) -> u64 {
        64 + node.entries.len() as u64 * 48
    }
}

impl BlobNodeCache {
    pub(crate) fn new() -> BlobNodeCache {
        BlobNodeCache {
            cache: quick_cache::sync::Cache::with_weighter(1024, 32 << 20, NodeWeight),
        }
    }

    pub(crate) fn clear(&self) {
        self.cache.clear();
    }
}

/// The result of writing a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlobInfo {
    /// The blob's id: its single data chunk, or its root node.
    pub id: ChunkId,
    /// Length in bytes.
    pub len: u64,
    /// Data chunks the blob consists of (holes excluded).
    pub chunks: u64,
    /// Of those, chunks that were new to the store.
    pub new_chunks: u64,
    /// Bytes of new chunks (uncompressed).
    pub new_bytes: u64,
    /// Bytes stored as holes (all-zero chunks).
    pub zero_bytes: u64,
}

/// Writes one blob: feed bytes with [`Write`], then call [`BlobWriter::finish`].
/// Chunks are hashed, deduplicated and compressed in parallel batches.
pub struct BlobWriter<'w> {
    writer: &'w Writer,
    chunker: Chunker,
    buf: Vec<u8>,
    /// A batch's buffer once stored, kept for the batch after the next
    /// (fresh memory costs a page fault per 4 KiB on first use).
    spare: Vec<u8>,
    /// Blob offset of `buf[0]`.
    offset: u64,
    /// Entries of the node being filled at each level.
    levels: Vec<Vec<Entry>>,
    fanout: usize,
    info: BlobInfo,
}

impl<'w> BlobWriter<'w> {
    pub(crate) fn new(writer: &'w Writer, chunking: Chunking) -> BlobWriter<'w> {
        let chunker = Chunker::new(chunking, writer.store().config().chunking);
        BlobWriter {
            writer,
            chunker,
            buf: Vec::new(),
            spare: Vec::new(),
            offset: 0,
            levels: vec![Vec::new()],
            fanout: writer.store().config().blob_fanout as usize,
            info: BlobInfo {
                id: ChunkId::compute(ChunkKind::Data, b""),
                len: 0,
                chunks: 0,
                new_chunks: 0,
                new_bytes: 0,
                zero_bytes: 0,
            },
        }
    }

    /// Cuts, hashes and stores everything buffered that forms whole chunks.
    fn process(&mut self, eof: bool) -> Result<()> {
        let batch = self.take_batch(eof);
        let stored = store_chunks(self.writer, &batch);
        self.record(batch, stored?)
    }

    /// Cuts what is buffered into chunks and takes the whole chunks out of
    /// the buffer (all of it at `eof`), leaving the rest for the next batch.
    fn take_batch(&mut self, eof: bool) -> Batch {
        let mut cuts = Vec::new();
        let used = self.chunker.cut(&self.buf, eof, &mut cuts);
        let mut spans = Vec::with_capacity(cuts.len());
        let mut at = 0usize;
        for len in cuts {
            spans.push((at, len));
            at += len;
        }
        let mut rest = std::mem::take(&mut self.spare);
        rest.clear();
        rest.extend_from_slice(&self.buf[used..]);
        self.buf.truncate(used);
        Batch {
            bytes: std::mem::replace(&mut self.buf, rest),
            spans,
        }
    }

    /// Records a stored batch's chunks (in blob order) and keeps its buffer.
    fn record(&mut self, batch: Batch, stored: Vec<Option<(ChunkId, bool)>>) -> Result<()> {
        for (&(at, len), result) in batch.spans.iter().zip(stored) {
            let start = self.offset + at as u64;
            match result {
                None => self.info.zero_bytes += len as u64,
                Some((id, written)) => {
                    self.info.chunks += 1;
                    if written {
                        self.info.new_chunks += 1;
                        self.info.new_bytes += len as u64;
                    }
                    self.push(
                        0,
                        Entry {
                            start,
                            len: len as u64,
                            id,
                        },
                    )?;
                }
            }
        }
        self.offset += batch.bytes.len() as u64;
        self.spare = batch.bytes;
        Ok(())
    }

    fn push(&mut self, level: usize, entry: Entry) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
        }
        self.levels[level].push(entry);
        if self.levels[level].len() >= self.fanout {
            self.flush_level(level)?;
        }
        Ok(())
    }

    /// Turns the entries of `level` into a node and records it one level up.
    fn flush_level(&mut self, level: usize) -> Result<()> {
        let entries = std::mem::take(&mut self.levels[level]);
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let base = first.start;
        let span = last.start + last.len - base;
        let id = self.put_blob_node(level as u8, base, span, &entries)?;
        self.push(
            level + 1,
            Entry {
                start: base,
                len: span,
                id,
            },
        )
    }

    fn put_blob_node(&self, level: u8, base: u64, span: u64, entries: &[Entry]) -> Result<ChunkId> {
        let node = BlobNode {
            level,
            span,
            entries: entries
                .iter()
                .map(|e| Entry {
                    start: e.start - base,
                    ..*e
                })
                .collect(),
        };
        Ok(self.writer.put_node(&node.to_node())?.id)
    }

    /// Reads `source` to its end straight into the chunking buffer (no
    /// intermediate copy), storing chunks as batches fill. Read sizes start
    /// small and grow, so small files cost small buffers. While a full
    /// batch is stored (its chunks hashed, compressed and written on the
    /// pool), this thread reads and cuts the next one.
    pub fn read_from(&mut self, source: &mut dyn Read) -> Result<u64> {
        let mut input = Input {
            total: 0,
            want: 16 << 10,
        };
        let mut next = self.read_batch(source, &mut input)?;
        while let Some(batch) = next {
            let writer = self.writer;
            let mut stored = None;
            let following = rayon::in_place_scope(|scope| {
                let (batch, stored) = (&batch, &mut stored);
                scope.spawn(move |_| *stored = Some(store_chunks(writer, batch)));
                self.read_batch(source, &mut input)
            });
            let stored = stored.ok_or_else(|| Error::Invariant("a batch was not stored".into()))?;
            self.record(batch, stored?)?;
            next = following?;
        }
        Ok(input.total)
    }

    /// Reads until a batch is full, then cuts it off (`None` at the end of
    /// the input: what is buffered is left for [`BlobWriter::finish`]).
    fn read_batch(&mut self, source: &mut dyn Read, input: &mut Input) -> Result<Option<Batch>> {
        loop {
            // `read_to_end` on a `take` appends without zero-filling first
            // and retries interrupted reads.
            let n = Read::take(&mut *source, input.want)
                .read_to_end(&mut self.buf)
                .map_err(|e| Error::io("reading blob input", e))?;
            input.total += n as u64;
            if self.buf.len() >= BATCH_BYTES + self.chunker.max_chunk_len() {
                return Ok(Some(self.take_batch(false)));
            }
            if (n as u64) < input.want {
                return Ok(None);
            }
            input.want = (input.want * 2).min(1 << 20);
        }
    }

    /// Stores what remains and the blob's index nodes; returns the blob.
    /// The blob is durable after the writer commits.
    pub fn finish(mut self) -> Result<BlobInfo> {
        self.process(true)?;
        let total = self.offset;
        self.info.len = total;
        let single = self.levels.len() == 1
            && self.levels[0].len() == 1
            && self.levels[0][0].start == 0
            && self.levels[0][0].len == total;
        if single {
            self.info.id = self.levels[0][0].id;
            return Ok(self.info);
        }
        if total == 0 {
            self.info.id = self.writer.put_data(b"")?.id;
            return Ok(self.info);
        }
        let mut level = 0;
        loop {
            let top = self.levels[level + 1..].iter().all(Vec::is_empty);
            if top {
                let entries = std::mem::take(&mut self.levels[level]);
                self.info.id = self.put_blob_node(level as u8, 0, total, &entries)?;
                return Ok(self.info);
            }
            self.flush_level(level)?;
            level += 1;
        }
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BATCH_BYTES + self.chunker.max_chunk_len() {
            self.process(false).map_err(io::Error::other)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whole chunks cut from a blob's input, in order.
struct Batch {
    bytes: Vec<u8>,
    /// (offset in `bytes`, length) of each chunk.
    spans: Vec<(usize, usize)>,
}

/// How much [`BlobWriter::read_from`] has read, and its next read size.
struct Input {
    total: u64,
    want: u64,
}

/// Hashes and stores a batch's chunks in parallel: for each, its id and
/// whether it was new, or `None` for an all-zero chunk (a hole).
fn store_chunks(writer: &Writer, batch: &Batch) -> Result<Vec<Option<(ChunkId, bool)>>> {
    batch
        .spans
        .par_iter()
        .map(|&(at, len)| {
            let bytes = &batch.bytes[at..at + len];
            if is_all_zero(bytes) {
                return Ok(None);
            }
            let id = ChunkId::compute(ChunkKind::Data, bytes);
            let outcome = writer.put_hashed(id, ChunkKind::Data, bytes)?;
            Ok(Some((id, outcome.written)))
        })
        .collect()
}

/// A stored blob, ready for ranged or streaming reads.
#[derive(Clone)]
pub struct Blob {
    store: Store,
    id: ChunkId,
    len: u64,
    root: Option<Arc<BlobNode>>,
}

/// A piece of a blob: a chunk's bytes or a run of zeros.
enum Segment {
    Chunk { start: u64, len: u64, id: ChunkId },
    Hole { end: u64 },
}

impl Store {
    /// Opens blob `id` for reading.
    pub fn blob(&self, id: &ChunkId) -> Result<Blob> {
        let location = self.locate(id)?.ok_or(Error::ChunkNotFound { id: *id })?;
        match location.kind {
            ChunkKind::Data => Ok(Blob {
                store: self.clone(),
                id: *id,
                len: u64::from(location.raw_len),
                root: None,
            }),
            ChunkKind::Node => {
                let root = self.blob_node(id)?;
                Ok(Blob {
                    store: self.clone(),
                    id: *id,
                    len: root.span,
                    root: Some(root),
                })
            }
        }
    }

    fn blob_node(&self, id: &ChunkId) -> Result<Arc<BlobNode>> {
        let nodes = &self.inner.blob_nodes.cache;
        nodes.get_or_insert_with(id, || {
            let node = self.get_node(id)?;
            Ok(Arc::new(BlobNode::from_node(*id, node)?))
        })
    }
}

impl Blob {
    /// The blob's id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for the empty blob.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finds what holds byte `pos` (`pos < len`) by descending the tree.
    fn segment(&self, pos: u64) -> Result<Segment> {
        let Some(mut node) = self.root.clone() else {
            return Ok(Segment::Chunk {
                start: 0,
                len: self.len,
                id: self.id,
            });
        };
        let mut base = 0u64;
        let mut node_id = self.id;
        loop {
            match node.find(pos - base) {
                Err(next) => return Ok(Segment::Hole { end: base + next }),
                Ok(i) => {
                    let entry = node.entries[i];
                    if node.level == 0 {
                        return Ok(Segment::Chunk {
                            start: base + entry.start,
                            len: entry.len,
                            id: entry.id,
                        });
                    }
                    let child = self.store.blob_node(&entry.id)?;
                    if child.level + 1 != node.level || child.span != entry.len {
                        return Err(Error::MalformedNode {
                            id: node_id,
                            reason: format!("child {} does not match its extent", entry.id.short()),
                        });
                    }
                    base += entry.start;
                    node_id = entry.id;
                    node = child;
                }
            }
        }
    }

    /// The bytes of data chunk `id`, checked to be `len` long.
    fn chunk(&self, id: &ChunkId, len: u64) -> Result<Bytes> {
        let (kind, bytes) = self.store.get_with_kind(id)?;
        self.check_chunk(id, len, kind, &bytes)?;
        Ok(bytes)
    }

    /// Checks that chunk `id` is a data chunk of `len` bytes.
    fn check_chunk(&self, id: &ChunkId, len: u64, kind: ChunkKind, bytes: &Bytes) -> Result<()> {
        if kind != ChunkKind::Data {
            return Err(Error::wrong_kind(*id, kind, "a data chunk"));
        }
        if bytes.len() as u64 != len {
            return Err(Error::MalformedNode {
                id: self.id,
                reason: format!(
                    "extent of {len} bytes names chunk {} of {} bytes",
                    id.short(),
                    bytes.len()
                ),
            });
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were
    /// read (0 at or past the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at_noting(offset, buf, None)
    }

    /// [`Blob::read_at`]; with `loaded`, adds to it the chunks this call
    /// read from their packs (as [`Blob::prefetch_noting`] returns them).
    pub fn read_at_noting(
        &self,
        offset: u64,
        buf: &mut [u8],
        mut loaded: Option<&mut Vec<(u64, ChunkId)>>,
    ) -> Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        let mut filled = 0;
        while filled < want {
            let pos = offset + filled as u64;
            let remaining = want - filled;
            match self.segment(pos)? {
                Segment::Hole { end } => {
                    let n = remaining.min((end - pos) as usize);
                    buf[filled..filled + n].fill(0);
                    filled += n;
                }
                Segment::Chunk { start, len, id } => {
                    let (kind, bytes, was_loaded) = self.store.get_noting(&id)?;
                    self.check_chunk(&id, len, kind, &bytes)?;
                    if let (true, Some(loaded)) = (was_loaded, loaded.as_deref_mut()) {
                        loaded.push((start + len, id));
                    }
                    let from = (pos - start) as usize;
                    let n = remaining.min(bytes.len() - from);
                    buf[filled..filled + n].copy_from_slice(&bytes[from..from + n]);
                    filled += n;
                }
            }
        }
        Ok(filled)
    }

    /// Loads the chunks that hold bytes `[offset, offset + len)` into the
    /// store's chunk cache, verified, so that reads of that range soon
    /// after find them there (read-ahead). Holes cost nothing.
    ///
    /// The chunks are read on the rayon pool side by side, so a range
    /// ahead of a sequential reader is verified on every core; a reader
    /// that reaches a chunk still being read waits for that read.
    pub fn prefetch(&self, offset: u64, len: u64) -> Result<()> {
        self.prefetch_noting(offset, len).map(drop)
    }

    /// [`Blob::prefetch`], returning the chunks this call read from their
    /// packs (not found cached or being read by another), each with the
    /// blob offset where it ends: a reader that caches what it reads can
    /// [`Store::uncache`] them once it has read past them.
    pub fn prefetch_noting(&self, offset: u64, len: u64) -> Result<Vec<(u64, ChunkId)>> {
        let end = offset.saturating_add(len).min(self.len);
        let mut chunks = Vec::new();
        let mut pos = offset;
        while pos < end {
            match self.segment(pos)? {
                Segment::Hole { end } => pos = end,
                Segment::Chunk { start, len, id } => {
                    chunks.push((id, start, len));
                    pos = start + len;
                }
            }
        }
        // A window of several chunks is read from the disk in large
        // reads; a single chunk (a small file) is one read anyway.
        let ahead: foldhash::HashSet<ChunkId> = if chunks.len() > 1 {
            let ids: Vec<ChunkId> = chunks.iter().map(|(id, ..)| *id).collect();
            self.store.load_ahead(&ids).into_iter().collect()
        } else {
            Default::default()
        };
        // What the read-ahead loaded is found cached now; the rest is read
        // one chunk at a time, and every chunk is checked to fit its extent.
        let loaded: Vec<Option<(u64, ChunkId)>> = chunks
            .par_iter()
            .map(|(id, start, len)| {
                let (kind, bytes, loaded) = self.store.get_noting(id)?;
                self.check_chunk(id, *len, kind, &bytes)?;
                Ok((loaded || ahead.contains(id)).then_some((start + len, *id)))
            })
            .collect::<Result<_>>()?;
        Ok(loaded.into_iter().flatten().collect())
    }

    /// A reader positioned at the start.
    pub fn reader(&self) -> BlobReader {
        BlobReader {
            blob: self.clone(),
            pos: 0,
            current: None,
        }
    }

    /// Streams the whole blob into `out`, fetching and verifying chunks in
    /// parallel windows. Returns the bytes written.
    pub fn copy_to(&self, out: &mut dyn Write) -> Result<u64> {
        let mut pos = 0u64;
        let zeros = vec![0u8; 1 << 16];
        let write_err = |e| Error::io("writing blob output", e);
        while pos < self.len {
            // Collect a window of segments, then fetch their chunks at once.
            let mut window = Vec::with_capacity(READ_WINDOW);
            let mut at = pos;
            while at < self.len && window.len() < READ_WINDOW {
                let segment = self.segment(at)?;
                at = match &segment {
                    Segment::Hole { end } => (*end).min(self.len),
                    Segment::Chunk { start, len, .. } => start + len,
                };
                window.push(segment);
            }
            let fetched: Vec<Option<Bytes>> = window
                .par_iter()
                .map(|segment| match segment {
                    Segment::Chunk { len, id, .. } => self.chunk(id, *len).map(Some),
                    Segment::Hole { .. } => Ok(None),
                })
                .collect::<Result<_>>()?;
            for (segment, bytes) in window.iter().zip(fetched) {
                match (segment, bytes) {
                    (Segment::Chunk { start, .. }, Some(bytes)) => {
                        let from = (pos - start) as usize;
                        out.write_all(&bytes[from..]).map_err(write_err)?;
                        pos = start + bytes.len() as u64;
                    }
                    (Segment::Hole { end }, _) => {
                        let end = (*end).min(self.len);
                        while pos < end {
                            let n = ((end - pos) as usize).min(zeros.len());
                            out.write_all(&zeros[..n]).map_err(write_err)?;
                            pos += n as u64;
                        }
                    }
                    _ => return Err(Error::Invariant("window segment without bytes".into())),
                }
            }
        }
        Ok(pos)
    }
}

/// A [`Read`] + [`Seek`] view of a blob.
pub struct BlobReader {
    blob: Blob,
    pos: u64,
    /// The chunk last read, by its start offset.
    current: Option<(u64, Bytes)>,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.blob.len || buf.is_empty() {
            return Ok(0);
        }
        if let Some((start, bytes)) = &self.current {
            if self.pos >= *start && self.pos < start + bytes.len() as u64 {
                let from = (self.pos - start) as usize;
                let n = buf.len().min(bytes.len() - from);
                buf[..n].copy_from_slice(&bytes[from..from + n]);
                self.pos += n as u64;
                return Ok(n);
            }
        }
        match self.blob.segment(self.pos).map_err(io::Error::other)? {
            Segment::Hole { end } => {
                let n = buf.len().min((end.min(self.blob.len) - self.pos) as usize);
                buf[..n].fill(0);
                self.pos += n as u64;
                Ok(n)
            }
            Segment::Chunk { start, len, id } => {
                let bytes = self.blob.chunk(&id, len).map_err(io::Error::other)?;
                self.current = Some((start, bytes));
                self.read(buf)
            }
        }
    }
}

impl Seek for BlobReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.blob.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the blob",
            )
        })?;
        self.pos = target;
        Ok(target)
    }
}
