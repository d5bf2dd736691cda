//! The sandbox benchmark (`benches/run.sh sandbox`): time from creating a
//! sandbox to its first `exec` returning, on Strata (a fresh image, a
//! snapshot) beside the same runtime on a plain unpacked directory and on
//! kernel overlayfs over that directory; and 100 forks of one sandbox, all
//! running.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use snapshotter::oci::BundleSpec;
use snapshotter::runtime::{Runtime, RuntimeKind};

use crate::daemon::StrataDaemon;
use crate::machine;
use crate::report::{median, write_section};

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each start (medians are over these).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Sandboxes forked at once from one running sandbox.
    #[arg(long, default_value_t = 100)]
    forks: usize,
    /// Runtimes to measure.
    #[arg(long, value_delimiter = ',', default_value = "runsc,runc")]
    runtimes: Vec<String>,
    /// The `snapctl` binary.
    #[arg(long, default_value = "target/release/snapctl")]
    snapctl: PathBuf,
    /// Scratch directory.
    #[arg(long, default_value = "/var/tmp/strata-bench/sandbox")]
    work: PathBuf,
    /// The image (an unpacked Debian root filesystem).
    #[arg(long, default_value = "/var/cache/strata-fixtures/bookworm-minbase")]
    rootfs: PathBuf,
    /// The results file.
    #[arg(long, default_value = "benches/RESULTS.md")]
    results: PathBuf,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Runs `true` in a container through the runtime; fails if it fails.
fn exec_true(runtime: &Runtime, container: &str) -> Result<()> {
    let status = runtime
        .exec_command(container, None, &[], &["true".to_string()])?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("exec in {container} failed: {status}");
    }
    Ok(())
}

/// The runtime started on `root` directly (the baselines): create to
/// first exec returning, in milliseconds.
fn start_plain(runtime: &Runtime, work: &Path, root: &Path, name: &str) -> Result<f64> {
    let bundle = work.join(format!("bundle-{name}"));
    let spec = BundleSpec {
        runtime: runtime.kind,
        root: root.to_path_buf(),
        args: vec!["sleep".into(), "infinity".into()],
        env: Vec::new(),
        cwd: "/".into(),
        hostname: name.into(),
        binds: Vec::new(),
        cgroup: format!("/strata-bench/{name}"),
        cpus: None,
        memory_bytes: None,
        network: false,
    };
    spec.write(&bundle)?;
    let log = work.join(format!("{name}.log"));
    let t = Instant::now();
    runtime.start(&bundle, name, &log)?;
    exec_true(runtime, name)?;
    let took = ms(t);
    runtime.destroy(name)?;
    Ok(took)
}

/// Kernel overlayfs over `lower` mounted, then the runtime started on it:
/// milliseconds from the mount to the first exec returning.
fn start_overlay(runtime: &Runtime, work: &Path, lower: &Path, name: &str) -> Result<f64> {
    let dir = work.join(format!("overlay-{name}"));
    let (upper, scratch, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &scratch, &merged] {
        std::fs::create_dir_all(d)?;
    }
    let t = Instant::now();
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            scratch.display()
        ))
        .arg(&merged)
        .status()?;
    if !status.success() {
        bail!("mounting overlayfs failed");
    }
    let mount_ms = ms(t);
    let started = start_plain(runtime, work, &merged, name);
    let _ = Command::new("umount").arg(&merged).status();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(mount_ms + started?)
}

/// `snapctl sandbox exec ID -- true`, as a user runs it.
fn strata_exec(snapctl: &Path, home: &Path, id: &str) -> Result<()> {
    let status = Command::new(snapctl)
        .arg("--home")
        .arg(home)
        .args(["sandbox", "exec", id, "--", "true"])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("snapctl sandbox exec {id} failed: {status}");
    }
    Ok(())
}

/// A sandbox made through the daemon, then its first exec: milliseconds.
fn start_strata(daemon: &mut StrataDaemon, snapctl: &Path, create: Value) -> Result<f64> {
    let t = Instant::now();
    let info = daemon.call("sandbox.create", create)?;
    let id = info["id"].as_str().context("sandbox id")?.to_string();
    strata_exec(snapctl, &daemon.home, &id)?;
    let took = ms(t);
    daemon.call("sandbox.terminate", json!({ "id": id }))?;
    Ok(took)
}

struct Figures {
    runtime: String,
    plain: f64,
    overlay: f64,
    image: f64,
    snapshot: f64,
    fork_ms: f64,
    forks_running: usize,
    fork_exec_ms: f64,
    terminate_ms: f64,
}

