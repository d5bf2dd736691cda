//! The snapshot benchmark: a sandbox root (the Debian image) changed by
//! 0 MiB, 100 MiB and 1 GiB — spread over 10,000 files or in one file — is
//! snapshotted, restored, forked and directory-snapshotted by Strata's node
//! daemon (through its API socket, as a platform would), by the naive way
//! a platform snapshots an overlayfs sandbox (`tar | zstd -1` of the upper
//! directory, restore by unpacking into a new upper directory), and by
//! btrfs subvolume snapshots on a loop device (the kernel's copy-on-write
//! limit on this machine), on the same bytes in one run.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::daemon::StrataDaemon;
use crate::machine;
use crate::report::{median, write_section};
use crate::tools::{disk_usage, remove, require, shell_quote, timed};

#[derive(clap::Args)]
pub struct Args {
    /// Full runs per scenario (a fresh sandbox written, snapshotted,
    /// restored; medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Snapshot calls timed per scenario for p50/p99 (each after every
    /// changed file was written again).
    #[arg(long, default_value_t = 30)]
    call_runs: usize,
    /// Restores timed per run (for p50/p99).
    #[arg(long, default_value_t = 10)]
    restores: usize,
    /// Fork counts measured (of the 100 MiB / 10,000-file snapshot).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    forks: Vec<usize>,
    /// The Debian tree the image is made from.
    #[arg(long, default_value = "/var/cache/strata-fixtures/bookworm-buildd")]
    image: PathBuf,
    /// Scratch directory (on the disk under test).
    #[arg(long, default_value = "/var/tmp/strata-bench/snapshot")]
    work: PathBuf,
    /// The `snapctl` binary (the node daemon).
    #[arg(long, default_value = "target/release/snapctl")]
    snapctl: PathBuf,
    /// Leave out the 1 GiB scenarios.
    #[arg(long)]
    quick: bool,
    /// Results file to update.
    #[arg(long, default_value = "benches/RESULTS.md")]
    results: PathBuf,
}

/// What a sandbox changed before the snapshot.
#[derive(Clone, Copy)]
struct Scenario {
    label: &'static str,
    bytes: u64,
    /// 0: nothing; 1: one large file; else that many files.
    files: usize,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        label: "0 MiB",
        bytes: 0,
        files: 0,
    },
    Scenario {
        label: "100 MiB in 10,000 files",
        bytes: 100 << 20,
        files: 10_000,
    },
    Scenario {
        label: "100 MiB in 1 file",
        bytes: 100 << 20,
        files: 1,
    },
    Scenario {
        label: "1 GiB in 10,000 files",
        bytes: 1 << 30,
        files: 10_000,
    },
    Scenario {
        label: "1 GiB in 1 file",
        bytes: 1 << 30,
        files: 1,
    },
];

/// Deterministic incompressible bytes (xorshift64*), one stream per seed.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Noise {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes the scenario's change under `root/tmp/bench` (plus a line in a
/// text file); returns a changed file to read back after a restore
/// (relative to the root).
fn write_change(root: &Path, sc: Scenario, seed: u64) -> Result<PathBuf> {
    let dir = root.join("tmp/bench");
    fs::create_dir_all(&dir)?;
    if sc.files == 0 {
        return Ok(PathBuf::from("etc/debian_version"));
    }
    let per_file = sc.bytes / sc.files as u64;
    let mut noise = Noise::new(seed);
    let mut buf = vec![0u8; (per_file.min(1 << 20)) as usize];
    for i in 0..sc.files {
        let sub = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&sub)?;
        }
        let mut file = fs::File::create(sub.join(format!("f{i:05}")))?;
        let mut left = per_file;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            noise.fill(&mut buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    fs::write(root.join("tmp/bench/NOTES.txt"), format!("run {seed}\n"))?;
    Ok(PathBuf::from("tmp/bench/d000/f00000"))
}

/// Writes 8 new bytes at the start of every changed file (so the next
/// snapshot has every file changed again).
fn redirty(root: &Path, sc: Scenario, round: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    if sc.files == 0 {
        return Ok(());
    }
    let dir = root.join("tmp/bench");
    for i in 0..sc.files {
        let path = dir.join(format!("d{:03}/f{i:05}", i / 100));
        let file = fs::OpenOptions::new().write(true).open(&path)?;
        file.write_all_at(&round.to_le_bytes(), 0)?;
    }
    Ok(())
}

