//! The quota and preallocation: a successful `fallocate` charges what it
//! allocates (or fails with ENOSPC, changing nothing), writes into a
//! preallocated range never fail for lack of space, and punching a hole
//! frees space instead of costing it.

mod common;

use layerfs::cowfs::{Caller, CowFs, MountConfig, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const MIB: u64 = 1 << 20;
const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

fn mount(quota: u64) -> (tempfile::TempDir, CowFs) {
    let (tmp, store) = common::store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lower"), common::lower_big()).unwrap();
    let tree = common::import_dir(&store, "img", &src);
    let config = MountConfig {
        upper_dir: tmp.path().join("upper"),
        quota_bytes: quota,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    };
    (tmp, CowFs::new(store, tree, config).unwrap())
}

/// Writes `len` bytes of `byte` at `offset` in chunks; the first error.
fn fill(fs: &CowFs, ino: u64, offset: u64, len: u64, byte: u8) -> Result<(), i32> {
    let chunk = vec![byte; MIB as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(MIB);
        fs.write(ino, at, &chunk[..n as usize]).map_err(|e| e.0)?;
        at += n;
    }
    Ok(())
}

/// Defect 13 of issue 14: on a mount with a 10 MiB quota `fallocate -l
/// 50M` succeeded and charged nothing, and writing into the preallocated
/// range then failed with ENOSPC after 10 MiB.
#[test]
fn an_allocation_past_the_quota_fails_and_one_within_it_is_charged_and_kept() {
    let (_tmp, fs) = mount(10 * MIB);
    let f = fs.create(ROOT_INO, b"f", 0o644, ROOT).unwrap().ino;
    let err = fs.fallocate(f, 0, 50 * MIB, 0).unwrap_err();
    assert_eq!(err.0, libc::ENOSPC, "an allocation past the quota fails");
    assert_eq!(fs.getattr(f).unwrap().size, 0, "and changes nothing");
    assert_eq!(fs.used_bytes(), 0);

    fs.fallocate(f, 0, 6 * MIB, 0).unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 6 * MIB);
    assert!(
        fs.used_bytes() >= 6 * MIB,
        "a successful allocation is charged ({} bytes used)",
        fs.used_bytes()
    );
    let statfs = fs.statfs();
    assert!(
        statfs.blocks - statfs.blocks_free >= 6 * MIB / 4096,
        "df shows it"
    );

    // Another file takes what is left of the quota...
    let g = fs.create(ROOT_INO, b"g", 0o644, ROOT).unwrap().ino;
    assert_eq!(fill(&fs, g, 0, 10 * MIB, 2), Err(libc::ENOSPC));
    // ...yet the preallocated range takes its writes.
    fill(&fs, f, 0, 6 * MIB, 1).expect("writes into a preallocated range never lack space");
    assert_eq!(fs.read(f, 6 * MIB - 4, 4).unwrap(), [1, 1, 1, 1]);
}

/// Defect 13 of issue 14: punching a hole wrote zeros, which cost quota
/// and could itself fail with ENOSPC; it must free space instead.
#[test]
fn punching_a_hole_frees_space_even_when_the_quota_is_full() {
    let (_tmp, fs) = mount(8 * MIB);
    let f = fs.create(ROOT_INO, b"f", 0o644, ROOT).unwrap().ino;
    assert_eq!(fill(&fs, f, 0, 16 * MIB, 3), Err(libc::ENOSPC));
    let size = fs.getattr(f).unwrap().size;
    let full = fs.used_bytes();
    assert!(full > 7 * MIB, "the quota is full ({full})");

    // Whole blocks in the middle: freed, and they read as zeros.
    fs.fallocate(f, MIB, 4 * MIB, PUNCH)
        .expect("punching a hole never needs space");
    assert_eq!(
        fs.getattr(f).unwrap().size,
        size,
        "KEEP_SIZE keeps the size"
    );
    assert!(
        fs.used_bytes() <= full - 4 * MIB,
        "punching 4 MiB freed {} bytes",
        full - fs.used_bytes()
    );
    assert!(fs
        .read(f, MIB, 4 * MIB as u32)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    assert_eq!(fs.read(f, MIB - 1, 1).unwrap(), [3]);
    assert_eq!(fs.read(f, 5 * MIB, 1).unwrap(), [3]);
    // The freed space can be written again.
    fill(&fs, f, MIB, 2 * MIB, 4).unwrap();

    // A hole over lower data reads as zeros and costs nothing.
    let lower = fs.lookup(ROOT_INO, b"lower").unwrap().ino;
    fs.open(lower, false).unwrap();
    let before = fs.used_bytes();
    fs.fallocate(lower, 64 << 10, 256 << 10, PUNCH).unwrap();
    assert_eq!(fs.used_bytes(), before, "a hole over lower data is free");
    let back = fs.read(lower, 0, MIB as u32).unwrap();
    let expected: Vec<u8> = common::lower_big()
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            if (64 << 10..320 << 10).contains(&i) {
                0
            } else {
                b
            }
        })
        .collect();
    assert!(back == expected, "the punched lower range reads as zeros");
    fs.release(lower);
}

