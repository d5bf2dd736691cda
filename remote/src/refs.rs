//! Refs in the bucket: each update is a new, create-only version object.
//!
//! Ref `NAME` at generation G is the object `refs/NAME/G` (G in 20
//! digits); its current value is the highest generation listed. An update
//! from generation G writes `refs/NAME/G+1` with `PutMode::Create`
//! (If-None-Match: `*`): of two nodes that both read G, exactly one
//! creates G+1 and the other is told its write lost, and re-reads. This
//! needs only create-if-absent, which every `object_store` backend offers
//! (the local filesystem included, which has no If-Match), and a listing
//! that shows a created object (S3, GCS and Azure list strongly
//! consistently). A deletion is a version whose root is `null`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cas::{validate_ref_name, ChunkId, RefExpectation};
use futures::StreamExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::bucket::Bucket;
use crate::error::{Error, Result};
use crate::layout;

/// A version object's contents.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Version {
    format: String,
    name: String,
    generation: u64,
    /// `None`: the ref was deleted at this generation.
    root: Option<ChunkId>,
    updated_unix_nanos: u64,
    /// The node that wrote it (its host name), for people.
    writer: String,
}

const VERSION_FORMAT: &str = "strata-ref-v1";

/// A ref's current value in the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRef {
    pub name: String,
    pub root: ChunkId,
    pub generation: u64,
    pub updated_unix_nanos: u64,
    pub writer: String,
}

fn parse_version(name: &str, generation: u64, bytes: &[u8]) -> Result<Version> {
    let object = layout::ref_version(name, generation).to_string();
    let version: Version = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        object: object.clone(),
        reason: e.to_string(),
    })?;
    if version.format != VERSION_FORMAT || version.name != name || version.generation != generation
    {
        return Err(Error::Corrupt {
            object,
            reason: "its contents name another ref, generation or format".into(),
        });
    }
    Ok(version)
}

fn generation_of(path: &Path) -> Option<u64> {
    let last = path.filename()?;
    (last.len() == 20 && last.bytes().all(|b| b.is_ascii_digit()))
        .then(|| last.parse().ok())
        .flatten()
}

/// The newest version of `name`: its generation and contents.
async fn newest(bucket: &Bucket, name: &str) -> Result<Option<(u64, Version)>> {
    // A version can vanish between the listing and the read only if ref
    // cleanup removed it for a newer one: list again.
    for _ in 0..5 {
        let listed = bucket.list_here(&layout::ref_dir(name)).await?;
        let Some(generation) = listed
            .iter()
            .filter_map(|m| generation_of(&m.location))
            .max()
        else {
            return Ok(None);
        };
        if let Some(bytes) = bucket.get(&layout::ref_version(name, generation)).await? {
            return Ok(Some((generation, parse_version(name, generation, &bytes)?)));
        }
    }
    Err(Error::Corrupt {
        object: layout::ref_dir(name).to_string(),
        reason: "its newest version keeps disappearing".into(),
    })
}

/// The value a version gives its ref (`None`: a deletion).
fn value_of(name: &str, generation: u64, v: Version) -> Option<RemoteRef> {
    v.root.map(|root| RemoteRef {
        name: name.to_string(),
        root,
        generation,
        updated_unix_nanos: v.updated_unix_nanos,
        writer: v.writer,
    })
}

/// The current value of remote ref `name` (`None`: absent or deleted).
pub async fn get(bucket: &Bucket, name: &str) -> Result<Option<RemoteRef>> {
    validate_ref_name(name)?;
    Ok(newest(bucket, name)
        .await?
        .and_then(|(generation, v)| value_of(name, generation, v)))
}

/// Ref `name` as of its version `generation`, the newest a listing showed:
/// one GET (a version gone since the listing is looked up afresh).
async fn get_listed(bucket: &Bucket, name: &str, generation: u64) -> Result<Option<RemoteRef>> {
    match bucket.get(&layout::ref_version(name, generation)).await? {
        Some(bytes) => Ok(value_of(
            name,
            generation,
            parse_version(name, generation, &bytes)?,
        )),
        None => get(bucket, name).await,
    }
}

