//! Pack files: append-only files of chunk frames that end, once sealed, in a
//! trailer listing every frame, so the index can be rebuilt from packs alone.
//!
//! Layout (FORMAT.md has the byte tables): a 24-byte header, frames, then
//! on sealing a trailer of 52-byte entries and a 40-byte footer.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::frame::{self, Codec, FrameHeader, FRAME_HEADER_LEN, FRAME_MAGIC};
use crate::id::{ChunkId, ChunkKind};

/// Magic at the start of a pack file.
pub const PACK_MAGIC: [u8; 8] = *b"STRATAPK";
/// Magic at the end of a sealed pack file.
pub const PACK_END_MAGIC: [u8; 8] = *b"STRPKEND";
/// Pack format version written by this build.
pub const PACK_VERSION: u32 = 1;
/// Length of the pack header.
pub const PACK_HEADER_LEN: u64 = 24;
/// Length of one trailer entry.
pub const TRAILER_ENTRY_LEN: usize = 52;
/// Length of the footer.
pub const FOOTER_LEN: u64 = 40;

/// Pack numbers grow by one for every pack a store creates and are never
/// reused (the next number is kept in the index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub u64);

impl PackId {
    /// Not a local pack: where [`crate::Store::locate`] reports a chunk
    /// held only by the attached [`crate::ChunkSource`] (the remote tier).
    pub const REMOTE: PackId = PackId(u64::MAX);

    /// Whether this is [`PackId::REMOTE`].
    pub fn is_remote(self) -> bool {
        self == PackId::REMOTE
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_remote() {
            return f.write_str("remote");
        }
        write!(f, "{:012}", self.0)
    }
}

impl serde::Serialize for PackId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// The path of pack `id` inside the packs directory.
pub fn pack_path(dir: &Path, id: PackId) -> PathBuf {
    dir.join(format!("{id}.pack"))
}

/// Every pack file in `dir`, by ascending id. Files that do not look like
/// packs are ignored.
pub fn list_packs(dir: &Path) -> Result<Vec<PackId>> {
    let mut ids = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".pack")) else {
            continue;
        };
        if stem.len() == 12 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = stem.parse() {
                ids.push(PackId(n));
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// Where one frame sits in a pack, as listed in the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrailerEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    pub kind: ChunkKind,
}

impl TrailerEntry {
    fn from_header(offset: u64, header: &FrameHeader) -> TrailerEntry {
        TrailerEntry {
            id: header.id,
            offset,
            stored_len: header.stored_len,
            raw_len: header.raw_len,
            codec: header.codec,
            kind: header.kind,
        }
    }

    /// Bytes the frame takes in the pack.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.stored_len)
    }

    /// Appends the entry's 52-byte encoding (`FORMAT.md`, trailer).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.codec.code());
        out.push(self.kind.code());
        out.extend_from_slice(&[0, 0]);
    }

    /// Decodes one 52-byte entry; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<TrailerEntry> {
        let bytes: &[u8; TRAILER_ENTRY_LEN] = bytes.try_into().ok()?;
        Some(TrailerEntry {
            id: ChunkId::from_slice(&bytes[0..32])?,
            offset: u64::from_le_bytes(bytes[32..40].try_into().ok()?),
            stored_len: u32::from_le_bytes(bytes[40..44].try_into().ok()?),
            raw_len: u32::from_le_bytes(bytes[44..48].try_into().ok()?),
            codec: Codec::from_code(bytes[48])?,
            kind: ChunkKind::from_code(bytes[49])?,
        })
    }
}

fn io_err(pack: PackId, what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} pack {pack}"), e)
}

/// Opens a pack file for reading.
pub fn open_pack(dir: &Path, id: PackId) -> std::io::Result<File> {
    File::open(pack_path(dir, id))
}

