//! Applying a tar stream (a root filesystem tarball or an image layer) to a
//! [`MemTree`], with every check a hostile archive calls for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cas::{Chunking, Writer};
use tar::EntryType;

use crate::error::{Error, Result};
use crate::import::ImportLimits;
use crate::memtree::{implicit_dir_attrs, show, split_path, MemKind, MemNode, MemTree};
use crate::tree::{validate_xattrs, Attrs, InodeKind, Timestamp, MAX_PATH_LEN};

/// Prefix of an OCI whiteout entry's name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of an OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Pax record marking a fifo entry as a socket (tar has no socket type).
pub const SOCKET_PAX_KEY: &str = "STRATA.kind";

/// How a tar stream is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarMode {
    /// A plain archive: every entry is a file to create.
    Plain,
    /// An image layer: `.wh.NAME` removes NAME from the layers below and
    /// `.wh..wh..opq` hides everything the layers below put in its directory.
    Layer,
}

/// What one applied archive held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TarStats {
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub new_bytes: u64,
    pub whiteouts: u64,
}

/// Counts the bytes the archive reader consumes (after decompression) and
/// remembers the first failure of the underlying stream, so errors can be
/// reported as what they are.
pub struct Guard<R> {
    inner: R,
    state: Arc<GuardState>,
}

/// Most bytes the tar reader may consume between two entries: an entry's
/// header blocks, its PAX records and long names, and the data of an
/// entry it skips. The reader holds PAX records and long names in memory,
/// so this bounds what an archive can make it allocate.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Most PAX records one entry may carry.
pub const MAX_PAX_RECORDS: usize = 4096;

/// Shared state of a [`Guard`].
#[derive(Default)]
pub struct GuardState {
    read: AtomicU64,
    limit: u64,
    over_limit: AtomicBool,
    /// Bytes read since the reader went looking for the next entry, while
    /// it is (`u64::MAX` otherwise): see [`MAX_HEADER_BYTES`].
    between_entries: AtomicU64,
    headers_over: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl<R: Read> Guard<R> {
    /// Wraps `inner`, failing reads once more than `limit` bytes came through.
    pub fn new(inner: R, limit: u64) -> (Guard<R>, Arc<GuardState>) {
        let state = Arc::new(GuardState {
            limit,
            between_entries: AtomicU64::new(u64::MAX),
            ..GuardState::default()
        });
        (
            Guard {
                inner,
                state: state.clone(),
            },
            state,
        )
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let total = self.state.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                if total > self.state.limit {
                    self.state.over_limit.store(true, Ordering::Relaxed);
                    return Err(io::Error::other("archive exceeds the size limit"));
                }
                let between = self.state.between_entries.load(Ordering::Relaxed);
                if between != u64::MAX {
                    let between = between + n as u64;
                    self.state.between_entries.store(between, Ordering::Relaxed);
                    if between > MAX_HEADER_BYTES {
                        self.state.headers_over.store(true, Ordering::Relaxed);
                        return Err(io::Error::other("an entry's headers exceed the limit"));
                    }
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let mut failure = self.state.failure.lock().unwrap_or_else(|p| p.into_inner());
                failure.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        }
    }
}

impl GuardState {
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The reader goes looking for the next entry (`true`) or hands out an
    /// entry's data (`false`): see [`MAX_HEADER_BYTES`].
    fn between_entries(&self, looking: bool) {
        let value = if looking { 0 } else { u64::MAX };
        self.between_entries.store(value, Ordering::Relaxed);
    }
}

/// Applies tar streams to a tree.
pub struct TarImporter<'a> {
    pub tree: &'a mut MemTree,
    pub writer: &'a Writer,
    pub limits: &'a ImportLimits,
    /// Name of the archive, for messages.
    pub source_name: String,
    pub mode: TarMode,
    /// Bytes of file data imported so far across all archives of one import.
    pub total_file_bytes: &'a mut u64,
}

