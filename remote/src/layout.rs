//! Object names in the bucket (`cas/FORMAT.md`, "The bucket").

use object_store::path::Path;

/// The marker object, written first.
pub const MARKER: &str = "strata-bucket.json";
/// Directory of pack objects.
pub const PACKS: &str = "packs";
/// Directory of index objects.
pub const INDEX: &str = "index";
/// Directory of ref version objects.
pub const REFS: &str = "refs";

/// `packs/NNNNNNNNNNNNNNNN.pack` (16 hex digits).
pub fn pack(number: u64) -> Path {
    Path::from(format!("{PACKS}/{number:016x}.pack"))
}

/// `index/NNNNNNNNNNNNNNNN.idx`.
pub fn index(number: u64) -> Path {
    Path::from(format!("{INDEX}/{number:016x}.idx"))
}

/// The number in an index object's name, if it is one.
pub fn index_number(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let hex = name.strip_suffix(".idx")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

/// `refs/NAME` (the directory of the ref's versions).
pub fn ref_dir(name: &str) -> Path {
    Path::from(format!("{REFS}/{name}"))
}

/// `refs/NAME/GGGGGGGGGGGGGGGGGGGG` (the generation in 20 digits, so that
/// names sort as numbers).
pub fn ref_version(name: &str, generation: u64) -> Path {
    Path::from(format!("{REFS}/{name}/{generation:020}"))
}

/// A fresh random 64-bit number for a pack or index object: BLAKE3 of the
/// time, the process, a counter and the host, so that nodes never pick the
/// same one.
pub fn fresh_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.update(&now.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    if let Ok(host) = std::fs::read("/proc/sys/kernel/random/boot_id") {
        hasher.update(&host);
    }
    let hash = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    // Never the local tier's "remote" marker.
    u64::from_le_bytes(bytes) & (u64::MAX >> 1)
}