/// Checks the 24-byte header of pack `id`.
pub fn check_header(file: &File, id: PackId) -> Result<()> {
    let mut header = [0u8; PACK_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| corrupt(id, 0, "pack header is truncated"))?;
    if header[0..8] != PACK_MAGIC {
        return Err(corrupt(id, 0, "bad pack magic"));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != PACK_VERSION {
        return Err(corrupt(id, 8, &format!("unknown pack version {version}")));
    }
    let stored_id = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    if stored_id != id.0 {
        return Err(corrupt(
            id,
            16,
            &format!("header names pack {stored_id}, file name says {id}"),
        ));
    }
    Ok(())
}

fn corrupt(pack: PackId, offset: u64, reason: &str) -> Error {
    Error::CorruptPack {
        pack,
        offset,
        reason: reason.to_string(),
    }
}

/// The footer of a sealed pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub trailer_offset: u64,
    pub entry_count: u32,
    pub trailer_crc: u32,
}

/// Reads the footer, or `None` when the pack is not (validly) sealed.
pub fn read_footer(file: &File, id: PackId) -> Result<Option<Footer>> {
    let len = file
        .metadata()
        .map_err(|e| io_err(id, "reading metadata of", e))?
        .len();
    if len < PACK_HEADER_LEN + FOOTER_LEN {
        return Ok(None);
    }
    let mut bytes = [0u8; FOOTER_LEN as usize];
    file.read_exact_at(&mut bytes, len - FOOTER_LEN)
        .map_err(|e| io_err(id, "reading footer of", e))?;
    Ok(decode_footer(&bytes, len, id))
}

/// Decodes the last 40 bytes of a pack `len` bytes long; `None` when they
/// are not a valid footer of pack `id` (the pack is not sealed).
pub fn decode_footer(bytes: &[u8; FOOTER_LEN as usize], len: u64, id: PackId) -> Option<Footer> {
    if bytes[32..40] != PACK_END_MAGIC {
        return None;
    }
    let footer_crc = u32::from_le_bytes(bytes[24..28].try_into().unwrap_or_default());
    if crc32fast::hash(&bytes[0..24]) != footer_crc {
        return None;
    }
    let footer = Footer {
        trailer_offset: u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default()),
        entry_count: u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()),
        trailer_crc: u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default()),
    };
    let pack_id = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
    let expected_len =
        footer.trailer_offset + footer.entry_count as u64 * TRAILER_ENTRY_LEN as u64 + FOOTER_LEN;
    if pack_id != id.0 || expected_len != len || footer.trailer_offset < PACK_HEADER_LEN {
        return None;
    }
    Some(footer)
}

/// Reads and checks the trailer a footer points at.
pub fn read_trailer(file: &File, id: PackId, footer: &Footer) -> Result<Vec<TrailerEntry>> {
    let len = footer.entry_count as usize * TRAILER_ENTRY_LEN;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, footer.trailer_offset)
        .map_err(|e| io_err(id, "reading trailer of", e))?;
    decode_trailer(&bytes, id, footer)
}

/// Decodes and checks the trailer bytes `footer` describes.
pub fn decode_trailer(bytes: &[u8], id: PackId, footer: &Footer) -> Result<Vec<TrailerEntry>> {
    if bytes.len() != footer.entry_count as usize * TRAILER_ENTRY_LEN {
        return Err(corrupt(id, footer.trailer_offset, "trailer is truncated"));
    }
    if crc32fast::hash(bytes) != footer.trailer_crc {
        return Err(corrupt(
            id,
            footer.trailer_offset,
            "trailer checksum mismatch",
        ));
    }
    let mut entries = Vec::with_capacity(footer.entry_count as usize);
    let mut end = PACK_HEADER_LEN;
    for (i, raw) in bytes.chunks_exact(TRAILER_ENTRY_LEN).enumerate() {
        let at = footer.trailer_offset + (i * TRAILER_ENTRY_LEN) as u64;
        let entry = TrailerEntry::decode(raw)
            .ok_or_else(|| corrupt(id, at, "undecodable trailer entry"))?;
        if entry.offset < end || entry.offset + entry.frame_len() > footer.trailer_offset {
            return Err(corrupt(id, at, "trailer entry outside the frame area"));
        }
        end = entry.offset + entry.frame_len();
        entries.push(entry);
    }
    Ok(entries)
}

/// What a frame-by-frame scan of a pack found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Every frame whose header and crc check, in file order.
    pub frames: Vec<TrailerEntry>,
    /// Byte ranges that hold no valid frame, with the reason the first
    /// frame there failed.
    pub damaged: Vec<(u64, u64, String)>,
    /// End of the last valid frame.
    pub end_of_frames: u64,
}

