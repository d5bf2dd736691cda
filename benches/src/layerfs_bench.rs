//! The mount benchmark: one Debian image served as a sandbox root by
//! Strata (FUSE), kernel overlayfs and fuse-overlayfs over the same
//! unpacked tree, and bare ext4 as the machine's physical limit, measured
//! on the same workloads in one run.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cas::Store;
use layerfs::cowfs::{CowFs, MountConfig};
use layerfs::fuse::{mount, FuseOptions};
use layerfs::{import_image, ImportOptions, SourceKind};

use crate::machine;
use crate::report::{median, write_section};
use crate::tools::{drop_caches, new_daemon_store, require, shell_quote, timed};

#[derive(clap::Args)]
pub struct Args {
    /// Measured runs per system (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The Debian tree the image is made from.
    #[arg(long, default_value = "/var/cache/strata-fixtures/bookworm-buildd")]
    image: PathBuf,
    /// Scratch directory (on the disk under test).
    #[arg(long, default_value = "/var/tmp/strata-bench/layerfs")]
    work: PathBuf,
    /// Seconds each fio job runs.
    #[arg(long, default_value_t = 10)]
    fio_seconds: u64,
    /// Results file to update.
    #[arg(long, default_value = "benches/RESULTS.md")]
    results: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    /// Requests over io_uring (when the kernel has it; see `run`).
    Strata,
    /// The same mount with requests through `/dev/fuse`.
    StrataDevFuse,
    Overlay,
    FuseOverlay,
    Ext4,
}

impl System {
    const ALL: [System; 5] = [
        System::Strata,
        System::StrataDevFuse,
        System::Overlay,
        System::FuseOverlay,
        System::Ext4,
    ];

    fn name(self) -> &'static str {
        match self {
            System::Strata => "Strata (FUSE)",
            System::StrataDevFuse => "Strata (/dev/fuse)",
            System::Overlay => "kernel overlayfs",
            System::FuseOverlay => "fuse-overlayfs",
            System::Ext4 => "ext4 (no overlay)",
        }
    }
}

/// One measured figure per workload.
#[derive(Default, Clone)]
struct Figures {
    mount_ms: Vec<f64>,
    cold_tar_mbs: Vec<f64>,
    warm_tar_mbs: Vec<f64>,
    find_ms: Vec<f64>,
    ls_lr_ms: Vec<f64>,
    ls_lr_cold_ms: Vec<f64>,
    small_open_us: Vec<f64>,
    seq_read_mbs: Vec<f64>,
    seq_write_mbs: Vec<f64>,
    rand_read_iops: Vec<f64>,
    fsync_write_iops: Vec<f64>,
}

/// A mounted system under test; unmounts on drop.
struct Mounted {
    root: PathBuf,
    /// Where the write workloads write: under the mount, or for ext4 a
    /// directory beside the tree on the same disk.
    scratch: PathBuf,
    session: Option<layerfs::fuse::FuseSession>,
    cleanup: Vec<String>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
        for cmd in &self.cleanup {
            let _ = timed(cmd);
        }
    }
}

fn tree_bytes(root: &Path) -> Result<u64> {
    let out = std::process::Command::new("du")
        .args(["-sb", "--apparent-size"])
        .arg(root)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du output")
}

/// The benchmark image: the Debian tree plus a 1 GiB file of random bytes
/// for the sequential and random read workloads. Built once.
fn prepare_source(args: &Args) -> Result<PathBuf> {
    let source = args.work.join("image");
    let done = args.work.join("image.complete");
    if done.exists() {
        return Ok(source);
    }
    if !args.image.is_dir() {
        bail!(
            "{} is missing; run `fixtures/debian-rootfs.sh bookworm-buildd`",
            args.image.display()
        );
    }
    let _ = fs::remove_dir_all(&source);
    fs::create_dir_all(&source)?;
    timed(&format!(
        "cp -a {}/. {}",
        shell_quote(&args.image),
        shell_quote(&source)
    ))?;
    timed(&format!(
        "head -c 1073741824 /dev/urandom > {}/big.bin",
        shell_quote(&source)
    ))?;
    fs::write(&done, b"")?;
    Ok(source)
}

