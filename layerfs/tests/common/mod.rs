//! Helpers shared by layerfs tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use layerfs::cowfs::{CowFs, FileKind, ROOT_INO};

use cas::{Store, StoreConfig};
use layerfs::tree::{Entry, InodeKind};
use layerfs::{MemTree, TreeReader};

/// A fresh store in a temporary directory.
pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
    (dir, store)
}

/// A raw tar header block with `name` written as is (no checks), for
/// building hostile archives the `tar` crate refuses to write.
pub fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, link: &[u8]) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    header
}

/// Appends a raw entry.
pub fn raw_entry(
    archive: &mut Vec<u8>,
    name: &[u8],
    kind: tar::EntryType,
    data: &[u8],
    link: &[u8],
) {
    let header = raw_header(name, kind, data.len() as u64, link);
    archive.extend_from_slice(header.as_bytes());
    archive.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    archive.extend(std::iter::repeat_n(0u8, pad));
}

/// Appends a pax extended header for the next entry.
pub fn pax_entry(archive: &mut Vec<u8>, records: &[(&str, &[u8])]) {
    let mut data = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    raw_entry(archive, b"pax", tar::EntryType::XHeader, &data, b"");
}

/// Ends an archive.
pub fn finish(archive: &mut Vec<u8>) {
    archive.extend(std::iter::repeat_n(0u8, 1024));
}

/// Every path of tree `root` with a description of what is there, sorted.
pub fn listing(store: &Store, root: cas::ChunkId) -> Vec<(String, String)> {
    let reader = TreeReader::new(store);
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), reader.dir(root).unwrap())];
    while let Some((path, dir)) = stack.pop() {
        for (name, entry) in reader.entries(&dir).unwrap() {
            let p = format!("{path}/{}", String::from_utf8_lossy(&name));
            let what = match entry {
                Entry::Dir(id) => {
                    stack.push((p.clone(), reader.dir(id).unwrap()));
                    "dir".to_string()
                }
                Entry::HardLink { target } => {
                    format!("link to {}", String::from_utf8_lossy(&target))
                }
                Entry::Inode(inode) => match inode.kind {
                    InodeKind::File { size, blob } => {
                        let mut bytes = Vec::new();
                        if let Some(id) = blob {
                            store.blob(&id).unwrap().copy_to(&mut bytes).unwrap();
                        }
                        assert_eq!(bytes.len() as u64, size);
                        format!("file {}", String::from_utf8_lossy(&bytes))
                    }
                    InodeKind::Symlink { target } => {
                        format!("symlink {}", String::from_utf8_lossy(&target))
                    }
                    other => format!("{other:?}"),
                },
            };
            out.push((p, what));
        }
    }
    out.sort();
    out
}

/// Loads tree `root` and stores it again: the id must not change.
pub fn reload_id(store: &Store, root: cas::ChunkId) -> cas::ChunkId {
    let tree = MemTree::load(store, root).unwrap();
    let writer = store.writer("reload");
    tree.store(&writer).unwrap()
}

/// Runs a shell command, panicking with its output on failure.
pub fn sh(command: &str, dir: &Path) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True when FUSE mounts can run here; otherwise says why, and fails
/// under CI (see `fixtures::require`).
pub fn fuse_available() -> bool {
    fixtures::require::fuse()
}

/// Imports directory `dir` as image `name`; returns its tree.
pub fn import_dir(store: &Store, name: &str, dir: &Path) -> cas::ChunkId {
    let options = layerfs::ImportOptions {
        kind: Some(layerfs::SourceKind::Directory),
        ..layerfs::ImportOptions::default()
    };
    layerfs::import_image(store, name, dir, &options)
        .unwrap()
        .image
        .tree
        .parse()
        .unwrap()
}

/// An image of an empty directory (made at `base/src`), imported as
/// `name`; returns its tree.
pub fn empty_image(store: &Store, name: &str, base: &Path) -> cas::ChunkId {
    let src = base.join("src");
    std::fs::create_dir_all(&src).unwrap();
    import_dir(store, name, &src)
}

/// Mounts `tree` with FUSE at `base/NAME-mnt` (upper layer in
/// `base/NAME-upper`); returns the filesystem, the session and the mount point.
pub fn mount_tree(
    store: &Store,
    tree: cas::ChunkId,
    base: &Path,
    name: &str,
    quota: u64,
) -> (
    std::sync::Arc<layerfs::cowfs::CowFs>,
    layerfs::fuse::FuseSession,
    std::path::PathBuf,
) {
    mount_tree_with(
        store,
        tree,
        base,
        name,
        quota,
        &layerfs::fuse::FuseOptions::default(),
    )
}