impl TarImporter<'_> {
    fn reject(&self, entry: &[u8], reason: impl Into<String>) -> Error {
        Error::Rejected {
            source_name: self.source_name.clone(),
            entry: if entry.is_empty() {
                "-".into()
            } else {
                show(entry)
            },
            reason: reason.into(),
        }
    }

    /// Turns a failure while reading the stream into the error it stands for.
    fn stream_error(&self, guard: &GuardState, entry: &[u8], err: impl std::fmt::Display) -> Error {
        if guard.over_limit.load(Ordering::Relaxed) {
            return Error::LimitExceeded {
                source_name: self.source_name.clone(),
                what: "uncompressed archive size".into(),
                limit: guard.limit,
                hint: "raise --max-bytes if the archive is trusted",
            };
        }
        if guard.headers_over.load(Ordering::Relaxed) {
            return Error::LimitExceeded {
                source_name: self.source_name.clone(),
                what: "bytes of one entry's headers (PAX records, long names, skipped data)".into(),
                limit: MAX_HEADER_BYTES,
                hint: "no real archive needs more; this one is malformed or hostile",
            };
        }
        let failure = guard
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match failure {
            Some(f) => self.reject(entry, format!("the archive is truncated or corrupt ({f})")),
            None => self.reject(entry, format!("malformed tar archive ({err})")),
        }
    }

    /// Reads the whole tar stream `reader` (already decompressed and
    /// guarded by `guard`) and applies it.
    pub fn apply(&mut self, reader: impl Read, guard: &GuardState) -> Result<TarStats> {
        let mut stats = TarStats::default();
        let mut archive = tar::Archive::new(reader);
        // Paths added by this archive: an opaque marker hides only what
        // lower layers put in its directory.
        let mut added: HashSet<Vec<u8>> = HashSet::new();
        let implicit = implicit_dir_attrs();
        let mut entries = archive
            .entries()
            .map_err(|e| self.stream_error(guard, b"", e))?;
        loop {
            guard.between_entries(true);
            let next = entries.next();
            guard.between_entries(false);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(|e| self.stream_error(guard, b"", e))?;
            stats.entries += 1;
            if stats.entries > self.limits.max_entries {
                return Err(Error::LimitExceeded {
                    source_name: self.source_name.clone(),
                    what: "number of entries".into(),
                    limit: self.limits.max_entries,
                    hint: "raise --max-entries if the archive is trusted",
                });
            }
            let raw_path = entry.path_bytes().into_owned();
            let parts = split_path(&raw_path).map_err(|r| self.reject(&raw_path, r))?;
            let path: Vec<u8> = parts.join(&b'/');
            let pax = self.pax(&mut entry, &raw_path, guard)?;
            let header = entry.header().clone();
            let kind = header.entry_type();

            if self.mode == TarMode::Layer {
                if let Some(name) = parts.last() {
                    if *name == OPAQUE_MARKER {
                        let dir: Vec<u8> = parts[..parts.len() - 1].join(&b'/');
                        let prefix = if dir.is_empty() {
                            Vec::new()
                        } else {
                            [&dir[..], b"/"].concat()
                        };
                        self.tree
                            .clear_dir(&dir, |child| added.contains(&[&prefix[..], child].concat()))
                            .map_err(|r| self.reject(&raw_path, r))?;
                        stats.whiteouts += 1;
                        continue;
                    }
                    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                        crate::tree::validate_name(hidden)
                            .map_err(|r| self.reject(&raw_path, format!("whiteout of {r}")))?;
                        let mut target = parts[..parts.len() - 1].join(&b'/');
                        if !target.is_empty() {
                            target.push(b'/');
                        }
                        target.extend_from_slice(hidden);
                        split_path(&target).map_err(|r| self.reject(&raw_path, r))?;
                        self.tree
                            .remove(&target)
                            .map_err(|r| self.reject(&raw_path, r))?;
                        stats.whiteouts += 1;
                        continue;
                    }
                }
            }

            let attrs = if kind == EntryType::Link {
                Attrs::default()
            } else {
                self.attrs(&header, &pax, &raw_path)?
            };
            let node_kind = match kind {
                EntryType::Directory => MemKind::Dir(BTreeMap::new()),
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    // A sparse entry's size is its size expanded.
                    let declared = entry.size();
                    if declared > self.limits.max_file_bytes {
                        return Err(Error::LimitExceeded {
                            source_name: self.source_name.clone(),
                            what: format!("file '{}' of {declared} bytes", show(&raw_path)),
                            limit: self.limits.max_file_bytes,
                            hint: "raise --max-file-bytes if the archive is trusted",
                        });
                    }
                    // File bytes count against the total as they expand,
                    // checked before any is read.
                    if self.total_file_bytes.saturating_add(declared) > self.limits.max_total_bytes
                    {
                        return Err(Error::LimitExceeded {
                            source_name: self.source_name.clone(),
                            what: format!(
                                "bytes of files in total (with '{}' of {declared} bytes)",
                                show(&raw_path)
                            ),
                            limit: self.limits.max_total_bytes,
                            hint: "raise --max-bytes if the archive is trusted",
                        });
                    }
                    // A sparse file's holes are zeros: the fixed chunker
                    // stores zero chunks as holes without hashing them.
                    let chunking = match kind {
                        EntryType::GNUSparse => Chunking::FixedSize,
                        _ => Chunking::ContentDefined,
                    };
                    let mut blob = self.writer.blob_writer(chunking);
                    let read = blob
                        .read_from(&mut (&mut entry).take(declared))
                        .map_err(|e| self.stream_error(guard, &raw_path, e))?;
                    if kind != EntryType::GNUSparse && read != declared {
                        return Err(self.reject(
                            &raw_path,
                            format!("the archive is truncated: {read} of {declared} bytes present"),
                        ));
                    }
                    let info = blob.finish()?;
                    *self.total_file_bytes += read;
                    stats.files += 1;
                    stats.file_bytes += read;
                    stats.new_bytes += info.new_bytes;
                    MemKind::Other(InodeKind::File {
                        size: read,
                        blob: (read > 0).then_some(info.id),
                    })
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    if target.is_empty() || target.len() > MAX_PATH_LEN || target.contains(&0) {
                        return Err(
                            self.reject(&raw_path, "symlink target empty, too long or with NUL")
                        );
                    }
                    MemKind::Other(InodeKind::Symlink { target })
                }
                EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    self.tree
                        .link(&path, &target, &implicit)
                        .map_err(|r| self.reject(&raw_path, r))?;
                    added.insert(path);
                    continue;
                }
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    if kind != EntryType::Fifo && !self.limits.allow_devices {
                        return Err(self.reject(
                            &raw_path,
                            "device node, and this import does not allow devices (pass --allow-devices)",
                        ));
                    }
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    let rdev = libc::makedev(major, minor);
                    let socket = pax.get(SOCKET_PAX_KEY).is_some_and(|v| v == b"socket");
                    MemKind::Other(match kind {
                        EntryType::Char => InodeKind::CharDevice { rdev },
                        EntryType::Block => InodeKind::BlockDevice { rdev },
                        _ if socket => InodeKind::Socket,
                        _ => InodeKind::Fifo,
                    })
                }
                EntryType::XGlobalHeader => continue,
                other => {
                    return Err(self.reject(
                        &raw_path,
                        format!("unsupported tar entry type {:?}", other.as_byte() as char),
                    ))
                }
            };
            self.tree
                .insert(
                    &path,
                    MemNode {
                        attrs,
                        kind: node_kind,
                    },
                    &implicit,
                )
                .map_err(|r| self.reject(&raw_path, r))?;
            added.insert(path);
        }
        // Read to the end of the stream so a compressed archive's trailer
        // (gzip's CRC and length, zstd's checksum) is checked too.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| self.stream_error(guard, b"", e))?;
        Ok(stats)
    }

    /// The entry's PAX records, by key.
    fn pax(
        &self,
        entry: &mut tar::Entry<'_, impl Read>,
        path: &[u8],
        guard: &GuardState,
    ) -> Result<HashMap<String, Vec<u8>>> {
        let mut out = HashMap::new();
        let Some(extensions) = entry
            .pax_extensions()
            .map_err(|e| self.stream_error(guard, path, e))?
        else {
            return Ok(out);
        };
        let mut xattr_bytes = 0usize;
        for ext in extensions {
            let ext = ext.map_err(|e| self.reject(path, format!("malformed PAX header ({e})")))?;
            let key = ext
                .key()
                .map_err(|_| self.reject(path, "PAX key is not UTF-8"))?;
            if key.starts_with("SCHILY.xattr.") {
                // Bounded as they are read, not once all are in memory.
                xattr_bytes += key.len() + ext.value_bytes().len();
                if xattr_bytes > crate::tree::MAX_XATTR_BYTES + MAX_PAX_RECORDS * 16 {
                    return Err(self.reject(
                        path,
                        format!(
                            "extended attributes over {} bytes",
                            crate::tree::MAX_XATTR_BYTES
                        ),
                    ));
                }
            }
            out.insert(key.to_string(), ext.value_bytes().to_vec());
            if out.len() > MAX_PAX_RECORDS {
                return Err(self.reject(path, format!("more than {MAX_PAX_RECORDS} PAX records")));
            }
        }
        Ok(out)
    }

    fn attrs(
        &self,
        header: &tar::Header,
        pax: &HashMap<String, Vec<u8>>,
        path: &[u8],
    ) -> Result<Attrs> {
        let bad = |what: &str| self.reject(path, format!("malformed {what} in the tar header"));
        // Some writers leave numeric fields blank; blank reads as 0.
        let blank = |field: &[u8]| field.iter().all(|&b| b == 0 || b == b' ');
        let old = header.as_old();
        let mode = if blank(&old.mode) {
            0
        } else {
            header.mode().map_err(|_| bad("mode"))? & 0o7777
        };
        let uid_field = if blank(&old.uid) { Ok(0) } else { header.uid() };
        let gid_field = if blank(&old.gid) { Ok(0) } else { header.gid() };
        let mtime_field = if blank(&old.mtime) {
            Ok(0)
        } else {
            header.mtime()
        };
        let id = |key: &str, field: io::Result<u64>| -> Result<u32> {
            let value = match pax.get(key) {
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad(key))?,
                None => field.map_err(|_| bad(key))?,
            };
            u32::try_from(value).map_err(|_| bad(key))
        };
        let uid = id("uid", uid_field)?;
        let gid = id("gid", gid_field)?;
        let header_mtime = mtime_field.map_err(|_| bad("mtime"))?;
        let mtime = match pax.get("mtime") {
            Some(v) => parse_pax_time(v).ok_or_else(|| bad("PAX mtime"))?,
            None => Timestamp {
                secs: i64::try_from(header_mtime).map_err(|_| bad("mtime"))?,
                nanos: 0,
            },
        };
        let time = |key: &str| -> Result<Timestamp> {
            match pax.get(key) {
                Some(v) => parse_pax_time(v).ok_or_else(|| bad(key)),
                None => Ok(mtime),
            }
        };
        let mut xattrs = BTreeMap::new();
        for (key, value) in pax {
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.insert(name.as_bytes().to_vec(), value.clone());
            }
        }
        validate_xattrs(&xattrs).map_err(|r| self.reject(path, r))?;
        Ok(Attrs {
            mode,
            uid,
            gid,
            atime: time("atime")?,
            mtime,
            ctime: time("ctime")?,
            xattrs,
        })
    }
}