/// Holes and preallocations survive recovery, with their charge.
#[test]
fn holes_and_allocations_survive_recovery_with_their_charge() {
    let (tmp, store) = common::store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lower"), common::lower_big()).unwrap();
    let tree = common::import_dir(&store, "img", &src);
    let config = MountConfig {
        upper_dir: tmp.path().join("upper"),
        quota_bytes: 64 * MIB,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    };
    let fs = CowFs::new(store.clone(), tree, config.clone()).unwrap();
    let f = fs.create(ROOT_INO, b"f", 0o644, ROOT).unwrap().ino;
    fill(&fs, f, 0, 8 * MIB, 5).unwrap();
    fs.fallocate(f, 2 * MIB, 2 * MIB, PUNCH).unwrap();
    let g = fs.create(ROOT_INO, b"g", 0o644, ROOT).unwrap().ino;
    fs.fallocate(g, 0, 3 * MIB, 0).unwrap();
    let lower = fs.lookup(ROOT_INO, b"lower").unwrap().ino;
    fs.open(lower, false).unwrap();
    fs.fallocate(lower, 0, 128 << 10, PUNCH).unwrap();
    fs.fsync(f).unwrap();
    fs.fsync(g).unwrap();
    fs.fsync(lower).unwrap();
    let used = fs.used_bytes();
    let f_bytes = fs.read(f, 0, 8 * MIB as u32).unwrap();
    let lower_bytes = fs.read(lower, 0, MIB as u32).unwrap();
    drop(fs);
    let (back, report) = CowFs::recover(store, tree, config).unwrap();
    assert_eq!(report.skipped, 0, "{report:?}");
    let f = back.lookup(ROOT_INO, b"f").unwrap().ino;
    let g = back.lookup(ROOT_INO, b"g").unwrap().ino;
    let lower = back.lookup(ROOT_INO, b"lower").unwrap().ino;
    assert!(back.read(f, 0, 8 * MIB as u32).unwrap() == f_bytes);
    assert!(back.read(lower, 0, MIB as u32).unwrap() == lower_bytes);
    assert_eq!(back.getattr(g).unwrap().size, 3 * MIB);
    assert_eq!(back.used_bytes(), used, "the charge after recovery");
}

/// The inode quota: a sandbox that creates files, directories, symlinks
/// and device nodes past it gets ENOSPC (as from a filesystem out of
/// inodes) and the daemon holds no more inodes for it; hard links cost
/// none; removing what it made gives them back; the image's own inodes
/// are not counted; `statfs` shows the count; recovery counts again.
#[test]
fn creating_past_the_inode_quota_fails_with_enospc_and_removals_give_inodes_back() {
    const INODES: u64 = 1_000;
    let (tmp, store) = common::store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lower"), b"image bytes").unwrap();
    let tree = common::import_dir(&store, "img", &src);
    let config = MountConfig {
        upper_dir: tmp.path().join("upper"),
        quota_bytes: 64 * MIB,
        inode_quota: INODES,
    };
    let fs = CowFs::new(store.clone(), tree, config.clone()).unwrap();
    assert_eq!(
        (fs.statfs().files, fs.statfs().files_free),
        (INODES, INODES)
    );
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, ROOT).unwrap().ino;
    for i in 1..INODES {
        let name = format!("n{i}");
        match i % 4 {
            0 => {
                let ino = fs.create(dir, name.as_bytes(), 0o644, ROOT).unwrap().ino;
                fs.release(ino);
            }
            1 => drop(fs.mkdir(dir, name.as_bytes(), 0o755, ROOT).unwrap()),
            2 => drop(fs.symlink(dir, name.as_bytes(), b"target", ROOT).unwrap()),
            _ => drop(
                fs.mknod(
                    dir,
                    name.as_bytes(),
                    layerfs::cowfs::FileKind::Fifo,
                    0o644,
                    0,
                    ROOT,
                )
                .unwrap(),
            ),
        }
    }
    assert_eq!(fs.statfs().files_free, 0);
    out_of_inodes(&fs, b"x");
    // A hard link is a name, not an inode.
    let n4 = fs.lookup(dir, b"n4").unwrap().ino;
    fs.link(n4, ROOT_INO, b"link").unwrap();
    // The image's inodes are not the sandbox's: removing one frees none.
    fs.unlink(ROOT_INO, b"lower").unwrap();
    out_of_inodes(&fs, b"x");
    // Removing the last name of what it made gives an inode back; a file
    // removed while open keeps its inode until closed.
    fs.unlink(ROOT_INO, b"link").unwrap();
    out_of_inodes(&fs, b"x");
    fs.open(n4, false).unwrap();
    fs.unlink(dir, b"n4").unwrap();
    out_of_inodes(&fs, b"x");
    fs.release(n4);
    assert_eq!(fs.statfs().files_free, 1);
    let x = fs.create(ROOT_INO, b"x", 0o644, ROOT).unwrap().ino;
    fs.release(x);
    out_of_inodes(&fs, b"w");
    // Renaming over a name frees the inode it named.
    fs.rename(dir, b"n8", dir, b"n12", Default::default())
        .unwrap();
    assert_eq!(fs.statfs().files_free, 1);
    fs.rmdir(dir, b"n5").unwrap();
    assert_eq!(fs.statfs().files_free, 2);
    fs.fsyncdir(ROOT_INO).unwrap();
    drop(fs);

    let (back, report) = CowFs::recover(store, tree, config).unwrap();
    assert_eq!(report.skipped, 0, "{report:?}");
    assert_eq!(back.statfs().files_free, 2, "counted again by recovery");
    back.mkdir(ROOT_INO, b"y", 0o755, ROOT).unwrap();
    back.mkdir(ROOT_INO, b"z", 0o755, ROOT).unwrap();
    out_of_inodes(&back, b"w");
}