fn first_byte(path: &Path) -> Result<()> {
    let mut byte = [0u8; 1];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut byte))
        .with_context(|| format!("reading {}", path.display()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p-th percentile (nearest rank) of some figures.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Figures of one system in one scenario.
#[derive(Default, Clone)]
struct Figures {
    /// Snapshot call with the whole change pending (ms), one per run.
    first_call_ms: Vec<f64>,
    /// Snapshot calls after every changed file was written again (ms).
    call_ms: Vec<f64>,
    /// From the call to durable (s), one per run.
    durable_s: Vec<f64>,
    /// Bytes the snapshot added on disk, one per run.
    added_bytes: Vec<f64>,
    /// Restore until a changed file's first byte is read (ms).
    restore_ms: Vec<f64>,
    /// The same, right after the call, before the snapshot is durable.
    early_restore_ms: Vec<f64>,
    /// Directory snapshot of `tmp/bench` (ms).
    dir_ms: Vec<f64>,
    /// Forks: (count, seconds).
    forks: Vec<(usize, f64)>,
}

// ------------------------------------------------------------- Strata

fn strata(args: &Args, scenarios: &[Scenario]) -> Result<(Vec<Figures>, f64)> {
    let base = args.work.join("strata");
    remove(&base)?;
    fs::create_dir_all(&base)?;
    let home = base.join("home");
    let mut daemon = StrataDaemon::start(&args.snapctl, &home)?;
    let started = Instant::now();
    daemon.call(
        "image.import",
        json!({ "source": args.image, "name": "debian" }),
    )?;
    let import_s = started.elapsed().as_secs_f64();
    let mnt = base.join("mnt");
    let restored = base.join("restored");
    fs::create_dir_all(&mnt)?;
    fs::create_dir_all(&restored)?;
    let mut all = Vec::new();
    for (n, sc) in scenarios.iter().enumerate() {
        eprintln!("strata: {}", sc.label);
        let mut fig = Figures::default();
        for run in 0..args.runs {
            let mount = daemon.call(
                "mount.create",
                json!({ "image": "debian", "mountpoint": mnt, "quota_bytes": 8u64 << 30 }),
            )?;
            let mount_id = mount["id"].as_str().unwrap_or_default().to_string();
            let changed = write_change(&mnt, *sc, (n * 100 + run) as u64)?;
            let before = daemon.store_bytes()?;
            let t0 = Instant::now();
            let snap = daemon.call("snapshot.create", json!({ "mount": mount_id }))?;
            fig.first_call_ms.push(ms(t0.elapsed()));
            let id = snap["id"].as_str().unwrap_or_default().to_string();
            // Restored at once, while the snapshot is still being stored.
            let t = Instant::now();
            let early = daemon.call(
                "mount.create",
                json!({ "snapshot": id, "mountpoint": restored, "quota_bytes": 1u64 << 30 }),
            )?;
            first_byte(&restored.join(&changed))?;
            fig.early_restore_ms.push(ms(t.elapsed()));
            let done = daemon.call("snapshot.wait", json!({ "id": id }))?;
            daemon.call("mount.remove", json!({ "mount": early["id"] }))?;
            if done["state"] != "durable" {
                bail!("snapshot {id} did not become durable: {done}");
            }
            // As the daemon measured it: from the call to durable.
            fig.durable_s
                .push(done["durable_ms"].as_f64().unwrap_or(f64::NAN) / 1e3);
            fig.added_bytes
                .push(daemon.store_bytes()?.saturating_sub(before) as f64);
            for _ in 0..args.restores {
                let t = Instant::now();
                let r = daemon.call(
                    "mount.create",
                    json!({ "snapshot": id, "mountpoint": restored, "quota_bytes": 1u64 << 30 }),
                )?;
                first_byte(&restored.join(&changed))?;
                fig.restore_ms.push(ms(t.elapsed()));
                daemon.call("mount.remove", json!({ "mount": r["id"] }))?;
            }
            if sc.files > 0 {
                let t = Instant::now();
                let d = daemon.call(
                    "snapshot.create",
                    json!({ "mount": mount_id, "dir": "tmp/bench" }),
                )?;
                fig.dir_ms.push(ms(t.elapsed()));
                daemon.call("snapshot.wait", json!({ "id": d["id"] }))?;
            }
            if run == 0 {
                for round in 0..args.call_runs {
                    redirty(&mnt, *sc, round as u64 + 1)?;
                    let t = Instant::now();
                    let s = daemon.call("snapshot.create", json!({ "mount": mount_id }))?;
                    fig.call_ms.push(ms(t.elapsed()));
                    daemon.call("snapshot.wait", json!({ "id": s["id"] }))?;
                }
                if sc.bytes == 100 << 20 && sc.files > 1 {
                    let under = base.join("forks");
                    fs::create_dir_all(&under)?;
                    for &count in &args.forks {
                        let t = Instant::now();
                        let made = daemon.call(
                            "snapshot.fork",
                            json!({ "id": id, "count": count, "under": under,
                                    "quota_bytes": 1u64 << 30, "threads": 1 }),
                        )?;
                        fig.forks.push((count, t.elapsed().as_secs_f64()));
                        for m in made.as_array().into_iter().flatten() {
                            daemon.call("mount.remove", json!({ "mount": m["id"] }))?;
                        }
                    }
                }
            }
            daemon.call("mount.remove", json!({ "mount": mount_id }))?;
        }
        all.push(fig);
    }
    Ok((all, import_s))
}

/// `cas` ingest rate of the same bytes (1 GiB in 10,000 files), from
/// memory into a fresh store, for the "durable at ≥ 80% of ingest" target.
fn cas_ingest_mbs(args: &Args) -> Result<f64> {
    let dir = args.work.join("cas-reference");
    remove(&dir)?;
    let store = cas::Store::init(&dir, cas::StoreConfig::default())?;
    let writer = store.writer("ingest reference");
    let files = 10_000usize;
    let per_file = (1u64 << 30) / files as u64;
    let mut noise = Noise::new(424_242);
    let mut buf = vec![0u8; per_file as usize];
    let t = Instant::now();
    for _ in 0..files {
        noise.fill(&mut buf);
        let mut blob = writer.blob_writer(cas::Chunking::ContentDefined);
        blob.write_all(&buf)?;
        blob.finish()?;
    }
    writer.commit()?;
    let secs = t.elapsed().as_secs_f64();
    drop(writer);
    drop(store);
    remove(&dir)?;
    Ok((1u64 << 30) as f64 / 1e6 / secs)
}

// ------------------------------------------------- overlayfs + tar | zstd

fn mount_overlay(lower: &Path, dir: &Path) -> Result<PathBuf> {
    let (upper, work, mnt) = (dir.join("upper"), dir.join("work"), dir.join("mnt"));
    for d in [&upper, &work, &mnt] {
        fs::create_dir_all(d)?;
    }
    timed(&format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
        lower.display(),
        upper.display(),
        work.display(),
        shell_quote(&mnt)
    ))?;
    Ok(mnt)
}

fn unmount_and_remove(dir: &Path) -> Result<()> {
    let _ = timed(&format!("umount {}", shell_quote(&dir.join("mnt"))));
    remove(dir)
}

fn tar_zstd(args: &Args, scenarios: &[Scenario]) -> Result<Vec<Figures>> {
    let base = args.work.join("tar");
    remove(&base)?;
    fs::create_dir_all(&base)?;
    let mut all = Vec::new();
    for (n, sc) in scenarios.iter().enumerate() {
        eprintln!("tar | zstd: {}", sc.label);
        let mut fig = Figures::default();
        for run in 0..args.runs {
            let sandbox = base.join("sandbox");
            let mnt = mount_overlay(&args.image, &sandbox)?;
            let changed = write_change(&mnt, *sc, (n * 100 + run) as u64)?;
            let snap = base.join("snap.tar.zst");
            let snapshot = |to: &Path, from: &Path| {
                timed(&format!(
                    "tar -C {} -cf - . | zstd -1 -T0 -q -f -o {} && sync {}",
                    shell_quote(from),
                    shell_quote(to),
                    shell_quote(to)
                ))
            };
            let took = snapshot(&snap, &sandbox.join("upper"))?;
            fig.first_call_ms.push(ms(took));
            fig.durable_s.push(took.as_secs_f64());
            fig.added_bytes.push(fs::metadata(&snap)?.len() as f64);
            let restores = if sc.bytes >= 1 << 30 { 1 } else { 3 };
            for _ in 0..restores {
                let r = base.join("restored");
                let t = Instant::now();
                fs::create_dir_all(r.join("upper"))?;
                timed(&format!(
                    "zstd -dc {} | tar -x -C {}",
                    shell_quote(&snap),
                    shell_quote(&r.join("upper"))
                ))?;
                let rm = mount_overlay(&args.image, &r)?;
                first_byte(&rm.join(&changed))?;
                fig.restore_ms.push(ms(t.elapsed()));
                unmount_and_remove(&r)?;
            }
            if sc.files > 0 {
                let took = snapshot(&base.join("dir.tar.zst"), &sandbox.join("upper/tmp/bench"))?;
                fig.dir_ms.push(ms(took));
            }
            if run == 0 {
                let calls = if sc.bytes >= 1 << 30 { 5 } else { 10 };
                for round in 0..calls {
                    redirty(&mnt, *sc, round as u64 + 1)?;
                    fig.call_ms
                        .push(ms(snapshot(&snap, &sandbox.join("upper"))?));
                }
                if sc.bytes == 100 << 20 && sc.files > 1 {
                    if let Some(&count) = args.forks.first() {
                        let t = Instant::now();
                        for i in 0..count {
                            let r = base.join(format!("fork-{i}"));
                            fs::create_dir_all(r.join("upper"))?;
                            timed(&format!(
                                "zstd -dc {} | tar -x -C {}",
                                shell_quote(&snap),
                                shell_quote(&r.join("upper"))
                            ))?;
                            mount_overlay(&args.image, &r)?;
                        }
                        fig.forks.push((count, t.elapsed().as_secs_f64()));
                        for i in 0..count {
                            unmount_and_remove(&base.join(format!("fork-{i}")))?;
                        }
                    }
                }
            }
            unmount_and_remove(&sandbox)?;
        }
        all.push(fig);
    }
    Ok(all)
}

// ---------------------------------------------------------------- btrfs

fn used_bytes(path: &Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=used"])
        .arg(path)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("df output")
}

/// `btrfs subvolume snapshot [-r] FROM TO`.
fn btrfs_snapshot(from: &Path, to: &Path, read_only: bool) -> Result<Duration> {
    timed(&format!(
        "btrfs -q subvolume snapshot {}{} {}",
        if read_only { "-r " } else { "" },
        shell_quote(from),
        shell_quote(to)
    ))
}

fn btrfs(args: &Args, scenarios: &[Scenario]) -> Result<Vec<Figures>> {
    let base = args.work.join("btrfs");
    let fsdir = base.join("fs");
    let _ = timed(&format!("umount {} 2>/dev/null", shell_quote(&fsdir)));
    remove(&base)?;
    fs::create_dir_all(&fsdir)?;
    let img = base.join("btrfs.img");
    timed(&format!(
        "truncate -s 16G {0} && mkfs.btrfs -q -f {0} && mount -o loop {0} {1}",
        shell_quote(&img),
        shell_quote(&fsdir)
    ))?;
    let q = |p: &Path| shell_quote(p);
    let sub = |name: &str| fsdir.join(name);
    timed(&format!(
        "btrfs -q subvolume create {0} && cp -a {1}/. {0}/ && btrfs filesystem sync {0}",
        q(&sub("base")),
        q(&args.image)
    ))?;
    let mut all = Vec::new();
    for (n, sc) in scenarios.iter().enumerate() {
        eprintln!("btrfs: {}", sc.label);
        let mut fig = Figures::default();
        for run in 0..args.runs {
            btrfs_snapshot(&sub("base"), &sub("sandbox"), false)?;
            let changed = write_change(&sub("sandbox"), *sc, (n * 100 + run) as u64)?;
            let before = used_bytes(&fsdir)?;
            let t0 = Instant::now();
            btrfs_snapshot(&sub("sandbox"), &sub("snap"), true)?;
            fig.first_call_ms.push(ms(t0.elapsed()));
            timed(&format!("btrfs filesystem sync {}", q(&fsdir)))?;
            fig.durable_s.push(t0.elapsed().as_secs_f64());
            fig.added_bytes
                .push(used_bytes(&fsdir)?.saturating_sub(before) as f64);
            for _ in 0..args.restores {
                let t = Instant::now();
                btrfs_snapshot(&sub("snap"), &sub("restored"), false)?;
                first_byte(&sub("restored").join(&changed))?;
                fig.restore_ms.push(ms(t.elapsed()));
                timed(&format!(
                    "btrfs -q subvolume delete {}",
                    q(&sub("restored"))
                ))?;
            }
            if sc.files > 0 {
                let t = Instant::now();
                timed(&format!(
                    "cp -a --reflink=always {} {}",
                    q(&sub("sandbox/tmp/bench")),
                    q(&sub("dirsnap"))
                ))?;
                fig.dir_ms.push(ms(t.elapsed()));
                remove(&sub("dirsnap"))?;
            }
            if run == 0 {
                for round in 0..args.call_runs {
                    redirty(&sub("sandbox"), *sc, round as u64 + 1)?;
                    let t = Instant::now();
                    btrfs_snapshot(&sub("sandbox"), &sub(&format!("call-{round}")), true)?;
                    fig.call_ms.push(ms(t.elapsed()));
                }
                timed(&format!("btrfs -q subvolume delete {}/call-*", q(&fsdir)))?;
                if sc.bytes == 100 << 20 && sc.files > 1 {
                    for &count in &args.forks {
                        let t = Instant::now();
                        for i in 0..count {
                            btrfs_snapshot(&sub("snap"), &sub(&format!("fork-{i}")), false)?;
                        }
                        fig.forks.push((count, t.elapsed().as_secs_f64()));
                        timed(&format!("btrfs -q subvolume delete {}/fork-*", q(&fsdir)))?;
                    }
                }
            }
            timed(&format!(
                "btrfs -q subvolume delete {} {}",
                q(&sub("snap")),
                q(&sub("sandbox"))
            ))?;
        }
        all.push(fig);
    }
    let _ = timed(&format!("umount {}", q(&fsdir)));
    remove(&base)?;
    Ok(all)
}

// --------------------------------------------------------------- report

pub fn run(args: Args) -> Result<()> {
    for tool in ["tar", "zstd", "mkfs.btrfs", "btrfs"] {
        require(tool)?;
    }
    if !args.snapctl.exists() {
        bail!(
            "{} is missing; run benches/run.sh snapshot, which builds it",
            args.snapctl.display()
        );
    }
    fs::create_dir_all(&args.work)?;
    let scenarios: Vec<Scenario> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| !args.quick || s.bytes < 1 << 30)
        .collect();
    let image_bytes = disk_usage(&args.image)?;
    let (ours, import_s) = strata(&args, &scenarios)?;
    let ingest = cas_ingest_mbs(&args)?;
    let tar = tar_zstd(&args, &scenarios)?;
    let cow = btrfs(&args, &scenarios)?;
    let body = render(
        &args,
        &scenarios,
        image_bytes,
        import_s,
        ingest,
        &ours,
        &tar,
        &cow,
    );
    write_section(&args.results, "snapshot", &body)?;
    println!("{body}");
    Ok(())
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v >= 10_000.0 {
        format!("{:.1} s", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn fmt_bytes(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", v / (1u64 << 30) as f64)
    } else if v >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", v / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", v / 1024.0)
    }
}

