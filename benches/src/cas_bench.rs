//! The chunk-store benchmark (issue: "The workspace and `cas`").
//!
//! On each input, in one run and with the input in the page cache for every
//! tool, it measures:
//! - Strata: ingest into a fresh store (durable: committed, fsynced),
//!   ingest of the same input again (all duplicate), read-back of every
//!   blob with the page cache dropped (cold) and again (hot);
//! - `casync make --compression=zstd` into a fresh store, then again (all
//!   duplicate), each followed by `sync`, and `casync digest` cold;
//! - the raw pipeline: `tar | tee >(b3sum) | zstd -1 -T0 > file; sync file`
//!   and its cold read `zstd -d | b3sum` — the physical limit.
//!
//! Throughput is regular-file bytes of the input per second (10^6 B/s), the
//! same denominator for every tool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cas::{OpenOptions, Store, StoreConfig};

use crate::report::{median, write_section};
use crate::tools::{disk_usage, drop_caches, remove, require, shell_quote, timed, warm};
use crate::tree;

#[derive(clap::Args)]
pub struct Args {
    /// Scratch directory for stores and outputs (on the disk to measure).
    #[arg(long, default_value = "/var/tmp/strata-bench")]
    work: PathBuf,
    /// Runs per input; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Inputs to measure: usr, debian, random.
    #[arg(long, value_delimiter = ',', default_value = "usr,debian,random")]
    inputs: Vec<String>,
    /// The tree used as the `usr` input.
    #[arg(long, default_value = "/usr")]
    usr: PathBuf,
    /// Where fixtures/debian-rootfs.sh keeps its root filesystems.
    #[arg(
        long,
        env = "STRATA_FIXTURES",
        default_value = "/var/cache/strata-fixtures"
    )]
    fixtures: PathBuf,
    /// Size of the random-data input in GiB.
    #[arg(long, default_value_t = 2)]
    random_gib: u64,
    /// The results file to update.
    #[arg(long, default_value = "benches/RESULTS.md")]
    out: PathBuf,
}

struct Input {
    name: String,
    dir: PathBuf,
    files: Vec<tree::InputFile>,
    bytes: u64,
}

#[derive(Default)]
struct Figures {
    strata_unique: Vec<f64>,
    strata_dup: Vec<f64>,
    strata_cold: Vec<f64>,
    strata_hot: Vec<f64>,
    strata_size: Vec<f64>,
    casync_unique: Vec<f64>,
    casync_dup: Vec<f64>,
    casync_cold: Vec<f64>,
    casync_size: Vec<f64>,
    raw_unique: Vec<f64>,
    raw_cold: Vec<f64>,
    raw_size: Vec<f64>,
}

