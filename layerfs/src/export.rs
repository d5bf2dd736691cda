//! Exporting a tree as a tar archive (POSIX pax), such that importing the
//! archive gives back the same tree id.
//!
//! Entries come in depth-first name order, the root first as `./`, so every
//! hard link follows the file it names. Times with nanoseconds, ids too big
//! for the ustar fields, long names and extended attributes travel in pax
//! records (`mtime`, `atime`, `ctime`, `uid`, `gid`, `path`, `linkpath`,
//! `SCHILY.xattr.NAME`); sockets are fifos marked `STRATA.kind=socket`. Holes in files are written as zeros (importing
//! turns all-zero chunks back into holes).

use std::io::Write;

use cas::{ChunkId, Store};
use tar::{EntryType, Header};

use crate::error::{Error, Result};
use crate::import::tar::{format_pax_time, SOCKET_PAX_KEY};
use crate::memtree::TreeReader;
use crate::tree::{Attrs, DirNode, Entry, InodeKind};

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportStats {
    pub entries: u64,
    pub file_bytes: u64,
}

/// Ustar numeric fields hold at most 7 octal digits for ids.
const USTAR_ID_MAX: u32 = 0o7_777_777;

/// Writes tree `root` to `out` as a tar archive.
pub fn export_tar(store: &Store, root: ChunkId, out: impl Write) -> Result<ExportStats> {
    let reader = TreeReader::new(store);
    let mut builder = tar::Builder::new(out);
    let mut stats = ExportStats::default();
    let root_dir = reader.dir(root)?;
    write_dir(&mut builder, &reader, b"", root_dir, &mut stats)?;
    builder
        .finish()
        .map_err(|e| Error::io("writing the archive", e))?;
    Ok(stats)
}

/// Writes directory `dir` at `path` (empty for the root, written as `./`)
/// and its whole subtree, depth-first in name order.
fn write_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    reader: &TreeReader<'_>,
    path: &[u8],
    dir: DirNode,
    stats: &mut ExportStats,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("writing the archive", e);
    let shown: &[u8] = if path.is_empty() { b"./" } else { path };
    append(builder, shown, &dir.attrs, EntryKind::Dir, stats).map_err(io)?;
    for (name, entry) in reader.entries(&dir)? {
        let mut child = path.to_vec();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(&name);
        match entry {
            Entry::Dir(id) => {
                let node = reader.dir(id)?;
                write_dir(builder, reader, &child, node, stats)?;
            }
            Entry::HardLink { target } => append(
                builder,
                &child,
                &Attrs::default(),
                EntryKind::Link(&target),
                stats,
            )
            .map_err(io)?,
            Entry::Inode(inode) => {
                let kind = match &inode.kind {
                    InodeKind::File { size, blob } => {
                        let blob = match blob {
                            Some(id) => Some(reader.store().blob(id)?),
                            None => None,
                        };
                        EntryKind::File(*size, blob)
                    }
                    InodeKind::Symlink { target } => EntryKind::Symlink(target),
                    InodeKind::CharDevice { rdev } => EntryKind::Device(EntryType::Char, *rdev),
                    InodeKind::BlockDevice { rdev } => EntryKind::Device(EntryType::Block, *rdev),
                    InodeKind::Fifo => EntryKind::Fifo,
                    InodeKind::Socket => EntryKind::Socket,
                };
                append(builder, &child, &inode.attrs, kind, stats).map_err(io)?;
            }
        }
    }
    Ok(())
}

enum EntryKind<'a> {
    Dir,
    File(u64, Option<cas::Blob>),
    Symlink(&'a [u8]),
    Link(&'a [u8]),
    Device(EntryType, u64),
    Fifo,
    /// tar has no socket type: a fifo entry with the pax record
    /// `STRATA.kind=socket`, which Strata's import reads back as a socket.
    Socket,
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &[u8],
    attrs: &Attrs,
    kind: EntryKind<'_>,
    stats: &mut ExportStats,
) -> std::io::Result<()> {
    let mut header = Header::new_ustar();
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let is_link = matches!(kind, EntryKind::Link(_));

    // Name: the ustar field when it fits, a pax record always when not.
    let mut name = path.to_vec();
    if matches!(kind, EntryKind::Dir) && !name.ends_with(b"/") {
        name.push(b'/');
    }
    {
        let field = &mut header.as_old_mut().name;
        if name.len() <= field.len() {
            field[..name.len()].copy_from_slice(&name);
        } else {
            let cut = field.len();
            field.copy_from_slice(&name[..cut]);
            pax.push(("path".into(), name.clone()));
        }
    }
    let link_target = match &kind {
        EntryKind::Symlink(t) | EntryKind::Link(t) => Some(*t),
        _ => None,
    };
    if let Some(target) = link_target {
        let field = &mut header.as_old_mut().linkname;
        if target.len() <= field.len() {
            field[..target.len()].copy_from_slice(target);
        } else {
            let cut = field.len();
            field.copy_from_slice(&target[..cut]);
            pax.push(("linkpath".into(), target.to_vec()));
        }
    }

    if is_link {
        header.set_mode(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
    } else {
        header.set_mode(attrs.mode);
        for (key, value, set) in [
            ("uid", attrs.uid, Header::set_uid as fn(&mut Header, u64)),
            ("gid", attrs.gid, Header::set_gid as fn(&mut Header, u64)),
        ] {
            if value > USTAR_ID_MAX {
                set(&mut header, 0);
                pax.push((key.into(), value.to_string().into_bytes()));
            } else {
                set(&mut header, u64::from(value));
            }
        }
        header.set_mtime(attrs.mtime.secs.max(0) as u64);
        if attrs.mtime.nanos != 0 || attrs.mtime.secs < 0 {
            pax.push(("mtime".into(), format_pax_time(attrs.mtime).into_bytes()));
        }
        for (key, t) in [("atime", attrs.atime), ("ctime", attrs.ctime)] {
            if t != attrs.mtime {
                pax.push((key.into(), format_pax_time(t).into_bytes()));
            }
        }
        for (xname, value) in &attrs.xattrs {
            let xname = std::str::from_utf8(xname).map_err(|_| {
                std::io::Error::other(format!(
                    "{}: extended attribute name is not UTF-8 and cannot be exported",
                    String::from_utf8_lossy(path)
                ))
            })?;
            pax.push((format!("SCHILY.xattr.{xname}"), value.clone()));
        }
    }

    let (entry_type, size) = match &kind {
        EntryKind::Dir => (EntryType::Directory, 0),
        EntryKind::File(size, _) => (EntryType::Regular, *size),
        EntryKind::Symlink(_) => (EntryType::Symlink, 0),
        EntryKind::Link(_) => (EntryType::Link, 0),
        EntryKind::Device(t, _) => (*t, 0),
        EntryKind::Fifo => (EntryType::Fifo, 0),
        EntryKind::Socket => {
            pax.push((SOCKET_PAX_KEY.into(), b"socket".to_vec()));
            (EntryType::Fifo, 0)
        }
    };
    header.set_entry_type(entry_type);
    header.set_size(size);
    if let EntryKind::Device(_, rdev) = kind {
        header.set_device_major(libc::major(rdev))?;
        header.set_device_minor(libc::minor(rdev))?;
    }
    if !pax.is_empty() {
        builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    header.set_cksum();
    stats.entries += 1;
    match kind {
        EntryKind::File(size, Some(blob)) => {
            stats.file_bytes += size;
            builder.append(&header, blob.reader())
        }
        _ => builder.append(&header, std::io::empty()),
    }
}
