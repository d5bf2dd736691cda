//! FUSE over io_uring: a mount whose requests travel over the kernel's
//! io_uring queues answers every call as ext4 does, as a mount served
//! through `/dev/fuse` does, and keeps the same state in the core.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::store;

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn errno<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn last_errno(rc: libc::c_long) -> String {
    if rc < 0 {
        format!(
            "errno {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        )
    } else {
        format!("ok {rc}")
    }
}

/// What a stat shows that does not depend on the clock.
/// `renameat2(from, to, flags)` and what it returned.
fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> String {
    // SAFETY: the paths are NUL-ended strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(from).as_ptr(),
            libc::AT_FDCWD,
            c(to).as_ptr(),
            flags,
        )
    };
    last_errno(rc as libc::c_long)
}

fn stat_line(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Ok(m) => format!(
            "mode {:o} nlink {} uid {} gid {} size {}",
            m.mode(),
            m.nlink(),
            m.uid(),
            m.gid(),
            m.size(),
        ),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Calls of every kind the server answers, each with what it returned.
fn workload(root: &Path) -> BTreeMap<String, String> {
    let mut log = BTreeMap::new();
    let mut note = |step: &str, what: String| {
        log.insert(step.to_string(), what);
    };
    let d = root.join("d");
    note("01 mkdir", errno(fs::create_dir(&d)));
    note("02 mkdir again", errno(fs::create_dir(&d)));
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();

    let f = d.join("f");
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .mode(0o644)
        .open(&f)
        .unwrap();
    file.write_all(b"hello, ring").unwrap();
    note("03 fsync", errno(file.sync_all()));
    note("04 fdatasync", errno(file.sync_data()));
    let mut back = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut back).unwrap();
    note("05 read", back);
    note(
        "06 create_new again",
        errno(OpenOptions::new().create_new(true).write(true).open(&f)),
    );

    // A sparse region, holes and data found by lseek.
    file.write_all_at(b"far", (1 << 20) + 3).unwrap();
    let mut around = [0u8; 6];
    file.read_exact_at(&mut around, 1 << 20).unwrap();
    note("07 sparse read", format!("{around:?}"));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: `fd` is open for the duration of these calls.
    let (data, hole) = unsafe {
        (
            libc::lseek(fd, 64 << 10, libc::SEEK_DATA),
            libc::lseek(fd, 0, libc::SEEK_HOLE),
        )
    };
    note("08 seek data", format!("{data}"));
    note("09 seek hole", format!("{hole}"));
    // SAFETY: as above.
    let past = unsafe { libc::lseek(fd, 4 << 20, libc::SEEK_DATA) };
    note("10 seek data past end", last_errno(past as libc::c_long));
    note("11 fallocate", {
        // SAFETY: as above.
        let rc = unsafe { libc::fallocate(fd, 0, 2 << 20, 4096) };
        last_errno(rc as libc::c_long)
    });
    note("12 stat f", stat_line(&f));

    // Large writes and reads: several requests of the largest size.
    let big = pattern(3 << 20 | 123, 7);
    let b = root.join("big");
    fs::write(&b, &big).unwrap();
    let read = fs::read(&b).unwrap();
    note("13 big read matches", format!("{}", read == big));
    note("14 big stat", stat_line(&b));

    // Names: rename, link, symlink.
    let g = d.join("g");
    note("15 rename", errno(fs::rename(&f, &g)));
    let h = root.join("h");
    note("16 link", errno(fs::hard_link(&g, &h)));
    note("17 nlink", stat_line(&g));
    let s = root.join("s");
    note("18 symlink", errno(std::os::unix::fs::symlink("d/g", &s)));
    note(
        "19 readlink",
        fs::read_link(&s).map_or_else(|e| format!("{e}"), |t| t.display().to_string()),
    );
    note(
        "20 stat through link",
        stat_line(&fs::canonicalize(&s).unwrap()),
    );
    note(
        "21 rename noreplace",
        rename2(&h, &b, libc::RENAME_NOREPLACE),
    );
    note("22 rename exchange", rename2(&h, &b, libc::RENAME_EXCHANGE));
    note("23 exchanged size", stat_line(&h));

    // Extended attributes.
    note("24 setxattr", errno(xattr::set(&g, "user.k", b"value")));
    note(
        "25 getxattr",
        format!("{:?}", xattr::get(&g, "user.k").ok().flatten()),
    );
    note(
        "26 listxattr",
        format!("{:?}", xattr::list(&g).map(|l| l.collect::<Vec<_>>()).ok()),
    );
    let name = CString::new("user.k").unwrap();
    // SAFETY: a size query (null buffer, size 0), then a 2-byte buffer
    // that lives across the call.
    let (size, small) = unsafe {
        let size = libc::getxattr(c(&g).as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0);
        let mut two = [0u8; 2];
        let small = libc::getxattr(c(&g).as_ptr(), name.as_ptr(), two.as_mut_ptr().cast(), 2);
        (size, small)
    };
    note("27 getxattr size", last_errno(size as libc::c_long));
    note(
        "28 getxattr small buffer",
        last_errno(small as libc::c_long),
    );
    note("29 removexattr", errno(xattr::remove(&g, "user.k")));
    note("30 getxattr gone", errno(xattr::get(&g, "user.k")));

    // Attributes.
    note(
        "31 chmod",
        errno(fs::set_permissions(&g, fs::Permissions::from_mode(0o640))),
    );
    note(
        "32 chown",
        errno(std::os::unix::fs::chown(&g, Some(1000), Some(1000))),
    );
    let trunc = OpenOptions::new().write(true).open(&g).unwrap();
    note("33 truncate", errno(trunc.set_len(3)));
    let times = [
        libc::timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    // SAFETY: the path and `times` outlive the call.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c(&g).as_ptr(), times.as_ptr(), 0) };
    note("34 utimensat", last_errno(rc as libc::c_long));
    note("35 stat g", stat_line(&g));
    note("35b times g", {
        let m = fs::metadata(&g).unwrap();
        format!(
            "{}.{} {}.{}",
            m.atime(),
            m.atime_nsec(),
            m.mtime(),
            m.mtime_nsec()
        )
    });
    note("36 read g", format!("{:?}", fs::read(&g).ok()));

    // Special files.
    let p = root.join("p");
    // SAFETY: the path outlives the call.
    let rc = unsafe { libc::mkfifo(c(&p).as_ptr(), 0o600) };
    note("37 mkfifo", last_errno(rc as libc::c_long));
    note("38 stat fifo", stat_line(&p));

    // A directory of many entries: several listing pages.
    let many = root.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..300 {
        fs::write(
            many.join(format!("entry-with-a-longish-name-{i:04}")),
            [i as u8],
        )
        .unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&many)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    note(
        "39 listing",
        format!("{} {:?} {:?}", names.len(), names.first(), names.last()),
    );
    let mut root_names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    root_names.sort();
    note("40 root listing", format!("{root_names:?}"));

    // Removal and its errors.
    note("41 rmdir non-empty", errno(fs::remove_dir(&many)));
    note(
        "42 unlink",
        errno(fs::remove_file(many.join("entry-with-a-longish-name-0000"))),
    );
    note(
        "43 unlink gone",
        errno(fs::remove_file(many.join("entry-with-a-longish-name-0000"))),
    );
    note(
        "44 open missing",
        errno(fs::File::open(root.join("missing"))),
    );
    let empty = root.join("empty");
    fs::create_dir(&empty).unwrap();
    note("45 rmdir", errno(fs::remove_dir(&empty)));
    note("46 stat removed", stat_line(&empty));
    note("47 ioctl", {
        let mut flags: libc::c_long = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`.
        let rc = unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) };
        // ext4 has flags, a FUSE mount has no ioctls: only whether it
        // failed cleanly is compared.
        (rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOTTY)).to_string()
    });
    drop(file);
    log
}

/// A dump with its timestamps taken out (the clock differs between runs;
/// the times a step set are compared by the workload itself).
fn without_times(dump: BTreeMap<String, String>) -> BTreeMap<String, String> {
    dump.into_iter()
        .map(|(path, line)| {
            let mut kept = String::new();
            let mut rest = line.as_str();
            while let Some(at) = rest.find("Timestamp {") {
                kept.push_str(&rest[..at]);
                rest = rest[at..].split_once('}').map_or("", |(_, after)| after);
            }
            kept.push_str(rest);
            (path, kept)
        })
        .collect()
}

/// A store holding an empty image, and its tree.
fn empty_image() -> (tempfile::TempDir, cas::Store, cas::ChunkId) {
    let (tmp, store) = store();
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let tree = common::import_dir(&store, "empty", &empty);
    (tmp, store, tree)
}

#[test]
fn a_mount_served_over_io_uring_answers_as_ext4_and_as_dev_fuse() {
    if !fixtures::require::fuse_io_uring() {
        return;
    }
    let (tmp, store, tree) = empty_image();

    let ext4 = tempfile::tempdir_in("/var/tmp").unwrap();
    let on_ext4 = workload(ext4.path());

    let mut cores = Vec::new();
    for io_uring in [true, false] {
        let options = layerfs::fuse::FuseOptions {
            io_uring,
            ..Default::default()
        };
        let name = if io_uring { "ring" } else { "dev" };
        let (fs, session, mnt) =
            common::mount_tree_with(&store, tree, tmp.path(), name, 8 << 30, &options);
        assert_eq!(session.uses_io_uring(), io_uring);
        let before = session.io_uring_requests();
        let on_mount = workload(&mnt);
        let answered = session.io_uring_requests() - before;
        if io_uring {
            // Every call above is at least one request.
            assert!(answered > 400, "only {answered} requests over io_uring");
        } else {
            assert_eq!(answered, 0);
        }
        for (step, expected) in &on_ext4 {
            let got = on_mount.get(step).map(String::as_str).unwrap_or("missing");
            // statfs and block counts differ by nature; nothing else may.
            assert_eq!(got, expected, "{name}: step {step}");
        }
        session.umount_and_join().unwrap();
        cores.push(without_times(common::dump(&fs)));
    }
    assert_eq!(
        cores[0], cores[1],
        "the core's state differs between transports"
    );
}

#[test]
fn a_mount_over_io_uring_ends_cleanly_while_requests_are_in_flight() {
    if !fixtures::require::fuse_io_uring() {
        return;
    }
    let (tmp, store, tree) = empty_image();
    for round in 0..5 {
        let (_fs, session, mnt) =
            common::mount_tree(&store, tree, tmp.path(), &format!("r{round}"), 1 << 30);
        assert!(session.uses_io_uring());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (dir, stop) = (mnt.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Errors are expected once the mount is gone.
                        let _ = fs::write(dir.join(format!("w{w}-{i}")), [0u8; 8192]);
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50 + round * 20));
        let started = std::time::Instant::now();
        session.umount_and_join().unwrap();
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert!(
            took < std::time::Duration::from_secs(10),
            "unmounting took {took:?}"
        );
    }
}
