//! A mount's upper layer survives its process: every kind of change is
//! journaled, and a mount recovered from the upper directory shows exactly
//! what the original showed — names, kinds, attributes, extended
//! attributes, bytes and hard-link identity — also across several
//! recoveries, and with a record torn by a crash.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::store;
use layerfs::cowfs::{
    Caller, CowFs, FileKind, MountConfig, RenameFlags, SetAttr, TimeSet, XattrMode, ROOT_INO,
};
use layerfs::tree::Timestamp;

const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn dump(fs: &CowFs) -> BTreeMap<String, String> {
    let mut out = common::dump(fs);
    out.insert("/ (quota used)".into(), fs.used_bytes().to_string());
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            // A crash leaves each file with its mtime (recovery reads data
            // files' mtimes).
            let mtime = entry.metadata().unwrap().modified().unwrap();
            let copied = std::fs::OpenOptions::new().write(true).open(&target);
            copied.unwrap().set_modified(mtime).unwrap();
        }
    }
}

use common::{lookup, write};

/// A mount of the upper directory `dir` with room to spare.
fn config(dir: &Path) -> MountConfig {
    MountConfig {
        upper_dir: dir.to_path_buf(),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    }
}

#[test]
fn every_kind_of_change_survives_recovery() {
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc/deep/er")).unwrap();
    std::fs::create_dir_all(src.join("usr/lib")).unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("usr/lib/big"), &big).unwrap();
    std::fs::write(src.join("etc/passwd"), b"root:x:0:0\n").unwrap();
    std::fs::write(src.join("etc/deep/er/file"), b"deep\n").unwrap();
    std::fs::hard_link(src.join("etc/passwd"), src.join("etc/passwd-link")).unwrap();
    let tree = common::import_dir(&store, "base", &src);
    let upper = tmp.path().join("upper");
    let fs = CowFs::new(store.clone(), tree, config(&upper)).unwrap();

    // Namespace: create, mkdir, symlink, devices, fifo, socket.
    let tmpdir = fs.mkdir(ROOT_INO, b"tmp", 0o1777, ROOT).unwrap().ino;
    let user = Caller {
        uid: 1000,
        gid: 1000,
    };
    let notes = fs.create(tmpdir, b"notes", 0o640, user).unwrap().ino;
    fs.write(notes, 0, b"first line\n").unwrap();
    fs.release(notes);
    fs.symlink(tmpdir, b"link", b"../etc/passwd", user).unwrap();
    fs.mknod(tmpdir, b"null", FileKind::CharDevice, 0o666, 0x103, ROOT)
        .unwrap();
    fs.mknod(tmpdir, b"loop", FileKind::BlockDevice, 0o660, 0x700, ROOT)
        .unwrap();
    fs.mknod(tmpdir, b"fifo", FileKind::Fifo, 0o600, 0, ROOT)
        .unwrap();
    fs.mknod(tmpdir, b"sock", FileKind::Socket, 0o600, 0, ROOT)
        .unwrap();
    // Copy-up of one block of a large lower file, and a truncation of it.
    let big_ino = lookup(&fs, "usr/lib/big");
    write(&fs, big_ino, 500_000, b"CHANGED");
    let copy_ino = fs.create(tmpdir, b"big-copy", 0o644, ROOT).unwrap().ino;
    fs.write(copy_ino, 0, &big[..300_000]).unwrap();
    fs.release(copy_ino);
    fs.setattr(
        copy_ino,
        SetAttr {
            size: Some(100_000),
            ..SetAttr::default()
        },
    )
    .unwrap();
    fs.fallocate(
        copy_ino,
        10_000,
        20_000,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    // Hard links: a new one to a lower file, then its remembered name goes.
    let passwd = lookup(&fs, "etc/passwd");
    fs.link(passwd, tmpdir, b"passwd-3").unwrap();
    fs.unlink(lookup(&fs, "etc"), b"passwd").unwrap();
    fs.setattr(
        passwd,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    )
    .unwrap();
    // Renames: a lower directory with contents, a replacing rename, an
    // exchange, a no-replace.
    let etc = lookup(&fs, "etc");
    fs.rename(etc, b"deep", tmpdir, b"moved", RenameFlags::default())
        .unwrap();
    write(&fs, lookup(&fs, "tmp/moved/er/file"), 0, b"DEEP");
    fs.rename(tmpdir, b"notes", tmpdir, b"fifo", RenameFlags::default())
        .unwrap();
    fs.rename(
        tmpdir,
        b"link",
        tmpdir,
        b"null",
        RenameFlags {
            exchange: true,
            ..RenameFlags::default()
        },
    )
    .unwrap();
    fs.rename(
        tmpdir,
        b"sock",
        ROOT_INO,
        b"sock",
        RenameFlags {
            noreplace: true,
            ..RenameFlags::default()
        },
    )
    .unwrap();
    // Removals: a lower file, a lower directory tree emptied then removed.
    let usr = lookup(&fs, "usr");
    let lib = lookup(&fs, "usr/lib");
    fs.rmdir(usr, b"lib").unwrap_err(); // not empty yet
    fs.unlink(lib, b"big").unwrap();
    fs.rmdir(usr, b"lib").unwrap();
    // Attributes and extended attributes.
    let when = Timestamp {
        secs: 1_600_000_000,
        nanos: 123_456_789,
    };
    fs.setattr(
        tmpdir,
        SetAttr {
            uid: Some(5),
            gid: Some(6),
            mtime: Some(TimeSet::At(when)),
            atime: Some(TimeSet::At(when)),
            ..SetAttr::default()
        },
    )
    .unwrap();
    fs.setxattr(copy_ino, b"user.kept", b"yes", XattrMode::Set)
        .unwrap();
    fs.setxattr(copy_ino, b"user.gone", b"no", XattrMode::Set)
        .unwrap();
    fs.removexattr(copy_ino, b"user.gone").unwrap();
    fs.setxattr(
        ROOT_INO,
        b"security.capability",
        b"\x01\x02",
        XattrMode::Create,
    )
    .unwrap();
    // A file removed while open: its data must not come back.
    let doomed = fs.create(ROOT_INO, b"doomed", 0o644, ROOT).unwrap().ino;
    fs.write(doomed, 0, &[9u8; 100_000]).unwrap();
    fs.unlink(ROOT_INO, b"doomed").unwrap();

    let before = dump(&fs);

    // "Crash": the process would die here; recover from a copy of the
    // upper directory as it is on disk.
    let copy = tmp.path().join("upper-copy");
    copy_dir(&upper, &copy);
    assert!(copy.join(format!("data/1-{doomed}")).exists());
    let (recovered, report) = CowFs::recover(store.clone(), tree, config(&copy)).unwrap();
    assert_eq!(report.skipped, 0, "{report:?}");
    assert_eq!(report.torn_bytes, 0);
    assert!(
        !copy.join(format!("data/1-{doomed}")).exists(),
        "the open-unlinked file's data is dropped: {report:?}"
    );
    let mut after = dump(&recovered);
    // The original still holds the open, unlinked file's 100,000 bytes.
    let used = |d: &mut BTreeMap<String, String>| -> u64 {
        d.remove("/ (quota used)").unwrap().parse().unwrap()
    };
    let mut before = before;
    assert_eq!(used(&mut before), used(&mut after) + 100_000);
    for (path, what) in &before {
        assert_eq!(after.get(path), Some(what), "{path}");
    }
    assert_eq!(
        before.len(),
        after.len(),
        "{:?}",
        after.keys().collect::<Vec<_>>()
    );
    fs.release(doomed);

    // The recovered mount goes on (a new epoch), and recovers again.
    let more = recovered
        .create(ROOT_INO, b"second-epoch", 0o644, ROOT)
        .unwrap()
        .ino;
    recovered.write(more, 0, b"epoch two").unwrap();
    recovered.fsync(more).unwrap();
    recovered.release(more);
    write(
        &recovered,
        lookup(&recovered, "tmp/big-copy"),
        99_990,
        b"tail-extended",
    );
    // An overwrite in place, fsynced but never closed: one sync of the data
    // file carries the bytes and the new mtime.
    let inplace = lookup(&recovered, "tmp/big-copy");
    recovered.open(inplace, false).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    recovered
        .write(inplace, 50, b"overwritten in place")
        .unwrap();
    recovered.fsync(inplace).unwrap();
    let before = dump(&recovered);
    drop(recovered);
    let (again, report) = CowFs::recover(store.clone(), tree, config(&copy)).unwrap();
    assert_eq!(report.skipped, 0, "{report:?}");
    assert_eq!(report.epoch, 3);
    assert_eq!(dump(&again), before);

    // A record torn by a crash in the middle of an append is cut off; what
    // came before it is all there.
    drop(again);
    let journal = copy.join("journal");
    let len = std::fs::metadata(&journal).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut f, &[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let (torn, report) = CowFs::recover(store, tree, config(&copy)).unwrap();
    assert_eq!(report.torn_bytes, 7);
    assert_eq!(dump(&torn), before);
    assert!(
        std::fs::metadata(&journal).unwrap().len() > len,
        "cut and appended to"
    );
}

/// An in-place overwrite's mtime lives in its data file; an older mtime
/// set explicitly afterwards (as `touch -d` does) must win after a crash,
/// and an in-place overwrite after that must win again.
#[test]
fn explicit_times_after_in_place_syncs_survive_recovery() {
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("file"), vec![1u8; 200_000]).unwrap();
    let tree = common::import_dir(&store, "base", &src);
    let upper = tmp.path().join("upper");
    let config = MountConfig {
        upper_dir: upper.clone(),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    };
    let fs = CowFs::new(store.clone(), tree, config.clone()).unwrap();
    let ino = lookup(&fs, "file");
    fs.open(ino, false).unwrap();
    fs.write(ino, 10, b"first").unwrap();
    fs.fsync(ino).unwrap();
    // An in-place overwrite, synced: its mtime is the file's.
    std::thread::sleep(std::time::Duration::from_millis(2));
    fs.write(ino, 20, b"second").unwrap();
    fs.fsync(ino).unwrap();
    let written = fs.getattr(ino).unwrap().mtime;
    // Then an explicit, older mtime.
    let old = Timestamp {
        secs: 1_000_000_000,
        nanos: 5,
    };
    fs.setattr(
        ino,
        SetAttr {
            mtime: Some(TimeSet::At(old)),
            ..SetAttr::default()
        },
    )
    .unwrap();
    // Made durable by a sync of the journal, not of this file.
    fs.fsyncdir(ROOT_INO).unwrap();
    let before = dump(&fs);
    drop(fs);
    let (fs, _) = CowFs::recover(store.clone(), tree, config.clone()).unwrap();
    assert_eq!(fs.getattr(lookup(&fs, "file")).unwrap().mtime, old);
    assert_eq!(dump(&fs), before);
    assert!(written > old);

    // Written in place again and synced: the new mtime comes back.
    let ino = lookup(&fs, "file");
    fs.open(ino, false).unwrap();
    fs.write(ino, 30, b"third").unwrap();
    fs.fsync(ino).unwrap();
    let before = dump(&fs);
    let third = fs.getattr(ino).unwrap().mtime;
    drop(fs);
    let (fs, _) = CowFs::recover(store, tree, config).unwrap();
    assert_eq!(fs.getattr(lookup(&fs, "file")).unwrap().mtime, third);
    assert_eq!(dump(&fs), before);
}

