//! `snapctl mem put|get|serve|servers|unserve`: memory snapshots through
//! the node daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::api::{self, MemServerInfo, Op, SnapshotInfo};
use crate::client::Client;
use crate::exit;
use crate::output::{human_bytes, Output};
use crate::snapshot_cmd::{parse_duration, parse_label};

#[derive(Subcommand, Debug)]
pub enum MemCommand {
    /// Store a memory image (a VM's RAM file), or with --dir a runtime's
    /// checkpoint directory, as a memory snapshot; prints its id. Only
    /// pages that are neither zero nor the parent's are stored.
    Put(PutArgs),
    /// Write a memory snapshot back: a sparse file (zero pages are holes),
    /// or with --dir the checkpoint directory.
    Get {
        /// The snapshot is a checkpoint directory; TARGET is a directory
        /// (new or empty).
        #[arg(long)]
        dir: bool,
        id: String,
        target: PathBuf,
    },
    /// Serve a memory snapshot on a Unix socket to processes that hand over
    /// a userfaultfd with Firecracker's handshake; returns once the socket
    /// is ready. The daemon serves it until `mem unserve` or its end.
    Serve(ServeArgs),
    /// List page servers and their clients.
    Servers,
    /// Stop a page server: each client gets every page it has not touched
    /// first, then its socket is closed.
    Unserve {
        #[arg(long)]
        socket: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The image file (or, with --dir, the checkpoint directory).
    source: PathBuf,
    /// SOURCE is a checkpoint directory (e.g. `runsc checkpoint
    /// --image-path DIR`): every file in it is stored as one snapshot.
    #[arg(long)]
    dir: bool,
    /// A memory snapshot of the same guest or sandbox: pages equal to its
    /// page at the same offset are stored as references.
    #[arg(long)]
    parent: Option<String>,
    /// A label `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Remove the snapshot after this long (e.g. 30m, 12h, 7d).
    #[arg(long, value_parser = parse_duration)]
    expire: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    id: String,
    /// The Unix socket to listen on (made with mode 0600).
    #[arg(long)]
    socket: PathBuf,
    /// For a checkpoint directory: the file to serve.
    #[arg(long)]
    file: Option<String>,
    /// Longest one fault may wait before the client's service ends with an
    /// error on its socket (e.g. 5s; default 5 s).
    #[arg(long, value_parser = parse_duration)]
    fault_timeout: Option<u64>,
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn describe_put(info: &SnapshotInfo) -> String {
    let Some(memory) = &info.memory else {
        return info.id.clone();
    };
    let pages = memory.pages;
    let total = pages.zero + pages.parent + pages.new;
    format!(
        "memory snapshot {}: {}{}; pages {:.0}% zero, {:.0}% parent, {:.0}% new; {} stored in {:.0} ms",
        info.id,
        human_bytes(memory.size),
        memory
            .files
            .map(|n| format!(" in {n} files"))
            .unwrap_or_default(),
        percent(pages.zero, total),
        percent(pages.parent, total),
        percent(pages.new, total),
        human_bytes(memory.stored_bytes),
        info.call_ms
    )
}

fn describe_server(s: &MemServerInfo) -> String {
    let mut line = format!(
        "{}\tsnapshot {}{}\t{} clients ({} served)\t{} faults\t{} pages prefetched",
        s.stats.socket.display(),
        s.snapshot,
        s.file
            .as_ref()
            .map(|f| format!(" file {f}"))
            .unwrap_or_default(),
        s.stats.clients_now,
        s.stats.clients_total,
        s.stats.faults,
        s.stats.prefetched_pages
    );
    for c in &s.clients {
        line.push_str(&format!(
            "\n  client {} pid {} uid {}: {} faults, {} prefetched, slowest fault {} us",
            c.id, c.pid, c.uid, c.faults, c.prefetched_pages, c.slowest_fault_us
        ));
    }
    line
}

pub fn run(cmd: MemCommand, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    match cmd {
        MemCommand::Put(args) => {
            let source = std::fs::canonicalize(&args.source)
                .with_context(|| format!("reading {}", args.source.display()))?;
            let info: SnapshotInfo = client.call(Op::MemPut(api::MemPut {
                source,
                dir: args.dir,
                parent: args.parent,
                labels: args.labels.into_iter().collect(),
                expire_secs: args.expire,
            }))?;
            out.print(&info, || info.id.clone())?;
            out.note(&describe_put(&info));
        }
        MemCommand::Get { dir, id, target } => {
            let target = absolute(&target)?;
            let stats: memsnap::RestoreStats = client.call(Op::MemGet(api::MemGet {
                id: id.clone(),
                target: target.clone(),
                dir,
            }))?;
            out.print(&stats, || {
                format!(
                    "wrote snapshot {id} to {}: {} ({} written, the rest holes){}",
                    target.display(),
                    human_bytes(stats.size),
                    human_bytes(stats.written),
                    if dir {
                        format!(", {} files", stats.files)
                    } else {
                        String::new()
                    }
                )
            })?;
        }
        MemCommand::Serve(args) => {
            let socket = absolute(&args.socket)?;
            let info: MemServerInfo = client.call(Op::MemServe(api::MemServe {
                id: args.id,
                socket,
                file: args.file,
                fault_timeout_ms: args.fault_timeout.map(|s| s * 1000),
            }))?;
            out.print(&info, || describe_server(&info))?;
        }
        MemCommand::Servers => {
            let list: Vec<MemServerInfo> = client.call(Op::MemServers)?;
            out.print(&list, || {
                list.iter()
                    .map(describe_server)
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        MemCommand::Unserve { socket } => {
            let socket = absolute(&socket)?;
            let info: MemServerInfo = client.call(Op::MemUnserve { socket })?;
            out.print(&info, || {
                format!(
                    "stopped {}: {} clients served, {} faults",
                    info.stats.socket.display(),
                    info.stats.clients_total,
                    info.stats.faults
                )
            })?;
        }
    }
    Ok(exit::code(exit::OK))
}
