//! Entry points for fuzzing the store's decoders: the `fuzz/` targets
//! (cargo-fuzz, long runs) and the mutation tests in `tests/` (bounded, in
//! CI) call these with arbitrary bytes. Each checks that decoding never
//! panics and that what it accepts is consistent. Not a stable API.

use std::fs::File;

use crate::frame::{self, FRAME_HEADER_LEN};
use crate::id::{ChunkId, ChunkKind};
use crate::node::Node;
use crate::pack::{self, PackId};

/// A frame (header and payload): a frame that decodes has a consistent
/// header, checks without decoding, and holds bytes whose hash is its id.
pub fn frame(bytes: &[u8]) {
    match frame::decode(bytes.to_vec()) {
        Ok((header, raw)) => {
            assert_eq!(raw.len() as u64, u64::from(header.raw_len));
            assert_eq!(header.frame_len(), bytes.len() as u64);
            assert!(frame::check(bytes).is_ok());
            assert_eq!(ChunkId::compute(header.kind, &raw), header.id);
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
    // A header alone parses or is refused, whatever follows.
    if bytes.len() >= FRAME_HEADER_LEN {
        let _ = frame::FrameHeader::parse(&bytes[..FRAME_HEADER_LEN]);
    }
}

/// A node's bytes: decoding never panics; a node that decodes encodes to
/// bytes that decode to the same node.
pub fn node(bytes: &[u8]) {
    let id = ChunkId::compute(ChunkKind::Node, bytes);
    if let Ok(node) = Node::decode(id, bytes) {
        if let Ok(again) = node.encode() {
            let back = Node::decode(ChunkId::compute(ChunkKind::Node, &again), &again)
                .expect("a re-encoded node decodes");
            assert_eq!(back, node);
        }
    }
}

/// A whole pack file: its header, footer, trailer and a scan of its
/// frames are read as recovery and fsck read them (they scan only a pack
/// whose header checks); every frame the scan reports lies inside the
/// file, in order.
pub fn pack(file: &File) {
    let id = PackId(1);
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if pack::check_header(file, id).is_err() {
        return;
    }
    if let Ok(Some(footer)) = pack::read_footer(file, id) {
        let _ = pack::read_trailer(file, id, &footer);
    }
    if let Ok(scan) = pack::scan_frames(file, id, len) {
        let mut at = 0;
        for entry in &scan.frames {
            assert!(entry.offset >= at, "frames out of order");
            at = entry.offset + entry.frame_len();
            assert!(at <= len, "a frame past the end of the file");
        }
        assert!(scan.end_of_frames <= len);
    }
}

/// Where the valid frames of a pack file are (offset, length): seeds for
/// [`frame`].
pub fn frame_ranges(file: &File) -> Vec<(u64, u64)> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    pack::scan_frames(file, PackId(1), len)
        .map(|scan| {
            scan.frames
                .iter()
                .map(|e| (e.offset, e.frame_len()))
                .collect()
        })
        .unwrap_or_default()
}
