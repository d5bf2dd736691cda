//! Chunk identity: what a chunk is called and how that name is computed.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Length in bytes of a [`ChunkId`].
pub const CHUNK_ID_LEN: usize = 32;

/// What a chunk holds, which decides how its id is computed and whether
/// garbage collection looks inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChunkKind {
    /// Opaque bytes (file data, memory pages). Id = BLAKE3 of the bytes.
    Data,
    /// A [`Node`](crate::Node): links to other chunks followed by a typed
    /// body. Id = BLAKE3 keyed with [`NODE_HASH_KEY`] over the bytes, so a
    /// data chunk can never be taken for a node or the other way round.
    Node,
}

impl ChunkKind {
    /// The on-disk code of this kind (see FORMAT.md).
    pub fn code(self) -> u8 {
        match self {
            ChunkKind::Data => 0,
            ChunkKind::Node => 1,
        }
    }

    /// Decodes an on-disk kind code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ChunkKind::Data),
            1 => Some(ChunkKind::Node),
            _ => None,
        }
    }

    /// A lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            ChunkKind::Data => "data",
            ChunkKind::Node => "node",
        }
    }
}

/// The key for hashing node chunks: BLAKE3 of the ASCII string
/// `strata-cas node chunk v1`. Domain separation keeps node ids and data ids
/// apart even for identical bytes.
pub const NODE_HASH_KEY: [u8; 32] = [
    0xf9, 0xa1, 0x9e, 0xc6, 0x93, 0x6e, 0x5e, 0x87, 0x92, 0x6d, 0xe2, 0xff, 0xd2, 0x26, 0x42, 0xb4,
    0x19, 0xe2, 0x6d, 0x82, 0x0f, 0x0a, 0xf2, 0x0f, 0x14, 0xdd, 0x84, 0xdd, 0xe6, 0x57, 0x45, 0xeb,
];

/// The content address of a chunk: 32 bytes of BLAKE3 over its uncompressed
/// bytes (keyed for nodes, see [`ChunkKind`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; CHUNK_ID_LEN]);

impl ChunkId {
    /// Computes the id of `bytes` stored as a chunk of `kind`.
    pub fn compute(kind: ChunkKind, bytes: &[u8]) -> ChunkId {
        match kind {
            ChunkKind::Data => ChunkId(*blake3::hash(bytes).as_bytes()),
            ChunkKind::Node => ChunkId(*blake3::keyed_hash(&NODE_HASH_KEY, bytes).as_bytes()),
        }
    }

    /// Wraps raw id bytes (as read from disk or a link).
    pub fn from_bytes(bytes: [u8; CHUNK_ID_LEN]) -> ChunkId {
        ChunkId(bytes)
    }

    /// Reads an id from the first 32 bytes of `slice`, if it is long enough.
    pub fn from_slice(slice: &[u8]) -> Option<ChunkId> {
        let bytes: [u8; CHUNK_ID_LEN] = slice.get(..CHUNK_ID_LEN)?.try_into().ok()?;
        Some(ChunkId(bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; CHUNK_ID_LEN] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(CHUNK_ID_LEN * 2);
        for byte in self.0 {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }

    /// The first 12 hex characters, for human-readable reports.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

impl FromStr for ChunkId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| Error::InvalidId {
            text: text.chars().take(80).collect(),
            reason: reason.to_string(),
        };
        if text.len() != CHUNK_ID_LEN * 2 {
            return Err(invalid("an id is 64 hexadecimal characters"));
        }
        let mut bytes = [0u8; CHUNK_ID_LEN];
        let digits = text.as_bytes();
        for (i, byte) in bytes.iter_mut().enumerate() {
            let hi = hex_value(digits[2 * i]).ok_or_else(|| invalid("not hexadecimal"))?;
            let lo = hex_value(digits[2 * i + 1]).ok_or_else(|| invalid("not hexadecimal"))?;
            *byte = (hi << 4) | lo;
        }
        Ok(ChunkId(bytes))
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_hash_key_is_blake3_of_its_documented_string() {
        assert_eq!(
            *blake3::hash(b"strata-cas node chunk v1").as_bytes(),
            NODE_HASH_KEY
        );
    }

    #[test]
    fn data_and_node_ids_of_the_same_bytes_differ() {
        let bytes = b"identical bytes";
        assert_ne!(
            ChunkId::compute(ChunkKind::Data, bytes),
            ChunkId::compute(ChunkKind::Node, bytes)
        );
        assert_eq!(
            ChunkId::compute(ChunkKind::Data, bytes).as_bytes(),
            blake3::hash(bytes).as_bytes()
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let id = ChunkId::compute(ChunkKind::Data, b"x");
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.to_hex().to_uppercase().parse::<ChunkId>().unwrap(), id);
        assert!("abc".parse::<ChunkId>().is_err());
        let mut bad = id.to_hex();
        bad.replace_range(0..1, "g");
        assert!(bad.parse::<ChunkId>().is_err());
        // Multi-byte characters must not panic the parser.
        assert!("é".repeat(32).parse::<ChunkId>().is_err());
    }
}
