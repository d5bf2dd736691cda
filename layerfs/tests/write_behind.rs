//! Write-behind: a sandbox streaming a large file into its upper layer
//! has the write-back of what it wrote started as it goes, so the disk
//! works while it writes and its final `fsync` waits only for the tail
//! (ext4 alone would hold all of it dirty until the `fsync`, or for 30 s).

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{cow_mount, store};
use layerfs::cowfs::{CachedAbove, Caller, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const MIB: u64 = 1 << 20;

/// `struct cachestat` of `cachestat(2)` (Linux 6.5).
#[repr(C)]
#[derive(Default)]
struct CacheStat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// `cachestat(2)` of `file` in `offset..offset + len`, or `None` if the
/// kernel has none.
fn cachestat(file: &File, offset: u64, len: u64) -> Option<CacheStat> {
    let range = [offset, len];
    let mut stat = CacheStat::default();
    // SAFETY: cachestat reads a `struct cachestat_range` (two u64s) and
    // writes one `struct cachestat`, both live locals of those layouts.
    let rc = unsafe {
        libc::syscall(
            451, // SYS_cachestat on every architecture
            file.as_raw_fd(),
            range.as_ptr(),
            &mut stat as *mut CacheStat,
            0u32,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "cachestat: {e}");
        return None;
    }
    Some(stat)
}

/// Dirty pages of `file` in `offset..offset + len`.
fn dirty_pages(file: &File, offset: u64, len: u64) -> Option<u64> {
    cachestat(file, offset, len).map(|s| s.nr_dirty)
}

/// Pages of `file` in the host's page cache in `offset..offset + len`.
fn cached_pages(file: &File, offset: u64, len: u64) -> u64 {
    cachestat(file, offset, len).expect("cachestat").nr_cache
}

/// Pages of `file`'s first 64 MiB in the host's page cache; for a stream
/// with a page cache above it, once they have left (the background
/// thread drops them), or after 10 s.
fn first_64_mib_cached(file: &File, cached_above: CachedAbove) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pages = cached_pages(file, 0, 64 * MIB);
    while cached_above == CachedAbove::Yes && pages > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        pages = cached_pages(file, 0, 64 * MIB);
    }
    pages
}

fn largest_file(dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if best.as_ref().is_none_or(|(len, _)| meta.len() > *len) {
                best = Some((meta.len(), entry.path()));
            }
        }
    }
    best.expect("a data file").1
}

