//! `snapctl store init|stats|fsck|gc`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use cas::{FsckOptions, OpenOptions, Store, StoreConfig};
use clap::Subcommand;

use crate::exit;
use crate::output::{human_bytes, parse_size, Output};

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Create a new, empty store in the data directory.
    Init {
        /// Size at which pack files are sealed (16MiB..64MiB recommended).
        #[arg(long, default_value = "32MiB", value_parser = parse_size)]
        pack_size: u64,
        /// Size of fixed chunks: a memory snapshot's cell (its new pages
        /// are packed per cell into one chunk). A multiple of 4KiB; see
        /// benches/RESULTS.md for the measured choice.
        #[arg(long, default_value = "64KiB", value_parser = parse_size)]
        fixed_chunk: u64,
    },
    /// Show what the store holds and how much space it takes.
    Stats,
    /// Check packs, frames, index and refs; name every damaged chunk.
    Fsck {
        /// Check frame checksums only, without decompressing and hashing
        /// every chunk.
        #[arg(long)]
        quick: bool,
        /// Rebuild the chunk index from the pack trailers and frames first
        /// (also repairs an index that no longer opens).
        #[arg(long)]
        rebuild_index: bool,
    },
    /// Remove chunks no ref reaches and compact mostly-dead packs.
    Gc,
}

/// Opens the store for a command, with context for the error message.
pub fn open(home: &Path) -> anyhow::Result<Store> {
    open_with(home, OpenOptions::default())
}

/// [`open`] with `options`.
pub fn open_with(home: &Path, options: OpenOptions) -> anyhow::Result<Store> {
    Store::open(home, options).with_context(|| {
        let daemon_runs =
            std::os::unix::net::UnixStream::connect(crate::api::socket_path(home)).is_ok();
        if daemon_runs {
            format!(
                "opening the store at {}: the node daemon owns it; `store`, `blob` and `ref` \
                 commands work only while it is stopped (SIGTERM ends it)",
                home.display()
            )
        } else {
            format!("opening the store at {}", home.display())
        }
    })
}

pub fn run(cmd: StoreCommand, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCommand::Init {
            pack_size,
            fixed_chunk,
        } => {
            if fixed_chunk == 0 || fixed_chunk % 4096 != 0 || fixed_chunk > 1 << 20 {
                return Err(exit::InvalidInput(format!(
                    "--fixed-chunk must be a multiple of 4KiB up to 1MiB, not {fixed_chunk}"
                ))
                .into());
            }
            let mut config = StoreConfig {
                pack_target_bytes: pack_size,
                ..StoreConfig::default()
            };
            config.chunking.fixed_size = fixed_chunk as u32;
            let store = Store::init(home, config)
                .with_context(|| format!("creating a store at {}", home.display()))?;
            let value = serde_json::json!({
                "home": store.home(),
                "config": store.config(),
            });
            out.print(&value, || {
                format!("created an empty store at {}", home.display())
            })?;
        }
        StoreCommand::Stats => {
            let store = open(home)?;
            let stats = store.stats()?;
            let value = serde_json::json!({ "home": home, "stats": stats });
            out.print(&value, || {
                format!(
                    "store    {}\nchunks   {} ({} data, {} nodes)\ndata     {} raw, {} stored ({:.2}x compression)\npacks    {} files, {}\nrefs     {}",
                    home.display(),
                    stats.chunks,
                    stats.data_chunks,
                    stats.node_chunks,
                    human_bytes(stats.raw_bytes),
                    human_bytes(stats.stored_bytes),
                    stats.compression_ratio(),
                    stats.packs,
                    human_bytes(stats.pack_bytes),
                    stats.refs,
                )
            })?;
        }
        StoreCommand::Fsck {
            quick,
            rebuild_index,
        } => return fsck(home, quick, rebuild_index, out),
        StoreCommand::Gc => {
            // A running daemon holds the store: it collects (mounts,
            // snapshots and conversions in flight keep what they reach).
            let spinner = out.spinner("collecting garbage");
            let report: serde_json::Value = match crate::client::Client::connect(home) {
                Ok(mut client) => client.call(crate::api::Op::StoreGc)?,
                Err(_) => serde_json::to_value(open(home)?.gc()?)?,
            };
            spinner.finish_and_clear();
            out.print(&report, || describe_gc(&report))?;
        }
    }
    Ok(exit::code(exit::OK))
}

/// One line saying what a GC run (its JSON report) did.
pub fn describe_gc(report: &serde_json::Value) -> String {
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    format!(
        "{} chunks reachable; swept {} chunks ({}); deleted {} packs, compacted {} (moved {} chunks); freed {} in {} ms",
        n("reachable_chunks"),
        n("swept_chunks"),
        human_bytes(n("swept_bytes")),
        n("packs_deleted"),
        n("packs_compacted"),
        n("chunks_relocated"),
        human_bytes(n("bytes_reclaimed")),
        n("millis")
    )
}

fn fsck(home: &Path, quick: bool, rebuild_index: bool, out: &Output) -> anyhow::Result<ExitCode> {
    let spinner = out.spinner("checking");
    let progress = |what: &str, n: u64| spinner.set_message(format!("{what} {n}"));
    let mut rebuilt = None;
    let store = if rebuild_index {
        let store = cas::repair_index(home, &progress)
            .with_context(|| format!("rebuilding the index of {}", home.display()))?;
        rebuilt = Some(store.stats()?.chunks);
        store
    } else {
        open(home)?
    };
    let report = store.fsck(
        FsckOptions {
            verify_data: !quick,
        },
        &progress,
    )?;
    spinner.finish_and_clear();
    let value = serde_json::json!({
        "clean": report.is_clean(),
        "rebuilt_index_chunks": rebuilt,
        "report": report,
    });
    out.print(&value, || {
        let mut text = String::new();
        if let Some(n) = rebuilt {
            text.push_str(&format!("rebuilt the index from packs: {n} chunks\n"));
        }
        text.push_str(&format!(
            "checked {} packs, {} frames, {} indexed chunks, {} refs reaching {} chunks ({} unindexed frames awaiting gc)\n",
            report.packs,
            report.frames,
            report.indexed_chunks,
            report.refs,
            report.reachable_chunks,
            report.unindexed_frames
        ));
        if report.is_clean() {
            text.push_str("clean");
        } else {
            text.push_str(&format!("{} problems:\n", report.problems.len()));
            for problem in &report.problems {
                text.push_str(&format!("  {problem}\n"));
            }
            text.push_str("run `snapctl store fsck --rebuild-index` if the index is damaged; damaged chunks must be restored from another copy");
        }
        text
    })?;
    Ok(exit::code(if report.is_clean() {
        exit::OK
    } else {
        exit::CORRUPTION
    }))
}
