//! The upper layer's metadata journal: what a mount changed, as records
//! appended to `UPPER/journal`, so that a mount can be recovered after its
//! process dies (format in `FORMAT.md`, section "Upper-layer journal").
//!
//! Records name entries by path from the mount's root, at the moment of the
//! operation; replaying them in order over the same lower tree rebuilds the
//! namespace, attributes and extended attributes, and `Data` records say
//! where each file's upper bytes are and which blocks of them count. Each
//! record is written to the journal file as soon as the operation is done
//! (a process crash loses nothing); `fsync` and `fsyncdir` make everything
//! written so far durable.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

use cas::ChunkId;

use crate::tree::{Attrs, Timestamp};

/// First bytes of a journal file: name and format version 1.
pub const MAGIC: &[u8; 8] = b"STRJNL\x00\x01";
/// Largest record accepted when reading (a bound against damage).
const MAX_RECORD: usize = 16 << 20;

/// A timestamp as journaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JTime(pub i64, pub u32);

impl From<Timestamp> for JTime {
    fn from(t: Timestamp) -> JTime {
        JTime(t.secs, t.nanos)
    }
}

impl From<JTime> for Timestamp {
    fn from(t: JTime) -> Timestamp {
        Timestamp {
            secs: t.0,
            nanos: t.1,
        }
    }
}

/// An entry's attributes, without extended attributes (those have their
/// own records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JAttrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: JTime,
    pub mtime: JTime,
    pub ctime: JTime,
}

impl From<&Attrs> for JAttrs {
    fn from(a: &Attrs) -> JAttrs {
        JAttrs {
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            atime: a.atime.into(),
            mtime: a.mtime.into(),
            ctime: a.ctime.into(),
        }
    }
}

impl JAttrs {
    /// Writes these attributes over `a` (extended attributes untouched).
    pub fn apply(&self, a: &mut Attrs) {
        a.mode = self.mode;
        a.uid = self.uid;
        a.gid = self.gid;
        a.atime = self.atime.into();
        a.mtime = self.mtime.into();
        a.ctime = self.ctime.into();
    }
}

/// What a created entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NewKind {
    /// A regular file whose upper bytes go to `data/FILE`.
    File {
        file: String,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    CharDevice {
        rdev: u64,
    },
    BlockDevice {
        rdev: u64,
    },
    Fifo,
    Socket,
}

/// One journaled change. Paths are relative to the mount's root, components
/// joined by `/`; `time` is when the change happened (the parent
/// directories' new mtime and ctime).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A session of the mount began; data files it creates are named
    /// `EPOCH-INO`.
    Epoch(u64),
    Create {
        path: Vec<u8>,
        kind: NewKind,
        attrs: JAttrs,
    },
    Link {
        from: Vec<u8>,
        to: Vec<u8>,
        time: JTime,
    },
    /// `unlink` or `rmdir`.
    Remove { path: Vec<u8>, time: JTime },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        noreplace: bool,
        exchange: bool,
        time: JTime,
    },
    /// New attributes of an entry (chmod, chown, utimens, ...).
    Attrs { path: Vec<u8>, attrs: JAttrs },
    /// An extended attribute set (`Some`) or removed (`None`).
    Xattr {
        path: Vec<u8>,
        name: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// A regular file's contents: `size` bytes; bytes below `lower_limit`
    /// in blocks not marked in `present` come from the lower blob, all
    /// others from `data/FILE` (holes read as zeros).
    Data {
        path: Vec<u8>,
        file: String,
        size: u64,
        lower_limit: u64,
        present: Vec<u64>,
        attrs: JAttrs,
    },
    /// A snapshot sealed a file's upper data file `name` into a layer of
    /// `size` bytes: blocks marked in `present` from that file, bytes below
    /// `lower_limit` otherwise from `base`, zeros elsewhere.
    Layer {
        name: String,
        size: u64,
        lower_limit: u64,
        present: Vec<u64>,
        base: JBase,
    },
    /// Layer `name` was stored: its bytes are blob `blob` (durable in the
    /// store before this record was written); its data file is gone.
    Converted { name: String, blob: Option<ChunkId> },
    /// A regular file's contents, as `Data`, over an explicit base.
    FileState {
        path: Vec<u8>,
        file: String,
        base: JBase,
        size: u64,
        lower_limit: u64,
        present: Vec<u64>,
        attrs: JAttrs,
    },
    /// A snapshot sealed the file at `path`: its data file `layer` became
    /// a layer of `size` bytes (blocks in `present` from that file, bytes
    /// below `lower_limit` otherwise from `base`, zeros elsewhere), and
    /// the file goes on in data file `file`, empty, over that layer.
    Seal {
        path: Vec<u8>,
        layer: String,
        size: u64,
        lower_limit: u64,
        present: Vec<u64>,
        base: JBase,
        file: String,
    },
    /// Stored tree `tree` was placed at `path` as a directory.
    Graft {
        path: Vec<u8>,
        tree: ChunkId,
        time: JTime,
    },
    /// A snapshot of the directory at `path` sealed, as seal `seq` of
    /// session `epoch`, every file under it that had upper data or a
    /// changed size (by the state journaled so far): each file's data
    /// file became a layer of that name, and the file goes on over it in
    /// the empty data file `STEM-sEPOCH.SEQ` (`STEM`: the old name without
    /// an earlier `-s…` suffix).
    SealAll { path: Vec<u8>, epoch: u64, seq: u64 },
    /// The mount was moved onto stored tree `tree` ([`super::CowFs::rebase`]):
    /// from here on the namespace is that tree plus the records after
    /// this one, and nothing before it is needed (every file's data was
    /// in the store at that point). `note` is an id the caller keeps with
    /// the move (the volume server: the head the tree was merged onto).
    Rebase {
        tree: ChunkId,
        note: Option<ChunkId>,
    },
}