/// Scans the frames of a pack between the header and `end` (the trailer
/// offset of a sealed pack, the file length of an unsealed one), checking
/// each header and crc32. After damage it searches forward for the next
/// valid frame, so one flipped byte hides no more than its own frame.
pub fn scan_frames(file: &File, id: PackId, end: u64) -> Result<ScanReport> {
    let mut report = ScanReport {
        end_of_frames: PACK_HEADER_LEN,
        ..ScanReport::default()
    };
    let mut offset = PACK_HEADER_LEN;
    let mut damage_start: Option<(u64, String)> = None;
    while offset + FRAME_HEADER_LEN as u64 <= end {
        match read_frame_at(file, offset, end) {
            Ok(header) => {
                if let Some((start, reason)) = damage_start.take() {
                    report.damaged.push((start, offset, reason));
                }
                report
                    .frames
                    .push(TrailerEntry::from_header(offset, &header));
                offset += header.frame_len();
                report.end_of_frames = offset;
            }
            Err(reason) => {
                if damage_start.is_none() {
                    damage_start = Some((offset, reason));
                }
                offset = match find_magic(file, offset + 1, end)
                    .map_err(|e| io_err(id, "scanning", e))?
                {
                    Some(next) => next,
                    None => end,
                };
            }
        }
    }
    if offset < end && damage_start.is_none() {
        damage_start = Some((offset, "truncated frame header".into()));
    }
    if let Some((start, reason)) = damage_start {
        report.damaged.push((start, end, reason));
    }
    Ok(report)
}

/// Reads and checks (header + crc) the frame at `offset`.
fn read_frame_at(file: &File, offset: u64, end: u64) -> std::result::Result<FrameHeader, String> {
    let mut header_bytes = [0u8; FRAME_HEADER_LEN];
    file.read_exact_at(&mut header_bytes, offset)
        .map_err(|e| format!("cannot read frame header: {e}"))?;
    let header = FrameHeader::parse(&header_bytes)?;
    if offset + header.frame_len() > end {
        return Err("frame runs past the end of the frame area".into());
    }
    let mut frame_bytes = vec![0u8; header.frame_len() as usize];
    file.read_exact_at(&mut frame_bytes, offset)
        .map_err(|e| format!("cannot read frame: {e}"))?;
    frame::check(&frame_bytes)?;
    Ok(header)
}

