//! The memory-snapshot benchmark: a synthetic guest memory image (55% zero
//! pages, 30% identical to a parent image, 15% new — half text, half
//! random) stored, restored and served lazily by the node daemon, beside
//! what a platform does without Strata: `zstd -1` of the whole image and
//! `cp --sparse=always`. Then gVisor's own checkpoint and restore with the
//! image on plain disk vs stored in and restored from Strata.
//!
//! Everything goes through the release `snapctl` daemon's API, as a
//! platform would call it; the lazy-restore client is
//! `memsnap::client::GuestMemory`, which plays Firecracker's role (two
//! regions around a hole, a userfaultfd, the 1.12 handshake).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use memsnap::client::GuestMemory;
use memsnap::handshake::HandshakeVersion;
use rayon::prelude::*;
use serde_json::json;

use crate::daemon::{ApiConnection, StrataDaemon};
use crate::machine;
use crate::p9_bench::Rng;
use crate::report::{median, write_section};
use crate::tools::{disk_usage, remove, require, shell_quote, timed};

#[derive(clap::Args)]
pub struct Args {
    /// Size of the synthetic image, MiB.
    #[arg(long, default_value_t = 4096)]
    image_mib: u64,
    /// Runs of each timed step (medians are over these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working set recorded by the first client and prefetched for the
    /// others, MiB.
    #[arg(long, default_value_t = 128)]
    working_set_mib: u64,
    /// Faults timed for the fault-latency figures.
    #[arg(long, default_value_t = 2000)]
    faults: usize,
    /// Clients served at once for the memory figure.
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Fixed chunk (cell) sizes to compare, KiB; the first is also used
    /// for every other figure.
    #[arg(long, value_delimiter = ',', default_value = "64,16,256")]
    cells_kib: Vec<u64>,
    /// Memory the checkpointed gVisor sandbox holds, MB (0: skip gVisor).
    #[arg(long, default_value_t = 256)]
    runsc_mb: u64,
    /// The `snapctl` binary.
    #[arg(long, default_value = "target/release/snapctl")]
    snapctl: PathBuf,
    /// Scratch directory (on the disk under test).
    #[arg(long, default_value = "/var/tmp/strata-bench/memory")]
    work: PathBuf,
    /// Root filesystem for the gVisor sandbox.
    #[arg(long, default_value = "/var/cache/strata-fixtures/bookworm-minbase")]
    rootfs: PathBuf,
    /// The results file.
    #[arg(long, default_value = "benches/RESULTS.md")]
    results: PathBuf,
    /// Only write the parent and child images into the scratch directory
    /// and stop (to profile a capture by hand).
    #[arg(long)]
    images_only: bool,
}

const PAGE: usize = 4096;
const MIB: u64 = 1 << 20;

/// Page classes of the synthetic child image.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Zero,
    Parent,
    NewText,
    NewRandom,
}

/// Classes in runs of 1–64 pages: 55% zero, 30% parent, 15% new.
fn classes(pages: usize) -> Vec<Class> {
    let mut rng = Rng(0x5157_a7a0_0000_0001);
    let mut out = Vec::with_capacity(pages);
    while out.len() < pages {
        let run = 1 + (rng.next() % 64) as usize;
        let class = match rng.next() % 100 {
            0..=54 => Class::Zero,
            55..=84 => Class::Parent,
            _ if rng.next() % 2 == 0 => Class::NewText,
            _ => Class::NewRandom,
        };
        for _ in 0..run.min(pages - out.len()) {
            out.push(class);
        }
    }
    out
}

const WORDS: &[&str] = &[
    "the", "sandbox", "memory", "page", "python", "import", "numpy", "tensor", "return", "self",
    "value", "object", "string", "none", "true", "false", "def", "class", "for", "in", "range",
    "print", "model", "layer", "weight", "request", "response", "json", "error", "index", "key",
    "data", "user", "session", "token", "cache", "buffer", "thread", "lock", "queue",
];

/// Fills a page from `seed`: English-like words, or random bytes.
fn fill(page: &mut [u8], seed: u64, text: bool) {
    let mut rng = Rng(seed | 1);
    if text {
        let mut at = 0;
        while at < page.len() {
            let word = WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes();
            for &b in word.iter().chain(b" ") {
                if at == page.len() {
                    break;
                }
                page[at] = b;
                at += 1;
            }
        }
    } else {
        for chunk in page.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
        }
    }
}

