//! `snapctl push`, `snapctl pull` and `snapctl remote`: sharing images and
//! snapshots with other nodes through the bucket the daemon is configured
//! with (`snapctl daemon --remote URL`, or `HOME/remote.json`).

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use remote::{PushReport, RemoteRef};

use crate::api::{Op, RemoteStatus};
use crate::client::Client;
use crate::exit;
use crate::output::{human_bytes, human_time, Output};

/// What is pushed or pulled.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SharedKind {
    /// Images, by name.
    Image,
    /// Snapshots (filesystem, directory or memory), by id.
    Snapshot,
}

impl SharedKind {
    fn ref_name(self, name: &str) -> String {
        match self {
            SharedKind::Image => format!("{}{name}", layerfs::image::IMAGE_REF_PREFIX),
            SharedKind::Snapshot => format!("{}{name}", crate::snapshots::SNAPSHOT_REF_PREFIX),
        }
    }
}

/// `snapctl push` and `snapctl pull`.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// `image` or `snapshot`.
    kind: SharedKind,
    /// Image names or snapshot ids.
    #[arg(required = true)]
    names: Vec<String>,
}

/// `snapctl remote`.
#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// List the bucket's refs (images and snapshots pushed by any node).
    Ls {
        /// Only refs whose names start with this (`image/`, `snapshot/`).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// The bucket, the cache and the requests made since the daemon
    /// started.
    Status,
    /// Collect the bucket: delete packs condemned by an earlier
    /// collection more than the grace period ago (`gc_grace_ms`, default
    /// 1 h) that nothing reaches, and condemn what nothing reaches now.
    Gc,
}

fn ref_line(r: &RemoteRef) -> String {
    format!(
        "{}\tgeneration {}\troot {}\t{} by {}",
        r.name,
        r.generation,
        r.root.short(),
        human_time(r.updated_unix_nanos as f64 / 1e9),
        r.writer
    )
}

/// `snapctl push KIND NAME…`: uploads what the bucket lacks, then moves
/// its refs.
pub fn push(args: TransferArgs, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let refs: Vec<String> = args.names.iter().map(|n| args.kind.ref_name(n)).collect();
    let report: PushReport = Client::connect(home)?.call(Op::RemotePush { refs })?;
    out.print(&report, || {
        let mut lines: Vec<String> = report.refs.iter().map(ref_line).collect();
        lines.push(format!(
            "uploaded {} chunks ({} in {} packs), {} already in the bucket; {} requests, {} ms",
            report.chunks_uploaded,
            human_bytes(report.bytes_uploaded),
            report.packs,
            report.chunks_present,
            report.requests.puts + report.requests.gets + report.requests.lists,
            report.millis
        ));
        lines.join("\n")
    })?;
    Ok(exit::code(exit::OK))
}

/// `snapctl pull KIND NAME…`: points local refs at the bucket's; data is
/// fetched when read.
pub fn pull(args: TransferArgs, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let refs: Vec<String> = args.names.iter().map(|n| args.kind.ref_name(n)).collect();
    let pulled: Vec<RemoteRef> = Client::connect(home)?.call(Op::RemotePull { refs })?;
    out.print(&pulled, || {
        pulled
            .iter()
            .map(|r| format!("pulled {}", ref_line(r)))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(exit::code(exit::OK))
}

/// `snapctl remote …`.
pub fn run(cmd: RemoteCommand, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    match cmd {
        RemoteCommand::Ls { prefix } => {
            let refs: Vec<RemoteRef> = client.call(Op::RemoteList { prefix })?;
            out.print(&refs, || {
                refs.iter().map(ref_line).collect::<Vec<_>>().join("\n")
            })?;
        }
        RemoteCommand::Gc => {
            let report: remote::RemoteGcReport = client.call(Op::RemoteGc)?;
            out.print(&report, || {
                format!(
                    "{} chunks live, {} dead ({} packs condemned); swept {} packs ({}), spared {}; {} ms",
                    report.live_chunks,
                    report.dead_chunks,
                    report.condemned_packs,
                    report.swept_packs,
                    human_bytes(report.swept_bytes),
                    report.spared_packs,
                    report.millis
                )
            })?;
        }
        RemoteCommand::Status => {
            let status: RemoteStatus = client.call(Op::RemoteStatus)?;
            out.print(&status, || {
                let r = &status.requests;
                format!(
                    "bucket {}\ncache {} of {} in {}\nknown {} chunks in {} packs\nrequests: {} PUT, {} GET, {} LIST, {} DELETE; {} up, {} down",
                    status.url,
                    human_bytes(status.cache_used_bytes),
                    human_bytes(status.cache_limit_bytes),
                    status.cache_dir.display(),
                    status.known_chunks,
                    status.known_packs,
                    r.puts,
                    r.gets,
                    r.lists,
                    r.deletes,
                    human_bytes(r.bytes_up),
                    human_bytes(r.bytes_down)
                )
            })?;
        }
    }
    Ok(exit::code(exit::OK))
}
