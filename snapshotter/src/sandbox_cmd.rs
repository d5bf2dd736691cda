//! `snapctl sandbox …`: sandboxes on OCI runtimes over Strata roots,
//! volumes and snapshots (the node daemon keeps them; see
//! `snapshotter/API.md`, "Sandboxes").
//!
//! `exec` runs the runtime's own `exec` from here, with this process's
//! standard streams: output streams back as it is written, input works,
//! and the command's exit code becomes ours.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::api::{
    DirSnapshotBinding, Op, SandboxCreate, SandboxInfo, SandboxSnapshot, SandboxSnapshotResult,
    SandboxState, VolumeBinding,
};
use crate::client::Client;
use crate::exit;
use crate::output::{human_bytes, human_duration, human_time, Output};
use crate::runtime::Runtime;
use crate::snapshot_cmd::{parse_duration, parse_label};

#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// Start a sandbox on an image or a snapshot; prints its id. A memory
    /// snapshot taken by `sandbox snapshot --memory` resumes its processes.
    Create(Box<CreateArgs>),
    /// Run a command in a sandbox; its output streams back and its exit
    /// code is returned.
    Exec(ExecArgs),
    /// List sandboxes (with --all, also those that ended).
    Ls {
        #[arg(long)]
        all: bool,
    },
    /// Show one sandbox.
    Show { id: String },
    /// Print the output of a sandbox's first process.
    Logs { id: String },
    /// Snapshot a sandbox's root (or one directory of it, or, with
    /// --memory, its memory and root at one instant); prints the ids.
    Snapshot {
        id: String,
        /// Only this directory (absolute, inside the sandbox).
        #[arg(long)]
        dir: Option<String>,
        /// Also its memory, through the runtime's checkpoint (runsc): the
        /// sandbox pauses while both are taken, then runs on.
        #[arg(long)]
        memory: bool,
        /// A label `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Start N sandboxes from a snapshot of a running one (same command,
    /// runtime, limits and bindings); prints their ids.
    Fork {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// End a sandbox; returns once its volumes are committed and durable.
    Terminate { id: String },
    /// Forget ended sandboxes: their records and logs.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The image of its root.
    #[arg(
        long,
        required_unless_present = "from_snapshot",
        conflicts_with = "from_snapshot"
    )]
    image: Option<String>,
    /// A filesystem snapshot for its root, or a sandbox's memory snapshot
    /// to resume.
    #[arg(long, value_name = "ID")]
    from_snapshot: Option<String>,
    /// A volume bound at PATH: `NAME:PATH` (repeatable). Committed when the
    /// sandbox ends.
    #[arg(long = "volume", value_parser = parse_volume, value_name = "NAME:PATH")]
    volumes: Vec<VolumeBinding>,
    /// A directory snapshot bound at PATH: `ID:PATH` (repeatable; a
    /// copy-on-write mount of its own).
    #[arg(long = "dir-snapshot", value_parser = parse_dir_snapshot, value_name = "ID:PATH")]
    dir_snapshots: Vec<DirSnapshotBinding>,
    /// runsc (gVisor, default) or runc.
    #[arg(long, default_value = "runsc")]
    runtime: String,
    /// CPUs (may be fractional).
    #[arg(long = "cpu")]
    cpus: Option<f64>,
    /// Memory limit (e.g. 512M, 2G).
    #[arg(long, value_parser = crate::output::parse_size)]
    memory: Option<u64>,
    /// The root's quota: bytes it may write beyond its image (default 10G).
    #[arg(long, value_parser = crate::output::parse_size)]
    disk: Option<u64>,
    /// Terminate it after this long (e.g. 90s, 30m, 2h).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<u64>,
    /// A label `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Give it the host's network (default: none at all).
    #[arg(long)]
    network: bool,
    /// An environment variable `K=V` for its first process (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<String>,
    /// The first process's working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// The volume server's data directory (default: $STRATA_VOLUME_HOME,
    /// else its default).
    #[arg(long, env = crate::volume_api::VOLUME_HOME_ENV, value_name = "DIR")]
    volume_home: Option<PathBuf>,
    /// Its first process (default: one that waits until it is terminated).
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    id: String,
    #[arg(long)]
    workdir: Option<String>,
    /// `K=V` (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<String>,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_volume(text: &str) -> Result<VolumeBinding, String> {
    let (name, path) = text
        .split_once(':')
        .filter(|(n, p)| !n.is_empty() && p.starts_with('/'))
        .ok_or_else(|| format!("'{text}' is not NAME:/PATH"))?;
    Ok(VolumeBinding {
        name: name.into(),
        path: path.into(),
    })
}

