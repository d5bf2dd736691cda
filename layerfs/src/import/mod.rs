//! Importing what users have into trees: OCI image layouts, `docker save`
//! archives, root-filesystem tarballs and plain directories.
//!
//! Every importer builds a [`MemTree`] while writing file contents as blobs
//! under one [`cas::Writer`] (whose lease keeps them alive), stores the
//! tree, and only then names it. An import that fails part-way names
//! nothing: its chunks are unreachable and the next `gc` removes them.

pub mod dir;
pub mod oci;
pub mod tar;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// Bounds on what one import may hold. The defaults admit any real image
/// and stop tar bombs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportLimits {
    /// Most uncompressed bytes of archive read, summed over all layers;
    /// also the most bytes of files in total, counted as they expand (a
    /// sparse entry by its full size) and checked before each file is
    /// read.
    pub max_total_bytes: u64,
    /// Largest single file.
    pub max_file_bytes: u64,
    /// Most entries in one archive.
    pub max_entries: u64,
    /// Whether character and block device nodes are accepted.
    pub allow_devices: bool,
}

impl Default for ImportLimits {
    fn default() -> ImportLimits {
        ImportLimits {
            max_total_bytes: 64 << 30,
            max_file_bytes: 16 << 30,
            max_entries: 4_000_000,
            allow_devices: true,
        }
    }
}

/// How an archive's bytes are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognises gzip and zstd by their magic bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// `reader` decompressed as its leading bytes say.
pub fn decompress<'r>(reader: impl Read + 'r) -> Result<(Box<dyn Read + 'r>, Compression)> {
    let mut buffered = BufReader::with_capacity(1 << 20, reader);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::io("reading the archive", e))?;
    let compression = Compression::sniff(head);
    let out: Box<dyn Read + 'r> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| Error::io("starting zstd decompression", e))?,
        ),
    };
    Ok((out, compression))
}

/// What kind of source a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A directory with an `oci-layout` file.
    OciLayout,
    /// A `docker save` archive (a tar with `manifest.json` at its top).
    DockerArchive,
    /// A root filesystem as a tarball (plain, gzip or zstd).
    Tarball,
    /// A plain directory tree.
    Directory,
}

impl SourceKind {
    /// Works out what `path` holds.
    pub fn detect(path: &Path) -> Result<SourceKind> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if meta.is_dir() {
            return Ok(if path.join("oci-layout").is_file() {
                SourceKind::OciLayout
            } else {
                SourceKind::Directory
            });
        }
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let (reader, compression) = decompress(file)?;
        if compression != Compression::None {
            return Ok(SourceKind::Tarball);
        }
        // A docker archive is an uncompressed tar listing manifest.json at
        // its top level; reading the headers finds it.
        let mut archive = ::tar::Archive::new(reader);
        let Ok(entries) = archive.entries() else {
            return Ok(SourceKind::Tarball);
        };
        for entry in entries {
            let Ok(entry) = entry else { break };
            let path = entry.path_bytes();
            let trimmed = path.strip_prefix(b"./").unwrap_or(&path);
            if trimmed == b"manifest.json" {
                return Ok(SourceKind::DockerArchive);
            }
        }
        Ok(SourceKind::Tarball)
    }
}
