//! Ingesting a directory tree into the store, one blob per regular file,
//! and reading it back. Used by the demo and the benchmarks until `layerfs`
//! turns directories into trees of their own.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cas::{BlobInfo, ChunkId, Chunking, Store};
use rayon::prelude::*;

/// A regular file of the input tree.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub len: u64,
}

/// Every regular file under `root` (symlinks are not followed; unreadable
/// entries are skipped, like `tar` would warn about them).
pub fn list_files(root: &Path) -> Result<Vec<InputFile>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                files.push(InputFile {
                    path: entry.path(),
                    len,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    anyhow::ensure!(
        !files.is_empty(),
        "no regular files under {}",
        root.display()
    );
    Ok(files)
}

/// What an ingest did.
#[derive(Clone, Debug)]
pub struct Ingest {
    pub files: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub elapsed: Duration,
    pub blobs: Vec<(PathBuf, BlobInfo)>,
}

impl Ingest {
    /// Input MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// Stores every file as a blob, in parallel across files, and commits
/// (durably) before returning. Files that vanish or cannot be read are
/// skipped.
pub fn ingest(store: &Store, files: &[InputFile]) -> Result<Ingest> {
    let started = Instant::now();
    let writer = store.writer("tree ingest");
    let bytes = AtomicU64::new(0);
    let blobs: Vec<(PathBuf, BlobInfo)> = files
        .par_iter()
        .filter_map(|file| {
            let mut source = File::open(&file.path).ok()?;
            let result = writer
                .write_blob(&mut source, Chunking::ContentDefined)
                .with_context(|| format!("storing {}", file.path.display()));
            Some(result.map(|info| {
                bytes.fetch_add(info.len, Ordering::Relaxed);
                (file.path.clone(), info)
            }))
        })
        .collect::<Result<_>>()?;
    writer.commit().context("committing the ingest")?;
    let elapsed = started.elapsed();
    let sum = |f: fn(&BlobInfo) -> u64| blobs.iter().map(|(_, b)| f(b)).sum();
    Ok(Ingest {
        files: blobs.len() as u64,
        bytes: bytes.load(Ordering::Relaxed),
        chunks: sum(|b| b.chunks),
        new_chunks: sum(|b| b.new_chunks),
        new_bytes: sum(|b| b.new_bytes),
        elapsed,
        blobs,
    })
}

/// Reads every blob back in full, in parallel across blobs, hashing what it
/// reads. Returns bytes read, elapsed time and the per-blob hashes.
pub fn read_back(
    store: &Store,
    blobs: &[(PathBuf, BlobInfo)],
) -> Result<(u64, Duration, Vec<blake3::Hash>)> {
    let started = Instant::now();
    let hashes: Vec<(u64, blake3::Hash)> = blobs
        .par_iter()
        .map(|(path, info)| {
            let mut hasher = blake3::Hasher::new();
            let n = store
                .blob(&info.id)
                .and_then(|blob| blob.copy_to(&mut hasher))
                .with_context(|| format!("reading back {}", path.display()))?;
            Ok((n, hasher.finalize()))
        })
        .collect::<Result<_>>()?;
    let bytes = hashes.iter().map(|(n, _)| n).sum();
    Ok((
        bytes,
        started.elapsed(),
        hashes.into_iter().map(|(_, h)| h).collect(),
    ))
}

/// Hashes the source files, to compare with what the store returns.
pub fn hash_sources(blobs: &[(PathBuf, BlobInfo)]) -> Vec<Option<blake3::Hash>> {
    blobs
        .par_iter()
        .map(|(path, _)| {
            let mut file = File::open(path).ok()?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                    }
                    Err(_) => return None,
                }
            }
            Some(hasher.finalize())
        })
        .collect()
}

/// Distinct blob ids (identical files count once).
pub fn distinct_blobs(blobs: &[(PathBuf, BlobInfo)]) -> usize {
    let ids: std::collections::HashSet<ChunkId> = blobs.iter().map(|(_, b)| b.id).collect();
    ids.len()
}
