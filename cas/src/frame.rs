//! Chunk frames: how one chunk is laid out inside a pack, and the codecs
//! (raw or zstd) its bytes are stored with.
//!
//! A frame is a 52-byte header followed by the stored payload. The crc32
//! covers everything after itself, so a torn or flipped frame is noticed
//! before decompression; the BLAKE3 id is checked after, so no wrong byte
//! ever leaves the store. Layout in FORMAT.md.

use std::cell::RefCell;

use bytes::Bytes;

use crate::config::MAX_CHUNK_LEN;
use crate::id::{ChunkId, ChunkKind};

/// Magic at the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"SCHK";
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 52;

/// How a chunk's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is.
    Raw,
    /// A single zstd frame.
    Zstd,
}

impl Codec {
    /// On-disk code.
    pub fn code(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
        }
    }

    /// Decodes an on-disk code.
    pub fn from_code(code: u8) -> Option<Codec> {
        match code {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// The decoded header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub id: ChunkId,
    pub kind: ChunkKind,
    pub codec: Codec,
    /// Bytes of payload that follow the header.
    pub stored_len: u32,
    /// Bytes once decoded.
    pub raw_len: u32,
    /// crc32 of header bytes 12..52 and the payload.
    pub crc: u32,
}

impl FrameHeader {
    /// Total frame length on disk.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.stored_len)
    }

    /// Parses and sanity-checks a header. `Err` carries the reason.
    pub fn parse(bytes: &[u8]) -> Result<FrameHeader, String> {
        let bytes: &[u8; FRAME_HEADER_LEN] = bytes
            .get(..FRAME_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or("frame header is truncated")?;
        if bytes[0..4] != FRAME_MAGIC {
            return Err("bad frame magic".into());
        }
        let stored_len = u32_at(bytes, 4);
        let crc = u32_at(bytes, 8);
        let codec = Codec::from_code(bytes[12]).ok_or("unknown codec")?;
        let kind = ChunkKind::from_code(bytes[13]).ok_or("unknown chunk kind")?;
        if bytes[14..16] != [0, 0] {
            return Err("reserved header bytes are not zero".into());
        }
        let raw_len = u32_at(bytes, 16);
        if raw_len as usize > MAX_CHUNK_LEN {
            return Err(format!("raw length {raw_len} exceeds the chunk limit"));
        }
        let max_stored = zstd::zstd_safe::compress_bound(MAX_CHUNK_LEN);
        if stored_len as usize > max_stored {
            return Err(format!(
                "stored length {stored_len} exceeds the frame limit"
            ));
        }
        if codec == Codec::Raw && stored_len != raw_len {
            return Err("raw frame whose stored and raw lengths differ".into());
        }
        let id = ChunkId::from_slice(&bytes[20..52]).ok_or("frame id is truncated")?;
        Ok(FrameHeader {
            id,
            kind,
            codec,
            stored_len,
            raw_len,
            crc,
        })
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Chunks shorter than this are stored raw without trying zstd: its frame
/// overhead makes a saving there unlikely and not worth a decode.
const MIN_COMPRESS_LEN: usize = 128;

/// Builds a complete frame for `raw` (header and payload, ready to append),
/// compressing with zstd when that makes the chunk smaller.
pub fn encode(id: ChunkId, kind: ChunkKind, raw: &[u8], zstd_level: i32) -> Vec<u8> {
    debug_assert!(raw.len() <= MAX_CHUNK_LEN);
    let bound = if raw.len() >= MIN_COMPRESS_LEN {
        zstd::zstd_safe::compress_bound(raw.len())
    } else {
        raw.len()
    };
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + bound.max(raw.len()));
    frame.resize(FRAME_HEADER_LEN, 0);
    if raw.len() >= MIN_COMPRESS_LEN {
        // Compress straight after the header, into uninitialised capacity.
        let compressed = COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().map(|(level, _)| *level) != Some(zstd_level) {
                *slot = zstd::bulk::Compressor::new(zstd_level)
                    .ok()
                    .map(|c| (zstd_level, c));
            }
            let (_, compressor) = slot.as_mut()?;
            let mut out = std::io::Cursor::new(&mut frame);
            out.set_position(FRAME_HEADER_LEN as u64);
            compressor.compress_to_buffer(raw, &mut out).ok()
        });
        if let Some(len) = compressed.filter(|&len| len < raw.len()) {
            debug_assert_eq!(frame.len(), FRAME_HEADER_LEN + len);
            write_header(&mut frame, id, kind, Codec::Zstd, raw.len());
            return frame;
        }
        frame.truncate(FRAME_HEADER_LEN);
    }
    frame.extend_from_slice(raw);
    write_header(&mut frame, id, kind, Codec::Raw, raw.len());
    frame
}

