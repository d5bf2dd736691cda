//! OCI image layouts and `docker save` archives: manifests, layer blobs
//! (verified against their digests) and the order layers apply in.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::import::Compression;

/// Media types of image indexes (which list manifests).
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A content descriptor.
#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// The platform an index entry is for.
#[derive(Clone, Debug, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// One layer to apply: where its bytes are and how to check them.
#[derive(Clone, Debug)]
pub struct LayerSource {
    pub path: PathBuf,
    /// `sha256:<hex>` the file's bytes must hash to, when known.
    pub digest: Option<String>,
    /// Compression named by the media type; the bytes are sniffed anyway.
    pub compression: Option<Compression>,
}

/// An image's layers (bottom first) and its configuration JSON.
#[derive(Clone, Debug)]
pub struct ImagePlan {
    pub layers: Vec<LayerSource>,
    pub config: Option<serde_json::Value>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadImage {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `sha256:<64 hex>` → the blob's path in `layout`.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| {
            bad(
                layout,
                format!("unsupported or malformed digest '{digest}'"),
            )
        })?;
    Ok(layout.join("blobs").join("sha256").join(hex))
}

/// Reads a small JSON blob, verifying its digest.
fn read_json_blob<T: for<'de> Deserialize<'de>>(layout: &Path, digest: &str) -> Result<T> {
    let path = blob_path(layout, digest)?;
    let bytes = read_limited(&path, 16 << 20)?;
    let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
    if actual != digest {
        return Err(bad(
            &path,
            format!("content hashes to {actual}, not {digest}"),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(&path, format!("malformed JSON: {e}")))
}

fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if bytes.len() as u64 > max {
        return Err(bad(path, format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

fn compression_of(media_type: &str) -> Option<Compression> {
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Some(Compression::Gzip)
    } else if media_type.ends_with("+zstd") {
        Some(Compression::Zstd)
    } else if media_type.ends_with(".tar") {
        Some(Compression::None)
    } else {
        None
    }
}

/// Picks the manifest to import from an index: the one tagged `tag` if
/// given, the only one, or the one for linux/amd64.
fn choose<'d>(
    layout: &Path,
    manifests: &'d [Descriptor],
    tag: Option<&str>,
) -> Result<&'d Descriptor> {
    let name_of = |d: &Descriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
    };
    if let Some(tag) = tag {
        return manifests
            .iter()
            .find(|d| name_of(d).as_deref() == Some(tag))
            .ok_or_else(|| bad(layout, format!("no manifest is tagged '{tag}'")));
    }
    if manifests.len() == 1 {
        return Ok(&manifests[0]);
    }
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| {
            let tags: Vec<_> = manifests.iter().filter_map(name_of).collect();
            bad(
                layout,
                format!(
                    "{} manifests and none for linux/amd64; choose one with --tag (tags: {})",
                    manifests.len(),
                    tags.join(", ")
                ),
            )
        })
}

