//! Memory snapshots through the node daemon: `snapctl mem put|get` of
//! images and checkpoint directories, listed and removed like other
//! snapshots, and served lazily to a client playing Firecracker's role —
//! including while the snapshot is removed and collected, when the server
//! is stopped, and when the daemon is killed mid-restore.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use memsnap::client::GuestMemory;
use memsnap::handshake::HandshakeVersion;

const PAGE: usize = 4096;

/// A deterministic image: zero runs, text pages and random pages.
fn image(seed: u64, pages: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = vec![0u8; pages * PAGE];
    for page in out.chunks_mut(PAGE) {
        match next() % 4 {
            0 | 1 => {}
            2 => {
                for (i, b) in page.iter_mut().enumerate() {
                    *b = b"strata memory "[i % 14];
                }
            }
            _ => {
                for chunk in page.chunks_mut(8) {
                    chunk.copy_from_slice(&next().to_le_bytes());
                }
            }
        }
    }
    out
}

fn start(home: &Path) -> Daemon {
    must(snapctl(home, &["store", "init"]));
    Daemon::start(home)
}

fn put(home: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "mem", "put"];
    all.extend_from_slice(args);
    json(&must(snapctl(home, &all)))
}

#[test]
fn memory_images_round_trip_and_children_store_only_new_pages() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let _daemon = start(&home);
    let ram = image(1, 2048);
    let mut child = ram.clone();
    for page in [3usize, 700, 701, 1500] {
        child[page * PAGE..(page + 1) * PAGE].fill(0x5a);
    }
    let (a, b) = (dir.path().join("a.ram"), dir.path().join("b.ram"));
    std::fs::write(&a, &ram).unwrap();
    std::fs::write(&b, &child).unwrap();

    let first = put(&home, &[a.to_str().unwrap(), "--label", "vm=one"]);
    assert_eq!(first["kind"], "memory");
    assert_eq!(first["memory"]["size"], ram.len() as u64);
    let first_id = first["id"].as_str().unwrap().to_string();
    let second = put(&home, &[b.to_str().unwrap(), "--parent", &first_id]);
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_eq!(second["parent"], first_id.as_str());
    assert_eq!(second["memory"]["pages"]["new"], 4, "{second}");
    assert!(second["memory"]["stored_bytes"].as_u64().unwrap() < 64 << 10);

    // Listed and shown like any snapshot.
    let list = json(&must(snapctl(
        &home,
        &["--json", "snapshot", "list", "--label", "vm=one"],
    )));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["kind"], "memory");
    let shown = must(snapctl(&home, &["snapshot", "show", &second_id]));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("memory") && text.contains("new"), "{text}");

    for (id, want) in [(&first_id, &ram), (&second_id, &child)] {
        let back = dir.path().join(format!("{id}.back"));
        must(snapctl(&home, &["mem", "get", id, back.to_str().unwrap()]));
        assert!(std::fs::read(&back).unwrap() == *want);
    }

    // Bad input: a clear error, nothing changed.
    let out = snapctl(&home, &["mem", "get", "nosuch", "/tmp/x"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = snapctl(
        &home,
        &[
            "mem",
            "get",
            "--dir",
            &first_id,
            dir.path().join("d").to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("leave out --dir"));
    assert!(!dir.path().join("d").exists());
    let out = snapctl(
        &home,
        &["mem", "put", a.to_str().unwrap(), "--parent", "nosuch"],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = snapctl(&home, &["mem", "put", dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("--dir"));
    let out = snapctl(&home, &["snapshot", "diff", &first_id, &second_id]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("memory snapshot"), "{}", stderr(&out));

    // Removing the child keeps the parent whole; removing both frees it all.
    must(snapctl(&home, &["snapshot", "rm", &second_id]));
    must(snapctl(&home, &["store", "gc"]));
    let back = dir.path().join("again");
    must(snapctl(
        &home,
        &["mem", "get", &first_id, back.to_str().unwrap()],
    ));
    assert!(std::fs::read(&back).unwrap() == ram);
    must(snapctl(&home, &["snapshot", "rm", &first_id]));
    let gc = json(&must(snapctl(&home, &["--json", "store", "gc"])));
    assert!(gc.to_string().contains("swept"), "{gc}");
}

#[test]
fn the_cell_size_is_chosen_when_the_store_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    // Not whole pages, or too large: refused, and no store is made.
    for bad in ["1000", "3MiB", "0"] {
        let out = snapctl(&home, &["store", "init", "--fixed-chunk", bad]);
        assert_eq!(code(&out), 7, "{bad}: {}", stderr(&out));
        assert!(!home.join("strata-store.json").exists());
    }
    must(snapctl(&home, &["store", "init", "--fixed-chunk", "16KiB"]));
    let config = std::fs::read_to_string(home.join("strata-store.json")).unwrap();
    assert!(config.contains("\"fixed_size\": 16384"), "{config}");
    let _daemon = Daemon::start(&home);
    let ram = image(9, 300);
    let file = dir.path().join("ram");
    std::fs::write(&file, &ram).unwrap();
    let id = put(&home, &[file.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let back = dir.path().join("back");
    must(snapctl(&home, &["mem", "get", &id, back.to_str().unwrap()]));
    assert!(std::fs::read(&back).unwrap() == ram);
}

#[test]
fn a_checkpoint_directory_is_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let _daemon = start(&home);
    let checkpoint = dir.path().join("checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    let pages = image(2, 512);
    std::fs::write(checkpoint.join("pages.img"), &pages).unwrap();
    std::fs::write(checkpoint.join("checkpoint.img"), b"kernel state").unwrap();
    let first = put(&home, &["--dir", checkpoint.to_str().unwrap()]);
    assert_eq!(first["memory"]["files"], 2);
    let id = first["id"].as_str().unwrap();
    // The next checkpoint of the same sandbox, with its parent.
    std::fs::write(checkpoint.join("checkpoint.img"), b"kernel state, later").unwrap();
    let second = put(
        &home,
        &["--dir", checkpoint.to_str().unwrap(), "--parent", id],
    );
    assert_eq!(second["memory"]["pages"]["new"], 1, "{second}");
    std::fs::remove_dir_all(&checkpoint).unwrap();

    let back = dir.path().join("restored");
    must(snapctl(
        &home,
        &[
            "mem",
            "get",
            "--dir",
            second["id"].as_str().unwrap(),
            back.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(back.join("pages.img")).unwrap() == pages);
    assert_eq!(
        std::fs::read(back.join("checkpoint.img")).unwrap(),
        b"kernel state, later"
    );
    let out = snapctl(
        &home,
        &["mem", "get", id, dir.path().join("f").to_str().unwrap()],
    );
    assert_eq!(code(&out), 7);
    assert!(stderr(&out).contains("--dir"));
}

/// Serves `id` on a socket under `dir` and returns the socket's path.
fn serve(home: &Path, dir: &Path, id: &str) -> std::path::PathBuf {
    let socket = dir.join(format!("{id}.sock"));
    must(snapctl(
        home,
        &["mem", "serve", id, "--socket", socket.to_str().unwrap()],
    ));
    assert!(
        socket.exists(),
        "the socket exists once `mem serve` returns"
    );
    socket
}

fn check_pages(guest: &GuestMemory, want: &[u8]) {
    let mut buf = vec![0u8; PAGE];
    for page in 0..guest.region_size(0) / PAGE {
        guest.read(0, page * PAGE, &mut buf);
        assert!(
            buf == want[page * PAGE..(page + 1) * PAGE],
            "page {page} differs"
        );
    }
}

/// A daemon holding one memory snapshot of a 4 MiB image made from `seed`.
fn daemon_with_image(
    seed: u64,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Daemon,
    Vec<u8>,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let daemon = start(&home);
    let ram = image(seed, 1024);
    let path = dir.path().join("ram");
    std::fs::write(&path, &ram).unwrap();
    let id = put(&home, &[path.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    (dir, home, daemon, ram, id)
}

#[test]
fn the_daemon_serves_pages_while_the_snapshot_is_removed_and_collected() {
    let (dir, home, _daemon, ram, id) = daemon_with_image(3);
    let socket = serve(&home, dir.path(), &id);

    let guest = GuestMemory::connect(&socket, &[ram.len()], 0, HandshakeVersion::V1_12).unwrap();
    let mut buf = vec![0u8; PAGE];
    guest.read(0, 0, &mut buf);
    let servers = json(&must(snapctl(&home, &["--json", "mem", "servers"])));
    assert_eq!(
        servers[0]["clients"][0]["pid"],
        std::process::id(),
        "{servers}"
    );
    // The snapshot goes, and a GC runs: the server's pin keeps its pages.
    must(snapctl(&home, &["snapshot", "rm", &id]));
    must(snapctl(&home, &["store", "gc"]));
    check_pages(&guest, &ram);
    let stopped = json(&must(snapctl(
        &home,
        &[
            "--json",
            "mem",
            "unserve",
            "--socket",
            socket.to_str().unwrap(),
        ],
    )));
    assert!(stopped["stats"]["faults"].as_u64().unwrap() >= 1024);
    assert!(!socket.exists());
    let out = snapctl(
        &home,
        &["mem", "serve", &id, "--socket", socket.to_str().unwrap()],
    );
    assert_eq!(
        code(&out),
        3,
        "a removed snapshot is not found: {}",
        stderr(&out)
    );
}

#[test]
fn unserving_makes_the_client_whole_and_a_killed_daemon_is_seen_at_once() {
    let (dir, home, daemon, ram, id) = daemon_with_image(4);

    // Stopped on purpose: the client gets every page, then a last line.
    let socket = serve(&home, dir.path(), &id);
    let guest = GuestMemory::connect(&socket, &[ram.len()], 0, HandshakeVersion::V1_1).unwrap();
    let mut buf = vec![0u8; PAGE];
    guest.read(0, 5 * PAGE, &mut buf);
    must(snapctl(
        &home,
        &["mem", "unserve", "--socket", socket.to_str().unwrap()],
    ));
    let mut line = String::new();
    BufReader::new(guest.socket()).read_line(&mut line).unwrap();
    assert!(line.contains("stopped"), "{line}");
    check_pages(&guest, &ram);
    drop(guest);

    // Killed: the client's socket ends at once, so a client that watches
    // it (as it must) never waits on a fault that nobody will serve.
    let socket = serve(&home, dir.path(), &id);
    let guest = GuestMemory::connect(&socket, &[ram.len()], 0, HandshakeVersion::V1_7).unwrap();
    guest.read(0, 0, &mut buf);
    let killed = Instant::now();
    daemon.stop(libc::SIGKILL);
    guest
        .socket()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let mut socket = guest.socket();
    let n = socket.read_to_end(&mut rest).unwrap();
    assert_eq!(n, 0, "the socket ends with the server");
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    // The untouched pages are never read: with no server they would hang.
    std::mem::forget(guest);
}

/// Writes `bytes` at `offset` of `path` through a shared mapping, as a VM
/// writes its RAM when the file backs it (QEMU `share=on`).
fn write_mapped(path: &Path, offset: usize, bytes: &[u8]) {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a fresh shared mapping of a file this test opened; written
    // within its length, synced and unmapped before the file is closed.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (at as *mut u8).add(offset), bytes.len());
        assert_eq!(libc::msync(at, len, libc::MS_SYNC), 0);
        libc::munmap(at, len);
    }
}

#[test]
fn a_memory_snapshot_mounts_as_a_file_each_mount_writing_its_own_upper_layer() {
    if !fixtures::require::fuse() {
        return;
    }
    let (dir, home, _daemon, ram, id) = daemon_with_image(5);
    let mount = |name: &str| {
        let at = dir.path().join(name);
        std::fs::create_dir(&at).unwrap();
        must(snapctl(
            &home,
            &["mount", "--snapshot", &id, at.to_str().unwrap()],
        ));
        at
    };
    let (a, b) = (mount("a"), mount("b"));
    assert!(std::fs::read(a.join("memory")).unwrap() == ram);
    // `fork` makes many such mounts at once.
    let forks = dir.path().join("forks");
    let made = json(&must(snapctl(
        &home,
        &[
            "--json",
            "fork",
            &id,
            "--count",
            "2",
            "--under",
            forks.to_str().unwrap(),
        ],
    )));
    assert_eq!(made.as_array().map(Vec::len), Some(2), "{made}");
    for n in 0..2 {
        let file = forks.join(format!("{id}-{n}")).join("memory");
        assert!(std::fs::read(file).unwrap() == ram);
    }

    // Removed and collected while mounted: the mounts keep it.
    must(snapctl(&home, &["snapshot", "rm", &id]));
    must(snapctl(&home, &["store", "gc"]));

    // A guest writes its RAM through a shared mapping: only its mount sees
    // it, and a child snapshot of the file stores only that page.
    let page = 700 * PAGE;
    write_mapped(&a.join("memory"), page, b"written by fork a");
    let mut want = ram.clone();
    want[page..page + 17].copy_from_slice(b"written by fork a");
    assert!(std::fs::read(a.join("memory")).unwrap() == want);
    assert!(std::fs::read(b.join("memory")).unwrap() == ram);
    let base = put(&home, &[b.join("memory").to_str().unwrap()]);
    let base_id = base["id"].as_str().unwrap();
    let child = put(
        &home,
        &[a.join("memory").to_str().unwrap(), "--parent", base_id],
    );
    assert_eq!(child["memory"]["pages"]["new"], 1, "{child}");
    let used = mounts_used(&home);
    assert_eq!(used.iter().filter(|&&u| u > 0).count(), 1, "{used:?}");
}
