//! Load: many mounts of one daemon under mixed traffic for a long time.
//! Workers read image files, write and fsync files, list directories and
//! take (and remove) snapshots across every mount at once, while the
//! daemon's resident memory and open descriptors are sampled each second.
//! They must stay flat — what the daemon holds may grow while caches fill
//! and while the load first touches each mount's files, not with the work
//! done — and no operation may fail. Prints each
//! operation's p50 and p99 and the samples' course.
//!
//! CI runs it bounded: 200 mounts for 30 s. The long run (`benches/run.sh
//! reliability`, RELIABILITY.md) sets `STRATA_LOAD_SECS=600`;
//! `STRATA_LOAD_MOUNTS` changes the number of mounts; `STRATA_LOAD_CACHES`
//! (a size) makes the daemon's chunk and index caches that small.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fixtures::workload::Rng;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One API call on a connection of its own.
fn call(home: &Path, op: &str, args: serde_json::Value) -> serde_json::Value {
    let mut conn = UnixStream::connect(home.join("snapd.sock")).unwrap();
    let line = serde_json::json!({"api": 1, "op": op, "args": args}).to_string();
    conn.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer).unwrap();
    let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(value["ok"], true, "{op}: {value}");
    value["result"].clone()
}

/// Resident memory (KiB) and open descriptors of process `pid`.
fn sample(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct MountUnderLoad {
    id: String,
    dir: PathBuf,
    /// The newest snapshot taken of it (removed when the next is taken).
    snapshot: Mutex<Option<String>>,
}

#[test]
fn two_hundred_mounts_under_mixed_load_keep_memory_and_descriptors_flat() {
    if !fixtures::require::fuse() {
        return;
    }
    let mounts_wanted = env_or("STRATA_LOAD_MOUNTS", 200);
    let secs = env_or("STRATA_LOAD_SECS", 30);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    must(snapctl(&home, &["store", "init"]));
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("usr/share/doc")).unwrap();
    std::fs::write(src.join("etc-motd"), b"welcome\n").unwrap();
    std::fs::write(src.join("usr/tool"), vec![7u8; 300_000]).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("usr/share/doc/f{i}")), format!("doc {i}")).unwrap();
    }
    // STRATA_LOAD_CACHES=8M gives the daemon's chunk and index caches 8 MiB
    // each: with the caches small and soon full, growth of resident memory
    // is growth of something else.
    let caches = std::env::var("STRATA_LOAD_CACHES").ok();
    let daemon = match &caches {
        Some(size) => {
            Daemon::start_with_args(&home, &["--chunk-cache", size, "--index-cache", size])
        }
        None => Daemon::start(&home),
    };
    let pid = daemon.child.id();
    must(snapctl(
        &home,
        &["image", "import", src.to_str().unwrap(), "--name", "base"],
    ));
    let started = Instant::now();
    let mut mounts = Vec::new();
    for i in 0..mounts_wanted {
        let at = dir.path().join(format!("m{i}"));
        std::fs::create_dir(&at).unwrap();
        let info = call(
            &home,
            "mount.create",
            serde_json::json!({"image": "base", "mountpoint": at, "quota_bytes": 1u64 << 30}),
        );
        std::fs::create_dir(at.join("work")).unwrap();
        mounts.push(MountUnderLoad {
            id: info["id"].as_str().unwrap().to_string(),
            dir: at,
            snapshot: Mutex::new(None),
        });
    }
    let mount_secs = started.elapsed().as_secs_f64();
    let (_, fds_idle) = sample(pid);
    let mounts = Arc::new(mounts);
    let stop = Arc::new(AtomicBool::new(false));
    let latencies: Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>> = Arc::default();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, samples) = (stop.clone(), samples.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                samples.lock().unwrap().push(sample(pid));
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let (mounts, stop, latencies) = (mounts.clone(), stop.clone(), latencies.clone());
            let home = home.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(fixtures::workload::seed() ^ w);
                let mut mine: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let m = &mounts[rng.below(mounts.len() as u64) as usize];
                    let t = Instant::now();
                    let what = match rng.below(100) {
                        0..=39 => {
                            let mut bytes = Vec::new();
                            std::fs::File::open(m.dir.join("usr/tool"))
                                .and_then(|mut f| f.read_to_end(&mut bytes))
                                .unwrap();
                            assert_eq!(bytes.len(), 300_000);
                            "read 300 KB"
                        }
                        40..=69 => {
                            let path = m.dir.join(format!("work/f{}", rng.below(8)));
                            let len = 4096 * (1 + rng.below(16) as usize);
                            let data = rng.bytes(len);
                            let mut f = std::fs::File::create(&path).unwrap();
                            f.write_all(&data).unwrap();
                            f.sync_all().unwrap();
                            "write+fsync 4-64 KB"
                        }
                        70..=89 => {
                            let n = std::fs::read_dir(m.dir.join("usr/share/doc"))
                                .unwrap()
                                .count();
                            assert_eq!(n, 50);
                            "list 50 entries"
                        }
                        90..=97 => {
                            std::fs::metadata(m.dir.join("etc-motd")).unwrap();
                            "stat"
                        }
                        _ => {
                            let taken =
                                call(&home, "snapshot.create", serde_json::json!({"mount": m.id}));
                            let id = taken["id"].as_str().unwrap().to_string();
                            let old = m.snapshot.lock().unwrap().replace(id);
                            if let Some(old) = old {
                                call(&home, "snapshot.wait", serde_json::json!({"id": old}));
                                call(&home, "snapshot.remove", serde_json::json!({"id": old}));
                            }
                            "snapshot (+ remove the previous)"
                        }
                    };
                    mine.entry(what)
                        .or_default()
                        .push(t.elapsed().as_secs_f64() * 1e3);
                }
                let mut all = latencies.lock().unwrap();
                for (k, v) in mine {
                    all.entry(k).or_default().extend(v);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a worker failed");
    }
    sampler.join().unwrap();
    // Collect garbage as a platform would, then sample once more.
    call(&home, "store.gc", serde_json::json!(null));
    let samples = samples.lock().unwrap().clone();
    assert!(samples.len() >= 6, "too few samples");
    let sixth = samples.len() / 6;
    let early = &samples[sixth..2 * sixth];
    let late = &samples[samples.len() - sixth..];
    let max = |s: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| s.iter().map(f).max().unwrap_or(0);
    let (rss_early, rss_late) = (max(early, |s| s.0), max(late, |s| s.0));
    let (fds_early, fds_late) = (max(early, |s| s.1), max(late, |s| s.1));
    let mut lines = Vec::new();
    let mut total = 0;
    for (op, mut v) in latencies.lock().unwrap().clone() {
        v.sort_by(|a, b| a.total_cmp(b));
        total += v.len();
        lines.push(format!(
            "{op}: n={} p50={:.2}ms p99={:.2}ms",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        ));
    }
    println!(
        "RESULT load mounts={mounts_wanted} secs={secs} mount_all_secs={mount_secs:.1} ops={total} \
         rss_mib_early={} rss_mib_late={} fds_idle={fds_idle} fds_early={fds_early} fds_late={fds_late} \
         caches={} failed_ops=0",
        rss_early / 1024,
        rss_late / 1024,
        caches.as_deref().unwrap_or("default"),
    );
    for line in lines {
        println!("  {line}");
    }
    let course: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 12).max(1))
        .map(|(rss, fds)| format!("{}MiB/{fds}", rss / 1024))
        .collect();
    println!("  rss/fds over the run: {}", course.join(" "));
    // Each mount may keep open the data files of the 8 files the load
    // writes in it (and of nothing it no longer needs: snapshots' layers,
    // removed snapshots, finished API connections).
    let bound = fds_idle + mounts_wanted * 8 + 64;
    assert!(
        fds_late <= bound,
        "open descriptors grew from {fds_idle} (idle) to {fds_late}, past {bound}"
    );
    assert!(
        rss_late <= rss_early + rss_early / 2 + 64 * 1024,
        "resident memory grew from {} to {} MiB",
        rss_early / 1024,
        rss_late / 1024
    );
    drop(daemon);
}
