//! 9P2000.L messages: every request (`T…`) and reply (`R…`) the dialect
//! defines, each declared once with its fields in wire order; decoding and
//! encoding of both directions are generated from that declaration, so the
//! server and the load client in `benches/` speak the same codec.
//!
//! A message on the wire is `size[4] type[1] tag[2] body`, where `size`
//! counts the whole message. [`decode_request`] takes the bytes after
//! `size` (the server has already checked `size` against the negotiated
//! `msize`), so nothing here allocates more than the message holds.

use bytes::Bytes;

use crate::wire::{DecodeError, Qid, Reader, Writer};

/// The protocol version string this server speaks.
pub const VERSION_9P2000_L: &[u8] = b"9P2000.L";
/// The tag of `Tversion` (and only of it).
pub const NOTAG: u16 = 0xffff;
/// "No fid" (an attach without authentication).
pub const NOFID: u32 = 0xffff_ffff;
/// "No numeric user name" in `Tattach`.
pub const NONUNAME: u32 = 0xffff_ffff;
/// Most names in one `Twalk` (and qids in one `Rwalk`).
pub const MAXWELEM: usize = 16;
/// Header bytes of `Rread`/`Rreaddir` before the data (size, type, tag,
/// count): a reply to a read of `count` bytes needs `count + 11`.
pub const READ_OVERHEAD: u32 = 11;
/// Header bytes of `Twrite` before its data.
pub const WRITE_OVERHEAD: u32 = 23;

/// Qid types.
pub mod qid_type {
    pub const DIR: u8 = 0x80;
    pub const SYMLINK: u8 = 0x02;
    pub const FILE: u8 = 0x00;
}

/// `Tgetattr` request mask / `Rgetattr` valid bits.
pub mod getattr {
    pub const MODE: u64 = 0x1;
    pub const NLINK: u64 = 0x2;
    pub const UID: u64 = 0x4;
    pub const GID: u64 = 0x8;
    pub const RDEV: u64 = 0x10;
    pub const ATIME: u64 = 0x20;
    pub const MTIME: u64 = 0x40;
    pub const CTIME: u64 = 0x80;
    pub const INO: u64 = 0x100;
    pub const SIZE: u64 = 0x200;
    pub const BLOCKS: u64 = 0x400;
    /// Everything `stat` needs.
    pub const BASIC: u64 = 0x7ff;
}

/// `Tsetattr` valid bits.
pub mod setattr {
    pub const MODE: u32 = 0x1;
    pub const UID: u32 = 0x2;
    pub const GID: u32 = 0x4;
    pub const SIZE: u32 = 0x8;
    pub const ATIME: u32 = 0x10;
    pub const MTIME: u32 = 0x20;
    pub const CTIME: u32 = 0x40;
    pub const ATIME_SET: u32 = 0x80;
    pub const MTIME_SET: u32 = 0x100;
}

/// `Tlock`/`Tgetlock` types and `Rlock` statuses.
pub mod lock {
    pub const RDLCK: u8 = 0;
    pub const WRLCK: u8 = 1;
    pub const UNLCK: u8 = 2;
    pub const SUCCESS: u8 = 0;
    pub const BLOCKED: u8 = 1;
    pub const ERROR: u8 = 2;
}