fn parse_dir_snapshot(text: &str) -> Result<DirSnapshotBinding, String> {
    let (snapshot, path) = text
        .split_once(':')
        .filter(|(n, p)| !n.is_empty() && p.starts_with('/'))
        .ok_or_else(|| format!("'{text}' is not SNAPSHOT-ID:/PATH"))?;
    Ok(DirSnapshotBinding {
        snapshot: snapshot.into(),
        path: path.into(),
    })
}

fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(text.to_string()),
        _ => Err(format!("'{text}' is not K=V")),
    }
}

fn state_name(state: SandboxState) -> &'static str {
    match state {
        SandboxState::Starting => "starting",
        SandboxState::Running => "running",
        SandboxState::Exited => "exited",
        SandboxState::Terminated => "terminated",
        SandboxState::Gone => "gone",
    }
}

fn describe(s: &SandboxInfo) -> String {
    let mut text = format!(
        "sandbox {}: {} on {} from {}\n  created {}",
        s.id,
        state_name(s.state),
        s.runtime.program(),
        s.source,
        human_time(s.created)
    );
    if let Some(ended) = s.ended {
        text.push_str(&format!(
            ", ended {} ({} later): {}",
            human_time(ended),
            human_duration(ended - s.created),
            s.end_reason.as_deref().unwrap_or("")
        ));
    } else {
        text.push_str(&format!(", started in {:.0} ms", s.start_ms));
    }
    text.push_str(&format!(
        "\n  root: mount {} at {}; {} of {} written",
        s.root_mount,
        s.rootfs.display(),
        human_bytes(s.used_bytes.unwrap_or(0)),
        human_bytes(s.disk_bytes)
    ));
    for v in &s.volumes {
        text.push_str(&format!(
            "\n  volume {} at {} (session {})",
            v.name, v.path, v.session
        ));
    }
    for d in &s.dir_snapshots {
        text.push_str(&format!(
            "\n  directory snapshot {} at {} (mount {})",
            d.snapshot, d.path, d.mount
        ));
    }
    let mut limits = Vec::new();
    if let Some(c) = s.cpus {
        limits.push(format!("{c} CPUs"));
    }
    if let Some(m) = s.memory_bytes {
        limits.push(format!("{} memory", human_bytes(m)));
    }
    if let Some(t) = s.timeout_secs {
        limits.push(format!("timeout {}", human_duration(t as f64)));
    }
    limits.push(
        if s.network {
            "host network"
        } else {
            "no network"
        }
        .into(),
    );
    text.push_str(&format!("\n  limits: {}", limits.join(", ")));
    text.push_str(&format!("\n  command: {}", s.command.join(" ")));
    for (k, v) in &s.labels {
        text.push_str(&format!("\n  label {k}={v}"));
    }
    text
}

fn list_line(s: &SandboxInfo) -> String {
    format!(
        "{}  {:<10} {:<5} {:<24} {}  {:>9}",
        s.id,
        state_name(s.state),
        s.runtime.program(),
        s.source,
        human_time(s.created),
        human_bytes(s.used_bytes.unwrap_or(0))
    )
}

/// Copies `from` to `to` on a thread, writing each piece as it comes; the
/// receiver hears when `from` ends.
fn forward(
    from: Option<impl std::io::Read + Send + 'static>,
    mut to: impl Write + Send + 'static,
) -> std::sync::mpsc::Receiver<()> {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(mut from) = from {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        let _ = done.send(());
    });
    finished
}

fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => exit::FAILURE,
    }
}

