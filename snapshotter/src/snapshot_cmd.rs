//! `snapctl snapshot create|list|show|diff|rm` and `snapctl fork`:
//! requests to the node daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use layerfs::DiffEntry;

use crate::api::{self, MountInfo, Op, SnapshotFilter, SnapshotInfo, SnapshotState};
use crate::client::Client;
use crate::exit;
use crate::output::{human_bytes, number_and_unit, parse_size, Output};

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot a live mount (a mount point or a mount id); prints the
    /// snapshot id. The sandbox keeps running.
    Create(CreateArgs),
    /// List snapshots (filter by label, parent or mount).
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show one snapshot: parent, time, changed and total bytes, state.
    Show {
        id: String,
        /// Wait until it is durable (or failed) first.
        #[arg(long)]
        wait: bool,
    },
    /// Paths added, modified and deleted from snapshot A to snapshot B.
    Diff { a: String, b: String },
    /// Remove a snapshot; its unique data is collected by the next GC.
    Rm { id: String },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Mount point or mount id.
    mount: String,
    /// Snapshot only this directory of the mount (a path inside it).
    #[arg(long)]
    dir: Option<String>,
    /// A label `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Remove the snapshot after this long (e.g. 30m, 12h, 7d); default:
    /// keep until removed.
    #[arg(long, value_parser = parse_duration)]
    expire: Option<u64>,
    /// Return only once the snapshot is durable.
    #[arg(long)]
    wait_durable: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only snapshots with this label `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Only children of this parent (a snapshot id, `image:NAME` or
    /// `snapshot:ID`).
    #[arg(long)]
    parent: Option<String>,
    /// Only snapshots of this mount (id or mount point).
    #[arg(long)]
    mount: Option<String>,
}

/// `snapctl fork`.
#[derive(Args, Debug)]
pub struct ForkArgs {
    /// Snapshot to fork.
    id: String,
    /// How many mounts.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Directory under which mount points ID-0 … ID-(N-1) are made.
    #[arg(long, default_value = ".")]
    under: PathBuf,
    /// Size quota of each mount's upper layer.
    #[arg(long, value_parser = parse_size, default_value = "10G")]
    quota: u64,
    /// Most inodes each mount's sandbox may make; past it, ENOSPC.
    #[arg(long, default_value_t = layerfs::cowfs::DEFAULT_INODE_QUOTA,
          value_parser = clap::value_parser!(u64).range(1..))]
    inodes: u64,
    /// FUSE request threads per mount.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not a label (use key=value)")),
    }
}

/// Parses `90`, `90s`, `30m`, `12h`, `7d` into seconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let (number, unit) = number_and_unit(text, "a duration (try 30m, 12h or 7d)")?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use s, m, h or d)"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too long"))
}

/// A mount argument as the daemon wants it: a path is made absolute here.
fn mount_key(target: &str) -> String {
    match std::fs::canonicalize(target) {
        Ok(path) if target.contains('/') || Path::new(target).is_dir() => {
            path.display().to_string()
        }
        _ => target.to_string(),
    }
}

fn state_name(s: SnapshotState) -> &'static str {
    match s {
        SnapshotState::Converting => "converting",
        SnapshotState::Durable => "durable",
        SnapshotState::Failed => "failed",
    }
}

fn describe(s: &SnapshotInfo) -> String {
    if let Some(memory) = &s.memory {
        return describe_memory(s, memory);
    }
    let mut lines = vec![
        format!("snapshot  {}", s.id),
        format!("kind      {}", s.kind),
        format!(
            "mount     {}{}",
            s.mount,
            s.path
                .as_ref()
                .map(|p| format!(" (directory /{p})"))
                .unwrap_or_default()
        ),
        format!("parent    {}", s.parent),
        format!("image     {}", s.image),
        format!(
            "created   {} (call took {:.1} ms)",
            crate::output::human_time(s.created),
            s.call_ms
        ),
        format!("state     {}", state_name(s.state)),
        format!(
            "changed   {} in {} files",
            human_bytes(s.changed_bytes),
            s.changed_files
        ),
    ];
    if let Some(ms) = s.durable_ms {
        lines.push(format!(
            "durable   after {ms:.1} ms; {} new in the store",
            human_bytes(s.new_bytes)
        ));
    }
    if let Some(total) = s.total_bytes {
        lines.push(format!("total     {}", human_bytes(total)));
    }
    if let Some(tree) = &s.tree {
        lines.push(format!("tree      {tree}"));
    }
    if !s.labels.is_empty() {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(format!("labels    {}", labels.join(",")));
    }
    if let Some(t) = s.expires {
        lines.push(format!(
            "expires   {} (in {})",
            crate::output::human_time(t as f64),
            crate::output::human_duration((t as f64 - crate::snapshots::now_secs()).max(0.0))
        ));
    }
    if let Some(e) = &s.error {
        lines.push(format!("error     {e}"));
    }
    lines.join("\n")
}

fn describe_memory(s: &SnapshotInfo, memory: &api::MemoryInfo) -> String {
    let pages = memory.pages;
    let mut lines = vec![
        format!("snapshot  {}", s.id),
        format!(
            "kind      memory ({})",
            match memory.files {
                Some(n) => format!("checkpoint directory of {n} files"),
                None => "one image".into(),
            }
        ),
        format!(
            "parent    {}",
            if s.parent.is_empty() {
                "none"
            } else {
                &s.parent
            }
        ),
        format!(
            "created   {} (stored in {:.1} ms)",
            crate::output::human_time(s.created),
            s.call_ms
        ),
        format!("state     {}", state_name(s.state)),
        format!("size      {}", human_bytes(memory.size)),
        format!(
            "pages     {} zero, {} parent, {} new",
            pages.zero, pages.parent, pages.new
        ),
        format!(
            "stored    {} new in the store",
            human_bytes(memory.stored_bytes)
        ),
        format!("root      {}", memory.root),
    ];
    if !s.labels.is_empty() {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(format!("labels    {}", labels.join(",")));
    }
    if let Some(t) = s.expires {
        lines.push(format!(
            "expires   {} (in {})",
            crate::output::human_time(t as f64),
            crate::output::human_duration((t as f64 - crate::snapshots::now_secs()).max(0.0))
        ));
    }
    lines.join("\n")
}

pub fn run(cmd: SnapshotCommand, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    match cmd {
        SnapshotCommand::Create(args) => {
            let info: SnapshotInfo = client.call(Op::SnapshotCreate(api::SnapshotCreate {
                mount: mount_key(&args.mount),
                dir: args.dir,
                labels: args.labels.into_iter().collect(),
                expire_secs: args.expire,
                wait_durable: args.wait_durable,
            }))?;
            if info.state == SnapshotState::Failed {
                out.print(&info, || describe(&info))?;
                bail!(
                    "snapshot {} failed: {}",
                    info.id,
                    info.error.unwrap_or_default()
                );
            }
            out.print(&info, || info.id.clone())?;
            out.note(&format!(
                "snapshot {} of mount {} taken in {:.1} ms ({}; {} changed)",
                info.id,
                info.mount,
                info.call_ms,
                state_name(info.state),
                human_bytes(info.changed_bytes)
            ));
        }
        SnapshotCommand::List(args) => {
            let mount = args
                .mount
                .map(|m| resolve_mount(&mut client, mount_key(&m)));
            let list: Vec<SnapshotInfo> = client.call(Op::SnapshotList(SnapshotFilter {
                labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
                parent: args.parent,
                mount,
            }))?;
            out.print(&list, || {
                list.iter()
                    .map(|s| {
                        format!(
                            "{}\t{}\t{}\t{}\t{}\t{}",
                            s.id,
                            s.kind,
                            s.mount,
                            s.parent,
                            state_name(s.state),
                            human_bytes(s.changed_bytes)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        SnapshotCommand::Show { id, wait } => {
            if wait {
                let _: SnapshotInfo = client.call(Op::SnapshotWait { id: id.clone() })?;
            }
            let info: SnapshotInfo = client.call(Op::SnapshotShow { id })?;
            out.print(&info, || describe(&info))?;
        }
        SnapshotCommand::Diff { a, b } => {
            let diff: Vec<DiffEntry> = client.call(Op::SnapshotDiff { a, b })?;
            out.print(&diff, || {
                diff.iter()
                    .map(|d| {
                        let mark = match d.change {
                            layerfs::Change::Added => "+",
                            layerfs::Change::Modified => "M",
                            layerfs::Change::Deleted => "-",
                        };
                        format!("{mark} {}\t{}\t{}", d.path, d.kind, d.size)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        SnapshotCommand::Rm { id } => {
            let info: SnapshotInfo = client.call(Op::SnapshotRemove { id })?;
            out.print(&info, || format!("removed snapshot {}", info.id))?;
        }
    }
    Ok(exit::code(exit::OK))
}

/// A mount point given to a filter becomes the mount's id.
fn resolve_mount(client: &mut Client, key: String) -> String {
    let mounts: Vec<MountInfo> = client.call(Op::MountList).unwrap_or_default();
    mounts
        .into_iter()
        .find(|m| {
            m.mountpoint
                .as_ref()
                .is_some_and(|p| p.display().to_string() == key)
        })
        .map(|m| m.id)
        .unwrap_or(key)
}

/// `snapctl fork ID --count N --under DIR`: prints one mount point per line.
pub fn fork(args: ForkArgs, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    std::fs::create_dir_all(&args.under)
        .with_context(|| format!("creating {}", args.under.display()))?;
    let under = std::fs::canonicalize(&args.under)
        .with_context(|| format!("fork directory {}", args.under.display()))?;
    let started = std::time::Instant::now();
    let mounts: Vec<MountInfo> = client.call(Op::SnapshotFork(api::SnapshotFork {
        id: args.id.clone(),
        count: args.count,
        under,
        quota_bytes: args.quota,
        inode_quota: Some(args.inodes),
        threads: Some(usize::from(args.threads)),
    }))?;
    out.print(&mounts, || {
        mounts
            .iter()
            .map(|m| format!("{}\t{}", m.id, m.place()))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    out.note(&format!(
        "forked snapshot {} into {} mounts in {:.0} ms",
        args.id,
        mounts.len(),
        started.elapsed().as_secs_f64() * 1e3
    ));
    Ok(exit::code(exit::OK))
}
