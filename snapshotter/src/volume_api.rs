//! The volume server's local API, version 1 (documented in
//! `volume-server/API.md`): its operations and their results, in the node
//! daemon's framing ([`crate::api`]: one JSON line per request and per
//! answer). They live here, below both, so that `snapctl volume` speaks
//! to the volume server without depending on it.
//!
//! Where a volume server keeps its data: `--home DIR`, else
//! `$STRATA_VOLUME_HOME`, else [`default_volume_home`] — beside the node
//! daemon's default (`/var/lib/strata-volumes` as root). Its socket is
//! `HOME/volumes.sock`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The volume API version this build speaks.
pub const VOLUME_API_VERSION: u32 = 1;

/// The environment variable naming the volume server's data directory.
pub const VOLUME_HOME_ENV: &str = "STRATA_VOLUME_HOME";

/// Where the volume server of data directory `home` listens.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("volumes.sock")
}

/// The volume server's data directory when neither `--home` nor
/// `$STRATA_VOLUME_HOME` is set: `strata-volumes` beside the node
/// daemon's default data directory (`/var/lib/strata-volumes` as root,
/// `~/.local/share/strata-volumes` otherwise).
pub fn default_volume_home() -> PathBuf {
    let node = crate::home::default_home();
    match node.parent() {
        Some(parent) => parent.join("strata-volumes"),
        None => PathBuf::from("/var/lib/strata-volumes"),
    }
}

/// The operations of volume API version 1.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", content = "args")]
pub enum VolumeOp {
    /// The server's version, pid, data directory, volumes and sessions.
    #[serde(rename = "server.info")]
    Info,
    #[serde(rename = "volume.create")]
    Create {
        name: String,
        /// Most file bytes the volume may hold — its head and what its
        /// sessions hold uncommitted, together (0: no limit).
        #[serde(default)]
        quota_bytes: u64,
    },
    #[serde(rename = "volume.list")]
    List,
    #[serde(rename = "volume.show")]
    Show { name: String },
    /// Removes a volume; refused while it has sessions.
    #[serde(rename = "volume.remove")]
    Remove { name: String },
    /// Starts a session over the volume's head, FUSE-mounted at
    /// `mountpoint` (an existing directory, absolute path); given
    /// `commit`, a read-only view of that commit instead (never
    /// committed).
    #[serde(rename = "volume.mount")]
    Mount {
        name: String,
        mountpoint: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<u64>,
    },
    /// Ends a session (a session id or a mount point): unmounts it,
    /// commits, and answers once the commit is durable.
    #[serde(rename = "volume.umount")]
    Umount { session: String },
    /// The live sessions.
    #[serde(rename = "session.list")]
    Sessions,
    /// Commits now: one session (id or mount point), or, given a volume
    /// name, every session of that volume.
    #[serde(rename = "volume.commit")]
    Commit { target: String },
    /// Moves sessions onto their volume's newest head, keeping their
    /// uncommitted changes (nothing is committed): one session (id or
    /// mount point), or, given a volume name, every session of it.
    #[serde(rename = "volume.reload")]
    Reload { target: String },
    /// Lists a volume's commits, newest first.
    #[serde(rename = "volume.history")]
    History {
        name: String,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Makes commit `seq` of the volume its head again (a new commit).
    #[serde(rename = "volume.restore")]
    Restore { name: String, seq: u64 },
    /// The entries of a directory of the head.
    #[serde(rename = "file.list")]
    ListFiles {
        name: String,
        #[serde(default)]
        path: String,
    },
    /// A file of the head: answers `{stream: true}`, then the bytes in
    /// frames, then the result.
    #[serde(rename = "file.get")]
    GetFile { name: String, path: String },
    /// Writes a file (a commit of its own): the request line is followed
    /// by the bytes in frames, ended by an empty frame.
    #[serde(rename = "file.put")]
    PutFile {
        name: String,
        path: String,
        #[serde(default = "default_file_mode")]
        mode: u32,
    },
    /// Removes a file or a directory tree (a commit of its own).
    #[serde(rename = "file.remove")]
    RemoveFile { name: String, path: String },
    /// Serves sessions of the named volumes over 9P2000.L on `listen`
    /// (`unix:PATH` or `tcp:HOST:PORT`): each connection is a session of
    /// each volume it attaches (attach name: the volume's name; empty
    /// when the listener serves one volume), committed when the
    /// connection ends. Any other attach name is refused.
    #[serde(rename = "serve9p.start")]
    Serve9pStart {
        volumes: Vec<String>,
        listen: String,
    },
    #[serde(rename = "serve9p.list")]
    Serve9pList,
    /// Reclaims what no volume, kept commit or live session reaches
    /// (answers the store's GC report).
    #[serde(rename = "store.gc")]
    Gc,
    /// Stops a listener; its connections end and their sessions commit.
    #[serde(rename = "serve9p.stop")]
    Serve9pStop { listen: String },
    /// Puts the volume in the server's bucket and keeps it in step from
    /// now on (a volume kept in step already is synced).
    #[serde(rename = "volume.push")]
    Push { name: String },
    /// Makes the bucket's volume a volume of this server, kept in step
    /// from now on (one kept in step already is synced).
    #[serde(rename = "volume.pull")]
    Pull { name: String },
    /// Syncs with the bucket now: one volume kept in step, or (no name)
    /// each of them; answers a list.
    #[serde(rename = "volume.sync")]
    Sync {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

/// `volume.push`, `volume.pull` and `volume.sync` result: what one sync
/// with the bucket did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResult {
    pub volume: String,
    /// `unchanged`, `created`, `pushed`, `pulled` or `merged`.
    pub outcome: String,
    /// The commit this server and the bucket now agree on (hex), and its
    /// sequence number.
    pub commit: String,
    pub seq: u64,
    /// The bucket ref's generation.
    pub generation: u64,
    /// The merge's conflicts (each keeps both versions).
    pub conflicts: Vec<ConflictInfo>,
    /// Times the bucket moved under the sync and it merged again.
    pub retries: usize,
    pub bytes_uploaded: u64,
    /// Set when this volume's sync failed (`volume.sync` of all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn default_file_mode() -> u32 {
    0o644
}

/// `server.info` result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    pub api: Vec<u32>,
    pub version: String,
    pub pid: u32,
    pub home: PathBuf,
    pub volumes: usize,
    pub sessions: usize,
    /// Seconds between background commits of sessions with changes (0:
    /// none).
    pub autocommit_secs: u64,
    /// Commits each volume keeps (older ones are reclaimed by GC).
    #[serde(default)]
    pub keep_commits: usize,
    /// Seconds between background GC runs (0: only when asked).
    #[serde(default)]
    pub gc_interval_secs: u64,
    /// The bucket volumes are kept in step with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Seconds between background syncs with the bucket.
    #[serde(default)]
    pub sync_secs: u64,
}

/// One volume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The head commit (its sequence number and ids).
    pub head: CommitInfo,
    pub quota_bytes: u64,
    /// File bytes the head holds (kept for a volume with a quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What its sessions hold uncommitted (a volume with a quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncommitted_bytes: Option<u64>,
    /// Live sessions of the volume.
    pub sessions: usize,
}