/// Files under `dir` and their sizes.
fn data_files(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect()
}

/// A removed large file gives its quota back at once and its data file
/// goes in the background (the remover holds no lock of the mount); a crash
/// after the removal was journaled but before the data file went leaves
/// nothing behind once recovered.
#[test]
fn a_removed_large_file_is_freed_in_the_background_and_never_orphaned() {
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("keep"), b"kept\n").unwrap();
    let tree = common::import_dir(&store, "base", &src);
    let upper = tmp.path().join("upper");
    let fs = CowFs::new(store.clone(), tree, config(&upper)).unwrap();
    let big = fs.create(ROOT_INO, b"big", 0o644, ROOT).unwrap().ino;
    let mib = vec![0x42u8; 1 << 20];
    for i in 0..12u64 {
        fs.write(big, i << 20, &mib).unwrap();
    }
    fs.fsync(big).unwrap();
    fs.release(big);
    let large = |sizes: Vec<u64>| sizes.into_iter().filter(|&s| s >= 8 << 20).count();
    assert_eq!(large(data_files(&upper.join("data"))), 1);
    assert!(fs.used_bytes() >= 12 << 20);

    // The state a crash would leave between the journaled removal and the
    // data file's: the data files from before, the journal from after.
    let crashed = tmp.path().join("crashed");
    copy_dir(&upper, &crashed);
    fs.unlink(ROOT_INO, b"big").unwrap();
    fs.fsyncdir(ROOT_INO).unwrap();
    std::fs::copy(upper.join("journal"), crashed.join("journal")).unwrap();
    assert_eq!(fs.used_bytes(), 0, "the quota is given back at once");
    assert_eq!(
        fs.lookup(ROOT_INO, b"big").unwrap_err(),
        layerfs::cowfs::Errno(libc::ENOENT)
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while large(data_files(&upper.join("data"))) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed file's data file is still there"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(fs);

    let (recovered, report) = CowFs::recover(store, tree, config(&crashed)).unwrap();
    assert_eq!(report.skipped, 0, "{report:?}");
    assert!(recovered.lookup(ROOT_INO, b"big").is_err());
    // Replaying the removal deletes it (in the background), or the sweep
    // for orphans finds it first: either way it is gone on return.
    assert_eq!(
        large(data_files(&crashed.join("data"))),
        0,
        "recovery left the removed file's data file: {report:?}"
    );
}

