//! `snapctl`: the command-line tool of a Strata node.
//!
//! It parses arguments and runs one command: image and mount commands are
//! requests to the node daemon (`snapctl daemon`, which owns the store);
//! `store`, `blob` and `ref` open the store themselves and so work only
//! while no daemon runs. Results are printed for people or, with `--json`,
//! for programs. Exit codes tell failure kinds apart (see [`exit`]).
//! The commands, the daemon and its API live in the `snapshotter`
//! library; this is its thin front.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use snapshotter::output::Output;
use snapshotter::{
    blob_cmd, daemon, exit, home, image_cmd, mem_cmd, ref_cmd, remote_cmd, sandbox_cmd,
    serve9p_cmd, snapshot_cmd, store_cmd, volume_cmd,
};

/// Strata's node tool: manage the chunk store, blobs, refs and images, and
/// mount images.
#[derive(Parser, Debug)]
#[command(name = "snapctl", version, about, long_about = None, after_help = exit::HELP)]
struct Cli {
    /// Data directory. Default: $STRATA_HOME, else /var/lib/strata as root,
    /// else $XDG_DATA_HOME/strata (~/.local/share/strata).
    #[arg(long, global = true, env = "STRATA_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, inspect, check and collect the store.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Put files into the store and get them back.
    #[command(subcommand)]
    Blob(blob_cmd::BlobCommand),
    /// List and remove refs (named roots that keep data alive).
    #[command(subcommand)]
    Ref(ref_cmd::RefCommand),
    /// Import, list, show, remove and export images.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Mount an image or a snapshot copy-on-write (the daemon serves it);
    /// prints the mount id.
    Mount(image_cmd::MountArgs),
    /// List the daemon's mounts.
    Mounts,
    /// End a mount (a mount point or a mount id); its upper layer is
    /// discarded.
    Umount { mount: String },
    /// Snapshot live mounts; list, show, diff and remove snapshots.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
    /// Mount N copies of a snapshot (each its own copy-on-write mount).
    Fork(snapshot_cmd::ForkArgs),
    /// Memory snapshots: store a memory image or checkpoint directory,
    /// write one back, serve one lazily to userfaultfd clients.
    #[command(subcommand)]
    Mem(mem_cmd::MemCommand),
    /// Serve a mount over 9P2000.L (the daemon listens); list or stop
    /// listeners.
    Serve9p(serve9p_cmd::Serve9pArgs),
    /// Run the node daemon in the foreground; it owns the store and every
    /// mount, and answers on HOME/snapd.sock (see snapshotter/API.md).
    Daemon(daemon::DaemonArgs),
    /// Persistent volumes shared between sandboxes: create, mount, serve
    /// over 9P, commit, history, restore, and files from outside (the
    /// volume server answers; see volume-server/API.md).
    Volume(volume_cmd::VolumeArgs),
    /// Sandboxes on OCI runtimes (runsc, runc) over Strata roots, volumes
    /// and snapshots: create, exec, snapshot, fork, terminate.
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
    /// Upload images or snapshots (and everything they reach) to the
    /// bucket shared with other nodes (`snapctl daemon --remote URL`).
    Push(remote_cmd::TransferArgs),
    /// Take images or snapshots from the bucket: usable at once, their
    /// data fetched when read.
    Pull(remote_cmd::TransferArgs),
    /// The bucket: its refs, the cache, requests made.
    #[command(subcommand)]
    Remote(remote_cmd::RemoteCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser::mnt=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let out = Output::new(cli.json);
    let home = home::resolve(cli.home);
    let result = match cli.command {
        Command::Store(cmd) => store_cmd::run(cmd, &home, &out),
        Command::Blob(cmd) => blob_cmd::run(cmd, &home, &out),
        Command::Ref(cmd) => ref_cmd::run(cmd, &home, &out),
        Command::Image(cmd) => image_cmd::run(cmd, &home, &out),
        Command::Mount(args) => image_cmd::mount(args, &home, &out),
        Command::Mounts => image_cmd::list_mounts(&home, &out),
        Command::Umount { mount } => image_cmd::umount(&mount, &home, &out),
        Command::Snapshot(cmd) => snapshot_cmd::run(cmd, &home, &out),
        Command::Fork(args) => snapshot_cmd::fork(args, &home, &out),
        Command::Mem(cmd) => mem_cmd::run(cmd, &home, &out),
        Command::Serve9p(args) => serve9p_cmd::run(args, &home, &out),
        Command::Daemon(args) => daemon::run(args, &home, &out),
        Command::Volume(args) => volume_cmd::run(args, &out),
        Command::Sandbox(cmd) => sandbox_cmd::run(cmd, &home, &out),
        Command::Push(args) => remote_cmd::push(args, &home, &out),
        Command::Pull(args) => remote_cmd::pull(args, &home, &out),
        Command::Remote(cmd) => remote_cmd::run(cmd, &home, &out),
    };
    match result {
        Ok(code) => code,
        Err(error) => out.fail(&error),
    }
}