/// Modal's figures from the seeds, per scenario size.
fn modal(sc: Scenario) -> &'static str {
    match sc.bytes {
        0 => "0.59 s",
        b if b == 100 << 20 => "3.4 s",
        _ => "9.25 s",
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    args: &Args,
    scenarios: &[Scenario],
    image_bytes: u64,
    import_s: f64,
    ingest_mbs: f64,
    ours: &[Figures],
    tar: &[Figures],
    cow: &[Figures],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## snapshot: snapshot, restore and fork of a running sandbox\n"
    );
    s.push_str(&machine::describe(&args.work));
    let _ = writeln!(
        s,
        "\n- Command: `benches/run.sh snapshot` (full runs per scenario: {}; timed snapshot calls: {} for Strata and btrfs, 10 (5 at 1 GiB) for tar; restores per run: {} for Strata and btrfs)\n",
        args.runs, args.call_runs, args.restores
    );
    let _ = writeln!(
        s,
        "Base image: the Debian `bookworm-buildd` tree, {:.0} MiB (imported into Strata in {import_s:.1} s). Each run mounts it fresh, writes the change \
(incompressible bytes) under `/tmp/bench`, and snapshots: Strata through its node daemon's socket (`snapshot.create`, then `snapshot.wait` until durable); \
**tar+zstd** = kernel overlayfs over the unpacked tree, snapshot = `tar -C upper -cf - . | zstd -1 -T0` + `sync` (the call is the whole job), restore = unpack into a new upper directory and mount; \
**btrfs** = the tree in a subvolume on a loop device, sandbox = a writable snapshot of it, snapshot = `btrfs subvolume snapshot -r` (durable after `btrfs filesystem sync`), restore = a writable snapshot of the snapshot. \
\"call, whole change\" is the first snapshot after the change was written (median of runs); \"call p50/p99\" times {} further snapshots of the same sandbox, each after every changed file was written again (8 bytes at its start). \
Restore = until the first byte of a changed file is read from the new root; \"restore before durable\" = Strata's restore issued right after the call returned, while the snapshot is still being stored (mounted from the capture). Storage added: Strata = growth of the store (packs + index); tar = the archive; btrfs = `df` used before the snapshot vs after its sync (the bytes themselves were written before, into the sandbox).\n",
        image_bytes as f64 / (1u64 << 20) as f64,
        args.call_runs
    );
    let _ = writeln!(
        s,
        "| changed | system | call, whole change | call p50 | call p99 | until durable | storage added | restore p50 | restore p99 | restore before durable | directory snapshot | Modal (seeds) |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, sc) in scenarios.iter().enumerate() {
        for (name, fig) in [
            ("Strata", &ours[i]),
            ("tar+zstd", &tar[i]),
            ("btrfs", &cow[i]),
        ] {
            let _ = writeln!(
                s,
                "| {} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                sc.label,
                fmt_ms(median(&fig.first_call_ms)),
                fmt_ms(percentile(&fig.call_ms, 50.0)),
                fmt_ms(percentile(&fig.call_ms, 99.0)),
                fmt_ms(median(&fig.durable_s) * 1e3),
                fmt_bytes(median(&fig.added_bytes)),
                fmt_ms(percentile(&fig.restore_ms, 50.0)),
                fmt_ms(percentile(&fig.restore_ms, 99.0)),
                if fig.early_restore_ms.is_empty() {
                    "(complete at the call)".into()
                } else {
                    fmt_ms(median(&fig.early_restore_ms))
                },
                if sc.files == 0 {
                    "—".into()
                } else {
                    fmt_ms(median(&fig.dir_ms))
                },
                if name == "Strata" { modal(*sc) } else { "" },
            );
        }
    }
    let _ = writeln!(
        s,
        "\n**Forks** of the 100 MiB / 10,000-file snapshot (each a separate writable mount):\n"
    );
    let _ = writeln!(s, "| forks | Strata | tar+zstd (unpack + overlay mount each) | btrfs (writable subvolume snapshots) |");
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    let fork_of = |figs: &[Figures], count: usize| {
        figs.iter()
            .flat_map(|f| f.forks.iter())
            .find(|(c, _)| *c == count)
            .map(|(_, secs)| format!("{secs:.2} s"))
            .unwrap_or_else(|| "not run".into())
    };
    for &count in &args.forks {
        let _ = writeln!(
            s,
            "| {count} | {} | {} | {} |",
            fork_of(ours, count),
            fork_of(tar, count),
            fork_of(cow, count)
        );
    }
    // Durable rate of the 1 GiB scenarios against cas ingest.
    let rates: Vec<String> = scenarios
        .iter()
        .zip(ours)
        .filter(|(sc, _)| sc.bytes >= 100 << 20)
        .map(|(sc, f)| {
            let rate = sc.bytes as f64 / 1e6 / median(&f.durable_s);
            format!(
                "{}: {rate:.0} MB/s ({:.0}% of ingest)",
                sc.label,
                100.0 * rate / ingest_mbs
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nDurable rate (changed bytes ÷ time from the call to durable) against `cas` ingest of the same kind of bytes (1 GiB in 10,000 blobs from memory, {ingest_mbs:.0} MB/s in this run): {}.",
        rates.join("; ")
    );
    let _ = writeln!(
        s,
        "\nTargets (issue 5): call ≤ 50 ms p50 and ≤ 150 ms p99 regardless of changed size; durable at ≥ 80% of the `cas` ingest rate; restore ≤ 100 ms p99 to first byte; 100 forks < 1 s and 1,000 forks < 5 s; an unchanged snapshot adds < 64 KiB. \
Modal's figures (seeds): `snapshot_filesystem()` 0.59 s unchanged, 3.4 s for 100 MiB, 4.45 s for 500 MiB, 9.25 s for 1 GiB; restore 0.11 s."
    );
    s
}