/// One commit of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// The commit node's id (hex).
    pub id: String,
    /// Its tree (hex).
    pub tree: String,
    pub seq: u64,
    /// `create`, `commit`, `restore` or `edit`.
    pub kind: String,
    /// Nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// The session (or `outside`, or the restore) that made it.
    pub author: String,
    pub paths_changed: u64,
    pub conflicts: Vec<ConflictInfo>,
}

/// A conflict a commit resolved by keeping both versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictInfo {
    /// The path both sides changed (it holds the head's version).
    pub path: String,
    /// `both_changed`, `changed_deleted` or `deleted_changed`.
    pub kind: String,
    /// Where the committing session's version was written, if it was.
    pub copy: Option<String>,
}

/// The result of a commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitResult {
    /// The session committed.
    pub session: String,
    pub volume: String,
    /// The head after the commit.
    pub head: CommitInfo,
    /// Whether the commit wrote a new head (false: nothing had changed).
    pub wrote: bool,
    /// How many times the head moved under the commit and it merged
    /// again.
    pub retries: u32,
}

/// The result of a reload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadResult {
    /// The session reloaded.
    pub session: String,
    pub volume: String,
    /// The head it now works over.
    pub head: CommitInfo,
    /// Where its uncommitted changes met the head's: resolved in the
    /// session's view as a commit resolves them (both versions kept).
    pub conflicts: Vec<ConflictInfo>,
    /// Names added, removed or replaced in the session's view.
    pub entries_changed: u64,
    /// Directories of the session compared on the way.
    pub dirs_compared: u64,
}

/// One live session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub volume: String,
    /// Where it is FUSE-mounted (absent: a 9P session).
    #[serde(default)]
    pub mountpoint: Option<PathBuf>,
    /// The 9P listener it came from (absent: a FUSE session).
    #[serde(default)]
    pub listen: Option<String>,
    /// The tree its uncommitted changes are relative to (hex).
    pub base: String,
    /// Bytes its upper layer holds.
    pub used_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The last commit's failure, if it failed (the session keeps its
    /// changes and tries again).
    #[serde(default)]
    pub commit_error: Option<String>,
    /// A read-only view of this commit (absent: a session over the head).
    #[serde(default)]
    pub commit: Option<u64>,
}

/// One entry of `file.list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    /// `dir`, `file`, `symlink`, `hardlink` or `other`.
    pub kind: String,
    /// A file's size; 0 for others.
    pub size: u64,
}

/// One 9P listener of the volume server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeListenerInfo {
    pub listen: String,
    pub volumes: Vec<String>,
    pub sessions_open: usize,
    pub sessions_total: u64,
}
