//! FUSE requests and replies as bytes, for the io_uring transport
//! ([`super::ring`]): the kernel's layout of each operation this server
//! answers (`include/uapi/linux/fuse.h`, protocol 7.42), and the answer to
//! one request computed by the same [`FuseFs`] methods the fuser path
//! calls.
//!
//! Over io_uring a request arrives in three parts: the common header, the
//! operation's fixed-size argument (`op_in`: `fuse_open_in`,
//! `fuse_write_in`, …; empty for operations without one), and the payload
//! (names, written data). A reply is the common header (written by the
//! transport) and its arguments, laid out here.

use std::time::Duration;

use super::{privileged_uid, FuseFs, Sized, ATTR_TTL};
use crate::cowfs::{CachedAbove, Caller, Errno, FileKind, SetAttr, Stat, TimeSet};
use crate::tree::Timestamp;

/// Size of `struct fuse_in_header`.
pub(super) const IN_HEADER: usize = 40;
/// Size of `struct fuse_out_header`.
pub(super) const OUT_HEADER: usize = 16;

/// Operation codes (`enum fuse_opcode`) answered here.
pub(super) mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FSYNCDIR: u32 = 30;
    pub const CREATE: u32 = 35;
    pub const IOCTL: u32 = 39;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const READDIR: u32 = 28;
}