/// Finds the next offset at or after `from` where the frame magic appears.
fn find_magic(file: &File, from: u64, end: u64) -> std::io::Result<Option<u64>> {
    const WINDOW: usize = 1 << 20;
    let mut at = from;
    let mut buf = vec![0u8; WINDOW];
    while at + FRAME_MAGIC.len() as u64 <= end {
        let want = ((end - at) as usize).min(WINDOW);
        let got = file.read_at(&mut buf[..want], at)?;
        if got < FRAME_MAGIC.len() {
            return Ok(None);
        }
        if let Some(pos) = buf[..got].windows(4).position(|w| w == FRAME_MAGIC) {
            return Ok(Some(at + pos as u64));
        }
        at += (got - (FRAME_MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

/// The 24-byte header of pack `id`.
pub fn encode_header(id: PackId) -> Vec<u8> {
    let mut header = Vec::with_capacity(PACK_HEADER_LEN as usize);
    header.extend_from_slice(&PACK_MAGIC);
    header.extend_from_slice(&PACK_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&id.0.to_le_bytes());
    header
}

/// The trailer and footer that seal pack `id`, whose frames end at
/// `frames_end` and are listed by `entries`.
pub fn encode_tail(id: PackId, frames_end: u64, entries: &[TrailerEntry]) -> Vec<u8> {
    let mut tail = Vec::with_capacity(entries.len() * TRAILER_ENTRY_LEN + FOOTER_LEN as usize);
    for entry in entries {
        entry.encode(&mut tail);
    }
    let trailer_crc = crc32fast::hash(&tail);
    let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
    footer.extend_from_slice(&frames_end.to_le_bytes());
    footer.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    footer.extend_from_slice(&trailer_crc.to_le_bytes());
    footer.extend_from_slice(&id.0.to_le_bytes());
    let footer_crc = crc32fast::hash(&footer);
    footer.extend_from_slice(&footer_crc.to_le_bytes());
    footer.extend_from_slice(&0u32.to_le_bytes());
    footer.extend_from_slice(&PACK_END_MAGIC);
    tail.extend_from_slice(&footer);
    tail
}

/// A sealed pack assembled in memory from frames that were already checked
/// (the remote tier uploads such packs whole).
pub struct PackBuilder {
    id: PackId,
    bytes: Vec<u8>,
    entries: Vec<TrailerEntry>,
}

impl PackBuilder {
    /// An empty pack numbered `id`.
    pub fn new(id: PackId) -> PackBuilder {
        PackBuilder {
            id,
            bytes: encode_header(id),
            entries: Vec::new(),
        }
    }

    /// Appends one whole frame (header and payload); returns where it went.
    pub fn append(&mut self, frame_bytes: &[u8]) -> Result<TrailerEntry> {
        let header = FrameHeader::parse(frame_bytes).map_err(Error::Invariant)?;
        if frame_bytes.len() as u64 != header.frame_len() {
            return Err(Error::Invariant(
                "a frame's length differs from its header".into(),
            ));
        }
        let entry = TrailerEntry::from_header(self.bytes.len() as u64, &header);
        self.bytes.extend_from_slice(frame_bytes);
        self.entries.push(entry);
        Ok(entry)
    }

    /// Bytes so far (header and frames).
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Frames so far.
    pub fn frame_count(&self) -> usize {
        self.entries.len()
    }

    /// Whether no frame was appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals the pack: its bytes, and its frames with where they sit.
    pub fn finish(mut self) -> (Vec<u8>, Vec<TrailerEntry>) {
        let tail = encode_tail(self.id, self.bytes.len() as u64, &self.entries);
        self.bytes.extend_from_slice(&tail);
        (self.bytes, self.entries)
    }
}

/// The pack currently being appended to. Not thread-safe by itself; the
/// store serialises access.
pub struct ActivePack {
    id: PackId,
    file: Arc<File>,
    len: u64,
    entries: Vec<TrailerEntry>,
}

impl ActivePack {
    /// Creates pack `id` in `dir` (it must not exist) and writes its header.
    /// The directory entry is made durable before this returns.
    pub fn create(dir: &Path, id: PackId) -> Result<ActivePack> {
        let path = pack_path(dir, id);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(id, "creating", e))?;
        file.write_all(&encode_header(id))
            .map_err(|e| io_err(id, "writing header of", e))?;
        sync_dir(dir)?;
        Ok(ActivePack {
            id,
            file: Arc::new(file),
            len: PACK_HEADER_LEN,
            entries: Vec::new(),
        })
    }

    /// Continues an unsealed pack after a restart: `frames` are the valid
    /// frames a scan found and `end` where the next frame goes; anything in
    /// the file past `end` (a torn write) is cut off.
    pub fn resume(
        dir: &Path,
        id: PackId,
        frames: Vec<TrailerEntry>,
        end: u64,
    ) -> Result<ActivePack> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(pack_path(dir, id))
            .map_err(|e| io_err(id, "reopening", e))?;
        file.set_len(end).map_err(|e| io_err(id, "truncating", e))?;
        file.sync_all().map_err(|e| io_err(id, "syncing", e))?;
        Ok(ActivePack {
            id,
            file: Arc::new(file),
            len: end,
            entries: frames,
        })
    }

    /// This pack's id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// The file, shared with readers and the committer.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Frames written so far.
    pub fn frame_count(&self) -> usize {
        self.entries.len()
    }

    /// Appends one encoded frame and returns its offset. The bytes reach the
    /// page cache (readable at once) but are not yet durable.
    pub fn append(&mut self, frame_bytes: &[u8]) -> Result<TrailerEntry> {
        let header = FrameHeader::parse(frame_bytes).map_err(Error::Invariant)?;
        let offset = self.len;
        self.file
            .write_all_at(frame_bytes, offset)
            .map_err(|e| io_err(self.id, "appending to", e))?;
        self.len += frame_bytes.len() as u64;
        let entry = TrailerEntry::from_header(offset, &header);
        self.entries.push(entry);
        Ok(entry)
    }

    /// Writes the trailer and footer. The pack is immutable afterwards; the
    /// caller makes it durable (with the next commit).
    pub fn seal(self) -> Result<Arc<File>> {
        let tail = encode_tail(self.id, self.len, &self.entries);
        self.file
            .write_all_at(&tail, self.len)
            .map_err(|e| io_err(self.id, "sealing", e))?;
        Ok(self.file)
    }
}

/// Starts writing back `len` bytes of `file` from `offset` (0: to the end)
/// without waiting for them. Durability still comes from the commit's
/// `fdatasync`; an error here (a write-back that already failed) is
/// returned all the same, since the commit would not see it again.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE)
}

/// Waits until `len` bytes of `file` from `offset` (0: to the end) are
/// written back, then drops them from the page cache. Packs are written
/// once and rarely read right away, so their pages are better spent on
/// data that is read; on a VM whose freed memory goes back to the host,
/// reusing pages also avoids faulting fresh memory in for every write.
///
/// Waiting reports a failed write-back of the range — and, since Linux
/// 4.14, consumes it: the commit's `fdatasync` on the same file would then
/// succeed for bytes that never reached the disk. So the error must be
/// returned to the caller, who fails the commit.
pub fn release_written(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    sync_range(
        file,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    )?;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is
    // valid while `file` is borrowed, and no memory is passed. It is
    // advice: its result does not matter.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED);
    }
    Ok(())
}

fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // valid while `file` is borrowed, and no memory is passed.
    let ret = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Vec<u8> {
        frame::encode(
            ChunkId::compute(ChunkKind::Data, bytes),
            ChunkKind::Data,
            bytes,
            1,
        )
    }

    #[test]
    fn sealed_pack_trailer_lists_every_frame_and_matches_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut pack = ActivePack::create(dir.path(), PackId(7)).unwrap();
        for i in 0..50u32 {
            pack.append(&frame(&i.to_le_bytes().repeat(100 + i as usize)))
                .unwrap();
        }
        let end = pack.len();
        pack.seal().unwrap();
        let file = open_pack(dir.path(), PackId(7)).unwrap();
        check_header(&file, PackId(7)).unwrap();
        let footer = read_footer(&file, PackId(7)).unwrap().expect("sealed");
        assert_eq!(footer.trailer_offset, end);
        let trailer = read_trailer(&file, PackId(7), &footer).unwrap();
        let scan = scan_frames(&file, PackId(7), footer.trailer_offset).unwrap();
        assert!(scan.damaged.is_empty());
        assert_eq!(trailer, scan.frames);
        assert_eq!(trailer.len(), 50);
    }

    #[test]
    fn scan_skips_a_damaged_frame_and_finds_the_ones_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut pack = ActivePack::create(dir.path(), PackId(1)).unwrap();
        let entries: Vec<_> = (0..5u8)
            .map(|i| pack.append(&frame(&[i; 300])).unwrap())
            .collect();
        let end = pack.len();
        let file = pack.file().clone();
        // Flip a payload byte of the second frame.
        file.write_all_at(&[0xff], entries[1].offset + 60).unwrap();
        let scan = scan_frames(&file, PackId(1), end).unwrap();
        assert_eq!(scan.frames.len(), 4);
        assert_eq!(scan.damaged.len(), 1);
        assert_eq!(scan.damaged[0].0, entries[1].offset);
        assert_eq!(scan.damaged[0].1, entries[2].offset);
    }

    #[test]
    fn an_unsealed_pack_has_no_footer_and_a_torn_tail_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut pack = ActivePack::create(dir.path(), PackId(2)).unwrap();
        pack.append(&frame(&[1; 500])).unwrap();
        let good_end = pack.len();
        let file = pack.file().clone();
        // Half a frame: a torn write.
        let torn = frame(&[2; 500]);
        file.write_all_at(&torn[..40], good_end).unwrap();
        assert!(read_footer(&file, PackId(2)).unwrap().is_none());
        let scan = scan_frames(&file, PackId(2), good_end + 40).unwrap();
        assert_eq!(scan.frames.len(), 1);
        assert_eq!(scan.end_of_frames, good_end);
        assert_eq!(scan.damaged.len(), 1);
    }
}