fn mount_system(
    system: System,
    args: &Args,
    source: &Path,
    store: &Store,
    tree: cas::ChunkId,
    run: usize,
) -> Result<(Mounted, Duration)> {
    let base = args.work.join(format!("run-{run}-{system:?}"));
    let _ = timed(&format!(
        "umount -l {0}/mnt 2>/dev/null; rm -rf {0}",
        shell_quote(&base)
    ));
    fs::create_dir_all(base.join("mnt"))?;
    fs::create_dir_all(base.join("upper"))?;
    fs::create_dir_all(base.join("work"))?;
    let mnt = base.join("mnt");
    let q = |p: &Path| shell_quote(p);
    let started = Instant::now();
    let mounted = match system {
        System::Strata | System::StrataDevFuse => {
            let fs_ = Arc::new(CowFs::new(
                store.clone(),
                tree,
                MountConfig {
                    upper_dir: base.join("strata-upper"),
                    quota_bytes: 64 << 30,
                    inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
                },
            )?);
            let options = FuseOptions {
                io_uring: system == System::Strata,
                ..FuseOptions::default()
            };
            let session = mount(fs_, &mnt, &options)?;
            if system == System::Strata && !session.uses_io_uring() {
                println!(
                    "   (Strata: FUSE over io_uring is unavailable; requests go through /dev/fuse)"
                );
            }
            // Mounted once the root answers.
            fs::metadata(mnt.join("etc"))?;
            Mounted {
                root: mnt.clone(),
                scratch: mnt.join("scratch"),
                session: Some(session),
                cleanup: vec![],
            }
        }
        System::Overlay => {
            timed(&format!(
                "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
                q(source),
                q(&base.join("upper")),
                q(&base.join("work")),
                q(&mnt)
            ))?;
            Mounted {
                root: mnt.clone(),
                scratch: mnt.join("scratch"),
                session: None,
                cleanup: vec![format!("umount {}", q(&mnt))],
            }
        }
        System::FuseOverlay => {
            timed(&format!(
                "fuse-overlayfs -o lowerdir={},upperdir={},workdir={} {}",
                q(source),
                q(&base.join("upper")),
                q(&base.join("work")),
                q(&mnt)
            ))?;
            Mounted {
                root: mnt.clone(),
                scratch: mnt.join("scratch"),
                session: None,
                cleanup: vec![format!("umount {}", q(&mnt))],
            }
        }
        System::Ext4 => {
            // The tree itself for reads; writes go to a directory beside
            // it on the same disk (not into the tree, which the overlays
            // mounted at the same time have as their lower layer).
            Mounted {
                root: source.to_path_buf(),
                scratch: base.join("scratch"),
                session: None,
                cleanup: vec![],
            }
        }
    };
    Ok((mounted, started.elapsed()))
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Small files of the tree (≤ 4 KiB), up to `limit`, as paths relative to it.
fn small_files(source: &Path, limit: usize) -> Result<Vec<PathBuf>> {
    let out = std::process::Command::new("find")
        .arg(".")
        .args(["-type", "f", "-size", "-4k"])
        .current_dir(source)
        .output()?;
    let mut files: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    files.sort();
    files.truncate(limit);
    Ok(files)
}

fn fio(cmd_args: &str, dir: &Path, seconds: u64) -> Result<f64> {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "fio --name=job --directory={} {cmd_args} --runtime={seconds} --time_based --group_reporting --output-format=json"
            , shell_quote(dir)
        ))
        .output()?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("fio JSON")?;
    let job = &json["jobs"][0];
    let read = job["read"]["iops"].as_f64().unwrap_or(0.0);
    let write = job["write"]["iops"].as_f64().unwrap_or(0.0);
    Ok(read + write)
}

/// Passes of each warm walk (`tar`, `find`, `ls -lR`) in every run.
const WARM_PASSES: usize = 3;

/// The workloads, each measured on every system back to back (see `run`).
#[derive(Clone, Copy, Debug)]
enum Workload {
    /// Cold `tar` of the tree, then its warm passes.
    Tar,
    /// Warm `find` and `ls -lR`, then `ls -lR` with the dentries dropped.
    Walks,
    /// Open + read of the small files, cold.
    SmallFiles,
    /// Sequential, then random reads of the 1 GiB file, cold.
    BigFile,
    /// Sequential write of 1 GiB + fsync, then fsync'd 4 KiB writes.
    Writes,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::Tar,
        Workload::Walks,
        Workload::SmallFiles,
        Workload::BigFile,
        Workload::Writes,
    ];
}

/// Page cache dropped and Strata's chunk cache cleared.
fn cold(store: &Store) {
    store.clear_cache();
    drop_caches();
}

