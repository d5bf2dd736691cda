//! The remote-tier benchmark: pushing a tree to a bucket and reading it
//! back cold on a node with an empty store and cache.
//!
//! Two settings, in one run:
//! - an emulated object store (`remote::shaped` over memory: 15 ms per
//!   request, 100 MB/s per connection), where the targets are
//!   measured: push throughput, PUTs per 16 MiB, cold first byte, cold
//!   full-tree read;
//! - a real S3 server on loopback (moto), where Strata stands beside
//!   `restic` (Debian's) backing up and restoring the same tree.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cas::{ChunkId, Store, StoreConfig};
use layerfs::tree::{Entry, InodeKind};
use layerfs::{import_image, ImportOptions, TreeReader};
use rayon::prelude::*;
use remote::shaped::{Faults, Shape, ShapedStore};
use remote::{Remote, RemoteConfig};

use crate::machine;
use crate::report::{median, write_section};
use crate::tools::require;

#[derive(clap::Args)]
pub struct Args {
    /// Runs (medians are over these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Incompressible bytes added to the tree, in MiB (so that throughput
    /// is measured on more than a minimal Debian).
    #[arg(long, default_value_t = 768)]
    random_mib: u64,
    /// Emulated latency per request, in milliseconds.
    #[arg(long, default_value_t = 15)]
    latency_ms: u64,
    /// Emulated bandwidth per connection, in MB/s.
    #[arg(long, default_value_t = 100)]
    connection_mbs: u64,
    /// Threads reading the tree on the cold node.
    #[arg(long, default_value_t = 8)]
    readers: usize,
    /// Scratch directory.
    #[arg(long, default_value = "/var/tmp/strata-bench/remote")]
    work: PathBuf,
    /// The Debian tree.
    #[arg(long, default_value = "/var/cache/strata-fixtures/bookworm-minbase")]
    rootfs: PathBuf,
    /// The file whose first byte is timed (path in the tree).
    #[arg(long, default_value = "usr/bin/bash")]
    probe: String,
    /// The results file.
    #[arg(long, default_value = "benches/RESULTS.md")]
    results: PathBuf,
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// Writes the source tree: the Debian tree and one random file.
fn make_source(args: &Args) -> Result<(PathBuf, u64)> {
    let src = args.work.join("src");
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&args.rootfs)
        .arg(&src)
        .status()?;
    if !status.success() {
        bail!("copying {}", args.rootfs.display());
    }
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut data = vec![0u8; (args.random_mib as usize) << 20];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(src.join("random.bin"), &data)?;
    let bytes = crate::tools::disk_usage(&src)?;
    Ok((src, bytes))
}

/// Every file blob of the tree, with its size.
fn files(store: &Store, tree: ChunkId) -> Result<Vec<(ChunkId, u64)>> {
    let reader = TreeReader::new(store);
    let mut out = Vec::new();
    let mut stack = vec![(tree, String::new())];
    while let Some((dir, path)) = stack.pop() {
        let node = reader.dir(dir)?;
        for (name, entry) in reader.entries(&node)? {
            let name = String::from_utf8_lossy(&name).into_owned();
            let child = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            match entry {
                Entry::Dir(id) => stack.push((id, child)),
                Entry::Inode(inode) => {
                    if let InodeKind::File {
                        size,
                        blob: Some(blob),
                    } = inode.kind
                    {
                        out.push((blob, size));
                    }
                }
                Entry::HardLink { .. } => {}
            }
        }
    }
    Ok(out)
}

