//! Images: named trees, imported from OCI layouts, `docker save` archives,
//! tarballs and directories.
//!
//! An image is the ref `image/NAME` pointing at an image record node
//! (type [`IMAGE_RECORD`]) whose links are the image's tree followed by the
//! tree of every layer prefix, and whose body is a JSON description. Each
//! prefix of layers yields a tree, so two images sharing base layers share
//! those trees (and every chunk under them).

use std::fs::File;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cas::{ChunkId, Node, NodeType, RefExpectation, Store, Writer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::import::dir::import_dir;
use crate::import::oci::{
    plan_docker_archive, plan_oci_layout, unpack_archive, HashingReader, ImagePlan,
};
use crate::import::tar::{Guard, TarImporter, TarMode, TarStats};
use crate::import::{decompress, Compression, ImportLimits, SourceKind};
use crate::memtree::{implicit_dir_attrs, MemTree};

/// Node type of an image record.
pub const IMAGE_RECORD: NodeType = NodeType(4);
/// Prefix of image refs.
pub const IMAGE_REF_PREFIX: &str = "image/";

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub limits: ImportLimits,
    /// Which manifest of a multi-image source (an OCI ref name or a docker
    /// repo tag).
    pub tag: Option<String>,
    /// The source's kind; detected when `None`.
    pub kind: Option<SourceKind>,
}

/// One imported layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer blob's digest, when the source names one.
    pub digest: Option<String>,
    /// Tree after applying this layer and all below it (hex id).
    pub tree: String,
    pub compression: Option<Compression>,
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub whiteouts: u64,
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "Gzip" => Ok(Compression::Gzip),
            "Zstd" => Ok(Compression::Zstd),
            _ => Ok(Compression::None),
        }
    }
}

/// What an image is, as stored in its record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// The image's tree (hex id).
    pub tree: String,
    /// The record node the ref points at (hex id).
    pub record: String,
    pub source: String,
    pub kind: SourceKind,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub layers: Vec<LayerRecord>,
    /// The image configuration (entrypoint, env, ...), when the source has one.
    pub config: Option<serde_json::Value>,
    pub files: u64,
    pub file_bytes: u64,
}

/// What an import did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportReport {
    #[serde(flatten)]
    pub image: ImageInfo,
    /// Bytes of file data that were new to the store.
    pub new_bytes: u64,
    pub seconds: f64,
}

impl<'de> Deserialize<'de> for SourceKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "oci-layout" => Ok(SourceKind::OciLayout),
            "docker-archive" => Ok(SourceKind::DockerArchive),
            "tarball" => Ok(SourceKind::Tarball),
            "directory" => Ok(SourceKind::Directory),
            other => Err(serde::de::Error::custom(format!(
                "unknown source kind {other}"
            ))),
        }
    }
}

fn ref_name(name: &str) -> Result<String> {
    let full = format!("{IMAGE_REF_PREFIX}{name}");
    if name.is_empty() || name.contains('/') {
        return Err(Error::Rejected {
            source_name: "image name".into(),
            entry: name.into(),
            reason: "an image name is non-empty and has no '/'".into(),
        });
    }
    cas::validate_ref_name(&full)?;
    Ok(full)
}

