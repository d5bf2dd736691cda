//! The 9P benchmark: a 9P2000.L load client (`p9server::client`, one
//! request in flight per session, as the kernel's client sends a process's
//! requests) drives Strata's server — the node daemon serving a mount of
//! the Debian image through `snapctl serve9p` — and `diod` exporting a copy
//! of the same tree from ext4, over the same transports (a Unix socket and
//! loopback TCP), in one run.
//!
//! Both servers are asked for a 1 MiB `msize`; diod grants 64 KiB, so the
//! main rows run Strata at 64 KiB too (same messages on the wire) and one
//! extra row shows Strata at 1 MiB.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use p9server::client::{Client, ClientError};
use p9server::proto::{Reply, Request};
use p9server::Listen;
use serde_json::json;

use crate::daemon::StrataDaemon;
use crate::machine;
use crate::report::{median, write_section};
use crate::tools::{drop_caches, remove, require, timed};

#[derive(clap::Args)]
pub struct Args {
    /// Runs of every workload (medians are reported; the disk-bound synced
    /// writes vary by a fifth from run to run on this kind of machine).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds each timed-loop workload runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Sessions of the concurrent workloads (random I/O, metadata).
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Sessions of the many-sessions workload.
    #[arg(long, default_value_t = 64)]
    many: usize,
    /// Size of the sequentially written and read file, MiB.
    #[arg(long, default_value_t = 256)]
    file_mib: u64,
    /// The Debian tree both servers export.
    #[arg(long, default_value = "/var/cache/strata-fixtures/bookworm-buildd")]
    image: PathBuf,
    /// Scratch directory (on the disk under test).
    #[arg(long, default_value = "/var/tmp/strata-bench/p9")]
    work: PathBuf,
    /// The `snapctl` binary (the node daemon).
    #[arg(long, default_value = "target/release/snapctl")]
    snapctl: PathBuf,
    /// The 9p test guest (`fixtures/guest-9p.sh` prints it); without it the
    /// guest's smoke figure is left out.
    #[arg(long)]
    guest: Option<PathBuf>,
    /// Results file to update.
    #[arg(long, default_value = "benches/RESULTS.md")]
    results: PathBuf,
}

/// One server endpoint under test.
#[derive(Clone)]
struct Target {
    label: String,
    listen: Listen,
    aname: String,
    msize: u32,
}