#[test]
fn a_sequential_writer_has_its_bytes_written_back_before_it_syncs() {
    let (tmp, store) = store();
    let tree = common::empty_image(&store, "empty", tmp.path());
    let upper = tmp.path().join("upper");
    let fs_ = cow_mount(&store, tree, &upper);
    let ino = fs_.create(ROOT_INO, b"stream", 0o644, ROOT).unwrap().ino;
    fs_.open(ino, false).unwrap();
    let block = fixtures::workload::Rng::new(7).bytes(MIB as usize);
    for i in 0..64 {
        fs_.write(ino, i * MIB, &block).unwrap();
    }
    let data = File::open(largest_file(&upper)).unwrap();
    assert_eq!(data.metadata().unwrap().len(), 64 * MIB);
    // All but the last window (its write-back starts with the next one,
    // or at the sandbox's fsync) leaves the dirty state without a sync.
    let Some(mut dirty) = dirty_pages(&data, 0, 56 * MIB) else {
        if std::env::var_os("CI").is_some() {
            panic!("cachestat(2) is missing: this test needs Linux 6.5 or later");
        }
        eprintln!("skipped: the kernel has no cachestat(2) to count dirty pages");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirty > 0 {
        assert!(
            Instant::now() < deadline,
            "{dirty} pages of the first 56 MiB still dirty 10 s after they were written \
             (the kernel's own flusher waits 30 s)"
        );
        std::thread::sleep(Duration::from_millis(20));
        dirty = dirty_pages(&data, 0, 56 * MIB).unwrap();
    }
    // The bytes are the ones written, and a sync still succeeds.
    fs_.fsync(ino).unwrap();
    assert_eq!(fs_.read(ino, 63 * MIB, MIB as u32).unwrap(), block);
    fs_.release(ino);
}

/// A writer with a page cache of its own (a FUSE mount: the kernel keeps
/// the pages it wrote) does not leave a second copy of a stream it wrote
/// in the host's cache of the upper data file; a writer without one (9P:
/// that cache is what serves its re-reads) keeps it there.
#[test]
fn a_streaming_writer_with_a_page_cache_leaves_no_second_copy_on_the_host() {
    let (tmp, store) = store();
    let tree = common::empty_image(&store, "empty", tmp.path());
    let block = fixtures::workload::Rng::new(8).bytes(MIB as usize);
    let mut cached = Vec::new();
    for (upper, cached_above) in [("fuse", CachedAbove::Yes), ("p9", CachedAbove::No)] {
        let upper = tmp.path().join(upper);
        let fs_ = cow_mount(&store, tree, &upper);
        let ino = fs_.create(ROOT_INO, b"stream", 0o644, ROOT).unwrap().ino;
        fs_.open(ino, false).unwrap();
        // The first half made durable, so that its pages are clean
        // whatever the disk's speed; then the stream goes on.
        for i in 0..64 {
            fs_.write_from(ino, i * MIB, &block, cached_above).unwrap();
        }
        fs_.fsync(ino).unwrap();
        for i in 64..128 {
            fs_.write_from(ino, i * MIB, &block, cached_above).unwrap();
        }
        let data = File::open(largest_file(&upper)).unwrap();
        if dirty_pages(&data, 0, MIB).is_none() {
            if std::env::var_os("CI").is_some() {
                panic!("cachestat(2) is missing: this test needs Linux 6.5 or later");
            }
            eprintln!("skipped: the kernel has no cachestat(2) to count cached pages");
            return;
        }
        cached.push(first_64_mib_cached(&data, cached_above));
        assert_eq!(fs_.read(ino, 127 * MIB, MIB as u32).unwrap(), block);
        assert_eq!(fs_.read(ino, 3 * MIB, MIB as u32).unwrap(), block);
        fs_.release(ino);
    }
    assert_eq!(
        cached[0], 0,
        "pages of the FUSE writer's first 64 MiB left cached"
    );
    // (The host may evict some of them on its own.)
    assert!(
        cached[1] >= 48 * MIB / 4096,
        "the 9P writer's first 64 MiB should stay cached: {} pages",
        cached[1]
    );
}

/// A reader with a page cache of its own (FUSE) streaming an upper file
/// leaves no second copy of it in the host's cache of the data file, also
/// right after a writer of the same kind streamed it there; a reader
/// without one (9P) keeps it there.
#[test]
fn a_streaming_reader_with_a_page_cache_leaves_no_second_copy_of_an_upper_file() {
    let (tmp, store) = store();
    let tree = common::empty_image(&store, "empty", tmp.path());
    let data = fixtures::workload::Rng::new(9).bytes(128 * MIB as usize);
    let mut cached = Vec::new();
    for (upper, cached_above) in [("fuse", CachedAbove::Yes), ("p9", CachedAbove::No)] {
        let upper = tmp.path().join(upper);
        let fs_ = cow_mount(&store, tree, &upper);
        let ino = fs_.create(ROOT_INO, b"big", 0o644, ROOT).unwrap().ino;
        fs_.open(ino, false).unwrap();
        // Written as that reader's writer writes (a FUSE writer's stream
        // drops behind too): the reader's stream drops behind on its own.
        for (i, block) in data.chunks(MIB as usize).enumerate() {
            fs_.write_from(ino, i as u64 * MIB, block, cached_above)
                .unwrap();
        }
        fs_.fsync(ino).unwrap();
        let file = File::open(largest_file(&upper)).unwrap();
        // Read back into the host's cache first, as after a write.
        std::io::copy(&mut &file, &mut std::io::sink()).unwrap();
        let mut buf = vec![0u8; 128 << 10];
        let mut offset = 0;
        while offset < data.len() {
            let n = fs_
                .read_into(ino, offset as u64, &mut buf, cached_above)
                .unwrap();
            assert!(buf[..n] == data[offset..offset + n], "bytes at {offset}");
            offset += n;
        }
        cached.push(first_64_mib_cached(&file, cached_above));
        fs_.release(ino);
    }
    assert_eq!(
        cached[0], 0,
        "pages of the FUSE reader's first 64 MiB left cached"
    );
    assert!(
        cached[1] >= 48 * MIB / 4096,
        "the 9P reader's first 64 MiB should stay cached: {} pages",
        cached[1]
    );
}