/// One value of a message field: how it reads and writes itself.
pub trait Field: Sized {
    fn decode(r: &mut Reader, name: &'static str) -> Result<Self, DecodeError>;
    fn encode(&self, w: &mut Writer<'_>);
}

macro_rules! int_field {
    ($t:ty, $m:ident) => {
        impl Field for $t {
            fn decode(r: &mut Reader, name: &'static str) -> Result<Self, DecodeError> {
                r.$m(name)
            }
            fn encode(&self, w: &mut Writer<'_>) {
                w.$m(*self)
            }
        }
    };
}
int_field!(u8, u8);
int_field!(u16, u16);
int_field!(u32, u32);
int_field!(u64, u64);

/// A string (`len[2] bytes`).
impl Field for Vec<u8> {
    fn decode(r: &mut Reader, name: &'static str) -> Result<Self, DecodeError> {
        r.string(name)
    }
    fn encode(&self, w: &mut Writer<'_>) {
        w.string(self)
    }
}

/// Payload (`count[4] bytes`) of reads, writes and directory listings.
impl Field for Bytes {
    fn decode(r: &mut Reader, name: &'static str) -> Result<Self, DecodeError> {
        let count = r.u32(name)?;
        r.data(count, name)
    }
    fn encode(&self, w: &mut Writer<'_>) {
        w.data(self)
    }
}

impl Field for Qid {
    fn decode(r: &mut Reader, name: &'static str) -> Result<Self, DecodeError> {
        r.qid(name)
    }
    fn encode(&self, w: &mut Writer<'_>) {
        w.qid(self)
    }
}

/// A counted list (`n[2] items`) of at most [`MAXWELEM`]: walk names and
/// walk qids.
impl<T: Field + ListItem> Field for Vec<T> {
    fn decode(r: &mut Reader, name: &'static str) -> Result<Self, DecodeError> {
        let n = r.u16(name)?;
        if n as usize > MAXWELEM {
            return Err(DecodeError::TooManyNames(n));
        }
        (0..n).map(|_| T::decode(r, name)).collect()
    }
    fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.len() as u16);
        for item in self {
            item.encode(w);
        }
    }
}

/// Types that appear in counted lists.
pub trait ListItem {}
impl ListItem for Vec<u8> {}
impl ListItem for Qid {}