fn measure(
    workload: Workload,
    m: &Mounted,
    store: &Store,
    bench: &Bench,
    figures: &mut Figures,
) -> Result<()> {
    let root = &m.root;
    let q = shell_quote(root);
    let tar = format!("cd {q} && tar cf - --exclude=./scratch . | cat > /dev/null");
    match workload {
        Workload::Tar => {
            cold(store);
            let d = timed(&tar)?;
            figures.cold_tar_mbs.push(mb_per_s(bench.source_bytes, d));
            // The warm walks last 0.02-1.5 s, within reach of the host's
            // swings: each is timed WARM_PASSES times per run.
            for _ in 0..WARM_PASSES {
                let d = timed(&tar)?;
                figures.warm_tar_mbs.push(mb_per_s(bench.source_bytes, d));
            }
        }
        Workload::Walks => {
            // Warm: one untimed pass first (the tar before this workload
            // may have been another system's).
            timed(&format!("cd {q} && ls -lR > /dev/null"))?;
            for _ in 0..WARM_PASSES {
                let d = timed(&format!("cd {q} && find . | wc -l > /dev/null"))?;
                figures.find_ms.push(d.as_secs_f64() * 1e3);
            }
            for _ in 0..WARM_PASSES {
                let d = timed(&format!("cd {q} && ls -lR > /dev/null"))?;
                figures.ls_lr_ms.push(d.as_secs_f64() * 1e3);
            }
            // The same walk with the kernel's dentries and inodes dropped:
            // every entry is looked up (or listed with its attributes) again.
            cold(store);
            let d = timed(&format!("cd {q} && ls -lR > /dev/null"))?;
            figures.ls_lr_cold_ms.push(d.as_secs_f64() * 1e3);
        }
        Workload::SmallFiles => {
            // Mean latency per file.
            cold(store);
            let started = Instant::now();
            let mut buf = Vec::with_capacity(4096);
            for file in &bench.small {
                buf.clear();
                fs::File::open(root.join(file))?.read_to_end(&mut buf)?;
            }
            figures
                .small_open_us
                .push(started.elapsed().as_secs_f64() * 1e6 / bench.small.len().max(1) as f64);
        }
        Workload::BigFile => {
            cold(store);
            let d = timed(&format!("cat {q}/big.bin > /dev/null"))?;
            figures.seq_read_mbs.push(mb_per_s(1 << 30, d));
            cold(store);
            figures.rand_read_iops.push(fio(
                "--filename=big.bin --rw=randread --bs=4k --ioengine=psync --size=1g --readonly",
                root,
                bench.fio_seconds,
            )?);
        }
        Workload::Writes => {
            let scratch = &m.scratch;
            fs::create_dir_all(scratch)?;
            // Every system starts from the same state: nothing dirty, the
            // page cache dropped.
            cold(store);
            let d = timed(&format!(
                "dd if=/dev/zero of={}/seq.bin bs=1M count=1024 conv=fsync status=none",
                shell_quote(scratch)
            ))?;
            figures.seq_write_mbs.push(mb_per_s(1 << 30, d));
            let _ = fs::remove_file(scratch.join("seq.bin"));
            figures.fsync_write_iops.push(fio(
                "--rw=randwrite --bs=4k --ioengine=psync --size=64m --fsync=1",
                scratch,
                bench.fio_seconds,
            )?);
            let _ = fs::remove_dir_all(scratch);
        }
    }
    Ok(())
}

/// What every measurement of a run shares.
struct Bench {
    source_bytes: u64,
    small: Vec<PathBuf>,
    fio_seconds: u64,
}

