//! The page server, with this test playing Firecracker's role: anonymous
//! memory shaped like a guest (two regions around a hole) registered with
//! userfaultfd and handed over with each version of the handshake.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{image, Rng};
use memsnap::client::GuestMemory;
use memsnap::handshake::HandshakeVersion;
use memsnap::{capture_file, ImageReader, PageServer, ServeOptions, PAGE_SIZE};

/// Region sizes: 3 MiB and the rest of a 5 MiB image, with a 1 MiB hole.
const REGIONS: [usize; 2] = [3 << 20, 2 << 20];
const HOLE: usize = 1 << 20;

/// Fails the whole run instead of hanging if a fault is never served.
struct Deadline(Arc<AtomicBool>);

impl Deadline {
    fn new(what: &'static str, secs: u64) -> Deadline {
        let done = Arc::new(AtomicBool::new(false));
        let watch = done.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until {
                if watch.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("{what}: not done after {secs} s; a fault was never served");
            std::process::abort();
        });
        Deadline(done)
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    image: Vec<u8>,
    reader: Arc<ImageReader>,
    socket: std::path::PathBuf,
    working_set: std::path::PathBuf,
}

fn fixture(seed: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = cas::Store::init(&dir.path().join("store"), Default::default()).unwrap();
    let pages = (REGIONS[0] + REGIONS[1]) / PAGE_SIZE;
    let ram = image(seed, pages, 0);
    let path = dir.path().join("ram");
    std::fs::write(&path, &ram).unwrap();
    let writer = store.writer("test");
    let stored = capture_file(&writer, &File::open(&path).unwrap(), None).unwrap();
    writer.commit().unwrap();
    drop(writer);
    let reader = Arc::new(ImageReader::open(&store, &stored.id, 64 << 20).unwrap());
    Fixture {
        socket: dir.path().join("pages.sock"),
        working_set: dir.path().join("working-set"),
        _dir: dir,
        image: ram,
        reader,
    }
}

fn expected(f: &Fixture, guest: &GuestMemory, region: usize, page: usize) -> Vec<u8> {
    let start = guest.region_offset(region) as usize + page * PAGE_SIZE;
    f.image[start..start + PAGE_SIZE].to_vec()
}

/// Touches every page of every region from `threads` threads, each in its
/// own random order, and checks each page read.
fn touch_all(f: &Fixture, guest: &GuestMemory, threads: u64) {
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let mut rng = Rng::new(7 + t);
                let mut order: Vec<(usize, usize)> = (0..guest.region_count())
                    .flat_map(|r| (0..guest.region_size(r) / PAGE_SIZE).map(move |p| (r, p)))
                    .collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut buf = vec![0u8; PAGE_SIZE];
                for (region, page) in order {
                    guest.read(region, page * PAGE_SIZE, &mut buf);
                    assert!(
                        buf == expected(f, guest, region, page),
                        "region {region} page {page} differs"
                    );
                }
            });
        }
    });
}

#[test]
fn every_handshake_version_is_served_the_image_exactly() {
    let f = fixture(11);
    // No working set: every client's every page is served on fault.
    let options = ServeOptions {
        record_pages: 0,
        ..ServeOptions::default()
    };
    let server = PageServer::start(f.reader.clone(), &f.socket, options).unwrap();
    let _deadline = Deadline::new("handshake versions", 120);
    for version in [
        HandshakeVersion::V1_1,
        HandshakeVersion::V1_7,
        HandshakeVersion::V1_12,
    ] {
        let guest = GuestMemory::connect(&f.socket, &REGIONS, HOLE, version).unwrap();
        touch_all(&f, &guest, 4);
        let clients = server.clients();
        assert_eq!(clients.len(), 1, "{clients:?}");
        assert_eq!(clients[0].regions, 2);
        assert_eq!(
            clients[0].pid,
            std::process::id() as i32,
            "the client is known by SO_PEERCRED"
        );
        // Several threads may fault on one page: at least one fault each.
        assert!(
            clients[0].faults as usize >= (REGIONS[0] + REGIONS[1]) / PAGE_SIZE,
            "{clients:?}"
        );
        assert_eq!(clients[0].prefetched_pages, 0);
        drop(guest);
        let until = Instant::now() + Duration::from_secs(5);
        while !server.clients().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            server.clients().is_empty(),
            "a client that closed its socket is let go"
        );
    }
    let stats = server.stop();
    assert_eq!(stats.clients_total, 3);
    assert_eq!(stats.errors, 0);
}