/// Parses a PAX time (`-?SECONDS(.FRACTION)?`) exactly, to the nanosecond.
pub fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        return Timestamp::new(secs, nanos);
    }
    // -S.F means -(S + F): borrow a second for the fraction.
    if nanos == 0 {
        Timestamp::new(-secs, 0)
    } else {
        Timestamp::new(-secs - 1, 1_000_000_000 - nanos)
    }
}

/// Formats a time the way [`parse_pax_time`] reads it back.
pub fn format_pax_time(t: Timestamp) -> String {
    if t.nanos == 0 {
        return t.secs.to_string();
    }
    if t.secs >= 0 {
        return format!("{}.{:09}", t.secs, t.nanos);
    }
    // secs + nanos/1e9 with secs < 0: print as -(|secs| - 1).(1e9 - nanos).
    format!("-{}.{:09}", -(t.secs + 1), 1_000_000_000 - t.nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_round_trip_exactly() {
        for (secs, nanos) in [
            (0, 0),
            (5, 1),
            (1_700_000_000, 999_999_999),
            (-1, 500_000_000),
            (-7, 0),
            (-1, 1),
        ] {
            let t = Timestamp::new(secs, nanos).unwrap();
            assert_eq!(
                parse_pax_time(format_pax_time(t).as_bytes()),
                Some(t),
                "{t:?}"
            );
        }
        assert_eq!(parse_pax_time(b"12.5"), Timestamp::new(12, 500_000_000));
        assert_eq!(parse_pax_time(b"-0.25"), Timestamp::new(-1, 750_000_000));
        for bad in [&b""[..], b"x", b"1.2.3", b"--1", b"1e5"] {
            assert_eq!(parse_pax_time(bad), None);
        }
    }
}
