//! The volume benchmark: how long a volume session takes to commit, to
//! reload and to mount as the volume grows (10,000 / 100,000 / 1,000,000
//! files), beside what a platform does today to persist a directory — an
//! incremental `restic backup` and `git add -A && git commit` of the same
//! tree with the same files changed — and the small-file and sequential
//! rates of a volume's FUSE mount beside ext4 on the same disk.
//!
//! The volumes are built directly in the store (files `dNNNN/fNNNN`, a
//! thousand to a directory, sharing one 4 KiB blob); the baselines get the
//! same tree written out on ext4. Each commit or backup round first
//! changes 1,000 files spread over the tree.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cas::{ChunkId, Chunking, Store};
use layerfs::cowfs::{CowFs, MountConfig, ROOT_INO};
use layerfs::memtree::{implicit_dir_attrs, MemKind, MemNode};
use layerfs::tree::{InodeKind, Timestamp};
use layerfs::MemTree;
use volume_server::{CommitKind, Session, Volumes};

use crate::daemon::ApiConnection;
use crate::machine;
use crate::report::write_section;
use crate::tools::{drop_caches, new_daemon_store, remove, require};

#[derive(clap::Args)]
pub struct Args {
    /// Volume sizes, in files.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    sizes: Vec<usize>,
    /// Rounds of each timed operation (p50 and p99 are over these).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Files changed before each commit, reload or backup.
    #[arg(long, default_value_t = 1000)]
    changed: usize,
    /// Largest size also written out for restic and git (writing out and
    /// first-indexing a million files takes them many minutes).
    #[arg(long, default_value_t = 100_000)]
    baseline_max: usize,
    /// Files of the small-file workload.
    #[arg(long, default_value_t = 10_000)]
    small_files: usize,
    /// Size of the sequentially written and read file, MiB.
    #[arg(long, default_value_t = 1024)]
    file_mib: usize,
    /// The `volume-server` binary (its 9P listener is measured).
    #[arg(long, default_value = "target/release/volume-server")]
    volume_server: PathBuf,
    /// Scratch directory (on the disk under test).
    #[arg(long, default_value = "/var/tmp/strata-bench/volume")]
    work: PathBuf,
    /// The results file.
    #[arg(long, default_value = "benches/RESULTS.md")]
    results: PathBuf,
}

const PER_DIR: usize = 1000;

/// Latencies of one operation, milliseconds.
#[derive(Default)]
struct Latency(Vec<f64>);

impl Latency {
    fn time<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let out = f()?;
        self.0.push(started.elapsed().as_secs_f64() * 1000.0);
        Ok(out)
    }

    /// Nearest-rank percentile `p` (0–100).
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    fn cell(&self) -> String {
        if self.0.is_empty() {
            return "—".into();
        }
        format!(
            "{:.1} / {:.1}",
            self.percentile(50.0),
            self.percentile(99.0)
        )
    }
}

/// The figures of one volume size.
#[derive(Default)]
struct SizeRow {
    files: usize,
    mount: Latency,
    commit: Latency,
    reload: Latency,
    git: Latency,
    restic: Latency,
}

pub fn run(args: Args) -> Result<()> {
    require("git")?;
    require("restic")?;
    remove(&args.work)?;
    fs::create_dir_all(&args.work)?;
    let work = fs::canonicalize(&args.work)?;
    // Small files and sequential I/O first, before the large trees below
    // are written and deleted: ext4 without a journal (this disk) skips
    // inodes freed in the last minutes when it allocates new ones, which
    // makes creates slow for minutes after mass deletions.
    eprintln!("small files and sequential I/O");
    let io = io_rounds(&args, &work.join("io"))?;
    let mut rows = Vec::new();
    for &files in &args.sizes {
        eprintln!("volume of {files} files");
        let mut row = SizeRow {
            files,
            ..SizeRow::default()
        };
        strata_rounds(&args, &work.join(format!("strata-{files}")), &mut row)?;
        if files <= args.baseline_max {
            baseline_rounds(&args, &work.join(format!("plain-{files}")), &mut row)?;
        }
        rows.push(row);
    }
    let body = report(&args, &rows, &io, &work);
    write_section(&args.results, "volume", &body)?;
    println!("{body}");
    remove(&work)?;
    Ok(())
}

/// The path of file `i` of a volume tree.
fn file_path(i: usize) -> String {
    format!("d{:04}/f{:04}", i / PER_DIR, i % PER_DIR)
}

