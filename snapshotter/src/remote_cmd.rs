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
    /// Volumes of the volume server, by name: kept in step with the
    /// bucket from then on (see `snapctl volume sync`).
    Volume,
}

impl SharedKind {
    fn ref_name(self, name: &str) -> String {
        match self {
            SharedKind::Image => format!("{}{name}", layerfs::image::IMAGE_REF_PREFIX),
            SharedKind::Snapshot => format!("{}{name}", crate::snapshots::SNAPSHOT_REF_PREFIX),
            SharedKind::Volume => name.to_string(),
        }
    }
}

/// `snapctl push` and `snapctl pull`.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// `image`, `snapshot` or `volume`.
    kind: SharedKind,
    /// Image names, snapshot ids or volume names.
    #[arg(required = true)]
    names: Vec<String>,
    /// The volume server's data directory (volumes). Default:
    /// $STRATA_VOLUME_HOME, else strata-volumes beside the node daemon's.
    #[arg(long, env = crate::volume_api::VOLUME_HOME_ENV, value_name = "DIR")]
    volume_home: Option<std::path::PathBuf>,
}

/// `snapctl push volume` and `snapctl pull volume`: the volume server
/// does them.
fn transfer_volumes(args: TransferArgs, push: bool, out: &Output) -> anyhow::Result<ExitCode> {
    let home = args
        .volume_home
        .unwrap_or_else(crate::volume_api::default_volume_home);
    let mut client = crate::volume_cmd::connect(&home)?;
    let mut results = Vec::new();
    for name in args.names {
        let op = match push {
            true => crate::volume_api::VolumeOp::Push { name },
            false => crate::volume_api::VolumeOp::Pull { name },
        };
        let result: crate::volume_api::SyncResult = client.call(op)?;
        results.push(result);
    }
    out.print(&results, || {
        results
            .iter()
            .map(crate::volume_cmd::sync_line)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(exit::code(exit::OK))
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
    /// This node's pins: one per ref it pulled, which keep what it reads
    /// through them in the bucket.
    Pins,
    /// Drop this node's pins of pulled images or snapshots (when nothing
    /// here reads them any more): remote GC may then take their data.
    Unpin(TransferArgs),
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
    if let SharedKind::Volume = args.kind {
        return transfer_volumes(args, true, out);
    }
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
    if let SharedKind::Volume = args.kind {
        return transfer_volumes(args, false, out);
    }
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
        RemoteCommand::Pins => {
            let pins: Vec<RemoteRef> = client.call(Op::RemotePins)?;
            out.print(&pins, || {
                pins.iter().map(ref_line).collect::<Vec<_>>().join("\n")
            })?;
        }
        RemoteCommand::Unpin(args) => {
            if let SharedKind::Volume = args.kind {
                return Err(anyhow::anyhow!(crate::exit::InvalidInput(
                    "volumes are not pinned: the bucket's head of a volume keeps it".into()
                )));
            }
            let refs: Vec<String> = args.names.iter().map(|n| args.kind.ref_name(n)).collect();
            let dropped: Vec<String> = client.call(Op::RemoteUnpin { refs })?;
            out.print(&dropped, || match dropped.is_empty() {
                true => "no pin to drop".to_string(),
                false => format!("unpinned {}", dropped.join(", ")),
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