/// This machine's host name (what version objects record as their
/// writer).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Moves remote ref `name` to `root` (`None`: deletes it) if its state
/// matches `expect`, by creating the next version object (with
/// [`RefExpectation::Any`], a ref already at `root` is left as it is). A lost race is a
/// [`Error::RefConflict`]. The caller makes sure everything `root` reaches
/// is in the bucket first.
pub async fn set(
    bucket: &Bucket,
    name: &str,
    root: Option<ChunkId>,
    expect: RefExpectation,
) -> Result<Option<RemoteRef>> {
    validate_ref_name(name)?;
    let current = newest(bucket, name).await?;
    let live = current.as_ref().and_then(|(g, v)| v.root.map(|_| *g));
    let ok = match expect {
        RefExpectation::Any => true,
        RefExpectation::Absent => live.is_none(),
        RefExpectation::Generation(g) => live == Some(g),
    };
    if !ok {
        return Err(Error::RefConflict {
            name: name.into(),
            expected: describe_expectation(expect),
            found: live.map_or("no ref".into(), |g| format!("generation {g}")),
        });
    }
    if root.is_none() && live.is_none() {
        return Err(Error::RefNotFound { name: name.into() });
    }
    // Asked to be what it is whatever it was: nothing to write.
    if let (RefExpectation::Any, Some((generation, current))) = (expect, &current) {
        if root.is_some() && current.root == root {
            return Ok(root.map(|root| RemoteRef {
                name: name.into(),
                root,
                generation: *generation,
                updated_unix_nanos: current.updated_unix_nanos,
                writer: current.writer.clone(),
            }));
        }
    }
    let generation = current.as_ref().map_or(1, |(g, _)| g + 1);
    match create_version(bucket, name, generation, root).await? {
        Some(value) => Ok(value),
        None => Err(Error::RefConflict {
            name: name.into(),
            expected: describe_expectation(expect),
            found: format!("generation {generation} written by another node meanwhile"),
        }),
    }
}

/// Creates version `generation` of ref `name`; `None`: it exists already
/// (another writer's).
async fn create_version(
    bucket: &Bucket,
    name: &str,
    generation: u64,
    root: Option<ChunkId>,
) -> Result<Option<Option<RemoteRef>>> {
    let version = Version {
        format: VERSION_FORMAT.into(),
        name: name.into(),
        generation,
        root,
        updated_unix_nanos: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        writer: host_name(),
    };
    let bytes = serde_json::to_vec(&version).map_err(|e| Error::Config(e.to_string()))?;
    let path = layout::ref_version(name, generation);
    if !bucket.put_new_or_same(&path, Bytes::from(bytes)).await? {
        return Ok(None);
    }
    Ok(Some(root.map(|root| RemoteRef {
        name: name.into(),
        root,
        generation,
        updated_unix_nanos: version.updated_unix_nanos,
        writer: version.writer,
    })))
}

/// Moves remote ref `name` to `root` whatever it was: a ref that never
/// existed is created in one request (its generation 1, create-only);
/// otherwise as [`set`] with [`RefExpectation::Any`], retrying lost races.
pub async fn put(bucket: &Bucket, name: &str, root: ChunkId) -> Result<RemoteRef> {
    validate_ref_name(name)?;
    if let Some(Some(value)) = create_version(bucket, name, 1, Some(root)).await? {
        return Ok(value);
    }
    for _ in 0..16 {
        match set(bucket, name, Some(root), RefExpectation::Any).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => break,
            Err(Error::RefConflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::RefConflict {
        name: name.into(),
        expected: "a quiet moment".into(),
        found: "other writers moving it continuously".into(),
    })
}

fn describe_expectation(expect: RefExpectation) -> String {
    match expect {
        RefExpectation::Any => "anything".into(),
        RefExpectation::Absent => "no ref".into(),
        RefExpectation::Generation(g) => format!("generation {g}"),
    }
}

/// Remote refs whose names start with `prefix` (a whole number of
/// components, like `snapshot/`; `""` for all), with their values.
pub async fn list(bucket: &Arc<Bucket>, prefix: &str) -> Result<Vec<RemoteRef>> {
    let dir = prefix.trim_end_matches('/');
    let listing_root = if dir.is_empty() {
        Path::from(layout::REFS)
    } else {
        Path::from(format!("{}/{dir}", layout::REFS))
    };
    let listed = bucket.list(&listing_root).await?;
    let mut newest_by_name: BTreeMap<String, u64> = BTreeMap::new();
    for meta in listed {
        let Some(generation) = generation_of(&meta.location) else {
            continue;
        };
        let full = meta.location.as_ref();
        let Some(rest) = full.strip_prefix(&format!("{}/", layout::REFS)) else {
            continue;
        };
        let Some((name, _)) = rest.rsplit_once('/') else {
            continue;
        };
        if !name.starts_with(prefix) || validate_ref_name(name).is_err() {
            continue;
        }
        let slot = newest_by_name.entry(name.to_string()).or_insert(0);
        *slot = (*slot).max(generation);
    }
    let values: Vec<Result<Option<RemoteRef>>> = futures::stream::iter(newest_by_name)
        .map(|(name, generation)| {
            let bucket = bucket.clone();
            async move { get_listed(&bucket, &name, generation).await }
        })
        .buffered(16)
        .collect()
        .await;
    let mut out = Vec::new();
    for value in values {
        if let Some(value) = value? {
            out.push(value);
        }
    }
    Ok(out)
}