macro_rules! messages {
    ($(#[$meta:meta])* $enum:ident, $decode:ident {
        $($(#[$vmeta:meta])* $variant:ident = $code:literal { $($field:ident : $ty:ty),* $(,)? }),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $enum {
            $($(#[$vmeta])* $variant { $($field: $ty),* }),*
        }

        impl $enum {
            /// The message type byte.
            pub fn code(&self) -> u8 {
                match self { $($enum::$variant { .. } => $code),* }
            }

            /// The message's name, for logs.
            pub fn name(&self) -> &'static str {
                match self { $($enum::$variant { .. } => stringify!($variant)),* }
            }

            /// Appends the whole message (size, type, tag, body) to `out`.
            pub fn encode(&self, tag: u16, out: &mut Vec<u8>) {
                let start = out.len();
                out.extend_from_slice(&[0; 4]);
                let mut w = Writer { out };
                w.u8(self.code());
                w.u16(tag);
                match self {
                    $($enum::$variant { $($field),* } => { $(Field::encode($field, &mut w);)* })*
                }
                let size = (out.len() - start) as u32;
                out[start..start + 4].copy_from_slice(&size.to_le_bytes());
            }
        }

        /// Decodes one message from the bytes after its `size` field:
        /// its tag and the message.
        pub fn $decode(buf: Bytes) -> Result<(u16, $enum), DecodeError> {
            let mut r = Reader::new(buf);
            let code = r.u8("type")?;
            let tag = r.u16("tag")?;
            let msg = match code {
                $($code => $enum::$variant { $($field: <$ty as Field>::decode(&mut r, stringify!($field))?),* },)*
                other => return Err(DecodeError::UnknownType(other)),
            };
            r.finish()?;
            Ok((tag, msg))
        }
    };
}

messages! {
    /// A request, client to server.
    Request, decode_request {
        Statfs = 8 { fid: u32 },
        Lopen = 12 { fid: u32, flags: u32 },
        Lcreate = 14 { fid: u32, name: Vec<u8>, flags: u32, mode: u32, gid: u32 },
        Symlink = 16 { fid: u32, name: Vec<u8>, target: Vec<u8>, gid: u32 },
        Mknod = 18 { dfid: u32, name: Vec<u8>, mode: u32, major: u32, minor: u32, gid: u32 },
        Rename = 20 { fid: u32, dfid: u32, name: Vec<u8> },
        Readlink = 22 { fid: u32 },
        Getattr = 24 { fid: u32, mask: u64 },
        Setattr = 26 {
            fid: u32, valid: u32, mode: u32, uid: u32, gid: u32, size: u64,
            atime_sec: u64, atime_nsec: u64, mtime_sec: u64, mtime_nsec: u64,
        },
        Xattrwalk = 30 { fid: u32, newfid: u32, name: Vec<u8> },
        Xattrcreate = 32 { fid: u32, name: Vec<u8>, size: u64, flags: u32 },
        Readdir = 40 { fid: u32, offset: u64, count: u32 },
        Fsync = 50 { fid: u32, datasync: u32 },
        Lock = 52 {
            fid: u32, typ: u8, flags: u32, start: u64, length: u64, proc_id: u32,
            client_id: Vec<u8>,
        },
        Getlock = 54 { fid: u32, typ: u8, start: u64, length: u64, proc_id: u32, client_id: Vec<u8> },
        Link = 70 { dfid: u32, fid: u32, name: Vec<u8> },
        Mkdir = 72 { dfid: u32, name: Vec<u8>, mode: u32, gid: u32 },
        Renameat = 74 { olddirfid: u32, oldname: Vec<u8>, newdirfid: u32, newname: Vec<u8> },
        Unlinkat = 76 { dirfid: u32, name: Vec<u8>, flags: u32 },
        Version = 100 { msize: u32, version: Vec<u8> },
        Auth = 102 { afid: u32, uname: Vec<u8>, aname: Vec<u8>, n_uname: u32 },
        Attach = 104 { fid: u32, afid: u32, uname: Vec<u8>, aname: Vec<u8>, n_uname: u32 },
        Flush = 108 { oldtag: u16 },
        Walk = 110 { fid: u32, newfid: u32, names: Vec<Vec<u8>> },
        Read = 116 { fid: u32, offset: u64, count: u32 },
        Write = 118 { fid: u32, offset: u64, data: Bytes },
        Clunk = 120 { fid: u32 },
        Remove = 122 { fid: u32 },
    }
}

messages! {
    /// A reply, server to client.
    Reply, decode_reply {
        Lerror = 7 { ecode: u32 },
        Statfs = 9 {
            typ: u32, bsize: u32, blocks: u64, bfree: u64, bavail: u64, files: u64,
            ffree: u64, fsid: u64, namelen: u32,
        },
        Lopen = 13 { qid: Qid, iounit: u32 },
        Lcreate = 15 { qid: Qid, iounit: u32 },
        Symlink = 17 { qid: Qid },
        Mknod = 19 { qid: Qid },
        Rename = 21 {},
        Readlink = 23 { target: Vec<u8> },
        Getattr = 25 {
            valid: u64, qid: Qid, mode: u32, uid: u32, gid: u32, nlink: u64, rdev: u64,
            size: u64, blksize: u64, blocks: u64, atime_sec: u64, atime_nsec: u64,
            mtime_sec: u64, mtime_nsec: u64, ctime_sec: u64, ctime_nsec: u64,
            btime_sec: u64, btime_nsec: u64, gen: u64, data_version: u64,
        },
        Setattr = 27 {},
        Xattrwalk = 31 { size: u64 },
        Xattrcreate = 33 {},
        Readdir = 41 { data: Bytes },
        Fsync = 51 {},
        Lock = 53 { status: u8 },
        Getlock = 55 { typ: u8, start: u64, length: u64, proc_id: u32, client_id: Vec<u8> },
        Link = 71 {},
        Mkdir = 73 { qid: Qid },
        Renameat = 75 {},
        Unlinkat = 77 {},
        Version = 101 { msize: u32, version: Vec<u8> },
        Auth = 103 { aqid: Qid },
        Attach = 105 { qid: Qid },
        Flush = 109 {},
        Walk = 111 { qids: Vec<Qid> },
        Read = 117 { data: Bytes },
        Write = 119 { count: u32 },
        Clunk = 121 {},
        Remove = 123 {},
    }
}

/// One entry of an `Rreaddir` payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub qid: Qid,
    /// Offset to resume after this entry.
    pub offset: u64,
    /// `DT_*` type.
    pub typ: u8,
    pub name: Vec<u8>,
}

/// Bytes an entry named `name` takes in an `Rreaddir` payload.
pub fn dir_entry_len(name: &[u8]) -> usize {
    crate::wire::QID_LEN + 8 + 1 + 2 + name.len()
}

/// Appends one `Rreaddir` entry.
pub fn encode_dir_entry(out: &mut Vec<u8>, qid: &Qid, offset: u64, typ: u8, name: &[u8]) {
    let mut w = Writer { out };
    w.qid(qid);
    w.u64(offset);
    w.u8(typ);
    w.string(name);
}

/// Splits an `Rreaddir` payload into entries.
pub fn decode_dir_entries(data: Bytes) -> Result<Vec<DirEntry>, DecodeError> {
    let mut r = Reader::new(data.clone());
    let mut out = Vec::new();
    let mut left = data.len();
    while left > 0 {
        let qid = r.qid("qid")?;
        let offset = r.u64("offset")?;
        let typ = r.u8("type")?;
        let name = r.string("name")?;
        left -= dir_entry_len(&name);
        out.push(DirEntry {
            qid,
            offset,
            typ,
            name,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_request(msg: Request) {
        let mut out = Vec::new();
        msg.encode(7, &mut out);
        let size = u32::from_le_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(size, out.len());
        let (tag, back) = decode_request(Bytes::copy_from_slice(&out[4..])).unwrap();
        assert_eq!((tag, back), (7, msg));
    }

    #[test]
    fn requests_round_trip() {
        round_trip_request(Request::Version {
            msize: 8192,
            version: b"9P2000.L".to_vec(),
        });
        round_trip_request(Request::Walk {
            fid: 1,
            newfid: 2,
            names: vec![b"usr".to_vec(), b"bin".to_vec()],
        });
        round_trip_request(Request::Write {
            fid: 3,
            offset: 1 << 40,
            data: Bytes::from_static(b"hello"),
        });
        round_trip_request(Request::Setattr {
            fid: 1,
            valid: 0x1ff,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: 3,
            atime_sec: 4,
            atime_nsec: 5,
            mtime_sec: 6,
            mtime_nsec: 7,
        });
    }

    #[test]
    fn known_bytes_decode() {
        // Tversion tag NOTAG msize 8192 "9P2000.L", as the kernel sends it.
        let wire = b"\x15\x00\x00\x00\x64\xff\xff\x00\x20\x00\x00\x08\x009P2000.L";
        let (tag, msg) = decode_request(Bytes::copy_from_slice(&wire[4..])).unwrap();
        assert_eq!(tag, NOTAG);
        assert_eq!(
            msg,
            Request::Version {
                msize: 8192,
                version: b"9P2000.L".to_vec()
            }
        );
        let mut out = Vec::new();
        msg.encode(NOTAG, &mut out);
        assert_eq!(&out[..], &wire[..]);
    }

    #[test]
    fn malformed_messages_are_errors() {
        // A string length past the end.
        let bad = b"\x6e\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x05\x00a";
        assert!(matches!(
            decode_request(Bytes::copy_from_slice(bad)),
            Err(DecodeError::Short { .. })
        ));
        // A write whose count claims 4 GiB.
        let mut m = vec![118u8, 1, 0];
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_request(Bytes::from(m)),
            Err(DecodeError::Short { .. })
        ));
        // Seventeen walk names.
        let mut m = vec![110u8, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0, 17, 0];
        m.extend(std::iter::repeat_n([1u8, 0, b'a'], 17).flatten());
        assert_eq!(
            decode_request(Bytes::from(m)),
            Err(DecodeError::TooManyNames(17))
        );
        // Unknown type, trailing bytes.
        assert_eq!(
            decode_request(Bytes::from_static(&[6, 0, 0])),
            Err(DecodeError::UnknownType(6))
        );
        assert_eq!(
            decode_request(Bytes::from_static(&[120, 0, 0, 1, 0, 0, 0, 9])),
            Err(DecodeError::Trailing { count: 1 })
        );
    }

    #[test]
    fn dir_entries_round_trip() {
        let mut out = Vec::new();
        let qid = Qid {
            typ: qid_type::DIR,
            version: 0,
            path: 9,
        };
        encode_dir_entry(&mut out, &qid, 1, 4, b".");
        encode_dir_entry(&mut out, &qid, 2, 4, b"..");
        assert_eq!(out.len(), dir_entry_len(b".") + dir_entry_len(b".."));
        let entries = decode_dir_entries(Bytes::from(out)).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, b"..");
    }
}