/// Making `name` in the root fails with ENOSPC, whatever is made, and
/// nothing is made.
fn out_of_inodes(fs: &CowFs, name: &[u8]) {
    let fifo = layerfs::cowfs::FileKind::Fifo;
    let errors = [
        fs.create(ROOT_INO, name, 0o644, ROOT).map(drop),
        fs.mkdir(ROOT_INO, name, 0o755, ROOT).map(drop),
        fs.symlink(ROOT_INO, name, b"t", ROOT).map(drop),
        fs.mknod(ROOT_INO, name, fifo, 0o644, 0, ROOT).map(drop),
    ];
    for (i, result) in errors.into_iter().enumerate() {
        assert_eq!(result.unwrap_err().0, libc::ENOSPC, "creation {i}");
    }
    assert_eq!(
        fs.lookup(ROOT_INO, name).unwrap_err().0,
        libc::ENOENT,
        "nothing made"
    );
}

#[test]
fn mounts_sharing_a_space_write_no_more_than_it_holds_together() {
    let (_ta, a) = mount(100 * MIB);
    let (_tb, b) = mount(100 * MIB);
    let space = std::sync::Arc::new(layerfs::cowfs::SharedSpace::new(8 * MIB));
    let fa = a.create(ROOT_INO, b"f", 0o644, ROOT).unwrap().ino;
    fill(&a, fa, 0, 2 * MIB, 1).unwrap();
    // What a holds already is charged when it joins.
    assert!(a.share_space(space.clone()));
    assert!(!a.share_space(space.clone()), "one space per mount");
    assert!(b.share_space(space.clone()));
    assert_eq!(space.used(), a.used_bytes());
    let fb = b.create(ROOT_INO, b"f", 0o644, ROOT).unwrap().ino;
    fill(&b, fb, 0, 5 * MIB, 2).unwrap();
    // 7 MiB of 8 taken: 2 more fail in either mount, changing nothing.
    let before = space.used();
    let two = vec![1u8; 2 * MIB as usize];
    assert_eq!(a.write(fa, 2 * MIB, &two).unwrap_err().0, libc::ENOSPC);
    assert_eq!(
        a.fallocate(fa, 4 * MIB, 2 * MIB, 0).unwrap_err().0,
        libc::ENOSPC
    );
    assert_eq!(b.write(fb, 5 * MIB, &two).unwrap_err().0, libc::ENOSPC);
    assert_eq!(space.used(), before);
    let statfs = b.statfs();
    assert!(statfs.blocks_free * 4096 <= MIB, "{statfs:?}");
    // Freed in one mount, usable by the other; a raised limit too.
    b.unlink(ROOT_INO, b"f").unwrap();
    b.release(fb);
    fill(&a, fa, 2 * MIB, 4 * MIB, 1).unwrap();
    space.set_limit(20 * MIB);
    fill(
        &b,
        b.create(ROOT_INO, b"g", 0o644, ROOT).unwrap().ino,
        0,
        10 * MIB,
        3,
    )
    .unwrap();
    assert_eq!(space.used(), a.used_bytes() + b.used_bytes());
}
