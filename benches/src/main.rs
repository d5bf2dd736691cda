//! `strata-bench`: Strata's benchmarks and demo.
//!
//! Every benchmark runs Strata side by side with what a user would use
//! instead, in the same run, on the same input, and writes its section of
//! `benches/RESULTS.md` with the machine and the date.

mod cas_bench;
mod daemon;
mod demo;
mod layerfs_bench;
mod machine;
mod memory_bench;
mod p9_bench;
mod reliability;
mod remote_bench;
mod report;
mod sandbox_bench;
mod snapshot_bench;
mod tools;
mod tree;
mod volume_bench;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "strata-bench", about = "Strata benchmarks and demo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest a directory tree into a fresh store, read it back, verify it
    /// and print throughput and dedup ratio.
    Demo {
        /// The tree to ingest.
        #[arg(default_value = "/usr/share")]
        dir: PathBuf,
    },
    /// The chunk-store benchmark: Strata vs casync vs the raw zstd+b3sum
    /// pipeline on /usr, Debian root filesystems and random data.
    Cas(cas_bench::Args),
    /// The mount benchmark: Strata's FUSE root vs kernel overlayfs vs
    /// fuse-overlayfs vs bare ext4 on one Debian image.
    Layerfs(layerfs_bench::Args),
    /// The snapshot benchmark: Strata's snapshot, restore and fork vs
    /// tar+zstd of an overlayfs upper directory vs btrfs snapshots.
    Snapshot(snapshot_bench::Args),
    /// The 9P benchmark: Strata's 9P2000.L server vs diod, driven by a
    /// load client over a Unix socket and loopback TCP.
    P9(p9_bench::Args),
    /// The report of the long power-cut run (`benches/run.sh
    /// reliability` runs the suites and calls this with their output).
    Reliability(reliability::Args),
    /// The volume benchmark: commit, reload and mount latency of volumes
    /// of 10k/100k/1M files vs `git commit` and `restic backup`, and a
    /// volume's FUSE small-file and sequential rates vs ext4.
    Volume(volume_bench::Args),
    /// The memory-snapshot benchmark: capture, stored bytes, eager and
    /// lazy restore of a 4 GiB guest image vs `zstd -1` and
    /// `cp --sparse=always`, and gVisor checkpoint/restore through Strata.
    Memory(memory_bench::Args),
    /// The sandbox benchmark: create to first exec on Strata (image,
    /// snapshot) vs the same runtime on a plain directory and on kernel
    /// overlayfs; 100 forks of a running sandbox.
    Sandbox(sandbox_bench::Args),
    /// The remote-tier benchmark: push and cold reads through an emulated
    /// object store, and beside restic on a real S3 server (moto).
    Remote(remote_bench::Args),
}

fn main() -> anyhow::Result<()> {
    // As the node daemon and volume-server do (the benchmarks run their
    // libraries in this process).
    snapshotter::daemon::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo { dir } => demo::run(&dir),
        Command::Cas(args) => cas_bench::run(args),
        Command::Layerfs(args) => layerfs_bench::run(args),
        Command::Snapshot(args) => snapshot_bench::run(args),
        Command::P9(args) => p9_bench::run(args),
        Command::Reliability(args) => reliability::run(args),
        Command::Volume(args) => volume_bench::run(args),
        Command::Memory(args) => memory_bench::run(args),
        Command::Sandbox(args) => sandbox_bench::run(args),
        Command::Remote(args) => remote_bench::run(args),
    }
}