impl Target {
    fn session(&self) -> Result<(Client, u32)> {
        let mut c = Client::connect(&self.listen, self.msize)
            .with_context(|| format!("connecting to {}", self.label))?;
        c.attach(0, &self.aname, 0)?;
        let iounit = c.msize - 24;
        Ok((c, iounit))
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const WORKLOADS: [&str; 13] = [
    "sequential write (MB/s)",
    "sequential read (MB/s)",
    "4 KiB random read (IOPS)",
    "4 KiB random write (IOPS)",
    "4 KiB random write + fsync (IOPS)",
    "walk + getattr (ops/s)",
    "create (ops/s)",
    "readdir, 1,000 entries (entries/s)",
    "unlink (ops/s)",
    "many sessions: walk + getattr (ops/s)",
    "Debian tree read, cold (MB/s)",
    "Debian tree read, hot (MB/s)",
    "Debian tree read, hot (files/s)",
];

/// Runs `work` in `sessions` threads for `seconds`; total operations/s.
fn timed_loop(
    target: &Target,
    sessions: usize,
    seconds: f64,
    setup: impl Fn(&mut Client, usize) -> Result<()> + Sync,
    work: impl Fn(&mut Client, usize, &mut Rng) -> Result<u64> + Sync,
) -> Result<f64> {
    let stop = AtomicBool::new(false);
    let mut clients = Vec::new();
    for i in 0..sessions {
        let (mut c, _) = target.session()?;
        setup(&mut c, i)?;
        clients.push(c);
    }
    let started = Instant::now();
    let totals: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                let (stop, work) = (&stop, &work);
                s.spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += work(&mut c, i, &mut rng)?;
                    }
                    Ok(n)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().expect("load thread"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut total = 0;
    for t in totals {
        total += t?;
    }
    Ok(total as f64 / elapsed)
}

/// [`timed_loop`] with the concurrent workloads' session count and time.
fn sessions_loop(
    args: &Args,
    target: &Target,
    setup: impl Fn(&mut Client, usize) -> Result<()> + Sync,
    work: impl Fn(&mut Client, usize, &mut Rng) -> Result<u64> + Sync,
) -> Result<f64> {
    timed_loop(target, args.sessions, args.seconds, setup, work)
}

fn open_file(c: &mut Client, fid: u32, path: &str, flags: i32) -> Result<()> {
    c.walk(0, fid, path)?;
    c.lopen(fid, flags as u32)?;
    Ok(())
}

fn mkdir(c: &mut Client, path: &str) -> Result<()> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    c.walk(0, 90, parent)?;
    let r = c.call(&Request::Mkdir {
        dfid: 90,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        gid: 0,
    });
    c.clunk(90)?;
    match r {
        Ok(_) => Ok(()),
        Err(ClientError::Remote(e)) if e == libc::EEXIST as u32 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Every workload once against `target`; figures in [`WORKLOADS`] order.
fn workloads(args: &Args, target: &Target, scratch: &str, cold: &dyn Fn()) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    let (mut c, iounit) = target.session()?;
    mkdir(&mut c, scratch)?;
    let file = format!("{scratch}/seq.bin");
    let bytes = args.file_mib << 20;

    // Sequential write, then read, of one file.
    c.walk(0, 1, scratch)?;
    c.call(&Request::Lcreate {
        fid: 1,
        name: b"seq.bin".to_vec(),
        flags: (libc::O_RDWR | libc::O_TRUNC) as u32,
        mode: 0o644,
        gid: 0,
    })
    .or_else(|_| -> Result<Reply> {
        c.clunk(1)?;
        open_file(&mut c, 1, &file, libc::O_RDWR | libc::O_TRUNC)?;
        Ok(Reply::Clunk {})
    })?;
    let buf: Vec<u8> = (0..iounit).map(|i| (i * 13 % 251) as u8).collect();
    let started = Instant::now();
    let mut at = 0;
    while at < bytes {
        let n = (bytes - at).min(u64::from(iounit)) as usize;
        at += u64::from(c.write(1, at, &buf[..n])?);
    }
    out.push(bytes as f64 / 1e6 / started.elapsed().as_secs_f64());
    c.clunk(1)?;
    open_file(&mut c, 1, &file, libc::O_RDONLY)?;
    let started = Instant::now();
    let mut at = 0;
    while at < bytes {
        let got = c.read(1, at, iounit)?;
        if got.is_empty() {
            bail!("{}: short read at {at}", target.label);
        }
        at += got.len() as u64;
    }
    out.push(bytes as f64 / 1e6 / started.elapsed().as_secs_f64());
    c.clunk(1)?;

    // 4 KiB random I/O on that file.
    let blocks = bytes / 4096;
    let open_rw = |c: &mut Client, _: usize| open_file(c, 1, &file, libc::O_RDWR);
    out.push(sessions_loop(args, target, open_rw, |c, _, rng| {
        c.read(1, rng.next() % blocks * 4096, 4096)?;
        Ok(1)
    })?);
    let block = [0x5au8; 4096];
    out.push(sessions_loop(args, target, open_rw, |c, _, rng| {
        c.write(1, rng.next() % blocks * 4096, &block)?;
        Ok(1)
    })?);
    // The file's earlier writes are flushed untimed first, so that the
    // loop measures synced 4 KiB writes, not the writeback of the rest.
    let open_synced = |c: &mut Client, i: usize| -> Result<()> {
        open_rw(c, i)?;
        c.call(&Request::Fsync {
            fid: 1,
            datasync: 0,
        })?;
        Ok(())
    };
    out.push(sessions_loop(args, target, open_synced, |c, _, rng| {
        c.write(1, rng.next() % blocks * 4096, &block)?;
        c.call(&Request::Fsync {
            fid: 1,
            datasync: 0,
        })?;
        Ok(1)
    })?);

    // Metadata.
    let walk_getattr = |c: &mut Client, _: usize, _: &mut Rng| -> Result<u64> {
        c.walk(0, 2, "usr/share/common-licenses/GPL-3")?;
        c.getattr(2)?;
        c.clunk(2)?;
        Ok(1)
    };
    out.push(sessions_loop(args, target, |_, _| Ok(()), walk_getattr)?);
    for i in 0..args.sessions {
        mkdir(&mut c, &format!("{scratch}/m{i}"))?;
    }
    let counters: Vec<std::sync::atomic::AtomicU64> = (0..args.sessions)
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    out.push(sessions_loop(
        args,
        target,
        |_, _| Ok(()),
        |c, i, _| {
            let n = counters[i].fetch_add(1, Ordering::Relaxed);
            c.walk(0, 3, &format!("{scratch}/m{i}"))?;
            c.lcreate(3, &format!("f{n}"), 0o644)?;
            c.clunk(3)?;
            Ok(1)
        },
    )?);
    // Listing a directory of 1,000 entries.
    let listing = format!("{scratch}/list");
    mkdir(&mut c, &listing)?;
    for n in 0..1000 {
        c.walk(0, 4, &listing)?;
        let _ = c.lcreate(4, &format!("entry-{n:04}"), 0o644);
        c.clunk(4)?;
    }
    out.push(sessions_loop(
        args,
        target,
        |_, _| Ok(()),
        |c, _, _| {
            c.walk(0, 5, &listing)?;
            c.lopen(5, libc::O_RDONLY as u32)?;
            let n = c.readdir_all(5)?.len() as u64;
            c.clunk(5)?;
            Ok(n)
        },
    )?);
    // Unlink what the create loop made.
    let made: Vec<u64> = counters.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let next: Vec<std::sync::atomic::AtomicU64> = (0..args.sessions)
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..args.sessions)
            .map(|i| {
                let (made, next) = (&made, &next);
                s.spawn(move || -> Result<()> {
                    let (mut c, _) = target.session()?;
                    let dir = format!("{scratch}/m{i}");
                    c.walk(0, 6, &dir)?;
                    // As the kernel does: Tunlinkat, or walk + Tremove
                    // where the server has no Tunlinkat (diod).
                    let mut unlinkat = true;
                    loop {
                        let n = next[i].fetch_add(1, Ordering::Relaxed);
                        if n >= made[i] {
                            return Ok(());
                        }
                        if unlinkat {
                            match c.call(&Request::Unlinkat {
                                dirfid: 6,
                                name: format!("f{n}").into_bytes(),
                                flags: 0,
                            }) {
                                Ok(_) => continue,
                                Err(ClientError::Remote(e)) if e == libc::EOPNOTSUPP as u32 => {
                                    unlinkat = false
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                        c.walk(6, 7, &format!("f{n}"))?;
                        c.call(&Request::Remove { fid: 7 })?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("unlink thread")?;
        }
        Ok(())
    })?;
    out.push(made.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64());
    out.push(timed_loop(
        target,
        args.many,
        args.seconds,
        |_, _| Ok(()),
        walk_getattr,
    )?);

    // The whole Debian tree, cold then hot.
    drop(c);
    cold();
    let (mb, _) = read_tree(target)?;
    out.push(mb);
    let (mb, files) = read_tree(target)?;
    out.push(mb);
    out.push(files);
    Ok(out)
}

/// Reads every regular file of the exported Debian tree (skipping the
/// benchmark's scratch directories); MB/s and files/s.
fn read_tree(target: &Target) -> Result<(f64, f64)> {
    let (mut c, iounit) = target.session()?;
    let started = Instant::now();
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        c.walk(0, 1, &dir)?;
        c.lopen(1, libc::O_RDONLY as u32)?;
        let entries = c.readdir_all(1)?;
        c.clunk(1)?;
        for e in entries {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            if name == "." || name == ".." || (dir.is_empty() && name.starts_with("p9bench")) {
                continue;
            }
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            match e.typ {
                libc::DT_DIR => stack.push(path),
                libc::DT_REG => {
                    c.walk(0, 2, &path)?;
                    c.lopen(2, libc::O_RDONLY as u32)?;
                    let mut at = 0u64;
                    loop {
                        let data = c.read(2, at, iounit)?;
                        if data.is_empty() {
                            break;
                        }
                        at += data.len() as u64;
                    }
                    bytes += at;
                    files += 1;
                    c.clunk(2)?;
                }
                _ => {}
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((bytes as f64 / 1e6 / secs, files as f64 / secs))
}

/// `diod` exporting `export`, listening on a Unix socket and TCP.
struct Diod {
    child: Child,
}

impl Diod {
    fn start(export: &Path, socket: &Path, port: u16) -> Result<Diod> {
        let child = Command::new("diod")
            .args(["-f", "-n", "-L", "stderr", "-e"])
            .arg(export)
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-l")
            .arg(socket)
            .stderr(Stdio::null())
            .spawn()
            .context("starting diod")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("diod did not create {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Diod { child })
    }
}

impl Drop for Diod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest's smoke figure: Debian's kernel in QEMU (TCG) mounts the
/// server's tree over 9p (virtio-serial relayed into `trans=fd`, 64 KiB
/// msize) and times `tar` of all of it. Seconds and bytes.
fn guest_tar(guest: &Path, socket: &Path, aname: &str) -> Result<(f64, u64)> {
    let output = Command::new("fixtures/boot-guest-9p.sh")
        .arg(guest)
        .arg(socket)
        .arg("strata.mode=smoke")
        .arg(format!("strata.aname={aname}"))
        .output()
        .context("running fixtures/boot-guest-9p.sh")?;
    let console = String::from_utf8_lossy(&output.stdout);
    let figure = |name: &str| -> Option<u64> {
        console
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    match (figure("TIME tar_ms"), figure("TIME tar_bytes")) {
        (Some(ms), Some(bytes)) => Ok((ms as f64 / 1000.0, bytes)),
        _ => bail!("the guest printed no tar figures:\n{console}"),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the benchmark and writes its RESULTS.md section.
pub fn run(args: Args) -> Result<()> {
    require("diod")?;
    if !args.snapctl.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p snapshotter`",
            args.snapctl.display()
        );
    }
    remove(&args.work)?;
    fs::create_dir_all(&args.work)?;
    let work = fs::canonicalize(&args.work)?;

    // diod's export: a copy of the image on the same disk.
    let export = work.join("export");
    eprintln!("copying {} for diod", args.image.display());
    timed(&format!(
        "cp -a {} {}",
        crate::tools::shell_quote(&args.image),
        crate::tools::shell_quote(&export)
    ))?;
    let diod_sock = work.join("diod.sock");
    let diod_port = free_port()?;
    let _diod = Diod::start(&export, &diod_sock, diod_port)?;

    // Strata: the daemon mounts the image and serves it.
    let home = work.join("home");
    let mut daemon = StrataDaemon::start(&args.snapctl, &home)?;
    daemon.call(
        "image.import",
        json!({ "source": args.image, "name": "debian" }),
    )?;
    let mnt = work.join("mnt");
    fs::create_dir_all(&mnt)?;
    let mount = daemon.call(
        "mount.create",
        json!({ "image": "debian", "mountpoint": mnt, "quota_bytes": 64u64 << 30 }),
    )?;
    let id = mount["id"].as_str().context("mount id")?.to_string();
    let strata_sock = work.join("strata.sock");
    daemon.call(
        "serve9p.start",
        json!({ "mount": id, "listen": format!("unix:{}", strata_sock.display()) }),
    )?;
    let tcp = daemon.call(
        "serve9p.start",
        json!({ "mount": id, "listen": "tcp:127.0.0.1:0" }),
    )?;
    let strata_tcp: Listen = tcp["listen"].as_str().context("listen address")?.parse()?;

    let export_name = export.display().to_string();
    // The guest's own tar of the pristine tree through the kernel client.
    let mut smoke = Vec::new();
    if let Some(guest) = &args.guest {
        for (label, socket, aname) in [
            ("diod", &diod_sock, export_name.as_str()),
            ("Strata", &strata_sock, ""),
        ] {
            eprintln!("guest tar through {label}");
            let (secs, bytes) = guest_tar(guest, socket, aname)?;
            smoke.push((label, secs, bytes));
        }
    }
    let targets = [
        Target {
            label: "diod, Unix socket".into(),
            listen: Listen::Unix(diod_sock.clone()),
            aname: export_name.clone(),
            msize: 64 << 10,
        },
        Target {
            label: "Strata, Unix socket".into(),
            listen: Listen::Unix(strata_sock.clone()),
            aname: String::new(),
            msize: 64 << 10,
        },
        Target {
            label: "diod, TCP".into(),
            listen: Listen::Tcp(format!("127.0.0.1:{diod_port}").parse()?),
            aname: export_name,
            msize: 64 << 10,
        },
        Target {
            label: "Strata, TCP".into(),
            listen: strata_tcp,
            aname: String::new(),
            msize: 64 << 10,
        },
        Target {
            label: "Strata, Unix socket, msize 1 MiB".into(),
            listen: Listen::Unix(strata_sock),
            aname: String::new(),
            msize: 1 << 20,
        },
    ];
    let cold = || {
        drop_caches();
    };
    let mut figures: Vec<Vec<Vec<f64>>> = vec![Vec::new(); targets.len()];
    for run in 0..args.runs {
        for (t, target) in targets.iter().enumerate() {
            eprintln!("run {}/{}: {}", run + 1, args.runs, target.label);
            let scratch = format!("p9bench-{run}-{t}");
            let f = workloads(&args, target, &scratch, &cold)?;
            eprintln!("  {f:.0?}");
            figures[t].push(f);
        }
    }
    let medians: Vec<Vec<f64>> = figures
        .iter()
        .map(|runs| {
            (0..WORKLOADS.len())
                .map(|w| median(&runs.iter().map(|r| r[w]).collect::<Vec<_>>()))
                .collect()
        })
        .collect();
    drop(daemon);
    let body = report(&args, &targets, &medians, &smoke, &work);
    write_section(&args.results, "p9", &body)?;
    println!("{body}");
    remove(&work)?;
    Ok(())
}

fn report(
    args: &Args,
    targets: &[Target],
    m: &[Vec<f64>],
    smoke: &[(&str, f64, u64)],
    work: &Path,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## 9P2000.L server: Strata vs diod\n");
    let _ = writeln!(
        s,
        "`benches/run.sh p9` — a 9P2000.L load client on the host (one request in flight \
         per session) against the node daemon serving a mount of `{}` (`snapctl serve9p`) \
         and `diod -n` exporting a copy of the same tree from ext4, over the same \
         transports, in one run. Medians of {} runs; timed loops run {} s; {} sessions for \
         random I/O and metadata, {} for the many-sessions row; a {} MiB file for \
         sequential and random I/O (fsynced once, untimed, before the synced-writes \
         row); walk + getattr walks `usr/share/common-licenses/GPL-3` \
         from the root, gets its attributes and clunks (3 messages); create is walk + \
         lcreate + clunk. msize 64 KiB (diod's largest) unless stated.\n",
        args.image.display(),
        args.runs,
        args.seconds,
        args.sessions,
        args.many,
        args.file_mib
    );
    let _ = writeln!(s, "{}\n", machine::describe(work));
    for (pair, transport) in [(0, "Unix socket"), (2, "loopback TCP")] {
        let _ = writeln!(s, "### {transport}\n");
        let _ = writeln!(
            s,
            "| workload | diod | Strata | Strata / diod | Strata, msize 1 MiB |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for (w, name) in WORKLOADS.iter().enumerate() {
            let (d, st) = (m[pair][w], m[pair + 1][w]);
            let big = if pair == 0 {
                format!("{:.0}", m[4][w])
            } else {
                "—".into()
            };
            let _ = writeln!(s, "| {name} | {d:.0} | {st:.0} | {:.2}× | {big} |", st / d);
        }
        let _ = writeln!(s);
    }
    if !smoke.is_empty() {
        let _ = writeln!(
            s,
            "**Smoke figure, the guest's own client** (Debian's 6.1 kernel under QEMU TCG, \
             virtio-serial relayed through fifos into `trans=fd`, msize 64 KiB; one run; \
             this measures the emulator and the relay more than the servers): `tar` of the \
             whole tree —"
        );
        for (label, secs, bytes) in smoke {
            let _ = writeln!(
                s,
                "{label} {secs:.1} s ({:.1} MB/s, {bytes} bytes of archive);",
                *bytes as f64 / 1e6 / secs
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Seeds (Modal's 9p root, from its write-up): 1.1 GB/s sequential write, 34K IOPS of \
         4 KiB synced writes — on their hardware, with the kernel client and a VM; figures \
         here are a userspace client over loopback on this 2-core machine. Targets: Strata ≥ diod on \
         every workload and ≥ 1.5× diod on metadata. {} rows in all.",
        targets.len()
    );
    s
}