/// `count` files spread over a tree of `files` (round `round` picks
/// another set).
fn spread(files: usize, count: usize, round: usize) -> Vec<usize> {
    let step = (files / count.max(1)).max(1);
    (0..count.min(files))
        .map(|k| (k * step + round * 7 + 1) % files)
        .collect()
}

/// A tree of `files` 4 KiB files sharing one blob, built in the store.
fn build(store: &Store, files: usize) -> Result<ChunkId> {
    let writer = store.writer("volume bench");
    let bytes = vec![7u8; 4096];
    let blob = writer.write_blob(&mut &bytes[..], Chunking::ContentDefined)?;
    let mut dir_attrs = implicit_dir_attrs();
    dir_attrs.mode = 0o755;
    let mut file_attrs = dir_attrs.clone();
    file_attrs.mode = 0o644;
    let mut tree = MemTree::new(dir_attrs.clone());
    // 2023-11-14, and one second earlier for each further file.
    let written: i64 = 1_700_000_000;
    for i in 0..files {
        // One content for all (a blob stored once), but each file its
        // own modification time, as files written over time have: every
        // directory is then a node and pages of its own, as in a real
        // volume, not one node shared by all a thousand directories.
        let mut attrs = file_attrs.clone();
        attrs.mtime = Timestamp::new(written - i as i64, 0).context("a file's mtime")?;
        attrs.ctime = attrs.mtime;
        tree.insert(
            file_path(i).as_bytes(),
            MemNode {
                attrs,
                kind: MemKind::Other(InodeKind::File {
                    size: 4096,
                    blob: Some(blob.id),
                }),
            },
            &dir_attrs,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    }
    let root = tree.store(&writer)?;
    writer.commit()?;
    Ok(root)
}

fn config(dir: &Path) -> MountConfig {
    MountConfig {
        upper_dir: dir.to_path_buf(),
        quota_bytes: 1 << 40,
        inode_quota: 1 << 40,
    }
}

/// Overwrites the start of the file at `path` in `fs`.
fn change(fs: &CowFs, path: &str, text: &[u8]) -> Result<()> {
    let mut at = ROOT_INO;
    for part in path.split('/') {
        at = fs
            .lookup(at, part.as_bytes())
            .map_err(|e| anyhow::anyhow!("lookup {path}: errno {}", e.0))?
            .ino;
    }
    fs.open(at, false)
        .map_err(|e| anyhow::anyhow!("open {path}: errno {}", e.0))?;
    let written = fs.write(at, 0, text);
    fs.release(at);
    written.map_err(|e| anyhow::anyhow!("write {path}: errno {}", e.0))?;
    Ok(())
}

fn strata_rounds(args: &Args, dir: &Path, row: &mut SizeRow) -> Result<()> {
    let store = new_daemon_store(&dir.join("store"))?;
    let tree = build(&store, row.files)?;
    let volumes = Arc::new(Volumes::new(store.clone()));
    let head = volumes.create("bench", 0)?;
    volumes
        .replace("bench", &head, tree, CommitKind::Edit, "bench")?
        .context("the head moved")?;
    let mut serial = 0;
    let mut next_id = || {
        serial += 1;
        format!("s{serial}")
    };
    // Mount: a session over the head, FUSE-mounted, its root listed.
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt)?;
    for _ in 0..args.runs {
        let id = next_id();
        let upper = dir.join(&id);
        let (session, fuse) = row.mount.time(|| {
            let session = Session::open(volumes.clone(), "bench", &id, config(&upper))?;
            let fuse = layerfs::fuse::mount(
                session.fs().clone(),
                &mnt,
                &layerfs::fuse::FuseOptions::default(),
            )?;
            fs::metadata(mnt.join("d0000"))?;
            Ok((session, fuse))
        })?;
        fuse.umount_and_join()?;
        session.close()?;
    }
    // Commit: a session changes files and commits.
    let a = Session::open(volumes.clone(), "bench", "a", config(&dir.join("a")))?;
    let b = Session::open(volumes.clone(), "bench", "b", config(&dir.join("b")))?;
    for round in 0..args.runs {
        for i in spread(row.files, args.changed, round) {
            change(a.fs(), &file_path(i), format!("a{round}").as_bytes())?;
        }
        row.commit.time(|| Ok(a.commit()?))?;
        // Reload: b, which changed files of its own, moves onto a's
        // commit.
        for i in spread(row.files, 10, round + 1000) {
            change(b.fs(), &file_path(i), format!("b{round}").as_bytes())?;
        }
        row.reload.time(|| Ok(b.reload()?))?;
    }
    a.close()?;
    b.close()?;
    // Everything that holds the store goes before its directory.
    drop((a, b));
    drop(volumes);
    drop(store);
    remove(dir)
}