/// [`mount_tree`] with FUSE options of the caller's.
pub fn mount_tree_with(
    store: &Store,
    tree: cas::ChunkId,
    base: &Path,
    name: &str,
    quota: u64,
    options: &layerfs::fuse::FuseOptions,
) -> (
    std::sync::Arc<layerfs::cowfs::CowFs>,
    layerfs::fuse::FuseSession,
    std::path::PathBuf,
) {
    let mnt = base.join(format!("{name}-mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let config = layerfs::cowfs::MountConfig {
        upper_dir: base.join(format!("{name}-upper")),
        quota_bytes: quota,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    };
    let fs = std::sync::Arc::new(layerfs::cowfs::CowFs::new(store.clone(), tree, config).unwrap());
    let session = layerfs::fuse::mount(fs.clone(), &mnt, options).unwrap();
    (fs, session, mnt)
}

/// Everything a user can observe of a mount, by path (inode numbers are
/// replaced by the smallest path that names them, so hard links show
/// whatever order directories list in).
pub fn dump(fs: &CowFs) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first_path: BTreeMap<u64, String> = BTreeMap::new();
    // First pass: every name of every inode.
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = stack.pop() {
        for entry in fs.readdir(dir, 0).unwrap() {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let child = format!("{path}/{}", String::from_utf8_lossy(&entry.name));
            let smallest = first_path.entry(entry.ino).or_insert_with(|| child.clone());
            if child < *smallest {
                *smallest = child.clone();
            }
            if entry.kind == FileKind::Dir {
                stack.push((entry.ino, child));
            }
        }
    }
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = stack.pop() {
        for entry in fs.readdir(dir, 0).unwrap() {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.name).into_owned();
            let child = format!("{path}/{name}");
            let stat = fs.getattr(entry.ino).unwrap();
            let identity = first_path
                .entry(entry.ino)
                .or_insert_with(|| child.clone())
                .clone();
            let mut xattrs: Vec<String> = fs
                .listxattr(entry.ino)
                .unwrap()
                .into_iter()
                .map(|n| {
                    let v = fs.getxattr(entry.ino, &n).unwrap();
                    format!(
                        "{}={}",
                        String::from_utf8_lossy(&n),
                        String::from_utf8_lossy(&v)
                    )
                })
                .collect();
            xattrs.sort();
            let content = match stat.kind {
                FileKind::File => {
                    let bytes = fs.read(entry.ino, 0, stat.size as u32 + 1).unwrap();
                    assert_eq!(bytes.len() as u64, stat.size);
                    blake3::hash(&bytes).to_hex()[..16].to_string()
                }
                FileKind::Symlink => {
                    String::from_utf8_lossy(&fs.readlink(entry.ino).unwrap()).into_owned()
                }
                _ => String::new(),
            };
            let dir_size = if stat.kind == FileKind::Dir {
                0
            } else {
                stat.size
            };
            out.insert(
                child.clone(),
                format!(
                    "{:?} {:o} {}:{} n{} s{} r{} m{:?} c{:?} a{:?} same-as:{identity} x[{}] {content}",
                    stat.kind,
                    stat.perm,
                    stat.uid,
                    stat.gid,
                    stat.nlink,
                    dir_size,
                    stat.rdev,
                    stat.mtime,
                    stat.ctime,
                    stat.atime,
                    xattrs.join(",")
                ),
            );
            if stat.kind == FileKind::Dir {
                stack.push((entry.ino, child));
            }
        }
    }
    out
}

/// The inode at `path`.
pub fn lookup(fs: &CowFs, path: &str) -> u64 {
    let mut at = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at = fs.lookup(at, part.as_bytes()).unwrap().ino;
    }
    at
}

pub fn write(fs: &CowFs, ino: u64, offset: u64, bytes: &[u8]) {
    fs.open(ino, false).unwrap();
    fs.write(ino, offset, bytes).unwrap();
    fs.release(ino);
}

/// A store (on ordinary disk) with a small image (`/etc/motd` and a 1 MiB
/// file `/big` of non-zero bytes), and a power-cut filesystem with an
/// empty `upper` directory, durable, for a mount's upper layer.
pub fn upper_on_powercut() -> (
    tempfile::TempDir,
    Store,
    cas::ChunkId,
    fixtures::powercut::PowerCutFs,
) {
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), b"lower bytes\n").unwrap();
    std::fs::write(src.join("big"), lower_big()).unwrap();
    let tree = import_dir(&store, "img", &src);
    let fs =
        fixtures::powercut::PowerCutFs::mount(tmp.path(), fixtures::powercut::Options::default())
            .unwrap();
    // The upper directory exists durably before the mount starts (these
    // tests are about what the mount syncs, not its directory's name).
    std::fs::create_dir(fs.path().join("upper")).unwrap();
    std::fs::File::open(fs.path()).unwrap().sync_all().unwrap();
    (tmp, store, tree, fs)
}

/// The bytes of `/big` in [`upper_on_powercut`]'s image.
pub fn lower_big() -> Vec<u8> {
    (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect()
}

/// A new copy-on-write mount of `tree` with its upper layer in `upper`
/// (1 GiB quota).
pub fn cow_mount(store: &Store, tree: cas::ChunkId, upper: &Path) -> CowFs {
    let config = layerfs::cowfs::MountConfig {
        upper_dir: upper.to_path_buf(),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    };
    CowFs::new(store.clone(), tree, config).unwrap()
}