/// Walks to `probe` directory by directory (what a first open does).
fn first_byte(store: &Store, tree: ChunkId, probe: &str) -> Result<u8> {
    let reader = TreeReader::new(store);
    let mut dir = tree;
    let parts: Vec<&str> = probe.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let node = reader.dir(dir)?;
        let entry = reader
            .entries(&node)?
            .into_iter()
            .find(|(name, _)| name == part.as_bytes())
            .map(|(_, e)| e)
            .with_context(|| format!("{probe} is not in the tree"))?;
        match (entry, i + 1 == parts.len()) {
            (Entry::Dir(id), false) => dir = id,
            (Entry::Inode(inode), true) => {
                let InodeKind::File {
                    blob: Some(blob), ..
                } = inode.kind
                else {
                    bail!("{probe} is not a non-empty file");
                };
                let mut byte = [0u8; 1];
                store.blob(&blob)?.read_at(0, &mut byte)?;
                return Ok(byte[0]);
            }
            _ => bail!("{probe} is not a file"),
        }
    }
    bail!("{probe} is not in the tree")
}

/// Reads every file with `readers` threads; returns the bytes read.
fn read_all(store: &Store, blobs: &[(ChunkId, u64)], readers: usize) -> Result<u64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(readers)
        .build()?;
    pool.install(|| {
        blobs
            .par_iter()
            .with_max_len(1)
            .map(|(blob, size)| {
                let n = store.blob(blob)?.copy_to(&mut std::io::sink())?;
                if n != *size {
                    bail!("blob {blob} read {n} bytes, expected {size}");
                }
                Ok(n)
            })
            .sum()
    })
}

struct Cold {
    first_byte_ms: f64,
    read_secs: f64,
    bytes: u64,
}

/// A fresh node: a new store and cache, the bucket opened, the image
/// pulled, the first byte of `probe`, then the whole tree.
fn cold_node(
    args: &Args,
    dir: &Path,
    object_store: Arc<dyn object_store::ObjectStore>,
    config: &RemoteConfig,
) -> Result<Cold> {
    let _ = std::fs::remove_dir_all(dir);
    let store = Store::init(&dir.join("store"), StoreConfig::default())?;
    let started = Instant::now();
    let remote =
        Remote::with_object_store(object_store, config, &dir.join("cache"), store.config())?;
    remote.attach(&store);
    let pulled = remote.pull(&store, &["image/tree".to_string()])?;
    let tree = layerfs::image::image_tree(&store, "tree")?;
    first_byte(&store, tree, &args.probe)?;
    let first_byte_ms = secs(started) * 1e3;
    let started = Instant::now();
    let blobs = files(&store, tree)?;
    let bytes = read_all(&store, &blobs, args.readers)?;
    let read_secs = secs(started);
    let counts = remote.counts();
    eprintln!(
        "  cold node: {} GETs, {} LISTs, {:.0} MB down for {:.0} MB of files",
        counts.gets,
        counts.lists,
        counts.bytes_down as f64 / 1e6,
        bytes as f64 / 1e6
    );
    drop(pulled);
    Ok(Cold {
        first_byte_ms,
        read_secs,
        bytes,
    })
}

