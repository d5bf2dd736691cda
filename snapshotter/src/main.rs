//! `snapctl`: the command-line tool of a Strata node.
//!
//! It parses arguments, opens the store (later: talks to the node daemon),
//! runs one command and prints the result for people or, with `--json`, for
//! programs. Exit codes tell failure kinds apart (see [`exit`]).

mod blob_cmd;
mod exit;
mod home;
mod image_cmd;
mod output;
mod ref_cmd;
mod store_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Output;

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
    /// Mount an image (copy-on-write) with FUSE; serves until unmounted.
    Mount(image_cmd::MountArgs),
    /// Unmount a mount made by `snapctl mount`.
    Umount { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let out = Output::new(cli.json);
    let home = home::resolve(cli.home);
    let result = match cli.command {
        Command::Store(cmd) => store_cmd::run(cmd, &home, &out),
        Command::Blob(cmd) => blob_cmd::run(cmd, &home, &out),
        Command::Ref(cmd) => ref_cmd::run(cmd, &home, &out),
        Command::Image(cmd) => image_cmd::run(cmd, &home, &out),
        Command::Mount(args) => image_cmd::mount_foreground(args, &home, &out),
        Command::Umount { dir } => image_cmd::umount(&dir, &out),
    };
    match result {
        Ok(code) => code,
        Err(error) => out.fail(&error),
    }
}