/// Fills in the header of a frame whose payload is already in place.
fn write_header(frame: &mut [u8], id: ChunkId, kind: ChunkKind, codec: Codec, raw_len: usize) {
    let stored_len = (frame.len() - FRAME_HEADER_LEN) as u32;
    frame[0..4].copy_from_slice(&FRAME_MAGIC);
    frame[4..8].copy_from_slice(&stored_len.to_le_bytes());
    frame[12] = codec.code();
    frame[13] = kind.code();
    frame[14..16].copy_from_slice(&[0, 0]);
    frame[16..20].copy_from_slice(&(raw_len as u32).to_le_bytes());
    frame[20..52].copy_from_slice(id.as_bytes());
    let crc = crc32fast::hash(&frame[12..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Computes the crc32 a frame should carry, from its header and payload.
pub fn frame_crc(header_bytes: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_bytes[12..FRAME_HEADER_LEN]);
    hasher.update(payload);
    hasher.finalize()
}

/// Checks a whole frame (header bytes + payload) and returns its decoded,
/// verified chunk bytes. `Err` carries the reason it failed. A raw frame's
/// bytes are returned without copying.
pub fn decode(frame: Vec<u8>) -> Result<(FrameHeader, Bytes), String> {
    decode_bytes(Bytes::from(frame))
}

/// [`decode`] of a frame that is (a slice of) shared bytes, such as one
/// frame of a larger read: a raw frame's chunk is a slice of them.
pub fn decode_bytes(frame: Bytes) -> Result<(FrameHeader, Bytes), String> {
    let header = check(&frame)?;
    let raw = match header.codec {
        Codec::Raw => frame.slice(FRAME_HEADER_LEN..),
        Codec::Zstd => Bytes::from(decode_zstd(&header, &frame[FRAME_HEADER_LEN..])?),
    };
    if ChunkId::compute(header.kind, &raw) != header.id {
        return Err("content hash (BLAKE3) does not match the chunk id".into());
    }
    Ok((header, raw))
}

/// Checks a frame's header and crc32 without decoding its payload; `frame`
/// must hold exactly the header and payload.
pub fn check(frame: &[u8]) -> Result<FrameHeader, String> {
    let header = FrameHeader::parse(frame)?;
    let payload = &frame[FRAME_HEADER_LEN..];
    if payload.len() != header.stored_len as usize {
        return Err("frame payload is truncated".into());
    }
    if frame_crc(frame, payload) != header.crc {
        return Err("frame checksum (crc32) mismatch".into());
    }
    Ok(header)
}

/// Decodes a zstd payload whose crc has been checked.
fn decode_zstd(header: &FrameHeader, payload: &[u8]) -> Result<Vec<u8>, String> {
    // Decode into uninitialised capacity of exactly the promised length; a
    // payload that would decode to more fails instead of growing the buffer.
    let mut raw = Vec::with_capacity(header.raw_len as usize);
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| format!("cannot create zstd decoder: {e}"))?,
            );
        }
        let decoder = slot.as_mut().ok_or("zstd decoder unavailable")?;
        decoder
            .decompress_to_buffer(payload, &mut raw)
            .map_err(|e| format!("zstd payload does not decode: {e}"))
    })?;
    if raw.len() != header.raw_len as usize {
        return Err(format!(
            "zstd payload decodes to {} bytes, header says {}",
            raw.len(),
            header.raw_len
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(bytes: &[u8]) -> Vec<u8> {
        encode(
            ChunkId::compute(ChunkKind::Data, bytes),
            ChunkKind::Data,
            bytes,
            1,
        )
    }

    #[test]
    fn compressible_chunks_are_stored_as_zstd_and_round_trip() {
        let bytes = b"abcdefgh".repeat(4096);
        let frame = frame_of(&bytes);
        let (header, raw) = decode(frame.clone()).unwrap();
        assert_eq!(header.codec, Codec::Zstd);
        assert!(frame.len() < bytes.len() / 10);
        assert_eq!(raw, bytes);
    }

    #[test]
    fn incompressible_chunks_are_stored_raw() {
        let mut bytes = vec![0u8; 65536];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let frame = frame_of(&bytes);
        let (header, raw) = decode(frame.clone()).unwrap();
        assert_eq!(header.codec, Codec::Raw);
        assert_eq!(frame.len(), FRAME_HEADER_LEN + bytes.len());
        assert_eq!(raw, bytes);
    }

    #[test]
    fn every_single_flipped_byte_is_detected() {
        let bytes = b"0123456789".repeat(50);
        let frame = frame_of(&bytes);
        for at in 0..frame.len() {
            let mut damaged = frame.clone();
            damaged[at] ^= 0x40;
            assert!(decode(damaged).is_err(), "flip at {at} went unnoticed");
        }
    }

    #[test]
    fn a_frame_whose_id_lies_is_rejected_even_with_a_valid_crc() {
        let bytes = b"honest bytes".repeat(20);
        let liar = ChunkId::compute(ChunkKind::Data, b"other bytes");
        let frame = encode(liar, ChunkKind::Data, &bytes, 1);
        let reason = decode(frame).unwrap_err();
        assert!(reason.contains("BLAKE3"), "{reason}");
    }

    #[test]
    fn absurd_lengths_are_rejected_before_allocation() {
        let mut frame = frame_of(b"small chunk of data that is long enough to compress maybe");
        frame[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(FrameHeader::parse(&frame).unwrap_err().contains("limit"));
    }
}
