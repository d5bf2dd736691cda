//! `snapctl volume …`: the volume server's client (see
//! [`crate::volume_api`] and `volume-server/API.md`).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::{absolute, Client};
use crate::exit;
use crate::output::{human_bytes, Output};
use crate::volume_api::{
    self, CommitInfo, CommitResult, ConflictInfo, FileInfo, ReloadResult, ServerInfo, SessionInfo,
    SyncResult, VolumeInfo, VolumeListenerInfo, VolumeOp, VOLUME_API_VERSION,
};

/// Nothing answers on the volume server's socket.
#[derive(Debug, thiserror::Error)]
#[error(
    "no volume server is running for {home} (nothing answers on {socket}: {reason}); \
     start one with `volume-server --home {home}` (it runs in the foreground)"
)]
pub struct VolumeServerUnavailable {
    pub home: String,
    pub socket: String,
    pub reason: std::io::Error,
}

/// `snapctl volume` options and command.
#[derive(Args, Debug)]
pub struct VolumeArgs {
    /// The volume server's data directory. Default: $STRATA_VOLUME_HOME,
    /// else strata-volumes beside the node daemon's (/var/lib/strata-volumes
    /// as root).
    #[arg(long, env = volume_api::VOLUME_HOME_ENV, value_name = "DIR")]
    pub volume_home: Option<PathBuf>,
    #[command(subcommand)]
    pub command: VolumeCommand,
}

/// The `snapctl volume` subcommands.
#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create an empty volume.
    Create {
        name: String,
        /// Most file bytes the volume may hold, its head and its sessions'
        /// uncommitted writes together (ENOSPC past it); 0: no limit.
        #[arg(long, value_parser = crate::output::parse_size, default_value = "0")]
        quota: u64,
    },
    /// List volumes.
    Ls,
    /// Show a volume: its head commit, quota and sessions.
    Info { name: String },
    /// Remove a volume (refused while it has sessions).
    Rm { name: String },
    /// Mount a volume at DIR (FUSE): a session of its own, committed in
    /// the background and when it is unmounted.
    Mount {
        name: String,
        dir: PathBuf,
        /// Mount commit SEQ read-only instead (see `history`); nothing is
        /// committed.
        #[arg(long, value_name = "SEQ")]
        commit: Option<u64>,
    },
    /// End a session (its mount point or id): unmount, commit, and return
    /// once the commit is durable.
    Umount { session: String },
    /// List live sessions.
    Sessions,
    /// Serve sessions of volumes over 9P2000.L: each connection is a
    /// session of each volume it attaches (attach name = the volume),
    /// committed when the connection ends.
    Serve9p {
        /// The volumes this listener serves (any other attach is refused).
        #[arg(required_unless_present_any = ["list", "stop"])]
        names: Vec<String>,
        /// `unix:PATH` or `tcp:HOST:PORT`.
        #[arg(long, required_unless_present_any = ["list", "stop"])]
        listen: Option<String>,
        /// List the listeners instead.
        #[arg(long, conflicts_with_all = ["names", "listen", "stop"])]
        list: bool,
        /// Stop the listener on ADDR (its connections end and commit).
        #[arg(long, value_name = "ADDR", conflicts_with_all = ["names", "listen"])]
        stop: Option<String>,
    },
    /// Commit now: a session (mount point or id), or every session of a
    /// volume.
    Commit { target: String },
    /// Move a session (mount point or id), or every session of a volume,
    /// onto the volume's newest head, keeping its uncommitted changes.
    Reload { target: String },
    /// List a volume's commits, newest first.
    History {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Make commit SEQ of a volume its head again (a new commit).
    Restore { name: String, seq: u64 },
    /// List a directory of a volume's head.
    LsFiles {
        name: String,
        #[arg(default_value = "")]
        path: String,
    },
    /// Write a file of a volume's head to stdout (or --output).
    Get {
        name: String,
        path: String,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write a file into a volume from FILE (or stdin): a commit of its own.
    Put {
        name: String,
        path: String,
        file: Option<PathBuf>,
        /// Permission bits of the new file (octal).
        #[arg(long, default_value = "644", value_parser = parse_mode)]
        mode: u32,
    },
    /// Remove a file or directory tree from a volume: a commit of its own.
    RmFile { name: String, path: String },
    /// The volume server's version, pid and counts.
    ServerInfo,
    /// Reclaim now what no volume, kept commit or live session reaches
    /// (the server also does it every --gc-interval-secs).
    Gc,
    /// Sync with the server's bucket now: one volume kept in step
    /// (`snapctl push volume`, `snapctl pull volume`), or each of them
    /// (the server also does it every --sync-secs and after each commit).
    Sync { name: Option<String> },
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("'{text}' is not an octal mode (0..7777)"))
}