/// Writes the tree out on ext4 and times git and restic over the same
/// rounds of changes.
fn baseline_rounds(args: &Args, dir: &Path, row: &mut SizeRow) -> Result<()> {
    let tree = dir.join("tree");
    let bytes = vec![7u8; 4096];
    for d in 0..row.files.div_ceil(PER_DIR) {
        fs::create_dir_all(tree.join(format!("d{d:04}")))?;
    }
    for i in 0..row.files {
        fs::write(tree.join(file_path(i)), &bytes)?;
    }
    let sh = |command: &str| -> Result<()> {
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&tree)
            .env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_REPOSITORY", dir.join("restic"))
            .env("GIT_AUTHOR_NAME", "bench")
            .env("GIT_AUTHOR_EMAIL", "bench@example.com")
            .env("GIT_COMMITTER_NAME", "bench")
            .env("GIT_COMMITTER_EMAIL", "bench@example.com")
            .status()
            .with_context(|| format!("running {command}"))?;
        if !status.success() {
            bail!("{command}: {status}");
        }
        Ok(())
    };
    sh("git init -q . && git add -A && git commit -q -m first")?;
    sh("restic init -q >/dev/null && restic backup -q . >/dev/null")?;
    let change_round = |round: usize, tag: &str| -> Result<()> {
        for i in spread(row.files, args.changed, round) {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(tree.join(file_path(i)))?;
            f.write_all(format!("{tag}{round}").as_bytes())?;
        }
        Ok(())
    };
    for round in 0..args.runs {
        change_round(round, "g")?;
        row.git
            .time(|| sh("git add -A && git commit -q -m round"))?;
        change_round(round, "r")?;
        row.restic.time(|| sh("restic backup -q . >/dev/null"))?;
    }
    remove(dir)
}

/// Small-file and sequential rates: a volume session's FUSE mount, a 9P
/// session of `volume-server`, and ext4 on the same disk.
struct IoFigures {
    /// (FUSE, ext4) files per second: create, write 4 KiB, close.
    small: (f64, f64),
    /// (FUSE, ext4) MB/s writing a file sequentially (then fsync).
    seq_write: (f64, f64),
    /// (FUSE, ext4) MB/s reading it back, cold.
    seq_read: (f64, f64),
    /// The same three over 9P.
    p9: (f64, f64, f64),
    /// Median 9P round trip (walk, then clunk) on the same connection, µs.
    p9_round_trip_us: f64,
}

fn io_rounds(args: &Args, dir: &Path) -> Result<IoFigures> {
    let store = new_daemon_store(&dir.join("store"))?;
    let volumes = Arc::new(Volumes::new(store.clone()));
    volumes.create("io", 0)?;
    let session = Session::open(volumes.clone(), "io", "io", config(&dir.join("upper")))?;
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt)?;
    let fuse = layerfs::fuse::mount(
        session.fs().clone(),
        &mnt,
        &layerfs::fuse::FuseOptions::default(),
    )?;
    let ext4 = dir.join("ext4");
    fs::create_dir_all(&ext4)?;
    let mut figures = IoFigures {
        small: (0.0, 0.0),
        seq_write: (0.0, 0.0),
        seq_read: (0.0, 0.0),
        p9: (0.0, 0.0, 0.0),
        p9_round_trip_us: 0.0,
    };
    let block = vec![5u8; 4096];
    let big = vec![9u8; 1 << 20];
    for (k, root) in [mnt.clone(), ext4.clone()].iter().enumerate() {
        let small = root.join("small");
        fs::create_dir_all(&small)?;
        let started = Instant::now();
        for i in 0..args.small_files {
            let mut f = fs::File::create(small.join(format!("f{i}")))?;
            f.write_all(&block)?;
        }
        let rate = args.small_files as f64 / started.elapsed().as_secs_f64();
        let path = root.join("big");
        let started = Instant::now();
        {
            let mut f = fs::File::create(&path)?;
            for _ in 0..args.file_mib {
                f.write_all(&big)?;
            }
            f.sync_all()?;
        }
        let write = args.file_mib as f64 * 1.048576 / started.elapsed().as_secs_f64();
        drop_caches();
        let started = Instant::now();
        {
            let mut f = fs::File::open(&path)?;
            let mut buf = vec![0u8; 1 << 20];
            while f.read(&mut buf)? > 0 {}
        }
        let read = args.file_mib as f64 * 1.048576 / started.elapsed().as_secs_f64();
        match k {
            0 => {
                figures.small.0 = rate;
                figures.seq_write.0 = write;
                figures.seq_read.0 = read;
            }
            _ => {
                figures.small.1 = rate;
                figures.seq_write.1 = write;
                figures.seq_read.1 = read;
            }
        }
    }
    fuse.umount_and_join()?;
    session.close()?;
    drop(session);
    drop(volumes);
    drop(store);
    (figures.p9, figures.p9_round_trip_us) = p9_rounds(args, &dir.join("p9"))?;
    remove(dir)?;
    Ok(figures)
}