#[test]
fn a_removed_range_reads_back_as_zero() {
    let f = fixture(12);
    let server = PageServer::start(f.reader.clone(), &f.socket, ServeOptions::default()).unwrap();
    let _deadline = Deadline::new("remove", 120);
    let guest = GuestMemory::connect(&f.socket, &REGIONS, HOLE, HandshakeVersion::V1_12).unwrap();
    // A range never touched, and a range touched first.
    guest.discard(1, 64 * PAGE_SIZE, 32 * PAGE_SIZE).unwrap();
    touch_all_but(&f, &guest, (1, 64..96));
    guest.discard(0, 10 * PAGE_SIZE, 40 * PAGE_SIZE).unwrap();
    let mut buf = vec![0u8; PAGE_SIZE];
    for (region, pages) in [(0, 10..50), (1, 64..96)] {
        for page in pages {
            guest.read(region, page * PAGE_SIZE, &mut buf);
            assert!(
                buf.iter().all(|&b| b == 0),
                "region {region} page {page} is not zero after the remove"
            );
        }
    }
    // Around the removed ranges the image is intact.
    for (region, page) in [(0, 9), (0, 50), (1, 63), (1, 96)] {
        guest.read(region, page * PAGE_SIZE, &mut buf);
        assert!(buf == expected(&f, &guest, region, page));
    }
    // A removed page written and removed again is zero again.
    guest.write_byte(0, 20 * PAGE_SIZE, 9);
    guest.discard(0, 20 * PAGE_SIZE, PAGE_SIZE).unwrap();
    guest.read(0, 20 * PAGE_SIZE, &mut buf);
    assert!(buf.iter().all(|&b| b == 0));
    assert!(server.clients()[0].removed_bytes >= 73 * PAGE_SIZE as u64);
    drop(guest);
    assert_eq!(server.stop().errors, 0);
}

fn touch_all_but(f: &Fixture, guest: &GuestMemory, skip: (usize, std::ops::Range<usize>)) {
    let mut buf = vec![0u8; PAGE_SIZE];
    for region in 0..guest.region_count() {
        for page in 0..guest.region_size(region) / PAGE_SIZE {
            if region == skip.0 && skip.1.contains(&page) {
                continue;
            }
            guest.read(region, page * PAGE_SIZE, &mut buf);
            assert!(buf == expected(f, guest, region, page));
        }
    }
}

#[test]
fn a_stopping_server_makes_its_clients_whole_first() {
    let f = fixture(13);
    let server = PageServer::start(f.reader.clone(), &f.socket, ServeOptions::default()).unwrap();
    let _deadline = Deadline::new("stop", 120);
    let guest = GuestMemory::connect(&f.socket, &REGIONS, HOLE, HandshakeVersion::V1_7).unwrap();
    let mut buf = vec![0u8; PAGE_SIZE];
    guest.read(0, 0, &mut buf);
    guest.discard(1, 0, 8 * PAGE_SIZE).unwrap();
    server.stop();
    assert!(!f.socket.exists(), "the socket is removed once stopped");
    let mut line = String::new();
    BufReader::new(guest.socket()).read_line(&mut line).unwrap();
    assert!(line.contains("\"stopped\""), "{line}");
    // No server: every page must already be present (a fault now would
    // hang, and the deadline would fail the run).
    for region in 0..2 {
        for page in 0..guest.region_size(region) / PAGE_SIZE {
            guest.read(region, page * PAGE_SIZE, &mut buf);
            if region == 1 && page < 8 {
                assert!(buf.iter().all(|&b| b == 0));
            } else {
                assert!(buf == expected(&f, &guest, region, page));
            }
        }
    }
}

#[test]
fn later_clients_are_prefetched_the_first_clients_working_set() {
    let f = fixture(14);
    let options = ServeOptions {
        working_set: Some(f.working_set.clone()),
        ..ServeOptions::default()
    };
    let server = PageServer::start(f.reader.clone(), &f.socket, options.clone()).unwrap();
    let _deadline = Deadline::new("working set", 120);
    let first = GuestMemory::connect(&f.socket, &REGIONS, HOLE, HandshakeVersion::V1_12).unwrap();
    let mut buf = vec![0u8; PAGE_SIZE];
    let touched: Vec<usize> = (0..200).map(|i| i * 3).collect();
    for &page in &touched {
        first.read(0, page * PAGE_SIZE, &mut buf);
    }
    drop(first);
    let until = Instant::now() + Duration::from_secs(5);
    while !f.working_set.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        f.working_set.exists(),
        "the first client's faults are kept as the working set"
    );
    drop(server);

    // A new server (as after a restart) prefetches it for every client.
    let server = PageServer::start(f.reader.clone(), &f.socket, options).unwrap();
    let second = GuestMemory::connect(&f.socket, &REGIONS, HOLE, HandshakeVersion::V1_12).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while server
        .clients()
        .first()
        .is_none_or(|c| c.prefetched_pages < touched.len() as u64)
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let client = server.clients()[0].clone();
    assert_eq!(client.prefetched_pages, touched.len() as u64, "{client:?}");
    for &page in &touched {
        second.read(0, page * PAGE_SIZE, &mut buf);
        assert!(buf == expected(&f, &second, 0, page));
    }
    assert_eq!(
        server.clients()[0].faults,
        0,
        "prefetched pages do not fault"
    );
}

#[test]
fn a_handshake_without_a_userfaultfd_gets_an_error_line() {
    use std::io::Write;
    let f = fixture(15);
    let server = PageServer::start(f.reader.clone(), &f.socket, ServeOptions::default()).unwrap();
    for (message, want) in [
        (
            &br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0}]"#[..],
            "exactly one userfaultfd",
        ),
        (
            &b"[{\"base_host_virt_addr\": 4096, \"size\": 4096, \"offset\": 99999999999}]"[..],
            "region 0",
        ),
        (&b"not json"[..], "not a JSON array"),
    ] {
        let mut stream = std::os::unix::net::UnixStream::connect(&f.socket).unwrap();
        stream.write_all(message).unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        assert!(line.contains("\"error\"") && line.contains(want), "{line}");
    }
    assert_eq!(server.stop().errors, 3);
}