pub fn run(args: Args) -> Result<()> {
    for tool in ["fio", "fuse-overlayfs", "tar"] {
        require(tool)?;
    }
    fs::create_dir_all(&args.work)?;
    // The "Strata" column takes requests over io_uring: the fuse module's
    // enable_uring is turned on (off by default) where the kernel has it.
    let io_uring = fixtures::require::fuse_io_uring();
    let source = prepare_source(&args)?;
    let bench = Bench {
        source_bytes: tree_bytes(&source)?,
        small: small_files(&source, 2000)?,
        fio_seconds: args.fio_seconds,
    };
    println!(
        "== image: {} ({:.2} GB, {} small files sampled)",
        source.display(),
        bench.source_bytes as f64 / 1e9,
        bench.small.len()
    );

    let store_dir = args.work.join("store");
    let _ = fs::remove_dir_all(&store_dir);
    // Opened as the node daemon opens its store for `snapctl mount` (its
    // chunk cache also serves a random reader's re-reads of a chunk).
    let store = new_daemon_store(&store_dir)?;
    let options = ImportOptions {
        kind: Some(SourceKind::Directory),
        ..ImportOptions::default()
    };
    let started = Instant::now();
    let report = import_image(&store, "bench", &source, &options)?;
    let import_s = started.elapsed().as_secs_f64();
    let tree = report.image.tree.parse()?;
    println!("   imported in {import_s:.1}s");

    // This host is shared: its disk and CPUs drift over minutes. So every
    // workload is measured on all systems back to back (seconds apart, the
    // order rotated each run), and the ratios are paired: one per run,
    // from that run's figures, and the table gives their median.
    let mut results: Vec<(System, Vec<Figures>)> =
        System::ALL.iter().map(|s| (*s, Vec::new())).collect();
    for run in 0..args.runs {
        println!("-- run {}/{}", run + 1, args.runs);
        let order: Vec<usize> = (0..results.len())
            .map(|i| (i + run) % results.len())
            .collect();
        let mut mounted: Vec<Option<Mounted>> = (0..results.len()).map(|_| None).collect();
        for &i in &order {
            let system = results[i].0;
            let (m, mount_time) = mount_system(system, &args, &source, &store, tree, run)?;
            let mut figures = Figures::default();
            if system != System::Ext4 {
                figures.mount_ms.push(mount_time.as_secs_f64() * 1e3);
            }
            results[i].1.push(figures);
            mounted[i] = Some(m);
        }
        for workload in Workload::ALL {
            for &i in &order {
                let (system, runs) = &mut results[i];
                let m = mounted[i].as_ref().context("mounted system")?;
                let figures = runs.last_mut().context("this run's figures")?;
                measure(workload, m, &store, &bench, figures)
                    .with_context(|| format!("measuring {:?} on {}", workload, system.name()))?;
            }
            println!("   {workload:?} measured");
        }
        for (i, (system, runs)) in results.iter().enumerate() {
            let f = runs.last().context("this run's figures")?;
            println!(
                "   {:18} cold tar {:6.0} MB/s  warm tar {:6.0} MB/s  ls -lR {:5.0} ms  small {:6.0} µs  seq r {:5.0} MB/s  seq w {:5.0} MB/s  fsync 4k {:5.0}/s",
                system.name(),
                median(&f.cold_tar_mbs),
                median(&f.warm_tar_mbs),
                median(&f.ls_lr_ms),
                median(&f.small_open_us),
                median(&f.seq_read_mbs),
                median(&f.seq_write_mbs),
                median(&f.fsync_write_iops),
            );
            drop(mounted[i].take());
        }
    }
    let body = render(
        io_uring,
        &args,
        &source,
        bench.source_bytes,
        bench.small.len(),
        import_s,
        &results,
    );
    write_section(&args.results, "layerfs", &body)?;
    println!("wrote {}", args.results.display());
    Ok(())
}