/// `volume-server`, spoken to over its API socket.
struct VolumeServer {
    child: std::process::Child,
    conn: ApiConnection,
}

impl VolumeServer {
    fn start(binary: &Path, home: &Path) -> Result<VolumeServer> {
        let child = Command::new(binary)
            .arg("--home")
            .arg(home)
            .args(["--autocommit-secs", "0"])
            .env_remove("STRATA_VOLUME_HOME")
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let conn = ApiConnection::open(&home.join("volumes.sock"))?;
        Ok(VolumeServer { child, conn })
    }

    fn call(&mut self, op: &str, args: serde_json::Value) -> Result<serde_json::Value> {
        self.conn.call(op, args)
    }

    /// SIGTERM: every session commits, then the server exits.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill sends a signal to a pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("volume-server exited with {status}");
        }
        Ok(())
    }
}

/// The small-file and sequential workloads through a 9P session of a
/// real `volume-server` (its listener on a Unix socket, one request in
/// flight, as the kernel's client sends one process's requests):
/// (files/s, write MB/s, cold read MB/s), and the median round trip of
/// a request that does no I/O (µs).
fn p9_rounds(args: &Args, dir: &Path) -> Result<((f64, f64, f64), f64)> {
    use p9server::client::Client;
    use p9server::proto::Request;
    let home = dir.join("home");
    fs::create_dir_all(&home)?;
    let mut server = VolumeServer::start(&args.volume_server, &home)?;
    server.call("volume.create", serde_json::json!({ "name": "io" }))?;
    let socket = dir.join("9p.sock");
    server.call(
        "serve9p.start",
        serde_json::json!({ "volumes": ["io"], "listen": format!("unix:{}", socket.display()) }),
    )?;
    let listen = p9server::Listen::Unix(socket);
    let mut c = Client::connect(&listen, 1 << 20)?;
    c.attach(0, "io", 0)?;
    let iounit = c.msize - 24;
    let create = |c: &mut Client, name: &str| -> Result<()> {
        c.walk(0, 1, "")?;
        c.call(&Request::Lcreate {
            fid: 1,
            name: name.as_bytes().to_vec(),
            flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32,
            mode: 0o644,
            gid: 0,
        })?;
        Ok(())
    };
    // The transport's floor: a walk that names nothing new, then its
    // clunk, each one round trip, timed one by one.
    let mut trips = Vec::with_capacity(4000);
    for _ in 0..2000 {
        let started = Instant::now();
        c.walk(0, 2, "")?;
        trips.push(started.elapsed().as_secs_f64() * 1e6);
        let started = Instant::now();
        c.clunk(2)?;
        trips.push(started.elapsed().as_secs_f64() * 1e6);
    }
    trips.sort_by(f64::total_cmp);
    let round_trip_us = trips[trips.len() / 2];
    let block = vec![5u8; 4096];
    let started = Instant::now();
    for i in 0..args.small_files {
        create(&mut c, &format!("f{i}"))?;
        c.write(1, 0, &block)?;
        c.clunk(1)?;
    }
    let small = args.small_files as f64 / started.elapsed().as_secs_f64();
    let bytes = (args.file_mib as u64) << 20;
    let buf = vec![9u8; iounit as usize];
    let started = Instant::now();
    create(&mut c, "big")?;
    let mut at = 0;
    while at < bytes {
        let n = (bytes - at).min(u64::from(iounit)) as usize;
        at += u64::from(c.write(1, at, &buf[..n])?);
    }
    c.call(&Request::Fsync {
        fid: 1,
        datasync: 0,
    })?;
    c.clunk(1)?;
    let write = bytes as f64 / 1e6 / started.elapsed().as_secs_f64();
    drop_caches();
    c.walk(0, 1, "big")?;
    c.lopen(1, libc::O_RDONLY as u32)?;
    let started = Instant::now();
    let mut at = 0;
    while at < bytes {
        let got = c.read(1, at, iounit)?;
        if got.is_empty() {
            bail!("9P: short read at {at}");
        }
        at += got.len() as u64;
    }
    let read = bytes as f64 / 1e6 / started.elapsed().as_secs_f64();
    c.clunk(1)?;
    drop(c);
    server.stop()?;
    Ok(((small, write, read), round_trip_us))
}