/// What a file's or layer's lower bytes come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JBase {
    /// A blob in the store (`None`: zeros).
    Blob(Option<ChunkId>),
    /// A layer named by an earlier `Layer` or `Seal` record.
    Layer(String),
    /// Whatever the file's base is at this point of the replay.
    Current,
}

/// An open journal, appended to.
///
/// Durability follows the chunk store's commit: every append gets a
/// sequence number (in file order), a sync records the highest number its
/// `fdatasync` covered, and a caller whose records are at or below that
/// number returns at once; others take the sync lock, so a caller never
/// returns while the sync that covers its records is still under way.
/// A failed sync is sticky: the records it was to make durable may be
/// lost (Linux drops pages whose write-back failed and reports the error
/// once), so no later sync may claim they are durable.
#[derive(Debug)]
pub struct Journal {
    file: File,
    /// Why the journal no longer matches the mount (an append or a sync
    /// failed): every sync from then on fails.
    broken: Mutex<Option<String>>,
    /// Records appended so far (the sequence number of the newest).
    appended: AtomicU64,
    /// Highest sequence number known durable.
    durable: AtomicU64,
    /// Held while writing a record, so numbers follow file order.
    append_lock: Mutex<()>,
    /// Held by the one sync under way.
    sync_lock: Mutex<()>,
    /// A new journal's directory, whose entries (the journal's name and
    /// the data directory) the first sync makes durable, and the
    /// directory holding it; creating a mount costs no sync.
    new_dir: Option<PathBuf>,
    dir_synced: AtomicBool,
    /// Data files to sync before the journal's next sync: files cut
    /// shorter, whose new size the journal must not record durably
    /// before the cut itself is durable.
    sync_first: Mutex<Vec<Arc<super::datafile::DataFile>>>,
}