fn restic(repo: &str, endpoint_env: &[(&str, &str)], args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("restic")
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", "strata-bench")
        .envs(endpoint_env.iter().copied())
        .output()?;
    if !out.status.success() {
        bail!(
            "restic {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(started.elapsed())
}

#[derive(Default)]
struct Figures {
    push_mbs: Vec<f64>,
    puts_per_16mib: Vec<f64>,
    requests_per_gib: Vec<f64>,
    first_byte_ms: Vec<f64>,
    read_mbs: Vec<f64>,
    // Against moto, side by side with restic.
    s3_import_push_s: Vec<f64>,
    s3_first_byte_ms: Vec<f64>,
    s3_read_s: Vec<f64>,
    restic_backup_s: Vec<f64>,
    restic_first_byte_ms: Vec<f64>,
    restic_restore_s: Vec<f64>,
}

pub fn run(args: Args) -> Result<()> {
    require("restic")?;
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work)?;
    let (src, src_bytes) = make_source(&args)?;
    let mb = |bytes: u64, s: f64| bytes as f64 / 1e6 / s;

    // Node A's store holds the tree, as a snapshot or an image would.
    let a = Store::init(&args.work.join("a"), StoreConfig::default())?;
    import_image(&a, "tree", &src, &ImportOptions::default())?;
    a.commit()?;
    let tree_bytes: u64;
    {
        let blobs = files(&a, layerfs::image::image_tree(&a, "tree")?)?;
        tree_bytes = blobs.iter().map(|(_, s)| s).sum();
    }
    let shape = Shape {
        latency: Duration::from_millis(args.latency_ms),
        bytes_per_sec: args.connection_mbs * 1_000_000,
    };
    let mut f = Figures::default();
    let mut stored = 0;
    for run in 0..args.runs {
        // The emulated store.
        let memory: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let shaped = ShapedStore::new(memory, shape, Faults::default());
        let config = RemoteConfig::new("memory://bench");
        let remote_a = Remote::with_object_store(
            shaped.clone(),
            &config,
            &args.work.join("cache-a"),
            a.config(),
        )?;
        let report = remote_a.push(&a, &["image/tree".to_string()])?;
        stored = report.bytes_uploaded;
        f.push_mbs.push(mb(tree_bytes, report.millis as f64 / 1e3));
        f.puts_per_16mib
            .push(report.requests.puts as f64 / (report.bytes_uploaded as f64 / (16 << 20) as f64));
        let requests = report.requests.puts + report.requests.gets + report.requests.lists;
        f.requests_per_gib
            .push(requests as f64 / (report.bytes_uploaded as f64 / (1u64 << 30) as f64));
        let cold = cold_node(&args, &args.work.join("b"), shaped, &config)?;
        if cold.bytes != tree_bytes {
            bail!("the cold node read {} bytes of {tree_bytes}", cold.bytes);
        }
        f.first_byte_ms.push(cold.first_byte_ms);
        f.read_mbs.push(mb(cold.bytes, cold.read_secs));
        eprintln!(
            "run {run}: emulated push {:.0} MB/s, first byte {:.0} ms, read {:.0} MB/s",
            f.push_mbs[run], cold.first_byte_ms, f.read_mbs[run]
        );

        // A real S3 server: Strata (import + push; a cold node) and restic.
        let Some(server) = fixtures::s3::S3Server::start() else {
            bail!("moto_server is not installed (benches/run.sh remote installs it)");
        };
        server.create_bucket("bench");
        let mut s3 = RemoteConfig::new("s3://bench/strata");
        s3.options.extend(server.options());
        let started = Instant::now();
        let fresh = Store::init(
            &args.work.join(format!("s3-a-{run}")),
            StoreConfig::default(),
        )?;
        import_image(&fresh, "tree", &src, &ImportOptions::default())?;
        let remote_s3 = Remote::open(
            &s3,
            &args.work.join(format!("s3-cache-a-{run}")),
            fresh.config(),
        )?;
        remote_s3.push(&fresh, &["image/tree".to_string()])?;
        f.s3_import_push_s.push(secs(started));
        drop(fresh);
        let cold = cold_node(&args, &args.work.join("s3-b"), s3.open_store()?, &s3)?;
        f.s3_first_byte_ms.push(cold.first_byte_ms);
        f.s3_read_s.push(cold.read_secs);

        let repo = format!("s3:{}/bench/restic", server.endpoint());
        let env = [
            ("AWS_ACCESS_KEY_ID", fixtures::s3::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", fixtures::s3::SECRET_KEY),
        ];
        restic(&repo, &env, &["init", "-q"])?;
        f.restic_backup_s.push(
            restic(
                &repo,
                &env,
                &["backup", "-q", src.to_str().context("path")?],
            )?
            .as_secs_f64(),
        );
        let probe = format!("{}/{}", src.display(), args.probe);
        f.restic_first_byte_ms
            .push(restic(&repo, &env, &["dump", "-q", "latest", &probe])?.as_secs_f64() * 1e3);
        let target = args.work.join("restored");
        let _ = std::fs::remove_dir_all(&target);
        f.restic_restore_s.push(
            restic(
                &repo,
                &env,
                &[
                    "restore",
                    "-q",
                    "latest",
                    "--target",
                    target.to_str().context("path")?,
                ],
            )?
            .as_secs_f64(),
        );
        let _ = std::fs::remove_dir_all(&target);
        eprintln!(
            "run {run}: S3 import+push {:.1} s vs restic backup {:.1} s; read {:.1} s vs restore {:.1} s",
            f.s3_import_push_s[run], f.restic_backup_s[run], f.s3_read_s[run], f.restic_restore_s[run]
        );
    }

    let m = |v: &[f64]| median(v);
    let mut r = String::new();
    writeln!(r, "## Many nodes, one bucket (`benches/run.sh remote`)\n")?;
    writeln!(r, "{}\n", machine::describe(&args.work))?;
    writeln!(
        r,
        "Median of {} runs. The tree: Debian bookworm minbase plus {} MiB of random bytes \
         ({:.0} MB of files, {:.0} MB on disk; {:.0} MB stored compressed). Node A holds it \
         in its store (imported once, as a snapshot would be); each run pushes it to an empty \
         bucket, then a new node (empty store, empty cache) opens the bucket, pulls the ref, \
         reads the first byte of `/{}` (the figure includes listing the bucket's index, the \
         pull and the walk to the file), then reads every file with {} threads.\n",
        args.runs,
        args.random_mib,
        tree_bytes as f64 / 1e6,
        src_bytes as f64 / 1e6,
        stored as f64 / 1e6,
        args.probe,
        args.readers
    )?;
    writeln!(
        r,
        "**Emulated object store** (`remote::shaped` over memory: {} ms per request, {} MB/s \
         per connection):\n",
        args.latency_ms, args.connection_mbs
    )?;
    writeln!(r, "| figure | Strata | target |")?;
    writeln!(r, "|---|---|---|")?;
    writeln!(
        r,
        "| push (MB of files per second) | {:.0} | ≥ 400 |",
        m(&f.push_mbs)
    )?;
    writeln!(
        r,
        "| PUTs per 16 MiB stored | {:.2} | ≤ 1 |",
        m(&f.puts_per_16mib)
    )?;
    writeln!(
        r,
        "| requests per GiB pushed | {:.0} | — |",
        m(&f.requests_per_gib)
    )?;
    writeln!(
        r,
        "| cold first byte (ms) | {:.0} | ≤ 100 |",
        m(&f.first_byte_ms)
    )?;
    writeln!(
        r,
        "| cold full-tree read (MB/s) | {:.0} | ≥ 400 |",
        m(&f.read_mbs)
    )?;
    writeln!(
        r,
        "\n**Real S3 server on loopback** (moto 5, one Python process), side by side with \
         restic {} writing to and reading from the same server:\n",
        restic_version()
    )?;
    writeln!(r, "| figure | Strata | restic | restic ÷ Strata |")?;
    writeln!(r, "|---|---|---|---|")?;
    let row = |r: &mut String, what: &str, s: f64, x: f64, unit: &str| {
        let _ = writeln!(
            r,
            "| {what} | {s:.2} {unit} | {x:.2} {unit} | {:.1}× |",
            x / s
        );
    };
    row(
        &mut r,
        "store the tree (Strata: import + push; restic: backup)",
        m(&f.s3_import_push_s),
        m(&f.restic_backup_s),
        "s",
    );
    row(
        &mut r,
        "first byte of a file on a new node (restic: dump)",
        m(&f.s3_first_byte_ms) / 1e3,
        m(&f.restic_first_byte_ms) / 1e3,
        "s",
    );
    row(
        &mut r,
        "whole tree on a new node (Strata: read; restic: restore)",
        m(&f.s3_read_s),
        m(&f.restic_restore_s),
        "s",
    );
    print!("{r}");
    write_section(&args.results, "remote", &r)
}

fn restic_version() -> String {
    Command::new("restic")
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