fn measure(args: &Args, kind: RuntimeKind, daemon: &mut StrataDaemon) -> Result<Figures> {
    let name = kind.program();
    let runtime = Runtime::new(kind, &args.work, false)?;
    let (mut plain, mut overlay, mut image, mut snapshot) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // A snapshot to start from: a sandbox that wrote a little.
    let source = daemon.call(
        "sandbox.create",
        json!({ "image": "debian", "runtime": name }),
    )?;
    let source_id = source["id"].as_str().context("id")?.to_string();
    let status = Command::new(&args.snapctl)
        .arg("--home")
        .arg(&daemon.home)
        .args(["sandbox", "exec", &source_id, "--", "sh", "-c"])
        .arg("mkdir -p /project && seq 1 100000 > /project/numbers")
        .status()?;
    if !status.success() {
        bail!("preparing the snapshot's sandbox failed");
    }
    let snap = daemon.call("sandbox.snapshot", json!({ "id": source_id }))?;
    let snap_id = snap["filesystem"]["id"].as_str().context("id")?.to_string();
    daemon.call("snapshot.wait", json!({ "id": snap_id }))?;
    for run in 0..args.runs {
        eprintln!("sandbox: {name} run {}/{}", run + 1, args.runs);
        plain.push(start_plain(
            &runtime,
            &args.work,
            &args.rootfs,
            &format!("plain-{run}"),
        )?);
        overlay.push(start_overlay(
            &runtime,
            &args.work,
            &args.rootfs,
            &format!("ovl-{run}"),
        )?);
        image.push(start_strata(
            daemon,
            &args.snapctl,
            json!({ "image": "debian", "runtime": name }),
        )?);
        snapshot.push(start_strata(
            daemon,
            &args.snapctl,
            json!({ "snapshot": snap_id, "runtime": name }),
        )?);
    }
    eprintln!("sandbox: {name}: {} forks", args.forks);
    let t = Instant::now();
    let forks = daemon.call(
        "sandbox.fork",
        json!({ "id": source_id, "count": args.forks }),
    )?;
    let fork_ms = ms(t);
    let ids: Vec<String> = forks
        .as_array()
        .context("fork list")?
        .iter()
        .filter_map(|f| f["id"].as_str().map(String::from))
        .collect();
    let listed = daemon.call("sandbox.list", Value::Null)?;
    let forks_running = listed
        .as_array()
        .context("list")?
        .iter()
        .filter(|s| s["state"] == "running" && ids.iter().any(|id| s["id"] == id.as_str()))
        .count();
    let t = Instant::now();
    for id in &ids {
        strata_exec(&args.snapctl, &daemon.home, id)?;
    }
    let fork_exec_ms = ms(t);
    let t = Instant::now();
    for id in &ids {
        daemon.call("sandbox.terminate", json!({ "id": id }))?;
    }
    let terminate_ms = ms(t) / ids.len().max(1) as f64;
    daemon.call("sandbox.terminate", json!({ "id": source_id }))?;
    Ok(Figures {
        runtime: name.into(),
        plain: median(&plain),
        overlay: median(&overlay),
        image: median(&image),
        snapshot: median(&snapshot),
        fork_ms,
        forks_running,
        fork_exec_ms,
        terminate_ms,
    })
}

pub fn run(args: Args) -> Result<()> {
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work)?;
    let home = args.work.join("home");
    let mut daemon = StrataDaemon::start(&args.snapctl, &home)?;
    daemon.call(
        "image.import",
        json!({ "name": "debian", "source": args.rootfs }),
    )?;
    let mut all = Vec::new();
    for name in &args.runtimes {
        let kind = RuntimeKind::parse(name)?;
        all.push(measure(&args, kind, &mut daemon)?);
    }
    let mut r = String::new();
    writeln!(
        r,
        "## Sandboxes: create to first exec (`benches/run.sh sandbox`)\n"
    )?;
    writeln!(r, "{}\n", machine::describe(&args.work))?;
    writeln!(
        r,
        "Median of {} runs: milliseconds from asking for a sandbox to its first `exec` of \
         `true` returning. *Plain* runs the runtime on the unpacked Debian directory \
         (bookworm minbase) directly; *overlayfs* mounts kernel overlayfs over it first; \
         Strata's sandboxes are made through the node daemon (`sandbox.create`, then \
         `snapctl sandbox exec`), from the imported image and from a snapshot of a \
         running sandbox. *Added* is Strata's fresh-image figure minus plain: the root's \
         FUSE mount, two synced records, the runtime's start on a FUSE root instead of \
         ext4, and `snapctl sandbox exec` (a daemon call before the runtime's own exec).\n",
        args.runs
    )?;
    writeln!(
        r,
        "| runtime | plain dir | overlayfs | Strata, image | Strata, snapshot | added by Strata |"
    )?;
    writeln!(r, "|---|---|---|---|---|---|")?;
    for f in &all {
        writeln!(
            r,
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:+.0} ms |",
            f.runtime,
            f.plain,
            f.overlay,
            f.image,
            f.snapshot,
            f.image - f.plain
        )?;
    }
    writeln!(
        r,
        "\n{} forks of one running sandbox (`sandbox.fork`: a snapshot of its root, then \
         the sandboxes, 8 started at a time); the call returns once all run:\n",
        args.forks
    )?;
    writeln!(
        r,
        "| runtime | all running after | running | then one exec in each | terminate, each |"
    )?;
    writeln!(r, "|---|---|---|---|---|")?;
    for f in &all {
        writeln!(
            r,
            "| {} | {:.2} s | {}/{} | {:.2} s | {:.0} ms |",
            f.runtime,
            f.fork_ms / 1e3,
            f.forks_running,
            args.forks,
            f.fork_exec_ms / 1e3,
            f.terminate_ms
        )?;
    }
    print!("{r}");
    write_section(&args.results, "sandbox", &r)?;
    Ok(())
}