fn report(args: &Args, rows: &[SizeRow], io: &IoFigures, work: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Volumes (`benches/run.sh volume`)\n");
    let _ = writeln!(
        s,
        "Volumes of 4 KiB files, a thousand to a directory, built in the store \
         (one content, each file its own modification time, so every directory \
         is a node of its own) and opened as `volume-server` opens its store (the \
         node daemon's default chunk cache); before each commit, reload or backup round {} files spread over the tree are \
         changed. {} rounds; milliseconds, p50 / p99. Commit: a session's capture \
         merged into the head (three-way) and the head moved, durable. Reload: a \
         session that changed 10 files of its own moves onto that commit in place. \
         Mount: a session started over the head, FUSE-mounted and one directory \
         looked up. git: `git add -A && git commit` of the same tree on ext4 with the \
         same files changed; restic: an incremental `restic backup` of it (Debian's \
         restic; written out up to {} files).\n",
        args.changed, args.runs, args.baseline_max
    );
    let _ = writeln!(s, "{}", machine::describe(work));
    let _ = writeln!(
        s,
        "- Build: {}\n",
        if cfg!(debug_assertions) {
            "the dev profile (Strata's crates at opt-level 1, dependencies at 3; \
             `benches/run.sh volume` builds release)"
        } else {
            "release"
        }
    );
    let _ = writeln!(
        s,
        "| files | Strata commit | Strata reload | Strata mount | git commit | restic backup |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for row in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            row.files,
            row.commit.cell(),
            row.reload.cell(),
            row.mount.cell(),
            row.git.cell(),
            row.restic.cell()
        );
    }
    let _ = writeln!(
        s,
        "\nTargets: commit and reload ≤ 100 ms p99 at every size; mount ≤ 20 ms.\n"
    );
    let _ = writeln!(
        s,
        "| workload | volume over FUSE | volume over 9P | ext4 | FUSE ÷ ext4 | 9P ÷ ext4 |\n\
         |---|---|---|---|---|---|"
    );
    for (name, (fuse, ext4), p9, unit) in [
        (
            format!(
                "{} small files: create, write 4 KiB, close",
                args.small_files
            ),
            io.small,
            io.p9.0,
            "files/s",
        ),
        (
            format!("sequential write of {} MiB, then fsync", args.file_mib),
            io.seq_write,
            io.p9.1,
            "MB/s",
        ),
        (
            "sequential read of it, cold".to_string(),
            io.seq_read,
            io.p9.2,
            "MB/s",
        ),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {fuse:.0} {unit} | {p9:.0} {unit} | {ext4:.0} {unit} | {:.2}× | {:.2}× |",
            fuse / ext4,
            p9 / ext4
        );
    }
    let _ = writeln!(
        s,
        "\n9P: a session of a real `volume-server` (its 9P2000.L listener on a Unix \
         socket, `msize` 1 MiB), driven by `p9server::client` with one request in \
         flight as the kernel's client sends one process's requests; ext4: the same \
         calls on a directory of this disk. Target: small files over 9P ≥ 50% of ext4's.\n\n\
         The transport's floor in this run: a 9P request that does no I/O (a walk to \
         the same directory, or a clunk) took {:.0} µs from send to answer (median of \
         4,000). A small file is 4 such round trips (walk, lcreate, write, clunk) \
         before any work, so one client doing one file at a time can make at most \
         {:.0} files/s over 9P here = {:.2}× ext4's rate, whatever the server does.",
        io.p9_round_trip_us,
        1e6 / (4.0 * io.p9_round_trip_us),
        1e6 / (4.0 * io.p9_round_trip_us) / io.small.1
    );
    s
}