/// `snapctl sandbox …`.
pub fn run(cmd: SandboxCommand, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    match cmd {
        SandboxCommand::Create(args) => {
            let args = *args;
            let info: SandboxInfo = client.call(Op::SandboxCreate(SandboxCreate {
                image: args.image,
                snapshot: args.from_snapshot,
                volumes: args.volumes,
                dir_snapshots: args.dir_snapshots,
                runtime: Some(args.runtime),
                cpus: args.cpus,
                memory_bytes: args.memory,
                disk_bytes: args.disk,
                timeout_secs: args.timeout,
                labels: args.labels.into_iter().collect(),
                network: args.network,
                command: args.command,
                env: args.env,
                workdir: args.workdir,
                volume_home: args
                    .volume_home
                    .map(|p| crate::client::absolute(&p))
                    .transpose()?,
            }))?;
            out.print(&info, || info.id.clone())?;
        }
        SandboxCommand::Exec(args) => {
            let info: SandboxInfo = client.call(Op::SandboxShow {
                id: args.id.clone(),
            })?;
            if info.state != SandboxState::Running {
                return Err(exit::InvalidInput(format!(
                    "sandbox {} is {} ({})",
                    info.id,
                    state_name(info.state),
                    info.end_reason.as_deref().unwrap_or("")
                ))
                .into());
            }
            drop(client);
            let runtime = Runtime {
                kind: info.runtime,
                root: info.runtime_root.clone(),
                network: info.network,
            };
            let mut child = runtime
                .exec_command(
                    &info.container,
                    args.workdir.as_deref(),
                    &args.env,
                    &args.command,
                )?
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("running {}", info.runtime.program()))?;
            // Through pipes: gVisor writes a donated regular file at its own
            // offsets (from 0), which would overwrite what a redirect or an
            // earlier command put there.
            let (out_done, err_done) = (
                forward(child.stdout.take(), std::io::stdout()),
                forward(child.stderr.take(), std::io::stderr()),
            );
            let status = child.wait().context("waiting for the command")?;
            // A process the command left behind may hold its output open:
            // what it wrote by now is forwarded, not what comes later.
            for done in [out_done, err_done] {
                let _ = done.recv_timeout(std::time::Duration::from_secs(1));
            }
            return Ok(exit::code(exit_code_of(status)));
        }
        SandboxCommand::Ls { all } => {
            let list: Vec<SandboxInfo> = client.call(Op::SandboxList)?;
            let shown: Vec<&SandboxInfo> = list
                .iter()
                .filter(|s| {
                    all || matches!(s.state, SandboxState::Running | SandboxState::Starting)
                })
                .collect();
            out.print(&shown, || {
                if shown.is_empty() {
                    return String::new();
                }
                let header = format!(
                    "{:<12}  {:<10} {:<5} {:<24} {:<23}  {:>9}",
                    "ID", "STATE", "RT", "FROM", "CREATED", "WRITTEN"
                );
                std::iter::once(header)
                    .chain(shown.iter().map(|s| list_line(s)))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        SandboxCommand::Show { id } => {
            let info: SandboxInfo = client.call(Op::SandboxShow { id })?;
            out.print(&info, || describe(&info))?;
        }
        SandboxCommand::Logs { id } => {
            let info: SandboxInfo = client.call(Op::SandboxShow { id })?;
            let bytes = std::fs::read(&info.log)
                .with_context(|| format!("reading {}", info.log.display()))?;
            std::io::stdout().write_all(&bytes)?;
        }
        SandboxCommand::Snapshot {
            id,
            dir,
            memory,
            labels,
        } => {
            let made: SandboxSnapshotResult =
                client.call(Op::SandboxSnapshot(SandboxSnapshot {
                    id,
                    dir,
                    memory,
                    labels: labels.into_iter().collect(),
                }))?;
            out.print(&made, || match &made.memory {
                Some(memory) => format!(
                    "{}\n{}\n(memory snapshot {} with filesystem snapshot {}; paused {:.0} ms)",
                    memory.id,
                    made.filesystem.id,
                    memory.id,
                    made.filesystem.id,
                    made.paused_ms.unwrap_or(0.0)
                ),
                None => made.filesystem.id.clone(),
            })?;
        }
        SandboxCommand::Fork { id, count } => {
            let made: Vec<SandboxInfo> = client.call(Op::SandboxFork { id, count })?;
            out.print(&made, || {
                made.iter()
                    .map(|s| s.id.clone())
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        SandboxCommand::Rm { ids } => {
            let mut removed = Vec::new();
            for id in ids {
                let info: SandboxInfo = client.call(Op::SandboxRemove { id })?;
                removed.push(info);
            }
            out.print(&removed, || {
                removed
                    .iter()
                    .map(|s| format!("removed sandbox {}", s.id))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        SandboxCommand::Terminate { id } => {
            let info: SandboxInfo = client.call(Op::SandboxTerminate { id })?;
            out.print(&info, || {
                format!(
                    "sandbox {} terminated{}",
                    info.id,
                    if info.volumes.is_empty() {
                        String::new()
                    } else {
                        format!("; {} volume(s) committed", info.volumes.len())
                    }
                )
            })?;
        }
    }
    Ok(exit::code(exit::OK))
}