/// A change of owner or group, a truncation and an `O_TRUNC` open drop a
/// file's capabilities in the core (so over 9P as over FUSE), as on a
/// local filesystem; a change of mode or times keeps them; a directory
/// keeps them. The drops are journaled: a recovered mount shows the same.
#[test]
fn owner_changes_and_truncations_drop_file_capabilities() {
    const CAP: &[u8] = b"security.capability";
    let (tmp, store) = store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    for name in ["chowned", "chgrped", "truncated", "opened", "chmodded"] {
        std::fs::write(src.join(name), b"binary").unwrap();
    }
    let tree = common::import_dir(&store, "base", &src);
    let upper = tmp.path().join("upper");
    let fs = CowFs::new(store.clone(), tree, config(&upper)).unwrap();
    for name in [
        "chowned",
        "chgrped",
        "truncated",
        "opened",
        "chmodded",
        "dir",
    ] {
        fs.setxattr(lookup(&fs, name), CAP, b"\x01\x00\x00\x02", XattrMode::Set)
            .unwrap();
    }
    let changes = [
        (
            "chowned",
            SetAttr {
                uid: Some(7),
                ..SetAttr::default()
            },
        ),
        (
            "chgrped",
            SetAttr {
                gid: Some(7),
                ..SetAttr::default()
            },
        ),
        (
            "truncated",
            SetAttr {
                size: Some(3),
                ..SetAttr::default()
            },
        ),
        (
            "dir",
            SetAttr {
                uid: Some(7),
                ..SetAttr::default()
            },
        ),
        (
            "chmodded",
            SetAttr {
                mode: Some(0o755),
                mtime: Some(TimeSet::Now),
                ..SetAttr::default()
            },
        ),
    ];
    for (name, change) in changes {
        fs.setattr(lookup(&fs, name), change).unwrap();
    }
    let opened = lookup(&fs, "opened");
    fs.open(opened, true).unwrap();
    fs.release(opened);
    fs.fsyncdir(ROOT_INO).unwrap();

    let has_capability = |fs: &CowFs, name: &str| fs.getxattr(lookup(fs, name), CAP).is_ok();
    let expect = [
        ("chowned", false),
        ("chgrped", false),
        ("truncated", false),
        ("opened", false),
        ("chmodded", true),
        ("dir", true),
    ];
    for (name, kept) in expect {
        assert_eq!(has_capability(&fs, name), kept, "{name} on the mount");
    }
    let before = dump(&fs);
    drop(fs);
    let (recovered, report) = CowFs::recover(store, tree, config(&upper)).unwrap();
    assert_eq!(report.skipped, 0, "{report:?}");
    for (name, kept) in expect {
        assert_eq!(has_capability(&recovered, name), kept, "{name} recovered");
    }
    assert_eq!(dump(&recovered), before);
}