fn frame(record: &Record) -> std::io::Result<Vec<u8>> {
    let payload = postcard::to_stdvec(record)
        .map_err(|e| std::io::Error::other(format!("encoding a journal record: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

impl Journal {
    /// Creates a new journal at `path` (which must not exist). It, its
    /// directory and that directory's name become durable with the first
    /// sync.
    pub fn create(path: &Path) -> std::io::Result<Journal> {
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(path)?;
        file.write_all(MAGIC)?;
        Ok(Journal::with_file(
            file,
            1,
            path.parent().map(Path::to_path_buf),
        ))
    }

    /// Opens an existing journal for appending, first cutting off a torn
    /// tail at `valid_len` (from [`read`]).
    pub fn reopen(path: &Path, valid_len: u64) -> std::io::Result<Journal> {
        let file = OpenOptions::new().read(true).append(true).open(path)?;
        if file.metadata()?.len() != valid_len {
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        Ok(Journal::with_file(file, 0, None))
    }

    fn with_file(file: File, unsynced: u64, new_dir: Option<PathBuf>) -> Journal {
        Journal {
            file,
            broken: Mutex::new(None),
            appended: AtomicU64::new(unsynced),
            durable: AtomicU64::new(0),
            append_lock: Mutex::new(()),
            sync_lock: Mutex::new(()),
            new_dir,
            dir_synced: AtomicBool::new(false),
            sync_first: Mutex::new(Vec::new()),
        }
    }

    /// Makes the next sync `fdatasync` `file` before the journal itself:
    /// for a data file cut shorter, whose new size is (or is about to be)
    /// in a record. Were the record durable and the cut not, a power cut
    /// would leave old bytes past the recorded size.
    pub fn sync_first(&self, file: Arc<super::datafile::DataFile>) {
        let mut files = self.sync_first.lock();
        if !files.iter().any(|f| Arc::ptr_eq(f, &file)) {
            files.push(file);
        }
    }

    /// Appends a record (written to the OS at once, not yet synced).
    pub fn append(&self, record: &Record) {
        self.append_all(std::slice::from_ref(record));
    }

    /// Appends records with one write.
    pub fn append_all(&self, records: &[Record]) {
        let mut bytes = Vec::new();
        let encoded = records
            .iter()
            .try_for_each(|r| frame(r).map(|b| bytes.extend_from_slice(&b)));
        let _order = self.append_lock.lock();
        let result = encoded.and_then(|()| (&self.file).write_all(&bytes));
        self.appended.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = result {
            tracing::error!("appending to the upper-layer journal: {e}");
            self.break_with(format!("a journal record was not written: {e}"));
        }
    }

    fn break_with(&self, reason: String) {
        self.broken.lock().get_or_insert(reason);
    }

    fn check_broken(&self) -> std::io::Result<()> {
        match &*self.broken.lock() {
            Some(reason) => Err(std::io::Error::other(format!(
                "the upper-layer journal can no longer be made durable ({reason}); \
                 the mount must be recovered from its journal"
            ))),
            None => Ok(()),
        }
    }

    /// Makes every record appended before this call durable. Returns only
    /// once they are; fails, now and from then on, if a sync ever failed.
    pub fn sync(&self) -> std::io::Result<()> {
        let target = self.appended.load(Ordering::SeqCst);
        self.check_broken()?;
        if self.durable.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        let _syncing = self.sync_lock.lock();
        // A sync that ended while this one waited may have covered it.
        self.check_broken()?;
        if self.durable.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        // Everything appended by now is covered by this fdatasync.
        let covered = self.appended.load(Ordering::SeqCst);
        // Files registered before those records were appended are synced
        // first (a file registered later is kept for the next sync).
        let first = std::mem::take(&mut *self.sync_first.lock());
        let result = first
            .iter()
            .try_for_each(|f| f.sync(true))
            .and_then(|()| self.file.sync_data())
            .and_then(|()| self.sync_new_dir());
        match result {
            Ok(()) => {
                self.durable.fetch_max(covered, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.break_with(format!("a sync failed: {e}"));
                Err(e)
            }
        }
    }

    /// Once per new journal: makes the upper directory's entries durable,
    /// and its own name in the directory above it.
    fn sync_new_dir(&self) -> std::io::Result<()> {
        let Some(dir) = &self.new_dir else {
            return Ok(());
        };
        if self.dir_synced.load(Ordering::SeqCst) {
            return Ok(());
        }
        match File::open(dir.join("data")) {
            Ok(data) => data.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        self.dir_synced.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct Contents {
    pub records: Vec<Record>,
    /// Length of the intact prefix (magic plus whole, checksummed records).
    pub valid_len: u64,
    /// Bytes after it: a record torn by a crash (or damage).
    pub torn_bytes: u64,
}

/// Reads a journal: every intact record, stopping at the first torn or
/// damaged one.
pub fn read(path: &Path) -> std::io::Result<Contents> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is not an upper-layer journal (bad magic)",
                path.display()
            ),
        ));
    }
    let mut at = MAGIC.len();
    let mut records = Vec::new();
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match postcard::from_bytes::<Record>(payload) {
            Ok(record) => records.push(record),
            Err(_) => break,
        }
        at += 8 + len;
    }
    Ok(Contents {
        records,
        valid_len: at as u64,
        torn_bytes: (bytes.len() - at) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let journal = Journal::create(&path).unwrap();
        let t = JTime(1_700_000_000, 5);
        let records = vec![
            Record::Epoch(1),
            Record::Create {
                path: b"a/b\xff".to_vec(),
                kind: NewKind::File { file: "1-7".into() },
                attrs: JAttrs {
                    mode: 0o4755,
                    uid: 1,
                    gid: 2,
                    atime: t,
                    mtime: t,
                    ctime: t,
                },
            },
            Record::Remove {
                path: b"x".to_vec(),
                time: t,
            },
        ];
        for r in &records {
            journal.append(r);
        }
        journal.sync().unwrap();
        drop(journal);
        let contents = read(&path).unwrap();
        assert_eq!(contents.records, records);
        assert_eq!(contents.torn_bytes, 0);

        // A crash in the middle of an append: the partial record is ignored
        // and cut off when the journal is reopened.
        let full = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let partial = frame(&Record::Epoch(2)).unwrap();
        f.write_all(&partial[..partial.len() - 1]).unwrap();
        let contents = read(&path).unwrap();
        assert_eq!(contents.records.len(), 3);
        assert_eq!(contents.valid_len, full);
        let journal = Journal::reopen(&path, contents.valid_len).unwrap();
        journal.append(&Record::Epoch(2));
        journal.sync().unwrap();
        let contents = read(&path).unwrap();
        assert_eq!(contents.records.last(), Some(&Record::Epoch(2)));

        // A flipped byte ends the readable prefix there.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + 9] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(read(&path).unwrap().records.is_empty());
        std::fs::write(&path, b"nope").unwrap();
        assert!(read(&path).is_err());
    }
}
