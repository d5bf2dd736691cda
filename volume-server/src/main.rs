//! `volume-server`: the daemon that serves Strata's persistent volumes to
//! sandboxes over FUSE and 9P2000.L (see the `server` module of the
//! `volume_server` library, and `API.md`). `snapctl volume …` is its
//! client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use snapshotter::output::Output;
use snapshotter::volume_api::default_volume_home;
use volume_server::server::{self, ServerArgs};

/// Strata's volume server: named persistent volumes shared between
/// sandboxes, each mount or 9P connection a session committed in the
/// background, at teardown and on SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "volume-server", version, about, long_about = None, after_help = snapshotter::exit::HELP)]
struct Cli {
    /// Data directory. Default: $STRATA_VOLUME_HOME, else strata-volumes
    /// beside the node daemon's (/var/lib/strata-volumes as root).
    #[arg(long, env = "STRATA_VOLUME_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    args: ServerArgs,
}

fn main() -> ExitCode {
    snapshotter::daemon::tune_allocator();
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
    let home = cli.home.unwrap_or_else(default_volume_home);
    match server::run(cli.args, &home, &out) {
        Ok(code) => code,
        Err(error) => out.fail(&error),
    }
}