/// `setattr` validity bits (`FATTR_*`).
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
/// `fuse_write_in.write_flags`: the writer lacks CAP_FSETID.
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_fsync_in.fsync_flags`: `fdatasync`.
const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;
/// `fuse_open_out.open_flags`: keep the page cache across opens.
const FOPEN_KEEP_CACHE: u32 = 1 << 1;

/// The common header of a request (`struct fuse_in_header`).
#[derive(Clone, Copy, Debug)]
pub(super) struct InHeader {
    pub opcode: u32,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
}

impl InHeader {
    pub(super) fn parse(b: &[u8]) -> Result<InHeader, Errno> {
        Ok(InHeader {
            opcode: u32_at(b, 4)?,
            nodeid: u64_at(b, 16)?,
            uid: u32_at(b, 24)?,
            gid: u32_at(b, 28)?,
        })
    }
}

/// Writes a reply's common header (`struct fuse_out_header`): `error` is
/// 0 or a positive errno, sent negated.
pub(super) fn out_header(out: &mut [u8], len: usize, error: i32, unique: u64) {
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&(-error).to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
}

fn short() -> Errno {
    Errno(libc::EIO)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, Errno> {
    let bytes = b.get(at..at + 4).ok_or_else(short)?;
    Ok(u32::from_le_bytes(bytes.try_into().map_err(|_| short())?))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, Errno> {
    let bytes = b.get(at..at + 8).ok_or_else(short)?;
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| short())?))
}

/// Splits a NUL-ended name off the front of `b`.
fn name(b: &[u8]) -> Result<(&[u8], &[u8]), Errno> {
    let end = b.iter().position(|&c| c == 0).ok_or_else(short)?;
    Ok((&b[..end], &b[end + 1..]))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// `struct fuse_attr` (88 bytes).
fn put_attr(out: &mut Vec<u8>, st: &Stat) {
    let secs = |t: Timestamp| t.secs as u64;
    put_u64(out, st.ino);
    put_u64(out, st.size);
    put_u64(out, st.blocks);
    put_u64(out, secs(st.atime));
    put_u64(out, secs(st.mtime));
    put_u64(out, secs(st.ctime));
    put_u32(out, st.atime.nanos);
    put_u32(out, st.mtime.nanos);
    put_u32(out, st.ctime.nanos);
    put_u32(out, st.kind.mode_bits() | (st.perm & 0o7777));
    put_u32(out, st.nlink);
    put_u32(out, st.uid);
    put_u32(out, st.gid);
    put_u32(out, st.rdev as u32);
    put_u32(out, 4096);
    put_u32(out, 0);
}

fn put_valid(out: &mut Vec<u8>, ttl: Duration) {
    put_u64(out, ttl.as_secs());
}

/// `struct fuse_entry_out` (128 bytes).
fn put_entry(out: &mut Vec<u8>, st: &Stat) {
    put_u64(out, st.ino);
    put_u64(out, 0); // generation
    put_valid(out, ATTR_TTL);
    put_valid(out, ATTR_TTL);
    put_u32(out, ATTR_TTL.subsec_nanos());
    put_u32(out, ATTR_TTL.subsec_nanos());
    put_attr(out, st);
}

/// `struct fuse_attr_out` (104 bytes).
fn put_attr_out(out: &mut Vec<u8>, st: &Stat) {
    put_valid(out, ATTR_TTL);
    put_u32(out, ATTR_TTL.subsec_nanos());
    put_u32(out, 0);
    put_attr(out, st);
}

/// `struct fuse_open_out` (16 bytes): no handle, the page cache kept.
fn put_open_out(out: &mut Vec<u8>) {
    put_u64(out, 0);
    put_u32(out, FOPEN_KEEP_CACHE);
    put_u32(out, 0);
}

fn put_sized(out: &mut Vec<u8>, value: Sized) {
    match value {
        // `struct fuse_getxattr_out`.
        Sized::Size(n) => {
            put_u32(out, n);
            put_u32(out, 0);
        }
        Sized::Value(v) => out.extend_from_slice(&v),
    }
}

/// `struct fuse_dirent` and its name, padded to 8 bytes, if it fits in
/// `size` bytes of listing; false when it does not.
fn put_dirent(
    out: &mut Vec<u8>,
    size: usize,
    ino: u64,
    offset: u64,
    kind: FileKind,
    name: &[u8],
) -> bool {
    let len = (24 + name.len()).next_multiple_of(8);
    if out.len() + len > size {
        return false;
    }
    put_u64(out, ino);
    put_u64(out, offset);
    put_u32(out, name.len() as u32);
    put_u32(out, kind.mode_bits() >> 12);
    out.extend_from_slice(name);
    out.resize(out.len() + len - 24 - name.len(), 0);
    true
}

fn time_set(given: bool, now: bool, secs: u64, nanos: u32) -> Option<TimeSet> {
    if now {
        Some(TimeSet::Now)
    } else if given {
        Some(TimeSet::At(Timestamp {
            secs: secs as i64,
            nanos,
        }))
    } else {
        None
    }
}

/// A READ answered straight into `reply` (the entry's payload buffer,
/// whose old bytes do not matter): the bytes read, or the errno. A READ
/// larger than `reply` fails with EIO (a short read would mean the end of
/// the file).
pub(super) fn read_into(
    fs: &FuseFs,
    h: &InHeader,
    arg: &[u8],
    reply: &mut [u8],
) -> Result<usize, Errno> {
    let (offset, size) = (u64_at(arg, 8)?, u32_at(arg, 16)? as usize);
    let buf = reply.get_mut(..size).ok_or(Errno(libc::EIO))?;
    fs.fs.read_into(h.nodeid, offset, buf, CachedAbove::Yes)
}

/// The answer to one request but READ (see [`read_into`]): its reply
/// arguments appended to `out`, or
/// the errno to fail it with. `arg` is the operation's fixed-size
/// argument, `payload` what follows it.
pub(super) fn answer(
    fs: &FuseFs,
    h: &InHeader,
    arg: &[u8],
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Errno> {
    let caller = Caller {
        uid: h.uid,
        gid: h.gid,
    };
    let ino = h.nodeid;
    match h.opcode {
        op::LOOKUP => {
            let (n, _) = name(payload)?;
            put_entry(out, &fs.fs.lookup(ino, n)?);
        }
        op::GETATTR => put_attr_out(out, &fs.fs.getattr(ino)?),
        op::SETATTR => {
            let valid = u32_at(arg, 0)?;
            let given = |bit: u32| valid & bit != 0;
            let set = SetAttr {
                mode: given(FATTR_MODE).then_some(u32_at(arg, 68)?),
                uid: given(FATTR_UID).then_some(u32_at(arg, 76)?),
                gid: given(FATTR_GID).then_some(u32_at(arg, 80)?),
                size: given(FATTR_SIZE).then_some(u64_at(arg, 16)?),
                atime: time_set(
                    given(FATTR_ATIME),
                    given(FATTR_ATIME_NOW),
                    u64_at(arg, 32)?,
                    u32_at(arg, 56)?,
                ),
                mtime: time_set(
                    given(FATTR_MTIME),
                    given(FATTR_MTIME_NOW),
                    u64_at(arg, 40)?,
                    u32_at(arg, 60)?,
                ),
            };
            put_attr_out(out, &fs.setattr_as(ino, set, privileged_uid(h.uid))?);
        }
        op::READLINK => out.extend_from_slice(&fs.fs.readlink(ino)?),
        op::SYMLINK => {
            let (link_name, rest) = name(payload)?;
            let (target, _) = name(rest)?;
            put_entry(out, &fs.fs.symlink(ino, link_name, target, caller)?);
        }
        op::MKNOD => {
            let (n, _) = name(payload)?;
            let (mode, rdev, umask) = (u32_at(arg, 0)?, u32_at(arg, 4)?, u32_at(arg, 8)?);
            put_entry(out, &fs.mknod_as(ino, n, mode, umask, rdev, caller)?);
        }
        op::MKDIR => {
            let (n, _) = name(payload)?;
            let (mode, umask) = (u32_at(arg, 0)?, u32_at(arg, 4)?);
            put_entry(out, &fs.mkdir_as(ino, n, mode, umask, caller)?);
        }
        op::UNLINK => fs.fs.unlink(ino, name(payload)?.0)?,
        op::RMDIR => fs.fs.rmdir(ino, name(payload)?.0)?,
        op::RENAME | op::RENAME2 => {
            let newparent = u64_at(arg, 0)?;
            let flags = if h.opcode == op::RENAME2 {
                u32_at(arg, 8)?
            } else {
                0
            };
            let (old, rest) = name(payload)?;
            let (new, _) = name(rest)?;
            fs.rename_as(ino, old, newparent, new, flags)?;
        }
        op::LINK => {
            let old = u64_at(arg, 0)?;
            let (n, _) = name(payload)?;
            put_entry(out, &fs.fs.link(old, ino, n)?);
        }
        op::OPEN => {
            fs.open_as(ino, u32_at(arg, 0)? as i32, privileged_uid(h.uid))?;
            put_open_out(out);
        }
        op::WRITE => {
            let (offset, size) = (u64_at(arg, 8)?, u32_at(arg, 16)? as usize);
            let kill = u32_at(arg, 20)? & FUSE_WRITE_KILL_SUIDGID != 0;
            let data = payload.get(..size).ok_or_else(short)?;
            let n = fs.write_as(ino, offset, data, kill)?;
            put_u32(out, n as u32);
            put_u32(out, 0);
        }
        op::STATFS => {
            let s = fs.fs.statfs();
            for v in [
                s.blocks,
                s.blocks_free,
                s.blocks_free,
                s.files,
                s.files_free,
            ] {
                put_u64(out, v);
            }
            for v in [s.block_size, s.name_max, s.block_size, 0, 0, 0, 0, 0, 0, 0] {
                put_u32(out, v);
            }
        }
        op::RELEASE => fs.fs.release(ino),
        op::FSYNC => {
            if u32_at(arg, 8)? & FUSE_FSYNC_FDATASYNC != 0 {
                fs.fs.fdatasync(ino)?
            } else {
                fs.fs.fsync(ino)?
            }
        }
        op::FSYNCDIR => fs.fs.fsyncdir(ino)?,
        op::SETXATTR => {
            let (size, flags) = (u32_at(arg, 0)? as usize, u32_at(arg, 4)? as i32);
            let (n, rest) = name(payload)?;
            let value = rest.get(..size).ok_or_else(short)?;
            fs.fs.setxattr(ino, n, value, super::xattr_mode(flags))?;
        }
        op::GETXATTR => {
            let size = u32_at(arg, 0)?;
            let (n, _) = name(payload)?;
            put_sized(out, super::sized(size)(fs.fs.getxattr(ino, n)?)?);
        }
        op::LISTXATTR => {
            let size = u32_at(arg, 0)?;
            put_sized(out, super::sized(size)(fs.listxattr_bytes(ino)?)?);
        }
        op::REMOVEXATTR => fs.fs.removexattr(ino, name(payload)?.0)?,
        op::CREATE => {
            let (mode, umask) = (u32_at(arg, 4)?, u32_at(arg, 8)?);
            let (n, _) = name(payload)?;
            put_entry(out, &fs.create_as(ino, n, mode, umask, caller)?);
            put_open_out(out);
        }
        op::READDIR => {
            let (offset, size) = (u64_at(arg, 8)?, u32_at(arg, 16)? as usize);
            fs.fs.readdir_each(ino, offset, |e| {
                !put_dirent(out, size, e.ino, e.offset, e.kind, e.name)
            })?;
        }
        op::READDIRPLUS => {
            let (offset, size) = (u64_at(arg, 8)?, u32_at(arg, 16)? as usize);
            fs.fs.readdirplus_each(ino, offset, |e, st| {
                let len = 128 + (24 + e.name.len()).next_multiple_of(8);
                if out.len() + len > size {
                    return true;
                }
                put_entry(out, st);
                !put_dirent(out, usize::MAX, e.ino, e.offset, e.kind, e.name)
            })?;
        }
        op::FALLOCATE => {
            let (offset, length, mode) = (u64_at(arg, 8)?, u64_at(arg, 16)?, u32_at(arg, 24)?);
            fs.fs.fallocate(ino, offset, length, mode as i32)?;
        }
        op::LSEEK => {
            let (offset, whence) = (u64_at(arg, 8)? as i64, u32_at(arg, 16)? as i32);
            put_u64(out, fs.lseek_as(ino, offset, whence)?);
        }
        // No ioctls (see the fuser path).
        op::IOCTL => return Err(Errno(libc::ENOTTY)),
        // FLUSH, OPENDIR and POLL are answered ENOSYS as on the fuser path
        // (the kernel stops sending them); so is everything not served.
        _ => return Err(Errno(libc::ENOSYS)),
    }
    Ok(())
}