/// Reads an OCI image layout directory down to its layers.
pub fn plan_oci_layout(layout: &Path, tag: Option<&str>) -> Result<ImagePlan> {
    let marker = read_limited(&layout.join("oci-layout"), 1 << 16)?;
    let marker: serde_json::Value = serde_json::from_slice(&marker)
        .map_err(|e| bad(layout, format!("malformed oci-layout: {e}")))?;
    let version = marker["imageLayoutVersion"].as_str().unwrap_or("");
    if !version.starts_with("1.") {
        return Err(bad(
            layout,
            format!("unsupported imageLayoutVersion '{version}'"),
        ));
    }
    let index_bytes = read_limited(&layout.join("index.json"), 16 << 20)?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| bad(layout, format!("malformed index.json: {e}")))?;
    let mut descriptor = choose(layout, &index.manifests, tag)?.clone();
    // Follow nested indexes (multi-platform images) down to one manifest.
    for _ in 0..8 {
        let manifest: Manifest = read_json_blob(layout, &descriptor.digest)?;
        let is_index = INDEX_TYPES.contains(&descriptor.media_type.as_str())
            || INDEX_TYPES.contains(&manifest.media_type.as_str())
            || manifest.manifests.is_some();
        if is_index {
            let nested = manifest.manifests.unwrap_or_default();
            descriptor = choose(layout, &nested, None)?.clone();
            continue;
        }
        let config = match &manifest.config {
            Some(c) => Some(read_json_blob::<serde_json::Value>(layout, &c.digest)?),
            None => None,
        };
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                Ok(LayerSource {
                    path: blob_path(layout, &l.digest)?,
                    digest: Some(l.digest.clone()),
                    compression: compression_of(&l.media_type),
                })
            })
            .collect::<Result<_>>()?;
        return Ok(ImagePlan { layers, config });
    }
    Err(bad(layout, "image indexes nested deeper than 8"))
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Reads an unpacked `docker save` archive (see [`unpack_archive`]) down to
/// its layers.
pub fn plan_docker_archive(root: &Path, tag: Option<&str>) -> Result<ImagePlan> {
    let bytes = read_limited(&root.join("manifest.json"), 16 << 20)?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| bad(root, format!("malformed manifest.json: {e}")))?;
    let entry = match tag {
        Some(tag) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == tag))
            .ok_or_else(|| bad(root, format!("no image tagged '{tag}' in the archive")))?,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(bad(
                root,
                format!(
                    "the archive holds {} images; choose one with --tag",
                    entries.len()
                ),
            ))
        }
    };
    let member = |name: &str| -> Result<PathBuf> {
        crate::memtree::split_path(name.as_bytes())
            .map_err(|r| bad(root, format!("manifest names '{name}': {r}")))?;
        Ok(root.join(name))
    };
    let digest_of = |name: &str| {
        name.strip_prefix("blobs/sha256/")
            .filter(|h| h.len() == 64)
            .map(|h| format!("sha256:{h}"))
    };
    let config_bytes = read_limited(&member(&entry.config)?, 16 << 20)?;
    let config = serde_json::from_slice(&config_bytes).ok();
    let layers = entry
        .layers
        .iter()
        .map(|l| {
            Ok(LayerSource {
                path: member(l)?,
                digest: digest_of(l),
                compression: None,
            })
        })
        .collect::<Result<_>>()?;
    Ok(ImagePlan { layers, config })
}

/// Unpacks the regular files and directories of an (uncompressed) archive
/// into `into`, refusing unsafe paths and anything over `max_bytes`.
pub fn unpack_archive(archive_path: &Path, into: &Path, max_bytes: u64) -> Result<()> {
    let file = File::open(archive_path)
        .map_err(|e| Error::io(format!("opening {}", archive_path.display()), e))?;
    let mut archive = ::tar::Archive::new(file);
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| bad(archive_path, format!("malformed archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(archive_path, format!("malformed archive: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let parts = crate::memtree::split_path(&raw)
            .map_err(|r| bad(archive_path, format!("{}: {r}", crate::memtree::show(&raw))))?;
        if parts.is_empty() {
            continue;
        }
        let mut target = into.to_path_buf();
        for part in &parts {
            target.push(std::ffi::OsStr::from_bytes(part));
        }
        match entry.header().entry_type() {
            ::tar::EntryType::Directory => {
                fs::create_dir_all(&target)
                    .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
            }
            ::tar::EntryType::Regular | ::tar::EntryType::Continuous => {
                total += entry.size();
                if total > max_bytes {
                    return Err(Error::LimitExceeded {
                        source_name: archive_path.display().to_string(),
                        what: "unpacked archive size".into(),
                        limit: max_bytes,
                        hint: "raise --max-bytes if the archive is trusted",
                    });
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
                }
                let mut out = File::create(&target)
                    .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
                io::copy(&mut entry, &mut out)
                    .map_err(|e| bad(archive_path, format!("truncated or corrupt archive: {e}")))?;
            }
            // Symlinks (docker's layer-sharing links) and the rest are not
            // needed: manifest.json names the files it uses.
            _ => {}
        }
    }
    Ok(())
}

/// A reader that hashes what passes through it (SHA-256, as OCI digests).
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads the rest of the input, then returns `sha256:<hex>` of all of
    /// it and its length.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format!("sha256:{:x}", self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