fn render(
    io_uring: bool,
    args: &Args,
    source: &Path,
    bytes: u64,
    small: usize,
    import_s: f64,
    results: &[(System, Vec<Figures>)],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## layerfs: an image as a sandbox root\n");
    s.push_str(&machine::describe(&args.work));
    let _ = writeln!(
        s,
        "\n- Command: `benches/run.sh layerfs` (runs: {}; fio jobs {} s each)\n",
        args.runs, args.fio_seconds
    );
    let _ = writeln!(
        s,
        "Image: `{}` — the Debian `bookworm-buildd` tree plus a 1 GiB random file, {:.2} GB in all; imported into Strata in {:.1} s. \
Kernel overlayfs and fuse-overlayfs serve the same unpacked tree as their lower directory; \"ext4\" reads the tree directly and writes beside it on the same disk. \
Strata's store has the node daemon's default chunk cache ({} MiB here: 1/16 of memory, 128 MiB–2 GiB), as `snapctl mount` does. Cold figures drop the page cache (and Strata's chunk cache) first; warm walks (`tar`, `find`, `ls -lR`) are timed {WARM_PASSES} times in each run. Small-file latency: open + read of {small} files ≤ 4 KiB, cold. Medians. \
\"Strata\" takes requests over io_uring ({}); \"Strata over /dev/fuse\" is the same mount with requests read from `/dev/fuse`, as before (both in the same run).\n",
        source.display(), bytes as f64 / 1e9, import_s,
        snapshotter::daemon::default_chunk_cache() >> 20,
        if io_uring { "the fuse module's `enable_uring` turned on" } else { "unavailable in this run: through /dev/fuse as well" }
    );
    let get = |sys: System| &results.iter().find(|(s, _)| *s == sys).expect("system").1;
    type Pick = fn(&Figures) -> &Vec<f64>;
    let rows: [(&str, Pick, bool); 11] = [
        ("mount (ms)", |f| &f.mount_ms, false),
        (
            "full-tree read, cold (`tar`, MB/s)",
            |f| &f.cold_tar_mbs,
            true,
        ),
        (
            "full-tree read, warm (`tar`, MB/s)",
            |f| &f.warm_tar_mbs,
            true,
        ),
        ("metadata walk `find \\| wc -l` (ms)", |f| &f.find_ms, false),
        ("metadata walk `ls -lR` (ms)", |f| &f.ls_lr_ms, false),
        (
            "metadata walk `ls -lR`, cold (ms)",
            |f| &f.ls_lr_cold_ms,
            false,
        ),
        (
            "small file open+read, cold (µs)",
            |f| &f.small_open_us,
            false,
        ),
        (
            "sequential read 1 GiB, cold (MB/s)",
            |f| &f.seq_read_mbs,
            true,
        ),
        (
            "random 4 KiB reads, cold (IOPS)",
            |f| &f.rand_read_iops,
            true,
        ),
        (
            "sequential write 1 GiB + fsync (MB/s)",
            |f| &f.seq_write_mbs,
            true,
        ),
        (
            "4 KiB writes, fsync each (IOPS)",
            |f| &f.fsync_write_iops,
            true,
        ),
    ];
    let _ = writeln!(s, "| workload | Strata | Strata over /dev/fuse | kernel overlayfs | fuse-overlayfs | ext4 | Strata ÷ fuse-overlayfs | Strata ÷ overlayfs | Strata ÷ ext4 |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, pick, higher_better) in rows {
        // A system's figure: the median of all its passes in all runs.
        let value = |sys: System| {
            let all: Vec<f64> = get(sys).iter().flat_map(|f| pick(f).clone()).collect();
            median(&all)
        };
        let fmt = |v: f64| {
            if v.is_nan() {
                "—".to_string()
            } else if v < 10.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        };
        // Paired ratios, one per run (> 1 always means Strata is better):
        // their median, and their range when there are several.
        let ratio = |other: System| {
            let per_run: Vec<f64> = get(System::Strata)
                .iter()
                .zip(get(other))
                .filter_map(|(ours, theirs)| {
                    let (ours, theirs) = (median(pick(ours)), median(pick(theirs)));
                    if !(ours > 0.0 && theirs > 0.0) {
                        return None;
                    }
                    Some(if higher_better {
                        ours / theirs
                    } else {
                        theirs / ours
                    })
                })
                .collect();
            if per_run.is_empty() {
                return "—".to_string();
            }
            let low = per_run.iter().copied().fold(f64::INFINITY, f64::min);
            let high = per_run.iter().copied().fold(0.0, f64::max);
            if per_run.len() > 1 {
                format!("{:.2}× ({low:.2}–{high:.2})", median(&per_run))
            } else {
                format!("{:.2}×", median(&per_run))
            }
        };
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(value(System::Strata)),
            fmt(value(System::StrataDevFuse)),
            fmt(value(System::Overlay)),
            fmt(value(System::FuseOverlay)),
            fmt(value(System::Ext4)),
            ratio(System::FuseOverlay),
            ratio(System::Overlay),
            ratio(System::Ext4),
        );
    }
    let _ = writeln!(
        s,
        "\nRatios are \"how many times better Strata is\" (> 1 is better for Strata, whether the figure is a time or a rate), paired: each workload is measured on all five systems back to back (seconds apart, all mounted at once, the order rotated each run), one ratio is taken per run from that run's figures, and the table gives their median and, in brackets, their range. \
Targets (issue 19): ≥ 1.5× fuse-overlayfs on every workload; ≥ 0.8× overlayfs on warm `tar`, `find`, `ls -lR` and small-file open+read; ≥ 0.9× ext4 on sequential writes and fsync'd 4 KiB writes; cold sequential read ≥ 1 GB/s; mount ≤ 10 ms. \
The seeds publish 1.1 GB/s sequential writes and 34K IOPS of fsync'd 4 KiB writes for Modal's gVisor root on bigger hardware."
    );
    s
}