fn mbs(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

pub fn run(args: Args) -> Result<()> {
    for tool in ["casync", "zstd", "b3sum", "tar"] {
        require(tool)?;
    }
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("creating {}", args.work.display()))?;
    let can_drop = drop_caches();
    if !can_drop {
        eprintln!("warning: cannot drop the page cache (not root); cold figures will be warm");
    }
    let mut sections = Vec::new();
    let mut inputs = Vec::new();
    for name in &args.inputs {
        let dir = match name.as_str() {
            "usr" => args.usr.clone(),
            "debian" => fixture(&args.fixtures, "bookworm-minbase")?,
            "random" => random_input(&args.work, args.random_gib)?,
            other => anyhow::bail!("unknown input {other} (usr, debian, random)"),
        };
        let files = tree::list_files(&dir)?;
        let bytes = files.iter().map(|f| f.len).sum();
        inputs.push(Input {
            name: name.clone(),
            dir,
            files,
            bytes,
        });
    }
    for input in &inputs {
        eprintln!(
            "== {}: {} ({} files, {:.2} GB)",
            input.name,
            input.dir.display(),
            input.files.len(),
            input.bytes as f64 / 1e9
        );
        let mut figures = Figures::default();
        for run in 0..args.runs {
            eprintln!("-- run {}/{}", run + 1, args.runs);
            measure(&args.work, input, run == 0, &mut figures)?;
        }
        sections.push(render_input(input, &figures, args.runs));
    }
    let related = if args.inputs.iter().any(|i| i == "debian") {
        Some(related_trees(&args)?)
    } else {
        None
    };
    let mut body = String::from("## cas: chunk store ingest and read\n\n");
    body.push_str(&crate::machine::describe(&args.work));
    body.push_str(&format!(
        "\n- Command: `benches/run.sh cas` (runs: {}; page cache dropped for cold reads: {})\n\n",
        args.runs,
        if can_drop { "yes" } else { "no" }
    ));
    body.push_str(
        "Throughput is the input's regular-file bytes per second (10^6 B/s) for every tool; \
         inputs are in the page cache before each ingest. Strata's ingest is durable \
         (packs fsynced, index synced) before it counts as done; casync and the raw \
         pipeline are followed by `sync`.\n\n",
    );
    for section in sections {
        body.push_str(&section);
    }
    if let Some(related) = related {
        body.push_str(&related);
    }
    write_section(&args.out, "cas", &body)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn fixture(fixtures: &Path, name: &str) -> Result<PathBuf> {
    let dir = fixtures.join(name);
    ensure!(
        dir.join("etc/debian_version").exists(),
        "fixture {} is missing: run fixtures/debian-rootfs.sh {}",
        dir.display(),
        name
    );
    Ok(dir)
}

/// A directory of incompressible files (cached between runs).
fn random_input(work: &Path, gib: u64) -> Result<PathBuf> {
    let dir = work.join(format!("random-{gib}g"));
    let marker = dir.join(".complete");
    if marker.exists() {
        return Ok(dir);
    }
    remove(&dir)?;
    std::fs::create_dir_all(&dir)?;
    for i in 0..gib * 2 {
        let path = dir.join(format!("random-{i}.bin"));
        timed(&format!(
            "head -c 512M /dev/urandom > {}",
            shell_quote(&path)
        ))?;
    }
    std::fs::write(&marker, b"")?;
    Ok(dir)
}

fn measure(work: &Path, input: &Input, verify: bool, figures: &mut Figures) -> Result<()> {
    let home = work.join("strata-store");
    let casync_store = work.join("casync-store");
    let raw_out = work.join("raw.tar.zst");
    remove(&home)?;
    remove(&casync_store)?;
    let _ = std::fs::remove_file(&raw_out);

    // Strata.
    warm(&input.dir)?;
    let store = Store::init(&home, StoreConfig::default())?;
    let first = tree::ingest(&store, &input.files)?;
    figures.strata_unique.push(first.mb_per_s());
    let again = tree::ingest(&store, &input.files)?;
    ensure!(
        again.new_chunks == 0,
        "duplicate ingest wrote {} chunks",
        again.new_chunks
    );
    figures.strata_dup.push(again.mb_per_s());
    drop(store);
    drop_caches();
    let store = Store::open(&home, OpenOptions::default())?;
    let (read, cold, cold_hashes) = tree::read_back(&store, &first.blobs)?;
    figures.strata_cold.push(mbs(read, cold));
    let (read, hot, hot_hashes) = tree::read_back(&store, &first.blobs)?;
    figures.strata_hot.push(mbs(read, hot));
    ensure!(cold_hashes == hot_hashes, "cold and hot reads differ");
    if verify {
        let sources = tree::hash_sources(&first.blobs);
        let bad = sources
            .iter()
            .zip(&cold_hashes)
            .filter(|(s, got)| s.is_some_and(|s| s != **got))
            .count();
        ensure!(
            bad == 0,
            "{bad} files read back differently from the source"
        );
    }
    drop(store);
    figures.strata_size.push(disk_usage(&home)? as f64);
    eprintln!(
        "   strata: unique {:.0} MB/s, dup {:.0} MB/s, cold read {:.0} MB/s, hot read {:.0} MB/s",
        first.mb_per_s(),
        again.mb_per_s(),
        mbs(read, cold),
        mbs(read, hot)
    );
    remove(&home)?;

    // casync.
    let src = shell_quote(&input.dir);
    let st = shell_quote(&casync_store);
    let idx1 = shell_quote(&work.join("a.caidx"));
    let idx2 = shell_quote(&work.join("b.caidx"));
    warm(&input.dir)?;
    let unique = timed(&format!(
        "casync make --store={st} --compression=zstd {idx1} {src} && sync -f {st}"
    ))?;
    let dup = timed(&format!(
        "casync make --store={st} --compression=zstd {idx2} {src} && sync -f {st}"
    ))?;
    figures.casync_unique.push(mbs(input.bytes, unique));
    figures.casync_dup.push(mbs(input.bytes, dup));
    figures.casync_size.push(disk_usage(&casync_store)? as f64);
    drop_caches();
    let read = timed(&format!("casync digest --store={st} {idx1} > /dev/null"))?;
    figures.casync_cold.push(mbs(input.bytes, read));
    eprintln!(
        "   casync: unique {:.0} MB/s, dup {:.0} MB/s, cold digest {:.0} MB/s",
        mbs(input.bytes, unique),
        mbs(input.bytes, dup),
        mbs(input.bytes, read)
    );
    remove(&casync_store)?;

    // The raw pipeline.
    let out = shell_quote(&raw_out);
    let fifo = work.join("b3.fifo");
    let _ = std::fs::remove_file(&fifo);
    let fifo = shell_quote(&fifo);
    warm(&input.dir)?;
    let unique = timed(&format!(
        "mkfifo {fifo} && (b3sum {fifo} > /dev/null &) && tar -C {src} -cf - . | tee {fifo} | zstd -1 -T0 -q -o {out} && sync {out}; rc=$?; wait; rm -f {fifo}; exit $rc"
    ))?;
    figures.raw_unique.push(mbs(input.bytes, unique));
    figures
        .raw_size
        .push(std::fs::metadata(&raw_out)?.len() as f64);
    drop_caches();
    let read = timed(&format!("zstd -d -c -q {out} | b3sum > /dev/null"))?;
    figures.raw_cold.push(mbs(input.bytes, read));
    eprintln!(
        "   raw:    unique {:.0} MB/s, cold read {:.0} MB/s",
        mbs(input.bytes, unique),
        mbs(input.bytes, read)
    );
    let _ = std::fs::remove_file(&raw_out);
    Ok(())
}

fn render_input(input: &Input, f: &Figures, runs: usize) -> String {
    let m = median;
    let gb = |v: f64| format!("{:.2} GB", v / 1e9);
    let ratio = |a: f64, b: f64| format!("{:.2}×", a / b);
    let mut s = format!(
        "### Input `{}`: {} ({} files, {:.2} GB), {} runs\n\n",
        input.name,
        input.dir.display(),
        input.files.len(),
        input.bytes as f64 / 1e9,
        runs
    );
    s.push_str("| | Strata | casync (zstd) | raw `zstd -1 -T0` + `b3sum` | Strata ÷ casync | Strata ÷ raw |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|\n");
    s.push_str(&format!(
        "| ingest, unique (MB/s) | {:.0} | {:.0} | {:.0} | {} | {} |\n",
        m(&f.strata_unique),
        m(&f.casync_unique),
        m(&f.raw_unique),
        ratio(m(&f.strata_unique), m(&f.casync_unique)),
        ratio(m(&f.strata_unique), m(&f.raw_unique)),
    ));
    s.push_str(&format!(
        "| ingest, all duplicate (MB/s) | {:.0} | {:.0} | — | {} | — |\n",
        m(&f.strata_dup),
        m(&f.casync_dup),
        ratio(m(&f.strata_dup), m(&f.casync_dup)),
    ));
    s.push_str(&format!(
        "| read + verify, cold (MB/s) | {:.0} | {:.0} (`casync digest`) | {:.0} (`zstd -d \\| b3sum`) | {} | {} |\n",
        m(&f.strata_cold),
        m(&f.casync_cold),
        m(&f.raw_cold),
        ratio(m(&f.strata_cold), m(&f.casync_cold)),
        ratio(m(&f.strata_cold), m(&f.raw_cold)),
    ));
    s.push_str(&format!(
        "| read + verify, hot (MB/s) | {:.0} | — | — | — | — |\n",
        m(&f.strata_hot)
    ));
    s.push_str(&format!(
        "| stored on disk | {} | {} | {} | {} | {} |\n\n",
        gb(m(&f.strata_size)),
        gb(m(&f.casync_size)),
        gb(m(&f.raw_size)),
        ratio(m(&f.strata_size), m(&f.casync_size)),
        ratio(m(&f.strata_size), m(&f.raw_size)),
    ));
    let unique = m(&f.strata_unique);
    let check = |ok: bool| if ok { "met" } else { "**missed**" };
    s.push_str(&format!(
        "Targets: unique ≥ 2× casync: {} ({:.2}×); unique ≥ 80% of raw: {} ({:.0}%); duplicate ≥ 1,500 MB/s: {} ({:.0} MB/s)",
        check(unique >= 2.0 * m(&f.casync_unique)),
        unique / m(&f.casync_unique),
        check(unique >= 0.8 * m(&f.raw_unique)),
        100.0 * unique / m(&f.raw_unique),
        check(m(&f.strata_dup) >= 1500.0),
        m(&f.strata_dup),
    ));
    let compressible = m(&f.raw_size) < 0.9 * input.bytes as f64;
    if compressible {
        s.push_str(&format!(
            "; compressible unique ≥ 500 MB/s: {} ({:.0} MB/s)",
            check(unique >= 500.0),
            unique
        ));
    }
    s.push_str(".\n\n");
    s
}

/// Dedup of two related trees: a Debian minbase root filesystem and the
/// buildd variant (minbase plus the build toolchain), stored one after the
/// other in one fresh store.
fn related_trees(args: &Args) -> Result<String> {
    let a = fixture(&args.fixtures, "bookworm-minbase")?;
    let b = fixture(&args.fixtures, "bookworm-buildd")?;
    let files_a = tree::list_files(&a)?;
    let files_b = tree::list_files(&b)?;
    let bytes_a: u64 = files_a.iter().map(|f| f.len).sum();
    let bytes_b: u64 = files_b.iter().map(|f| f.len).sum();
    let home = args.work.join("strata-related");
    remove(&home)?;
    let store = Store::init(&home, StoreConfig::default())?;
    let first = tree::ingest(&store, &files_a)?;
    let second = tree::ingest(&store, &files_b)?;
    drop(store);
    let strata_size = disk_usage(&home)?;
    remove(&home)?;
    let st = args.work.join("casync-related");
    remove(&st)?;
    let q = shell_quote(&st);
    timed(&format!(
        "casync make --store={q} --compression=zstd {} {} && casync make --store={q} --compression=zstd {} {}",
        shell_quote(&args.work.join("ra.caidx")),
        shell_quote(&a),
        shell_quote(&args.work.join("rb.caidx")),
        shell_quote(&b)
    ))?;
    let casync_size = disk_usage(&st)?;
    remove(&st)?;
    let total = (bytes_a + bytes_b) as f64;
    let unique = (first.new_bytes + second.new_bytes) as f64;
    Ok(format!(
        "### Dedup of two related trees\n\n\
         `bookworm-minbase` ({:.2} GB) then `bookworm-buildd` ({:.2} GB) into one fresh store.\n\n\
         | | Strata | casync (zstd) |\n|---|---:|---:|\n\
         | new data written for the second tree | {:.1}% of it | — |\n\
         | dedup ratio (input ÷ unique chunk bytes) | {:.2}× | — |\n\
         | input ÷ store size on disk | {:.2}× | {:.2}× |\n\
         | store size on disk | {:.3} GB | {:.3} GB |\n\n",
        bytes_a as f64 / 1e9,
        bytes_b as f64 / 1e9,
        100.0 * second.new_bytes as f64 / bytes_b.max(1) as f64,
        total / unique.max(1.0),
        total / strata_size as f64,
        total / casync_size as f64,
        strata_size as f64 / 1e9,
        casync_size as f64 / 1e9,
    ))
}