/// Connects to the volume server of data directory `home`.
pub fn connect(home: &Path) -> anyhow::Result<Client> {
    let socket = volume_api::socket_path(home);
    let stream = UnixStream::connect(&socket).map_err(|reason| VolumeServerUnavailable {
        home: home.display().to_string(),
        socket: socket.display().to_string(),
        reason,
    })?;
    Client::over(stream, "the volume server", VOLUME_API_VERSION)
}

/// A commit time for people: `2026-12-04 04:30:10` (UTC).
fn time_of(nanos: u64) -> String {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(nanos / 1_000_000_000);
    humantime::format_rfc3339_seconds(when)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn commit_line(c: &CommitInfo) -> String {
    let mut line = format!(
        "{:>5}  {}  {:<8} {:<16} {} paths changed",
        c.seq,
        time_of(c.time_unix_nanos),
        c.kind,
        c.author,
        c.paths_changed
    );
    push_conflicts(&mut line, &c.conflicts);
    line
}

fn committed_line(r: &CommitResult) -> String {
    if r.wrote {
        format!(
            "session {} committed to volume {} as commit {} ({} paths changed, {} conflicts)",
            r.session,
            r.volume,
            r.head.seq,
            r.head.paths_changed,
            r.head.conflicts.len()
        )
    } else {
        format!(
            "session {}: nothing to commit (volume {} is at commit {})",
            r.session, r.volume, r.head.seq
        )
    }
}

fn reloaded_line(r: &ReloadResult) -> String {
    let mut line = format!(
        "session {} now works over commit {} of volume {} ({} names changed)",
        r.session, r.head.seq, r.volume, r.entries_changed
    );
    push_conflicts(&mut line, &r.conflicts);
    line
}

/// A session's mount point as the server knows it (absolute), or an id
/// or volume name as given.
fn session_target(target: String) -> String {
    match std::fs::canonicalize(&target) {
        Ok(path) if target.contains('/') => path.display().to_string(),
        _ => target,
    }
}

/// One line per result, or `none` when there are none.
fn lines_or<T>(results: &[T], line: fn(&T) -> String, none: &str) -> String {
    if results.is_empty() {
        none.into()
    } else {
        results.iter().map(line).collect::<Vec<_>>().join("\n")
    }
}

/// Appends a line per conflict to `line`.
fn push_conflicts(line: &mut String, conflicts: &[ConflictInfo]) {
    for conflict in conflicts {
        line.push_str(&format!(
            "\n       conflict ({}): {}{}",
            conflict.kind,
            conflict.path,
            conflict
                .copy
                .as_ref()
                .map(|copy| format!(" — this session's version is {copy}"))
                .unwrap_or_default()
        ));
    }
}

/// A sync with the bucket for people.
pub fn sync_line(r: &SyncResult) -> String {
    if let Some(error) = &r.error {
        return format!("{}: sync failed: {error}", r.volume);
    }
    let mut line = format!(
        "{}: {} — commit {} ({}), bucket generation {}",
        r.volume,
        r.outcome,
        r.seq,
        &r.commit[..r.commit.len().min(12)],
        r.generation
    );
    if r.bytes_uploaded > 0 {
        line.push_str(&format!(", {} uploaded", human_bytes(r.bytes_uploaded)));
    }
    if r.retries > 0 {
        line.push_str(&format!(", {} retries", r.retries));
    }
    push_conflicts(&mut line, &r.conflicts);
    line
}

/// Runs one `snapctl volume` command.
pub fn run(args: VolumeArgs, out: &Output) -> anyhow::Result<ExitCode> {
    let home = args
        .volume_home
        .unwrap_or_else(volume_api::default_volume_home);
    let mut client = connect(&home)?;
    match args.command {
        VolumeCommand::Create { name, quota } => {
            let info: VolumeInfo = client.call(VolumeOp::Create {
                name,
                quota_bytes: quota,
            })?;
            out.print(&info, || format!("created volume {}", info.name))?;
        }
        VolumeCommand::Ls => {
            let list: Vec<VolumeInfo> = client.call(VolumeOp::List)?;
            out.print(&list, || {
                let mut text = format!(
                    "{:<24} {:>7} {:>9}  last commit",
                    "NAME", "COMMIT", "SESSIONS"
                );
                for v in &list {
                    text.push_str(&format!(
                        "\n{:<24} {:>7} {:>9}  {}",
                        v.name,
                        v.head.seq,
                        v.sessions,
                        time_of(v.head.time_unix_nanos)
                    ));
                }
                text
            })?;
        }
        VolumeCommand::Info { name } => {
            let v: VolumeInfo = client.call(VolumeOp::Show { name })?;
            out.print(&v, || {
                format!(
                    "volume {}\nhead: commit {} ({}), tree {}\nquota: {}\nsessions: {}",
                    v.name,
                    v.head.seq,
                    time_of(v.head.time_unix_nanos),
                    v.head.tree,
                    match (v.quota_bytes, v.bytes) {
                        (0, _) => "none".to_string(),
                        (quota, Some(bytes)) => format!(
                            "{} ({} in the head, {} uncommitted)",
                            human_bytes(quota),
                            human_bytes(bytes),
                            human_bytes(v.uncommitted_bytes.unwrap_or(0))
                        ),
                        (quota, None) => human_bytes(quota),
                    },
                    v.sessions
                )
            })?;
        }
        VolumeCommand::Rm { name } => {
            let value: serde_json::Value = client.call(VolumeOp::Remove { name: name.clone() })?;
            out.print(&value, || format!("removed volume {name}"))?;
        }
        VolumeCommand::Mount { name, dir, commit } => {
            let mountpoint = std::fs::canonicalize(&dir)
                .with_context(|| format!("mount point {}", dir.display()))?;
            let info: SessionInfo = client.call(VolumeOp::Mount {
                name,
                mountpoint,
                commit,
            })?;
            out.print(&info, || info.id.clone())?;
            if let (Some(path), Some(seq)) = (&info.mountpoint, info.commit) {
                out.note(&format!(
                    "mounted commit {seq} of volume {} on {}, read-only; `snapctl volume umount {}` ends it",
                    info.volume,
                    path.display(),
                    path.display()
                ));
            } else if let Some(path) = &info.mountpoint {
                out.note(&format!(
                    "mounted volume {} on {} (session {}); `snapctl volume umount {}` commits and ends it",
                    info.volume,
                    path.display(),
                    info.id,
                    path.display()
                ));
            }
        }
        VolumeCommand::Umount { session } => {
            let key = match std::fs::canonicalize(&session) {
                Ok(path) if session.contains('/') => path.display().to_string(),
                _ => session,
            };
            let r: CommitResult = client.call(VolumeOp::Umount { session: key })?;
            out.print(&r, || committed_line(&r))?;
        }
        VolumeCommand::Sessions => {
            let list: Vec<SessionInfo> = client.call(VolumeOp::Sessions)?;
            out.print(&list, || {
                let mut text = format!(
                    "{:<14} {:<20} {:>10}  served",
                    "SESSION", "VOLUME", "WRITTEN"
                );
                for s in &list {
                    let served = match (&s.mountpoint, &s.listen) {
                        (Some(path), _) => path.display().to_string(),
                        (None, Some(listen)) => format!("9P {listen}"),
                        (None, None) => "(ending)".into(),
                    };
                    text.push_str(&format!(
                        "\n{:<14} {:<20} {:>10}  {served}{}",
                        s.id,
                        s.volume,
                        human_bytes(s.used_bytes),
                        s.commit_error
                            .as_ref()
                            .map(|e| format!("  commit failed: {e}"))
                            .unwrap_or_default()
                    ));
                }
                text
            })?;
        }
        VolumeCommand::Serve9p {
            names,
            listen,
            list,
            stop,
        } => {
            if list {
                let list: Vec<VolumeListenerInfo> = client.call(VolumeOp::Serve9pList)?;
                out.print(&list, || {
                    list.iter()
                        .map(|l| {
                            format!(
                                "{}  {}  ({} open, {} in all)",
                                l.listen,
                                l.volumes.join(","),
                                l.sessions_open,
                                l.sessions_total
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
            } else if let Some(listen) = stop {
                let info: VolumeListenerInfo = client.call(VolumeOp::Serve9pStop { listen })?;
                out.print(&info, || {
                    format!("stopped the 9P listener on {}", info.listen)
                })?;
            } else {
                let listen = absolute_listen(&listen.unwrap_or_default())?;
                let info: VolumeListenerInfo = client.call(VolumeOp::Serve9pStart {
                    volumes: names,
                    listen,
                })?;
                out.print(&info, || info.listen.clone())?;
                out.note(&format!(
                    "serving volume(s) {} over 9P on {} (attach name: the volume)",
                    info.volumes.join(", "),
                    info.listen
                ));
            }
        }
        VolumeCommand::Commit { target } => {
            let results: Vec<CommitResult> = client.call(VolumeOp::Commit {
                target: session_target(target),
            })?;
            out.print(&results, || {
                lines_or(&results, committed_line, "no sessions to commit")
            })?;
        }
        VolumeCommand::Reload { target } => {
            let results: Vec<ReloadResult> = client.call(VolumeOp::Reload {
                target: session_target(target),
            })?;
            out.print(&results, || {
                lines_or(&results, reloaded_line, "no sessions to reload")
            })?;
        }
        VolumeCommand::History { name, limit } => {
            let list: Vec<CommitInfo> = client.call(VolumeOp::History {
                name,
                limit: Some(limit),
            })?;
            out.print(&list, || {
                list.iter().map(commit_line).collect::<Vec<_>>().join("\n")
            })?;
        }
        VolumeCommand::Restore { name, seq } => {
            let c: CommitInfo = client.call(VolumeOp::Restore {
                name: name.clone(),
                seq,
            })?;
            out.print(&c, || {
                format!(
                    "volume {name} restored to commit {seq}, as commit {}",
                    c.seq
                )
            })?;
        }
        VolumeCommand::LsFiles { name, path } => {
            let list: Vec<FileInfo> = client.call(VolumeOp::ListFiles { name, path })?;
            out.print(&list, || {
                list.iter()
                    .map(|f| format!("{:<8} {:>12}  {}", f.kind, f.size, f.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        VolumeCommand::Get { name, path, output } => {
            let op = VolumeOp::GetFile { name, path };
            let value: serde_json::Value = match &output {
                Some(file) => {
                    let mut f = std::fs::File::create(file)
                        .with_context(|| format!("creating {}", file.display()))?;
                    let got = client.call_streaming(op, &mut f).and_then(|value| {
                        f.sync_all()
                            .with_context(|| format!("writing {}", file.display()))?;
                        Ok(value)
                    });
                    // A refused or broken read leaves no partial file.
                    if got.is_err() {
                        let _ = std::fs::remove_file(file);
                    }
                    got?
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    let value = client.call_streaming(op, &mut stdout)?;
                    stdout.flush()?;
                    value
                }
            };
            if output.is_some() {
                out.print(&value, String::new)?;
            }
        }
        VolumeCommand::Put {
            name,
            path,
            file,
            mode,
        } => {
            let op = VolumeOp::PutFile { name, path, mode };
            let c: CommitInfo = match &file {
                Some(file) => {
                    let mut f = std::fs::File::open(file)
                        .with_context(|| format!("opening {}", file.display()))?;
                    client.call_sending(op, &mut f)?
                }
                None => client.call_sending(op, &mut std::io::stdin().lock())?,
            };
            out.print(&c, || format!("written as commit {}", c.seq))?;
        }
        VolumeCommand::RmFile { name, path } => {
            let c: CommitInfo = client.call(VolumeOp::RemoveFile { name, path })?;
            out.print(&c, || format!("removed as commit {}", c.seq))?;
        }
        VolumeCommand::Gc => {
            let spinner = out.spinner("collecting garbage");
            let report: serde_json::Value = client.call(VolumeOp::Gc)?;
            spinner.finish_and_clear();
            out.print(&report, || crate::store_cmd::describe_gc(&report))?;
        }
        VolumeCommand::Sync { name } => {
            let results: Vec<SyncResult> = client.call(VolumeOp::Sync { name })?;
            out.print(&results, || {
                lines_or(
                    &results,
                    sync_line,
                    "no volume is kept in step with the bucket",
                )
            })?;
        }
        VolumeCommand::ServerInfo => {
            let info: ServerInfo = client.call(VolumeOp::Info)?;
            out.print(&info, || {
                format!(
                    "volume server {} (pid {}) for {}: {} volumes, {} sessions, background commit every {} s, \
                     {} commits kept per volume, GC every {} s",
                    info.version,
                    info.pid,
                    info.home.display(),
                    info.volumes,
                    info.sessions,
                    info.autocommit_secs,
                    info.keep_commits,
                    info.gc_interval_secs
                )
            })?;
        }
    }
    Ok(exit::code(exit::OK))
}

/// A `unix:` listen address with its path made absolute (the server does
/// not share our working directory).
fn absolute_listen(listen: &str) -> anyhow::Result<String> {
    match listen.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => {
            Ok(format!("unix:{}", absolute(Path::new(path))?.display()))
        }
        _ => Ok(listen.to_string()),
    }
}
