//! The README's main job, for now: put a real directory tree into a fresh
//! store, read it back, verify every file, and show what dedup and
//! compression saved.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use cas::{FsckOptions, OpenOptions, Store, StoreConfig};

use crate::tree;

fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

pub fn run(dir: &Path) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("strata-demo-")
        .tempdir()
        .context("creating a scratch directory")?;
    let home = work.path().join("store");
    println!(
        "Strata demo: ingest {} into a fresh store at {}",
        dir.display(),
        home.display()
    );
    let files = tree::list_files(dir)?;
    let input: u64 = files.iter().map(|f| f.len).sum();
    println!("  input: {} files, {}", files.len(), gb(input));

    let store = Store::init(&home, StoreConfig::default())?;
    let first = tree::ingest(&store, &files)?;
    println!(
        "  ingest (unique, durable):   {} in {:.2}s = {:.0} MB/s ({} chunks, {} new)",
        gb(first.bytes),
        first.elapsed.as_secs_f64(),
        first.mb_per_s(),
        first.chunks,
        first.new_chunks
    );
    let again = tree::ingest(&store, &files)?;
    ensure!(
        again.new_chunks == 0,
        "a second ingest of the same tree wrote new chunks"
    );
    println!(
        "  ingest again (duplicate):   {} in {:.2}s = {:.0} MB/s, {} new chunks",
        gb(again.bytes),
        again.elapsed.as_secs_f64(),
        again.mb_per_s(),
        again.new_chunks
    );

    // Read back from a freshly opened store (no chunk cache) and verify.
    drop(store);
    let store = Store::open(&home, OpenOptions::default())?;
    let (read, elapsed, hashes) = tree::read_back(&store, &first.blobs)?;
    let sources = tree::hash_sources(&first.blobs);
    let mut verified = 0u64;
    let mut mismatches = Vec::new();
    for ((path, _), (got, want)) in first.blobs.iter().zip(hashes.iter().zip(&sources)) {
        match want {
            Some(want) if want == got => verified += 1,
            Some(_) => mismatches.push(path.display().to_string()),
            // Unreadable now (permissions changed, file removed): skipped.
            None => {}
        }
    }
    ensure!(
        mismatches.is_empty(),
        "{} files read back differently from their source, e.g. {}",
        mismatches.len(),
        mismatches[0]
    );
    println!(
        "  read back + verify (cold):  {} in {:.2}s = {:.0} MB/s; {verified} files identical to the source",
        gb(read),
        elapsed.as_secs_f64(),
        read as f64 / 1e6 / elapsed.as_secs_f64(),
    );

    let stats = store.stats()?;
    let unique_raw = first.new_bytes;
    println!(
        "  dedup: {} of file data -> {} unique ({:.2}x; {} identical files stored once)",
        gb(first.bytes),
        gb(unique_raw),
        first.bytes as f64 / unique_raw.max(1) as f64,
        first.files as usize - tree::distinct_blobs(&first.blobs)
    );
    println!(
        "  on disk: {} in {} packs ({:.2}x smaller than the input overall)",
        gb(stats.pack_bytes),
        stats.packs,
        first.bytes as f64 / stats.pack_bytes.max(1) as f64
    );
    let report = store.fsck(FsckOptions::default(), &|_, _| {})?;
    ensure!(
        report.is_clean(),
        "fsck found problems: {:?}",
        report.problems
    );
    println!(
        "  fsck: clean ({} chunks verified in {} packs)",
        report.indexed_chunks, report.packs
    );
    Ok(())
}
