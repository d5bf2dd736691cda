//! 9P's wire primitives: little-endian integers, strings with a 16-bit
//! length, and qids. Decoding checks every length against the bytes that
//! are really there before it takes or allocates anything, so a message
//! can never make the reader allocate more than the message itself holds.

use bytes::Bytes;

/// Why a message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message ends early: {field} needs {needed} more bytes, {left} left")]
    Short {
        field: &'static str,
        needed: usize,
        left: usize,
    },
    #[error("{count} trailing bytes after the message body")]
    Trailing { count: usize },
    #[error("message type {0} is not a 9P2000.L request")]
    UnknownType(u8),
    #[error("walk of {0} names (at most 16)")]
    TooManyNames(u16),
    #[error("message size {size} is outside 7..={max}")]
    BadSize { size: u32, max: u32 },
}

/// A server-chosen file identity (type, version, path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Qid {
    pub typ: u8,
    pub version: u32,
    pub path: u64,
}

/// Bytes a qid takes on the wire.
pub const QID_LEN: usize = 13;

/// Reads primitives off a received message body.
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// A reader over `buf`.
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(DecodeError::Short {
                field,
                needed: n,
                left,
            });
        }
        let at = self.pos;
        self.pos += n;
        Ok(&self.buf[at..at + n])
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A string: 16-bit length, then that many bytes (not checked as
    /// UTF-8: 9P names are bytes, as Linux names are).
    pub fn string(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        let len = self.u16(field)? as usize;
        Ok(self.take(len, field)?.to_vec())
    }

    /// `count` bytes of payload, shared with the message buffer (no copy).
    pub fn data(&mut self, count: u32, field: &'static str) -> Result<Bytes, DecodeError> {
        let n = count as usize;
        let at = self.pos;
        self.take(n, field)?;
        Ok(self.buf.slice(at..at + n))
    }

    pub fn qid(&mut self, field: &'static str) -> Result<Qid, DecodeError> {
        Ok(Qid {
            typ: self.u8(field)?,
            version: self.u32(field)?,
            path: self.u64(field)?,
        })
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            count => Err(DecodeError::Trailing { count }),
        }
    }
}

/// Appends primitives to a message being built.
pub struct Writer<'a> {
    pub out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    /// A string; names longer than 65,535 bytes are cut there (no 9P name
    /// or path Strata serves is that long).
    pub fn string(&mut self, s: &[u8]) {
        let s = &s[..s.len().min(u16::MAX as usize)];
        self.u16(s.len() as u16);
        self.out.extend_from_slice(s);
    }
    pub fn data(&mut self, d: &[u8]) {
        self.u32(d.len() as u32);
        self.out.extend_from_slice(d);
    }
    pub fn qid(&mut self, q: &Qid) {
        self.u8(q.typ);
        self.u32(q.version);
        self.u64(q.path);
    }
}
