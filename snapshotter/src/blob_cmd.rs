//! `snapctl blob put|get`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use cas::{ChunkId, Chunking, RefExpectation, Store};
use clap::Subcommand;

use crate::exit;
use crate::output::{human_bytes, Output};
use crate::store_cmd::open;

#[derive(Subcommand, Debug)]
pub enum BlobCommand {
    /// Store FILE ("-" for stdin) as a blob and print its id. A ref keeps it
    /// alive: `blob/<id>` unless --ref names another.
    Put {
        file: PathBuf,
        /// Name of the ref to point at the blob.
        #[arg(long = "ref", value_name = "NAME")]
        ref_name: Option<String>,
        /// Cut into fixed-size chunks (memory and disk images) instead of
        /// content-defined ones.
        #[arg(long)]
        fixed: bool,
    },
    /// Write blob ID (a blob id or a ref name) to OUT ("-" for stdout).
    Get { id: String, out: PathBuf },
}

pub fn run(cmd: BlobCommand, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let store = open(home)?;
    match cmd {
        BlobCommand::Put {
            file,
            ref_name,
            fixed,
        } => put(&store, &file, ref_name, fixed, out),
        BlobCommand::Get { id, out: target } => get(&store, &id, &target, out),
    }
}

fn put(
    store: &Store,
    file: &Path,
    ref_name: Option<String>,
    fixed: bool,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let chunking = if fixed {
        Chunking::FixedSize
    } else {
        Chunking::ContentDefined
    };
    if let Some(name) = &ref_name {
        cas::validate_ref_name(name)?;
    }
    let started = std::time::Instant::now();
    let writer = store.writer(&format!("blob put {}", file.display()));
    let info = if file.as_os_str() == "-" {
        let bar = out.bytes_bar(None, "storing stdin");
        let info = writer.write_blob(&mut bar.wrap_read(std::io::stdin().lock()), chunking)?;
        bar.finish_and_clear();
        info
    } else {
        let source = File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = source.metadata().ok().map(|m| m.len());
        let bar = out.bytes_bar(len, "storing");
        let info = writer
            .write_blob(&mut bar.wrap_read(source), chunking)
            .with_context(|| format!("storing {}", file.display()))?;
        bar.finish_and_clear();
        info
    };
    let name = ref_name.unwrap_or_else(|| format!("blob/{}", info.id));
    writer.set_ref(&name, info.id, RefExpectation::Any)?;
    let seconds = started.elapsed().as_secs_f64();
    let value = serde_json::json!({ "id": info.id, "ref": name, "blob": info, "seconds": seconds });
    out.print(&value, || info.id.to_string())?;
    out.note(&format!(
        "stored {} in {} chunks ({} new, {} new bytes, {} of zeros) in {:.2}s; ref {}",
        human_bytes(info.len),
        info.chunks,
        info.new_chunks,
        human_bytes(info.new_bytes),
        human_bytes(info.zero_bytes),
        seconds,
        name
    ));
    Ok(exit::code(exit::OK))
}

/// A blob id, or the root of the ref of that name.
fn resolve(store: &Store, text: &str) -> anyhow::Result<ChunkId> {
    if text.len() == cas::CHUNK_ID_LEN * 2 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(text.parse()?);
    }
    if cas::validate_ref_name(text).is_err() {
        // Report it as the id it most likely tried to be.
        return Ok(text.parse()?);
    }
    match store.get_ref(text)? {
        Some(value) => Ok(value.root),
        None => Err(cas::Error::RefNotFound { name: text.into() })
            .context("the argument is neither a blob id (64 hex digits) nor an existing ref"),
    }
}

fn get(store: &Store, id_text: &str, target: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let id = resolve(store, id_text)?;
    let blob = store.blob(&id)?;
    let started = std::time::Instant::now();
    if target.as_os_str() == "-" {
        if out.json() {
            bail!("--json and output to stdout cannot be combined; give a file name");
        }
        let mut stdout = std::io::stdout().lock();
        blob.copy_to(&mut stdout)?;
        stdout.flush()?;
        return Ok(exit::code(exit::OK));
    }
    // Write beside the target and rename at the end, so a failed read never
    // leaves a partial file under the target's name.
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .with_context(|| format!("{} is not a file name", target.display()))?;
    let tmp = dir.join(format!(
        ".{}.snapctl-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<u64> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let for_sync = file
            .try_clone()
            .with_context(|| format!("opening {}", tmp.display()))?;
        let bar = out.bytes_bar(Some(blob.len()), "writing");
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, bar.wrap_write(file));
        let n = blob.copy_to(&mut writer)?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        bar.finish_and_clear();
        for_sync
            .sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, target)
            .with_context(|| format!("moving the output to {}", target.display()))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let n = result?;
    let seconds = started.elapsed().as_secs_f64();
    let value = serde_json::json!({ "id": id, "bytes": n, "path": target, "seconds": seconds });
    out.print(&value, || {
        format!(
            "wrote {} to {} in {:.2}s",
            human_bytes(n),
            target.display(),
            seconds
        )
    })?;
    Ok(exit::code(exit::OK))
}
