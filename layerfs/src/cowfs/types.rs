//! The core's public types: inode numbers, errors, attributes, the
//! arguments of its operations and a mount's configuration.

use std::path::PathBuf;

use crate::tree::Timestamp;

/// An inode number. The root is [`ROOT_INO`].
pub type Ino = u64;
/// The root directory's inode number (as FUSE expects).
pub const ROOT_INO: Ino = 1;

/// An operation's failure, as an errno value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
}

/// Result of an inode operation.
pub type FsResult<T> = std::result::Result<T, Errno>;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    /// The file-type bits of a mode (`S_IFREG`, `S_IFDIR`, …).
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }
}

/// An inode's attributes, as `stat` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u64,
}

/// Who is asking: the owner new inodes get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// Attribute changes (`chmod`, `chown`, `truncate`, `utimensat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// Flags of `rename`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with EEXIST if the target exists.
    pub noreplace: bool,
    /// Swap the two names atomically.
    pub exchange: bool,
}

/// One directory entry as [`CowFs::readdir_each`] lends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntryRef<'a> {
    /// Offset to resume after this entry.
    pub offset: u64,
    pub ino: Ino,
    pub kind: FileKind,
    pub name: &'a [u8],
}

/// One directory entry returned by [`CowFs::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryOut {
    /// Offset to resume after this entry; stable while the directory changes.
    pub offset: u64,
    pub ino: Ino,
    pub kind: FileKind,
    pub name: Vec<u8>,
}

/// Filesystem-wide figures for `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// How a mount is set up.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Directory for the upper layer (created; must be empty if it exists).
    pub upper_dir: PathBuf,
    /// Most bytes the upper layer may hold.
    pub quota_bytes: u64,
    /// Most inodes the sandbox may make (files, directories, symlinks,
    /// device nodes; the image's own are not counted): past it, making
    /// one fails with ENOSPC, as on a filesystem out of inodes. It bounds
    /// the inodes the daemon holds for the mount, with the image's.
    pub inode_quota: u64,
}

/// The inode quota a mount gets unless told otherwise (ext4 on a 16 GiB
/// disk has as many).
pub const DEFAULT_INODE_QUOTA: u64 = 1 << 20;

/// `setxattr` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    Set,
    /// Fail with EEXIST if present.
    Create,
    /// Fail with ENODATA if absent.
    Replace,
}

impl Errno {
    /// E2BIG (argument list too long; an xattr value over 64 KiB).
    #[allow(non_upper_case_globals)]
    pub const Errno2BIG: Errno = Errno(libc::E2BIG);
}