/// Imports `source` as image `name`. Nothing is named unless the whole
/// import succeeds; the image is durable when this returns.
pub fn import_image(
    store: &Store,
    name: &str,
    source: &Path,
    options: &ImportOptions,
) -> Result<ImportReport> {
    let started = Instant::now();
    let full_ref = ref_name(name)?;
    if store.get_ref(&full_ref)?.is_some() {
        return Err(Error::ImageExists { name: name.into() });
    }
    let kind = match options.kind {
        Some(kind) => kind,
        None => SourceKind::detect(source)?,
    };
    let writer = store.writer(&format!("image import {name}"));
    let new_bytes;
    let mut layers = Vec::new();
    let mut config = None;
    let tree = match kind {
        SourceKind::Directory => {
            let (tree, stats) = import_dir(source, &writer, &options.limits)?;
            new_bytes = stats.new_bytes;
            tree
        }
        SourceKind::Tarball => {
            let mut tree = MemTree::new(implicit_dir_attrs());
            let file = File::open(source)
                .map_err(|e| Error::io(format!("opening {}", source.display()), e))?;
            let (stats, compression) = apply_archive(
                &mut tree,
                &writer,
                options,
                file,
                &source.display().to_string(),
                TarMode::Plain,
                options.limits.max_total_bytes,
            )?;
            new_bytes = stats.new_bytes;
            layers.push(layer_record(
                None,
                compression,
                &stats,
                &tree.store(&writer)?,
            ));
            tree
        }
        SourceKind::OciLayout | SourceKind::DockerArchive => {
            let scratch;
            let plan = if kind == SourceKind::OciLayout {
                plan_oci_layout(source, options.tag.as_deref())?
            } else {
                scratch = tempfile::Builder::new()
                    .prefix("import-")
                    .tempdir_in(store.home())
                    .map_err(|e| Error::io("creating a scratch directory in the store", e))?;
                unpack_archive(source, scratch.path(), options.limits.max_total_bytes)?;
                plan_docker_archive(scratch.path(), options.tag.as_deref())?
            };
            let (tree, image_layers, added) = apply_plan(&writer, options, &plan)?;
            layers = image_layers;
            new_bytes = added;
            config = plan.config;
            tree
        }
    };
    let tree_id = tree.store(&writer)?;
    let (files, file_bytes) = count_files(&tree);
    let mut info = ImageInfo {
        name: name.into(),
        tree: tree_id.to_hex(),
        record: String::new(),
        source: source.display().to_string(),
        kind,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        layers,
        config,
        files,
        file_bytes,
    };
    let record = put_record(&writer, &info)?;
    writer
        .set_ref(&full_ref, record, RefExpectation::Absent)
        .map_err(|e| match e {
            cas::Error::RefConflict { .. } => Error::ImageExists { name: name.into() },
            other => other.into(),
        })?;
    info.record = record.to_hex();
    Ok(ImportReport {
        image: info,
        new_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn layer_record(
    digest: Option<String>,
    compression: Compression,
    stats: &TarStats,
    tree: &ChunkId,
) -> LayerRecord {
    LayerRecord {
        digest,
        tree: tree.to_hex(),
        compression: Some(compression),
        entries: stats.entries,
        files: stats.files,
        file_bytes: stats.file_bytes,
        whiteouts: stats.whiteouts,
    }
}

/// Applies one (possibly compressed) tar stream to `tree`.
fn apply_archive(
    tree: &mut MemTree,
    writer: &Writer,
    options: &ImportOptions,
    reader: impl std::io::Read,
    source_name: &str,
    mode: TarMode,
    budget: u64,
) -> Result<(TarStats, Compression)> {
    let (decompressed, compression) = decompress(reader)?;
    let (guarded, guard) = Guard::new(decompressed, budget);
    let mut total = 0u64;
    let mut importer = TarImporter {
        tree,
        writer,
        limits: &options.limits,
        source_name: source_name.to_string(),
        mode,
        total_file_bytes: &mut total,
    };
    let stats = importer.apply(guarded, &guard)?;
    Ok((stats, compression))
}

/// Applies an image's layers in order; returns the tree, the layer records
/// and the new bytes written.
fn apply_plan(
    writer: &Writer,
    options: &ImportOptions,
    plan: &ImagePlan,
) -> Result<(MemTree, Vec<LayerRecord>, u64)> {
    let mut tree = MemTree::new(implicit_dir_attrs());
    let mut records = Vec::new();
    let mut new_bytes = 0;
    let mut budget = options.limits.max_total_bytes;
    for layer in &plan.layers {
        let name = layer.path.display().to_string();
        let file = File::open(&layer.path).map_err(|e| Error::BadImage {
            path: layer.path.clone(),
            reason: format!("layer blob cannot be opened: {e}"),
        })?;
        let mut hashing = HashingReader::new(file);
        let (stats, compression) = apply_archive(
            &mut tree,
            writer,
            options,
            &mut hashing,
            &name,
            TarMode::Layer,
            budget,
        )?;
        budget = budget.saturating_sub(stats.file_bytes);
        let (digest, _) = hashing
            .finish()
            .map_err(|e| Error::io(format!("reading {name}"), e))?;
        if let Some(expected) = &layer.digest {
            if *expected != digest {
                return Err(Error::BadImage {
                    path: layer.path.clone(),
                    reason: format!("layer hashes to {digest}, but the manifest says {expected}"),
                });
            }
        }
        if let (Some(declared), true) = (layer.compression, compression != Compression::None) {
            if declared != compression && declared != Compression::None {
                tracing::warn!(layer = %name, ?declared, ?compression, "layer media type and content disagree; using the content");
            }
        }
        new_bytes += stats.new_bytes;
        let layer_tree = tree.store(writer)?;
        records.push(layer_record(
            layer.digest.clone(),
            compression,
            &stats,
            &layer_tree,
        ));
    }
    Ok((tree, records, new_bytes))
}

fn count_files(tree: &MemTree) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut files = 0;
    let mut bytes = 0;
    for (_, index) in tree.walk() {
        if let crate::memtree::MemKind::Other(crate::tree::InodeKind::File { size, .. }) =
            &tree.node(index).kind
        {
            if seen.insert(index) {
                files += 1;
                bytes += size;
            }
        }
    }
    (files, bytes)
}

fn put_record(writer: &Writer, info: &ImageInfo) -> Result<ChunkId> {
    let mut links = vec![parse_id(&info.tree)?];
    for layer in &info.layers {
        links.push(parse_id(&layer.tree)?);
    }
    let body =
        serde_json::to_vec(info).map_err(|e| Error::io("encoding the image record", e.into()))?;
    Ok(writer.put_node(&Node::new(IMAGE_RECORD, links, body))?.id)
}

fn parse_id(hex: &str) -> Result<ChunkId> {
    Ok(hex.parse::<ChunkId>()?)
}

/// Reads image record `record`.
fn read_record(store: &Store, name: &str, record: ChunkId) -> Result<ImageInfo> {
    let node = store.get_node(&record)?;
    if node.node_type != IMAGE_RECORD {
        return Err(Error::malformed(
            record,
            format!("image '{name}' points at a non-image node"),
        ));
    }
    let mut info: ImageInfo = serde_json::from_slice(&node.body)
        .map_err(|e| Error::malformed(record, format!("image record JSON: {e}")))?;
    let tree = parse_id(&info.tree)?;
    if node.links.first() != Some(&tree) || node.links.len() != info.layers.len() + 1 {
        return Err(Error::malformed(
            record,
            "image record links disagree with its body",
        ));
    }
    info.name = name.into();
    info.record = record.to_hex();
    Ok(info)
}

/// Image `name`.
pub fn get_image(store: &Store, name: &str) -> Result<ImageInfo> {
    let full = ref_name(name)?;
    let value = store
        .get_ref(&full)?
        .ok_or_else(|| Error::ImageNotFound { name: name.into() })?;
    read_record(store, name, value.root)
}

/// The tree of image `name`.
pub fn image_tree(store: &Store, name: &str) -> Result<ChunkId> {
    parse_id(&get_image(store, name)?.tree)
}

/// Every image, by name.
pub fn list_images(store: &Store) -> Result<Vec<ImageInfo>> {
    store
        .list_refs(IMAGE_REF_PREFIX)?
        .into_iter()
        .map(|(full, value)| {
            let name = full.strip_prefix(IMAGE_REF_PREFIX).unwrap_or(&full);
            read_record(store, name, value.root)
        })
        .collect()
}

/// Removes image `name`; its data becomes collectable by `gc` unless
/// something else reaches it.
pub fn remove_image(store: &Store, name: &str) -> Result<()> {
    let full = ref_name(name)?;
    match store.delete_ref(&full, RefExpectation::Any) {
        Ok(_) => Ok(()),
        Err(cas::Error::RefNotFound { .. }) => Err(Error::ImageNotFound { name: name.into() }),
        Err(e) => Err(e.into()),
    }
}
