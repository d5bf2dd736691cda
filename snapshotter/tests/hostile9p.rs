//! Hostile 9P clients against the node daemon: whatever a client does —
//! flood it with requests, never read its replies, leak fids, pile up
//! extended-attribute buffers and locks — a well-behaved client of the same
//! mount is served about as fast as alone, and the daemon's memory and
//! threads stay bounded. A TCP listener serves only the mount it is bound
//! to, or attaches that carry its secret.

mod common;

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{code, json, snapctl, stderr, Daemon};
use p9server::client::Client;
use p9server::proto::{lock, Request};
use p9server::Listen;

/// A store with its daemon and an image of a few files (one of 4 MiB),
/// and a mount of it served over 9P alone.
fn served(base: &std::path::Path) -> (std::path::PathBuf, Daemon, String) {
    let src = base.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), b"welcome\n").unwrap();
    std::fs::write(src.join("big"), vec![0x5au8; 4 << 20]).unwrap();
    let home = base.join("home");
    assert!(snapctl(&home, &["store", "init"]).status.success());
    // HOSTILE_POLL and HOSTILE_NICE set the daemon's 9P polling and
    // pipelining priority, to compare runs (RELIABILITY.md).
    let mut args = Vec::new();
    if let Ok(us) = std::env::var("HOSTILE_POLL") {
        args.extend(["--9p-poll-us".to_string(), us]);
    }
    if let Ok(steps) = std::env::var("HOSTILE_NICE") {
        args.extend(["--9p-queued-nice".to_string(), steps]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_args(&home, &args);
    let src_arg = src.display().to_string();
    let out = snapctl(&home, &["image", "import", &src_arg, "--name", "img"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = snapctl(&home, &["--json", "mount", "--image", "img", "--no-fuse"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = json(&out)["id"].as_str().unwrap().to_string();
    (home, daemon, id)
}

/// Defect 7 of issue 14: a listener started without a mount served any
/// mount named by the attach name, over TCP too, with no authentication.
/// An unbound TCP listener now gets a secret, which an attach must carry
/// (`SECRET:MOUNT`); a bound one serves its mount only.
#[test]
fn a_tcp_listener_serves_only_its_mount_or_attaches_with_its_secret() {
    if !fixtures::require::root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (home, _daemon, id) = served(tmp.path());
    let out = snapctl(&home, &["--json", "mount", "--image", "img", "--no-fuse"]);
    let other = json(&out)["id"].as_str().unwrap().to_string();

    let out = snapctl(&home, &["--json", "serve9p", "--listen", "tcp:127.0.0.1:0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let info = json(&out);
    let listen: Listen = info["listen"].as_str().unwrap().parse().unwrap();
    let mut c = Client::connect(&listen, 65536).unwrap();
    assert!(
        c.attach(0, &id, 0).is_err(),
        "an attach by mount id alone was served over TCP"
    );
    let secret = info["secret"]
        .as_str()
        .expect("an unbound TCP listener has a secret");
    assert!(secret.len() >= 32, "the secret is long: {secret}");
    assert!(c.attach(1, &format!("wrong:{id}"), 0).is_err());
    c.attach(2, &format!("{secret}:{id}"), 0)
        .expect("an attach with the secret is served");
    c.walk(2, 3, "etc/motd").unwrap();
    // `serve9p --list` (on the daemon's owner-only socket) shows it again.
    let list = json(&snapctl(&home, &["--json", "serve9p", "--list"]));
    assert_eq!(list[0]["secret"].as_str(), Some(secret));

    // Bound to one mount: that mount, and no other.
    let out = snapctl(
        &home,
        &["--json", "serve9p", &id, "--listen", "tcp:127.0.0.1:0"],
    );
    let listen: Listen = json(&out)["listen"].as_str().unwrap().parse().unwrap();
    assert!(json(&out)["secret"].is_null());
    let mut c = Client::connect(&listen, 65536).unwrap();
    assert!(c.attach(0, &other, 0).is_err(), "another mount was served");
    c.attach(1, "", 0).unwrap();
}

/// The daemon's resident memory (KiB) and thread count.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:") as usize)
}

/// One well-behaved client's round trips (walk, getattr, read 4 KiB,
/// clunk): their latencies, sorted.
fn polite_round_trips(listen: &Listen, count: usize) -> Vec<Duration> {
    let mut c = Client::connect(listen, 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        c.walk(0, 1, "etc/motd").unwrap();
        c.getattr(1).unwrap();
        c.lopen(1, libc::O_RDONLY as u32).unwrap();
        assert_eq!(&c.read(1, 0, 4096).unwrap()[..], b"welcome\n");
        c.clunk(1).unwrap();
        out.push(started.elapsed());
    }
    out.sort();
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Runs `body` on a connection of its own until `stop`; the connection
/// is added to `conns` so that the test can cut it (a client stuck in a
/// send to a server that no longer reads from it ends with it).
fn hostile(
    listen: &Listen,
    stop: &Arc<AtomicBool>,
    conns: &Arc<Mutex<Vec<UnixStream>>>,
    body: impl FnOnce(&mut Client, &AtomicBool) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let (listen, stop, conns) = (listen.clone(), stop.clone(), conns.clone());
    std::thread::spawn(move || {
        // A sandbox's processes run under their own share of the CPU (its
        // cgroup); here, beside the polite client on two cores, a lower
        // priority stands for that. What the daemon does with their
        // requests is what is measured.
        // SAFETY: setpriority on this thread's own id touches no memory.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        let Listen::Unix(path) = &listen else {
            panic!("the hostile clients connect over a Unix socket");
        };
        let Ok(stream) = UnixStream::connect(path) else {
            return;
        };
        conns.lock().unwrap().push(stream.try_clone().unwrap());
        let Ok(mut c) = Client::over(Box::new(stream), 65536) else {
            return;
        };
        if c.attach(0, "", 0).is_err() {
            return;
        }
        body(&mut c, &stop);
    })
}

/// Defect 7 of issue 14: a client could queue memory, not only work —
/// extended-attribute buffers of up to 256 KiB on each of 65,536 fids,
/// unbounded locks (each set O(n)), a blocking thread pinned for 60 s per
/// reply it never read. Beside such clients a well-behaved one keeps its
/// p99 within 2x of its p99 alone, and the daemon's memory and threads
/// stay bounded.
#[test]
fn hostile_clients_cannot_slow_a_polite_one_or_bloat_the_daemon() {
    if !fixtures::require::root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (home, daemon, id) = served(tmp.path());
    let sock = tmp.path().join("9p.sock");
    let listen = Listen::Unix(sock.clone());
    let out = snapctl(&home, &["serve9p", &id, "--listen", &listen.to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pid = daemon.child.id();

    // Alone and beside hostile clients, five times each (HOSTILE_ROUNDS),
    // alternating (a warm-up first): the medians of the rounds' p99s are
    // compared.
    let rounds: usize = std::env::var("HOSTILE_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    polite_round_trips(&listen, 300);
    let (rss_before, threads_before) = footprint(pid);
    let (mut alone_p99s, mut beside_p99s) = (Vec::new(), Vec::new());
    // Every round trip of every round, for the pooled percentiles.
    let (mut all_alone, mut all_beside) = (Vec::new(), Vec::new());
    let (mut rss_during, mut threads_during) = (0, 0);
    for _round in 0..rounds {
        let alone = polite_round_trips(&listen, 1500);
        all_alone.extend_from_slice(&alone);
        alone_p99s.push(percentile(&alone, 0.99));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let only = std::env::var("HOSTILE_ONLY").unwrap_or_default();
        let run = |name: &str| only.is_empty() || only.split(',').any(|k| k == name);
        // Never reads a reply: 64 KiB reads of the big file, pipelined.
        if run("noread") {
            threads.push(hostile(&listen, &stop, &conns, |c, stop| {
                c.walk(0, 1, "big").unwrap();
                c.lopen(1, libc::O_RDONLY as u32).unwrap();
                let mut offset = 0;
                while !stop.load(Ordering::Relaxed) {
                    let read = Request::Read {
                        fid: 1,
                        offset,
                        count: 65536,
                    };
                    if c.send(&read).is_err() {
                        break; // the server closed the connection: fine
                    }
                    offset = (offset + 65536) % (4 << 20);
                }
            }));
        }
        // Leaks fids, each with an extended-attribute buffer filled.
        if run("leak") {
            threads.push(hostile(&listen, &stop, &conns, |c, stop| {
                let chunk = vec![7u8; 60_000];
                for fid in 1..40_000u32 {
                    if stop.load(Ordering::Relaxed) || c.walk(0, fid, "etc/motd").is_err() {
                        break;
                    }
                    let create = Request::Xattrcreate {
                        fid,
                        name: b"user.pile".to_vec(),
                        size: 60_000,
                        flags: 0,
                    };
                    if c.call(&create).is_err() {
                        continue; // refused: the bound holds
                    }
                    let _ = c.write(fid, 0, &chunk);
                }
            }));
        }
        // Locks ever more byte ranges of one file.
        if run("lock") {
            threads.push(hostile(&listen, &stop, &conns, |c, stop| {
                c.walk(0, 1, "etc/motd").unwrap();
                c.lopen(1, libc::O_RDWR as u32).unwrap();
                for i in 0..200_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let set = Request::Lock {
                        fid: 1,
                        typ: lock::WRLCK,
                        flags: 0,
                        start: 2 * i,
                        length: 1,
                        proc_id: 1,
                        client_id: b"locker".to_vec(),
                    };
                    if c.call(&set).is_err() {
                        break;
                    }
                }
            }));
        }
        // Flushes the same request over and over.
        if run("flush") {
            threads.push(hostile(&listen, &stop, &conns, |c, stop| {
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        if c.send(&Request::Flush { oldtag: 7 }).is_err() {
                            return;
                        }
                    }
                    for _ in 0..64 {
                        if c.recv().is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_secs(1));
        let beside = polite_round_trips(&listen, 1500);
        all_beside.extend_from_slice(&beside);
        beside_p99s.push(percentile(&beside, 0.99));
        let (rss, threads_now) = footprint(pid);
        rss_during = rss_during.max(rss);
        threads_during = threads_during.max(threads_now);
        stop.store(true, Ordering::Relaxed);
        // Every hostile client ends before the next round alone (the one
        // that never reads is stuck in its send until its socket is cut).
        for conn in conns.lock().unwrap().iter() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        for t in threads {
            t.join().unwrap();
        }
    }
    alone_p99s.sort();
    beside_p99s.sort();
    let (p99_alone, p99_beside) = (alone_p99s[rounds / 2], beside_p99s[rounds / 2]);
    all_alone.sort();
    all_beside.sort();
    let (pooled_alone, pooled_beside) =
        (percentile(&all_alone, 0.99), percentile(&all_beside, 0.99));
    eprintln!("hostile-9p rounds' p99s: alone {alone_p99s:?}, beside {beside_p99s:?}");
    // One line for `strata-bench reliability` (benches/run.sh reliability).
    let us = |d: Duration| d.as_micros();
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    eprintln!(
        "RESULT hostile-9p rounds={rounds} round_trips_per_round=1500 \
         p99_alone_us={} p99_beside_us={} median_ratio={:.2} \
         pooled_p99_alone_us={} pooled_p99_beside_us={} pooled_ratio={:.2} \
         rss_mib_before={} rss_mib_during={} threads_before={threads_before} \
         threads_during={threads_during}",
        us(p99_alone),
        us(p99_beside),
        ratio(p99_alone, p99_beside),
        us(pooled_alone),
        us(pooled_beside),
        ratio(pooled_alone, pooled_beside),
        rss_before >> 10,
        rss_during >> 10,
    );
    assert!(
        rss_during < rss_before + (256 << 10),
        "the daemon grew from {} to {} MiB",
        rss_before >> 10,
        rss_during >> 10
    );
    assert!(
        threads_during <= threads_before + 20,
        "the daemon went from {threads_before} to {threads_during} threads"
    );
    // The target is 2x: release builds on this kind of machine
    // (2 vCPUs, the CPU saturated) measure 1.0-1.5x for the medians of
    // the rounds and 0.85-1.8x pooled (RELIABILITY.md). The assertion
    // leaves room for slower, busier CI machines and debug builds; it
    // guards against what the bounds and the lane removed (threads pinned
    // per unread reply: 40x; the flood answered on lowered runtime
    // threads: rounds above 1 ms).
    let bound = p99_alone * 4;
    assert!(
        p99_beside <= bound,
        "p99 {p99_beside:?} beside hostile clients, {p99_alone:?} alone"
    );
}