fn parent_seed(page: usize) -> u64 {
    (page as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xa11c
}

fn child_seed(page: usize) -> u64 {
    (page as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ 0xb0b
}

/// The images a run stores.
struct Images {
    parent: PathBuf,
    child: PathBuf,
    /// The child with its zero pages as holes (a sparse copy of the RAM
    /// file).
    child_sparse: PathBuf,
    /// A RAM file of the same size of which one part in 20 was ever
    /// written (the child's bytes, 1 MiB in every 20 MiB), holes
    /// elsewhere: a VM that touched 5% of its memory.
    touched: PathBuf,
    /// The child's new pages alone (for zstd's reference size).
    new_pages: PathBuf,
}

/// Writes the parent image, the child image (dense files, as a VM writes
/// its RAM), the child again with its zero pages as holes, and the
/// child's new pages alone.
fn generate(work: &Path, classes: &[Class]) -> Result<Images> {
    let parent = work.join("parent.ram");
    let child = work.join("child.ram");
    let child_sparse = work.join("child-sparse.ram");
    let touched = work.join("touched.ram");
    let new_pages = work.join("child-new-pages");
    let block_pages = 4096; // 16 MiB
    let blocks: Vec<usize> = (0..classes.len().div_ceil(block_pages)).collect();
    // Where each block's new pages start in the new-pages file.
    let mut new_offsets = Vec::with_capacity(blocks.len());
    let mut total_new = 0u64;
    for &b in &blocks {
        new_offsets.push(total_new);
        let end = ((b + 1) * block_pages).min(classes.len());
        total_new += classes[b * block_pages..end]
            .iter()
            .filter(|c| matches!(c, Class::NewText | Class::NewRandom))
            .count() as u64
            * PAGE as u64;
    }
    let files = [
        File::create(&parent)?,
        File::create(&child)?,
        File::create(&new_pages)?,
        File::create(&child_sparse)?,
        File::create(&touched)?,
    ];
    blocks.par_iter().try_for_each(|&b| -> Result<()> {
        let start = b * block_pages;
        let end = ((b + 1) * block_pages).min(classes.len());
        let mut p = vec![0u8; (end - start) * PAGE];
        let mut c = vec![0u8; (end - start) * PAGE];
        let mut n = Vec::new();
        for (page, &class) in classes.iter().enumerate().take(end).skip(start) {
            let at = (page - start) * PAGE..(page - start + 1) * PAGE;
            let text = parent_seed(page) % 2 == 0;
            match class {
                Class::Zero => {}
                Class::Parent => {
                    fill(&mut p[at.clone()], parent_seed(page), text);
                    c[at.clone()].copy_from_slice(&p[at]);
                }
                class => {
                    fill(&mut p[at.clone()], parent_seed(page), text);
                    fill(
                        &mut c[at.clone()],
                        child_seed(page),
                        class == Class::NewText,
                    );
                    n.extend_from_slice(&c[at]);
                }
            }
        }
        let offset = (start * PAGE) as u64;
        files[0].write_all_at(&p, offset)?;
        files[1].write_all_at(&c, offset)?;
        files[2].write_all_at(&n, new_offsets[b])?;
        // The sparse child: each run of non-zero pages written, the rest
        // left as holes.
        let mut page = start;
        while page < end {
            if classes[page] == Class::Zero {
                page += 1;
                continue;
            }
            let run_end = (page..end)
                .find(|&q| classes[q] == Class::Zero)
                .unwrap_or(end);
            files[3].write_all_at(
                &c[(page - start) * PAGE..(run_end - start) * PAGE],
                (page * PAGE) as u64,
            )?;
            page = run_end;
        }
        // The touched file: 1 MiB of the child at every 20 MiB.
        let (from, to) = (start * PAGE, end * PAGE);
        let mut at = from.next_multiple_of(20 << 20);
        while at < to {
            let len = (1 << 20).min(to - at);
            files[4].write_all_at(&c[at - from..at - from + len], at as u64)?;
            at += 20 << 20;
        }
        Ok(())
    })?;
    files[3].set_len((classes.len() * PAGE) as u64)?;
    files[4].set_len((classes.len() * PAGE) as u64)?;
    for f in &files {
        f.sync_all()?;
    }
    Ok(Images {
        parent,
        child,
        child_sparse,
        touched,
        new_pages,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile `p` (0–100) of `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// The guest shape: two regions (3/4 and 1/4 of the image) around a
/// 768 MiB hole, as an x86 VM's RAM sits around the PCI hole.
fn guest_sizes(image: u64) -> Vec<usize> {
    let first = (image * 3 / 4) / PAGE as u64 * PAGE as u64;
    vec![first as usize, (image - first) as usize]
}

const HOLE: usize = 768 << 20;

fn locate(sizes: &[usize], page: usize) -> (usize, usize) {
    let offset = page * PAGE;
    if offset < sizes[0] {
        (0, offset)
    } else {
        (1, offset - sizes[0])
    }
}

/// One fault (or a read of a present page): read one byte of `page`.
fn touch(guest: &GuestMemory, sizes: &[usize], page: usize) -> u8 {
    let (region, offset) = locate(sizes, page);
    let mut byte = [0u8; 1];
    guest.read(region, offset, &mut byte);
    byte[0]
}

/// Total pages the daemon's page servers have prefetched.
fn prefetched(api: &mut ApiConnection) -> Result<(u64, u64)> {
    let servers = api.call("mem.servers", serde_json::Value::Null)?;
    let mut pages = 0;
    let mut working_set = 0;
    for s in servers.as_array().context("mem.servers")? {
        pages += s["stats"]["prefetched_pages"].as_u64().unwrap_or(0);
        working_set = working_set.max(s["stats"]["working_set_pages"].as_u64().unwrap_or(0));
    }
    Ok((pages, working_set))
}

/// Waits until the servers' prefetched total reaches `target`.
fn wait_prefetched(api: &mut ApiConnection, target: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if prefetched(api)?.0 >= target {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("prefetch did not reach {target} pages in 120 s");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

struct CaptureFigures {
    cell_kib: u64,
    parent_ms: Vec<f64>,
    child_ms: Vec<f64>,
    child_stored: u64,
    child_new_pages: u64,
    restore_ms: Vec<f64>,
    restored_disk: u64,
}

/// A node daemon on an empty store at `home` with `cell_kib` cells.
fn fresh_daemon(args: &Args, home: &Path, cell_kib: u64) -> Result<StrataDaemon> {
    remove(home)?;
    StrataDaemon::start_with(
        &args.snapctl,
        home,
        &["--fixed-chunk", &format!("{cell_kib}KiB")],
    )
}

/// Stores parent and child in a fresh store with `cell_kib` cells (runs
/// times); restores the child eagerly (runs times). Leaves the last
/// daemon running, returned with the child's snapshot id.
fn capture(
    args: &Args,
    cell_kib: u64,
    parent: &Path,
    child: &Path,
) -> Result<(CaptureFigures, StrataDaemon, String)> {
    let mut figures = CaptureFigures {
        cell_kib,
        parent_ms: Vec::new(),
        child_ms: Vec::new(),
        child_stored: 0,
        child_new_pages: 0,
        restore_ms: Vec::new(),
        restored_disk: 0,
    };
    let mut last = None;
    for run in 0..args.runs {
        drop(last.take());
        let mut daemon =
            fresh_daemon(args, &args.work.join(format!("home-{cell_kib}k")), cell_kib)?;
        let started = Instant::now();
        let p = daemon.call("mem.put", json!({ "source": parent }))?;
        figures.parent_ms.push(ms(started.elapsed()));
        let parent_id = p["id"].as_str().context("mem.put id")?.to_string();
        let started = Instant::now();
        let c = daemon.call("mem.put", json!({ "source": child, "parent": parent_id }))?;
        figures.child_ms.push(ms(started.elapsed()));
        figures.child_stored = c["memory"]["stored_bytes"].as_u64().unwrap_or(0);
        figures.child_new_pages = c["memory"]["pages"]["new"].as_u64().unwrap_or(0);
        let child_id = c["id"].as_str().context("mem.put id")?.to_string();
        eprintln!(
            "memory: {cell_kib} KiB cells, run {}: parent {:.0} ms, child {:.0} ms, child stored {} MB",
            run + 1,
            figures.parent_ms[run],
            figures.child_ms[run],
            figures.child_stored / 1_000_000
        );
        last = Some((daemon, child_id));
    }
    let (mut daemon, child_id) = last.context("no runs")?;
    let target = args.work.join("restored.ram");
    for _ in 0..args.runs {
        let _ = fs::remove_file(&target);
        let _ = Command::new("sync").status();
        let started = Instant::now();
        daemon.call("mem.get", json!({ "id": child_id, "target": target }))?;
        figures.restore_ms.push(ms(started.elapsed()));
    }
    figures.restored_disk = disk_usage(&target)?;
    let same = timed(&format!(
        "cmp -s {} {}",
        shell_quote(&target),
        shell_quote(child)
    ));
    if same.is_err() {
        bail!("the restored image differs from the child image");
    }
    fs::remove_file(&target)?;
    Ok((figures, daemon, child_id))
}

/// The sparse files' figures.
struct SparseFigures {
    /// The child stored from its sparse copy, with the parent.
    child_ms: Vec<f64>,
    /// The touched file stored alone, and copied by `cp --sparse=always`.
    touched_ms: Vec<f64>,
    touched_cp_ms: Vec<f64>,
    touched_stored: u64,
}

/// In a fresh store with `cell_kib` cells (runs times): stores the
/// touched file alone, then the parent, then the child from its sparse
/// copy (which must find the new pages the dense one did); and copies
/// the touched file with `cp --sparse=always`.
fn capture_sparse(
    args: &Args,
    cell_kib: u64,
    images: &Images,
    dense: &CaptureFigures,
) -> Result<SparseFigures> {
    let mut f = SparseFigures {
        child_ms: Vec::new(),
        touched_ms: Vec::new(),
        touched_cp_ms: Vec::new(),
        touched_stored: 0,
    };
    let home = args.work.join("home-sparse");
    // In the page cache, as the dense child is when it is stored.
    let cache = |path: &Path| -> Result<()> {
        std::io::copy(&mut File::open(path)?, &mut std::io::sink())?;
        Ok(())
    };
    for run in 0..args.runs {
        let mut daemon = fresh_daemon(args, &home, cell_kib)?;
        // The touched file first, into the empty store: nothing of it is
        // stored already.
        cache(&images.touched)?;
        let started = Instant::now();
        let t = daemon.call("mem.put", json!({ "source": images.touched }))?;
        f.touched_ms.push(ms(started.elapsed()));
        f.touched_stored = t["memory"]["stored_bytes"].as_u64().unwrap_or(0);
        let p = daemon.call("mem.put", json!({ "source": images.parent }))?;
        let parent_id = p["id"].as_str().context("mem.put id")?.to_string();
        cache(&images.child_sparse)?;
        let started = Instant::now();
        let c = daemon.call(
            "mem.put",
            json!({ "source": images.child_sparse, "parent": parent_id }),
        )?;
        f.child_ms.push(ms(started.elapsed()));
        let new_pages = c["memory"]["pages"]["new"].as_u64().unwrap_or(0);
        if new_pages != dense.child_new_pages {
            bail!(
                "the sparse child has {new_pages} new pages, the dense one {}",
                dense.child_new_pages
            );
        }
        drop(daemon);
        let copy = args.work.join("touched-copy.ram");
        let _ = fs::remove_file(&copy);
        f.touched_cp_ms.push(ms(timed(&format!(
            "cp --sparse=always {} {} && sync {}",
            shell_quote(&images.touched),
            shell_quote(&copy),
            shell_quote(&copy)
        ))?));
        fs::remove_file(&copy)?;
        eprintln!(
            "memory: sparse child, run {}: {:.0} ms; touched file {:.0} ms, cp {:.0} ms",
            run + 1,
            f.child_ms[run],
            f.touched_ms[run],
            f.touched_cp_ms[run]
        );
    }
    remove(&home)?;
    Ok(f)
}

struct ServeFigures {
    resume_ms: Vec<f64>,
    serve_call_ms: Vec<f64>,
    cold_us: Vec<f64>,
    warm_us: Vec<f64>,
    prefetch_gbps: Vec<f64>,
    working_set_pages: u64,
    rss_before: u64,
    rss_after: u64,
    clients: usize,
}

/// The page server: working set, prefetch, fault latency, resume-ready
/// latency and the memory of many clients.
fn serve(
    args: &Args,
    daemon: &mut StrataDaemon,
    id: &str,
    classes: &[Class],
    image: u64,
) -> Result<ServeFigures> {
    let sizes = guest_sizes(image);
    let pages = classes.len();
    let cell_pages = 16;
    let mut rng = Rng(0xfa17);
    // Working set: whole random 64 KiB runs of pages.
    let ws_cells = (args.working_set_mib * MIB) as usize / (cell_pages * PAGE);
    let mut in_ws = vec![false; pages];
    let mut chosen = 0;
    while chosen < ws_cells {
        let cell = (rng.next() % (pages / cell_pages) as u64) as usize;
        if in_ws[cell * cell_pages] {
            continue;
        }
        in_ws[cell * cell_pages..(cell + 1) * cell_pages].fill(true);
        chosen += 1;
    }
    let ws_pages: Vec<usize> = (0..pages).filter(|&p| in_ws[p]).collect();
    // Pages timed for faults: data pages outside the working set.
    let mut sample = Vec::new();
    while sample.len() < args.faults {
        let p = (rng.next() % pages as u64) as usize;
        if !in_ws[p] && classes[p] != Class::Zero {
            sample.push(p);
        }
    }
    let socket = args.work.join("page-server.sock");
    let _ = fs::remove_file(&socket);
    let home = daemon.home.clone();
    let mut api = ApiConnection::open(&home.join("snapd.sock"))?;
    daemon.call("mem.serve", json!({ "id": id, "socket": socket }))?;

    // The first client's faults are the working set.
    {
        let guest = GuestMemory::connect(&socket, &sizes, HOLE, HandshakeVersion::V1_12)?;
        for &p in &ws_pages {
            touch(&guest, &sizes, p);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let working_set_pages = loop {
        let (_, ws) = prefetched(&mut api)?;
        if ws > 0 {
            break ws;
        }
        if Instant::now() > deadline {
            bail!("the page server recorded no working set");
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    // Prefetch: later clients get the working set without faulting.
    let mut prefetch_gbps = Vec::new();
    for _ in 0..args.runs {
        let before = prefetched(&mut api)?.0;
        let started = Instant::now();
        let guest = GuestMemory::connect(&socket, &sizes, HOLE, HandshakeVersion::V1_12)?;
        wait_prefetched(&mut api, before + working_set_pages)?;
        let secs = started.elapsed().as_secs_f64();
        prefetch_gbps.push((working_set_pages * PAGE as u64) as f64 / secs / 1e9);
        drop(guest);
    }

    // Faults: first touches of the sample (cold: chunks read and
    // decompressed), then the same pages from a second client (warm).
    let mut cold_us = Vec::new();
    let mut warm_us = Vec::new();
    for timings in [&mut cold_us, &mut warm_us] {
        let before = prefetched(&mut api)?.0;
        let guest = GuestMemory::connect(&socket, &sizes, HOLE, HandshakeVersion::V1_12)?;
        wait_prefetched(&mut api, before + working_set_pages)?;
        for &p in &sample {
            let started = Instant::now();
            std::hint::black_box(touch(&guest, &sizes, p));
            timings.push(started.elapsed().as_secs_f64() * 1e6);
        }
        // A different order for the second pass.
        sample.reverse();
    }

    // Many clients of one server: the server's extra memory.
    let rss_before = rss(daemon.pid())?;
    let mut guests = Vec::new();
    for _ in 0..args.clients {
        let before = prefetched(&mut api)?.0;
        guests.push(GuestMemory::connect(
            &socket,
            &sizes,
            HOLE,
            HandshakeVersion::V1_12,
        )?);
        wait_prefetched(&mut api, before + working_set_pages)?;
    }
    let rss_after = rss(daemon.pid())?;
    drop(guests);
    daemon.call("mem.unserve", json!({ "socket": socket }))?;

    // Resume-ready: from asking for a page server to the guest's first
    // fault served (a data page outside the working set).
    let mut resume_ms = Vec::new();
    let mut serve_call_ms = Vec::new();
    for run in 0..args.runs {
        let socket = args.work.join(format!("resume-{run}.sock"));
        let _ = fs::remove_file(&socket);
        let probe = sample[run % sample.len()];
        let started = Instant::now();
        daemon.call("mem.serve", json!({ "id": id, "socket": socket }))?;
        serve_call_ms.push(ms(started.elapsed()));
        let guest = GuestMemory::connect(&socket, &sizes, HOLE, HandshakeVersion::V1_12)?;
        std::hint::black_box(touch(&guest, &sizes, probe));
        resume_ms.push(ms(started.elapsed()));
        drop(guest);
        daemon.call("mem.unserve", json!({ "socket": socket }))?;
    }
    Ok(ServeFigures {
        resume_ms,
        serve_call_ms,
        cold_us,
        warm_us,
        prefetch_gbps,
        working_set_pages,
        rss_before,
        rss_after,
        clients: args.clients,
    })
}

struct Baselines {
    zstd_ms: Vec<f64>,
    zstd_bytes: u64,
    unzstd_ms: Vec<f64>,
    cp_ms: Vec<f64>,
    cp_bytes: u64,
    new_pages_zstd: u64,
    new_pages_raw: u64,
}

fn baselines(args: &Args, child: &Path, new_pages: &Path) -> Result<Baselines> {
    let zst = args.work.join("child.ram.zst");
    let copy = args.work.join("child-copy.ram");
    let back = args.work.join("child-unzstd.ram");
    let mut b = Baselines {
        zstd_ms: Vec::new(),
        zstd_bytes: 0,
        unzstd_ms: Vec::new(),
        cp_ms: Vec::new(),
        cp_bytes: 0,
        new_pages_zstd: 0,
        new_pages_raw: file_size(new_pages)?,
    };
    for _ in 0..args.runs {
        let _ = fs::remove_file(&zst);
        b.zstd_ms.push(ms(timed(&format!(
            "zstd -1 -T0 -q -f {} -o {}",
            shell_quote(child),
            shell_quote(&zst)
        ))?));
        let _ = fs::remove_file(&back);
        let _ = Command::new("sync").status();
        b.unzstd_ms.push(ms(timed(&format!(
            "zstd -d -q -f --sparse {} -o {}",
            shell_quote(&zst),
            shell_quote(&back)
        ))?));
        let _ = fs::remove_file(&copy);
        let _ = Command::new("sync").status();
        b.cp_ms.push(ms(timed(&format!(
            "cp --sparse=always {} {}",
            shell_quote(child),
            shell_quote(&copy)
        ))?));
    }
    b.zstd_bytes = file_size(&zst)?;
    b.cp_bytes = disk_usage(&copy)?;
    let new_zst = args.work.join("new-pages.zst");
    timed(&format!(
        "zstd -1 -T0 -q -f {} -o {}",
        shell_quote(new_pages),
        shell_quote(&new_zst)
    ))?;
    b.new_pages_zstd = file_size(&new_zst)?;
    for f in [&zst, &copy, &back, &new_zst] {
        let _ = fs::remove_file(f);
    }
    Ok(b)
}

struct RunscFigures {
    checkpoint_ms: Vec<f64>,
    /// `sync` of the checkpoint's files right after it (what making the
    /// plain checkpoint durable costs).
    sync_ms: Vec<f64>,
    restore_ms: Vec<f64>,
    put_ms: Vec<f64>,
    get_ms: Vec<f64>,
    image_bytes: u64,
    stored_bytes: u64,
}

/// gVisor's checkpoint and restore of a sandbox holding `runsc_mb` of
/// random data (as base64 in a shell variable), with the checkpoint on
/// plain disk, and the same with the checkpoint stored in Strata
/// (`mem put --dir`, the directory deleted, `mem get --dir`).
fn runsc(args: &Args, daemon: &mut StrataDaemon) -> Result<RunscFigures> {
    require("runsc")?;
    let bundle = args.work.join("runsc-bundle");
    remove(&bundle)?;
    fs::create_dir_all(&bundle)?;
    let program = format!(
        "x=$(head -c {} /dev/urandom | base64 -w0); echo ready; while true; do sleep 0.2; done",
        args.runsc_mb * 1_000_000
    );
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/bin/bash", "-c", program],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
        },
        "root": { "path": args.rootfs, "readonly": true },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs" },
        ],
        "linux": { "namespaces": [
            { "type": "pid" }, { "type": "ipc" }, { "type": "uts" },
            { "type": "mount" }, { "type": "network" },
        ] },
    });
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    let state = args.work.join("runsc-state");
    let runsc = |a: &[&str]| -> Command {
        let mut c = Command::new("runsc");
        c.arg("--root")
            .arg(&state)
            .args(["--platform=ptrace", "--network=none"])
            .args(a);
        c
    };
    let run_ok = |a: &[&str], log: Option<&Path>| -> Result<Duration> {
        let mut c = runsc(a);
        if let Some(log) = log {
            let f = File::create(log)?;
            c.stdout(Stdio::from(f.try_clone()?)).stderr(Stdio::from(f));
        } else {
            c.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        let started = Instant::now();
        let out = c.output()?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!(
                "runsc {a:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(took)
    };
    let wait_ready = |log: &Path| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !fs::read_to_string(log)
            .unwrap_or_default()
            .contains("ready")
        {
            if Instant::now() > deadline {
                bail!("the gVisor sandbox did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    let bundle_s = bundle.to_string_lossy().to_string();
    // Restores sandbox `id` from `image`, then ends it; the restore's time.
    let restore_and_end = |id: &str, image: &str, log: &Path| -> Result<Duration> {
        let took = run_ok(
            &[
                "restore",
                "--detach",
                "--bundle",
                &bundle_s,
                "--image-path",
                image,
                id,
            ],
            Some(log),
        )?;
        let _ = run_ok(&["kill", id, "KILL"], None);
        run_ok(&["delete", "--force", id], None)?;
        Ok(took)
    };
    let mut f = RunscFigures {
        checkpoint_ms: Vec::new(),
        sync_ms: Vec::new(),
        restore_ms: Vec::new(),
        put_ms: Vec::new(),
        get_ms: Vec::new(),
        image_bytes: 0,
        stored_bytes: 0,
    };
    for run in 0..args.runs {
        let id = format!("strata-bench-mem-{}-{run}", std::process::id());
        let log = args.work.join("runsc.log");
        run_ok(&["run", "--detach", "--bundle", &bundle_s, &id], Some(&log))?;
        wait_ready(&log)?;
        let image = args.work.join("checkpoint");
        remove(&image)?;
        fs::create_dir_all(&image)?;
        let image_s = image.to_string_lossy().to_string();
        f.checkpoint_ms.push(ms(run_ok(
            &["checkpoint", "--image-path", &image_s, &id],
            None,
        )?));
        f.image_bytes = disk_usage(&image)?;
        f.sync_ms.push(ms(timed(&format!(
            "sync {}/* {}",
            shell_quote(&image),
            shell_quote(&image)
        ))?));
        let started = Instant::now();
        let put = daemon.call("mem.put", json!({ "source": image, "dir": true }))?;
        f.put_ms.push(ms(started.elapsed()));
        f.stored_bytes = put["memory"]["stored_bytes"].as_u64().unwrap_or(0);
        let snapshot = put["id"].as_str().context("mem.put id")?.to_string();
        run_ok(&["delete", "--force", &id], None)?;
        // Plain: restore from the directory on disk.
        f.restore_ms.push(ms(restore_and_end(&id, &image_s, &log)?));
        // Strata: the directory is gone; written back, then restored.
        remove(&image)?;
        let started = Instant::now();
        daemon.call(
            "mem.get",
            json!({ "id": snapshot, "target": image, "dir": true }),
        )?;
        f.get_ms.push(ms(started.elapsed()));
        restore_and_end(&id, &image_s, &log)?;
        remove(&image)?;
        eprintln!(
            "memory: runsc run {}: checkpoint {:.0} ms + put {:.0} ms, get {:.0} ms + restore {:.0} ms",
            run + 1,
            f.checkpoint_ms[run],
            f.put_ms[run],
            f.get_ms[run],
            f.restore_ms[run]
        );
    }
    Ok(f)
}

pub fn run(args: Args) -> Result<()> {
    require("zstd")?;
    fs::create_dir_all(&args.work)?;
    let image = args.image_mib * MIB;
    let pages = (image / PAGE as u64) as usize;
    let classes = classes(pages);
    let count = |c: Class| classes.iter().filter(|&&x| x == c).count() as f64 / pages as f64;
    eprintln!(
        "memory: generating a {} MiB parent and child image ({:.0}% zero, {:.0}% parent, {:.0}% new)",
        args.image_mib,
        count(Class::Zero) * 100.0,
        count(Class::Parent) * 100.0,
        (count(Class::NewText) + count(Class::NewRandom)) * 100.0
    );
    let images = generate(&args.work, &classes)?;
    let (parent, child, new_pages) = (&images.parent, &images.child, &images.new_pages);
    if args.images_only {
        eprintln!(
            "memory: images written: {}, {} and {}",
            parent.display(),
            child.display(),
            images.child_sparse.display()
        );
        return Ok(());
    }
    eprintln!("memory: zstd -1 and cp --sparse=always");
    let base = baselines(&args, child, new_pages)?;
    let mut captures = Vec::new();
    let mut kept = None;
    for &cell in &args.cells_kib {
        let (figures, daemon, id) = capture(&args, cell, parent, child)?;
        captures.push(figures);
        if kept.is_none() {
            kept = Some((daemon, id));
        }
    }
    let first_cell = *args.cells_kib.first().context("no cell sizes given")?;
    eprintln!("memory: the child from a sparse file");
    let sparse = capture_sparse(&args, first_cell, &images, &captures[0])?;
    let (mut daemon, id) = kept.context("no cell sizes given")?;
    eprintln!("memory: page server");
    let served = serve(&args, &mut daemon, &id, &classes, image)?;
    let gvisor = if args.runsc_mb > 0 {
        eprintln!("memory: gVisor checkpoint and restore");
        Some(runsc(&args, &mut daemon)?)
    } else {
        None
    };
    drop(daemon);
    let report = report(
        &args,
        &captures,
        &sparse,
        &base,
        &served,
        gvisor.as_ref(),
        &classes,
    )?;
    println!("{report}");
    write_section(&args.results, "memory", &report)?;
    for f in [
        parent,
        child,
        new_pages,
        &images.child_sparse,
        &images.touched,
    ] {
        let _ = fs::remove_file(f);
    }
    for c in &args.cells_kib {
        remove(&args.work.join(format!("home-{c}k")))?;
    }
    Ok(())
}

fn report(
    args: &Args,
    captures: &[CaptureFigures],
    sparse: &SparseFigures,
    base: &Baselines,
    s: &ServeFigures,
    gvisor: Option<&RunscFigures>,
    classes: &[Class],
) -> Result<String> {
    let image = args.image_mib * MIB;
    let gb = image as f64 / 1e9;
    let main = &captures[0];
    let mut r = String::new();
    writeln!(r, "## Memory snapshots (`benches/run.sh memory`)\n")?;
    writeln!(r, "{}\n", machine::describe(&args.work))?;
    let share = |c: Class| {
        classes.iter().filter(|&&x| x == c).count() as f64 * 100.0 / classes.len() as f64
    };
    writeln!(
        r,
        "A synthetic {} MiB guest image in runs of 1–64 pages: {:.1}% zero, {:.1}% identical \
         to its parent at the same offset, {:.1}% new ({:.1}% text, {:.1}% random); stored \
         with the parent as `--parent`. Through the release node daemon's API, as a platform \
         calls it; images in the page cache (just written), {} runs, medians. Lazy restore: \
         `memsnap::client::GuestMemory` plays Firecracker (two regions around a 768 MiB hole, \
         the 1.12 handshake). Cells of {} KiB unless stated.\n",
        args.image_mib,
        share(Class::Zero),
        share(Class::Parent),
        share(Class::NewText) + share(Class::NewRandom),
        share(Class::NewText),
        share(Class::NewRandom),
        args.runs,
        main.cell_kib,
    )?;
    let stored_ratio = main.child_stored as f64 / base.new_pages_zstd as f64;
    let capture_s = median(&main.child_ms) / 1e3;
    let restore_gbps = gb / (median(&main.restore_ms) / 1e3);
    writeln!(r, "| | Strata | without Strata | target | met |")?;
    writeln!(r, "|---|---|---|---|---|")?;
    writeln!(
        r,
        "| capture (child, with parent) | {:.2} s ({:.2} GB/s) | `zstd -1 -T0` {:.2} s; `cp --sparse=always` {:.2} s | ≤ 1 s | {} |",
        capture_s,
        gb / capture_s,
        median(&base.zstd_ms) / 1e3,
        median(&base.cp_ms) / 1e3,
        yes(capture_s <= 1.0)
    )?;
    let sparse_s = median(&sparse.child_ms) / 1e3;
    writeln!(
        r,
        "| capture of the same child from a sparse copy (its zero pages as holes) | {:.2} s ({:.2} GB/s of image) | — | — | |",
        sparse_s,
        gb / sparse_s
    )?;
    writeln!(
        r,
        "| capture of a RAM file of the same size of which 5% was written (holes elsewhere; no parent) | {:.3} s, {:.1} MB stored | `cp --sparse=always` + `sync` {:.3} s | — | |",
        median(&sparse.touched_ms) / 1e3,
        sparse.touched_stored as f64 / 1e6,
        median(&sparse.touched_cp_ms) / 1e3
    )?;
    writeln!(
        r,
        "| stored bytes | {:.1} MB | `zstd -1` of the image {:.1} MB; sparse copy {:.1} MB | ≤ 1.1 × zstd of the new pages alone ({:.1} MB from {:.1} MB): {:.2}× | {} |",
        main.child_stored as f64 / 1e6,
        base.zstd_bytes as f64 / 1e6,
        base.cp_bytes as f64 / 1e6,
        base.new_pages_zstd as f64 / 1e6,
        base.new_pages_raw as f64 / 1e6,
        stored_ratio,
        yes(stored_ratio <= 1.1)
    )?;
    writeln!(
        r,
        "| eager restore (`mem get`, sparse) | {:.2} s = {:.2} GB/s of image ({:.0} MB on disk) | `zstd -d --sparse` {:.2} s; `cp --sparse=always` {:.2} s | ≥ 2 GB/s | {} |",
        median(&main.restore_ms) / 1e3,
        restore_gbps,
        main.restored_disk as f64 / 1e6,
        median(&base.unzstd_ms) / 1e3,
        median(&base.cp_ms) / 1e3,
        yes(restore_gbps >= 2.0)
    )?;
    let resume = median(&s.resume_ms);
    writeln!(
        r,
        "| resume-ready (`mem.serve` call + handshake + first fault) | {:.2} ms (serve call {:.2} ms) | — | ≤ 5 ms | {} |",
        resume,
        median(&s.serve_call_ms),
        yes(resume <= 5.0)
    )?;
    let warm99 = percentile(&s.warm_us, 99.0);
    writeln!(
        r,
        "| warm fault (data page, chunk cached) p50 / p99 | {:.1} / {:.1} µs | — | p99 ≤ 30 µs | {} |",
        percentile(&s.warm_us, 50.0),
        warm99,
        yes(warm99 <= 30.0)
    )?;
    writeln!(
        r,
        "| cold fault (chunk read and decompressed) p50 / p99 | {:.1} / {:.1} µs | — | — | |",
        percentile(&s.cold_us, 50.0),
        percentile(&s.cold_us, 99.0),
    )?;
    let pf = median(&s.prefetch_gbps);
    writeln!(
        r,
        "| prefetch of the recorded working set ({} MiB) | {:.2} GB/s | — | ≥ 1.5 GB/s | {} |",
        s.working_set_pages * PAGE as u64 / MIB,
        pf,
        yes(pf >= 1.5)
    )?;
    let extra = s.rss_after.saturating_sub(s.rss_before) as f64;
    writeln!(
        r,
        "| server memory with {} clients | +{:.1} MiB ({:.2} MiB per client) | — | — | |",
        s.clients,
        extra / MIB as f64,
        extra / MIB as f64 / s.clients as f64
    )?;
    if let Some(g) = gvisor {
        let plain = median(&g.checkpoint_ms) + median(&g.restore_ms);
        let strata = plain + median(&g.put_ms) + median(&g.get_ms);
        let added = (strata - plain) / plain * 100.0;
        let durable = plain + median(&g.sync_ms);
        let added_durable = (strata - durable) / durable * 100.0;
        writeln!(
            r,
            "| gVisor checkpoint + restore ({} MB in memory; image {:.0} MB, stored {:.0} MB) | checkpoint {:.0} + `mem put --dir` {:.0} ms; `mem get --dir` {:.0} + restore {:.0} ms | checkpoint {:.0} ms, restore {:.0} ms | ≤ 10% added | +{:.1}% {} |",
            args.runsc_mb,
            g.image_bytes as f64 / 1e6,
            g.stored_bytes as f64 / 1e6,
            median(&g.checkpoint_ms),
            median(&g.put_ms),
            median(&g.get_ms),
            median(&g.restore_ms),
            median(&g.checkpoint_ms),
            median(&g.restore_ms),
            added,
            yes(added <= 10.0)
        )?;
        writeln!(
            r,
            "| the same, against a durable plain checkpoint (checkpoint + `sync` of its files, {:.0} ms) | — | {:.0} ms in all | — | +{:.1}% |",
            median(&g.sync_ms),
            durable,
            added_durable
        )?;
    }
    writeln!(r, "\n### Cell (fixed chunk) size\n")?;
    writeln!(
        r,
        "| cell | capture child | capture parent (no parent) | child stored | ÷ zstd of new pages | eager restore |"
    )?;
    writeln!(r, "|---|---|---|---|---|---|")?;
    for c in captures {
        writeln!(
            r,
            "| {} KiB | {:.2} s | {:.2} s | {:.1} MB | {:.2}× | {:.2} GB/s |",
            c.cell_kib,
            median(&c.child_ms) / 1e3,
            median(&c.parent_ms) / 1e3,
            c.child_stored as f64 / 1e6,
            c.child_stored as f64 / base.new_pages_zstd as f64,
            gb / (median(&c.restore_ms) / 1e3)
        )?;
    }
    Ok(r)
}

fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}
