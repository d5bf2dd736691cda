//! The node daemon's local API, version 1 (documented in `API.md`).
//!
//! A Unix stream socket at `HOME/snapd.sock`, mode 0600. Each request is
//! one line of JSON, each answer one line of JSON; a connection carries any
//! number of requests, one after another. `image.export` with
//! `"to": "stream"` is the one exception: between its two answer lines the
//! tar archive follows in frames (see [`write_frame`]).

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use layerfs::{ImportLimits, SourceKind};
use serde::{Deserialize, Serialize};

/// The API version this build speaks.
pub const API_VERSION: u32 = 1;

/// Longest request line accepted (a request is small; this stops a client
/// from making the daemon buffer without end).
pub const MAX_LINE: usize = 1 << 20;

/// Where the daemon of data directory `home` listens.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("snapd.sock")
}

/// One request: the API version the client speaks and the operation
/// (the node daemon's [`Op`], or another daemon's operations in the same
/// framing).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request<O = Op> {
    pub api: u32,
    #[serde(flatten)]
    pub op: O,
}

/// The operations of API version 1.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", content = "args")]
pub enum Op {
    /// The daemon's version, pid, data directory and API versions.
    #[serde(rename = "daemon.info")]
    Info,
    #[serde(rename = "image.import")]
    ImageImport(ImageImport),
    #[serde(rename = "image.list")]
    ImageList,
    #[serde(rename = "image.show")]
    ImageShow { name: String },
    #[serde(rename = "image.remove")]
    ImageRemove { name: String },
    #[serde(rename = "image.export")]
    ImageExport { name: String, to: ExportTarget },
    #[serde(rename = "mount.create")]
    MountCreate(MountCreate),
    #[serde(rename = "mount.list")]
    MountList,
    /// Unmounts and discards the upper layer. `mount` is an id or a mount
    /// point.
    #[serde(rename = "mount.remove")]
    MountRemove { mount: String },
    /// Snapshots a live mount (or one directory of it).
    #[serde(rename = "snapshot.create")]
    SnapshotCreate(SnapshotCreate),
    #[serde(rename = "snapshot.list")]
    SnapshotList(SnapshotFilter),
    #[serde(rename = "snapshot.show")]
    SnapshotShow { id: String },
    /// Waits until the snapshot is durable (or failed) and returns it.
    #[serde(rename = "snapshot.wait")]
    SnapshotWait { id: String },
    #[serde(rename = "snapshot.diff")]
    SnapshotDiff { a: String, b: String },
    #[serde(rename = "snapshot.remove")]
    SnapshotRemove { id: String },
    /// Garbage collection of the daemon's store (everything a ref, a
    /// mount or an operation in flight reaches stays).
    #[serde(rename = "store.gc")]
    StoreGc,
    /// Places a snapshot's tree at `path` inside a live mount.
    #[serde(rename = "mount.graft")]
    MountGraft {
        mount: String,
        snapshot: String,
        path: String,
    },
    /// Mounts `count` copies of a snapshot under a directory.
    #[serde(rename = "snapshot.fork")]
    SnapshotFork(SnapshotFork),
    /// Serves a mount (or, without one, every mount by its id as the
    /// attach name) over 9P2000.L on `listen`. With `fd:N` the daemon
    /// answers `{send_fd: true}` and the client then passes the socket
    /// (`SCM_RIGHTS`, one byte) before the final answer.
    #[serde(rename = "serve9p.start")]
    Serve9pStart(Serve9pStart),
    #[serde(rename = "serve9p.list")]
    Serve9pList,
    /// Stops a 9P listener and closes its sessions.
    #[serde(rename = "serve9p.stop")]
    Serve9pStop { listen: String },
    /// Stores a memory image (or a runtime's checkpoint directory) as a
    /// memory snapshot.
    #[serde(rename = "mem.put")]
    MemPut(MemPut),
    /// Writes a memory snapshot back: a sparse file, or a directory.
    #[serde(rename = "mem.get")]
    MemGet(MemGet),
    /// Serves a memory snapshot to userfaultfd clients (Firecracker's
    /// handshake) on a Unix socket; answers once the socket is ready.
    #[serde(rename = "mem.serve")]
    MemServe(MemServe),
    #[serde(rename = "mem.servers")]
    MemServers,
    /// Stops a page server: each client is made whole first.
    #[serde(rename = "mem.unserve")]
    MemUnserve { socket: PathBuf },
    /// Starts a sandbox: a mount of its image or snapshot as the root, its
    /// volumes and directory snapshots bound in, run by an OCI runtime.
    #[serde(rename = "sandbox.create")]
    SandboxCreate(SandboxCreate),
    #[serde(rename = "sandbox.list")]
    SandboxList,
    #[serde(rename = "sandbox.show")]
    SandboxShow { id: String },
    /// Snapshots a sandbox: its root, one directory of it, or (runsc) its
    /// memory with its root at the same instant.
    #[serde(rename = "sandbox.snapshot")]
    SandboxSnapshot(SandboxSnapshot),
    /// Starts `count` sandboxes from a snapshot of a running one.
    #[serde(rename = "sandbox.fork")]
    SandboxFork { id: String, count: usize },
    /// Ends a sandbox; answers once its volumes are committed and durable.
    #[serde(rename = "sandbox.terminate")]
    SandboxTerminate { id: String },
    /// Forgets an ended sandbox: its record and log.
    #[serde(rename = "sandbox.remove")]
    SandboxRemove { id: String },
    /// Uploads refs (`image/NAME`, `snapshot/ID`) and what they reach to
    /// the bucket, then moves the bucket's refs.
    #[serde(rename = "remote.push")]
    RemotePush { refs: Vec<String> },
    /// Points local refs at the bucket's; their data is fetched when read.
    #[serde(rename = "remote.pull")]
    RemotePull { refs: Vec<String> },
    /// The bucket's refs whose names start with `prefix`.
    #[serde(rename = "remote.list")]
    RemoteList { prefix: String },
    /// The bucket, the cache and the requests made.
    #[serde(rename = "remote.status")]
    RemoteStatus,
    /// One collection of the bucket: sweeps what was condemned longer
    /// than the grace period ago and nothing reaches, condemns what
    /// nothing reaches now.
    #[serde(rename = "remote.gc")]
    RemoteGc,
    /// This node's pins: what it pulled, kept in the bucket by them.
    #[serde(rename = "remote.pins")]
    RemotePins,
    /// Drops this node's pins of pulled refs (`image/NAME`,
    /// `snapshot/ID`), so that remote GC may take what nothing else
    /// reaches.
    #[serde(rename = "remote.unpin")]
    RemoteUnpin { refs: Vec<String> },
}

/// `remote.status` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteStatus {
    /// The bucket URL.
    pub url: String,
    pub cache_dir: PathBuf,
    pub cache_used_bytes: u64,
    pub cache_limit_bytes: u64,
    /// Chunks and packs this node knows the bucket holds.
    pub known_chunks: usize,
    pub known_packs: usize,
    /// Requests since the daemon started.
    pub requests: remote::RequestCounts,
}

/// A volume bound into a sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeBinding {
    pub name: String,
    /// Where it appears inside the sandbox (absolute).
    pub path: String,
}

/// A directory snapshot bound into a sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirSnapshotBinding {
    pub snapshot: String,
    /// Where it appears inside the sandbox (absolute).
    pub path: String,
}

/// `sandbox.create` arguments: exactly one of `image` and `snapshot`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SandboxCreate {
    #[serde(default)]
    pub image: Option<String>,
    /// A filesystem snapshot (a new sandbox on it) or a memory snapshot
    /// taken by `sandbox.snapshot` (its processes resume).
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub volumes: Vec<VolumeBinding>,
    #[serde(default)]
    pub dir_snapshots: Vec<DirSnapshotBinding>,
    /// `runsc` (default) or `runc`.
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// The root's quota (bytes written beyond the image; default 10 GiB).
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// Terminate the sandbox this long after it starts.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Give the sandbox the host's network (default: none).
    #[serde(default)]
    pub network: bool,
    /// The first process (default: one that waits to be terminated).
    #[serde(default)]
    pub command: Vec<String>,
    /// `K=V` pairs for the first process.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// The volume server's data directory (default: its default).
    #[serde(default)]
    pub volume_home: Option<PathBuf>,
}

/// `sandbox.snapshot` arguments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SandboxSnapshot {
    pub id: String,
    /// Only this directory of the sandbox's root (absolute, inside it).
    #[serde(default)]
    pub dir: Option<String>,
    /// Its memory too (the runtime's checkpoint; runsc).
    #[serde(default)]
    pub memory: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What `sandbox.snapshot` made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxSnapshotResult {
    /// The filesystem (or directory) snapshot.
    pub filesystem: SnapshotInfo,
    /// The memory snapshot, when asked for.
    #[serde(default)]
    pub memory: Option<SnapshotInfo>,
    /// How long the sandbox was paused (milliseconds; memory snapshots).
    #[serde(default)]
    pub paused_ms: Option<f64>,
}

/// The life of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Being made.
    Starting,
    Running,
    /// Its processes ended (or were killed) and it was torn down: its
    /// volumes are committed.
    Exited,
    /// Terminated on request or by its timeout.
    Terminated,
    /// Lost with a node daemon that stopped under it (its root went with
    /// the daemon); torn down by the next daemon.
    Gone,
}

/// A volume session of a sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxVolume {
    pub name: String,
    pub path: String,
    /// The volume server's session.
    pub session: String,
    /// Its mount point on the host.
    pub host: PathBuf,
}

/// A directory snapshot's mount in a sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxDirMount {
    pub snapshot: String,
    pub path: String,
    /// The node daemon's mount.
    pub mount: String,
    pub host: PathBuf,
}

/// One sandbox, as the daemon records it (`HOME/sandboxes/ID/sandbox.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub state: SandboxState,
    pub runtime: crate::runtime::RuntimeKind,
    /// The runtime's container id.
    pub container: String,
    /// The runtime's state directory (its `--root`).
    pub runtime_root: PathBuf,
    pub network: bool,
    /// What it was made from: `image:NAME` or `snapshot:ID`.
    pub source: String,
    pub image: String,
    /// The root's mount (node daemon) and where it is mounted.
    pub root_mount: String,
    pub rootfs: PathBuf,
    pub bundle: PathBuf,
    /// The first process's output.
    pub log: PathBuf,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    pub volumes: Vec<SandboxVolume>,
    pub dir_snapshots: Vec<SandboxDirMount>,
    #[serde(default)]
    pub volume_home: Option<PathBuf>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    pub disk_bytes: u64,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the Unix epoch (with fraction).
    pub created: f64,
    /// When it stopped running, and why.
    #[serde(default)]
    pub ended: Option<f64>,
    #[serde(default)]
    pub end_reason: Option<String>,
    /// Bytes written to its root (`sandbox.show` and `sandbox.list` fill it).
    #[serde(default)]
    pub used_bytes: Option<u64>,
    /// From the request to its first process running (milliseconds).
    #[serde(default)]
    pub start_ms: f64,
}

/// `mem.put` arguments. `source` is an absolute path the daemon reads.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MemPut {
    pub source: PathBuf,
    /// `source` is a checkpoint directory (every file in it is stored).
    #[serde(default)]
    pub dir: bool,
    /// A memory snapshot of the same kind to compare pages with.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub expire_secs: Option<u64>,
}

/// `mem.get` arguments. `target` is an absolute path the daemon writes.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MemGet {
    pub id: String,
    pub target: PathBuf,
    /// The snapshot is a checkpoint directory; `target` is a directory.
    #[serde(default)]
    pub dir: bool,
}

/// `mem.serve` arguments.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MemServe {
    pub id: String,
    /// Absolute path of the Unix socket to serve on.
    pub socket: PathBuf,
    /// For a checkpoint directory: which of its files to serve.
    #[serde(default)]
    pub file: Option<String>,
    /// Longest one fault may take to serve (milliseconds; default 5,000).
    #[serde(default)]
    pub fault_timeout_ms: Option<u64>,
}

/// One page server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemServerInfo {
    pub snapshot: String,
    #[serde(default)]
    pub file: Option<String>,
    pub stats: memsnap::server::ServerStats,
    pub clients: Vec<memsnap::server::ClientStats>,
}

/// What a memory snapshot holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Its root node: an image record or a checkpoint directory (hex).
    pub root: String,
    /// Bytes of the image (all files, for a directory).
    pub size: u64,
    /// Files, for a checkpoint directory.
    #[serde(default)]
    pub files: Option<u64>,
    pub pages: memsnap::PageCounts,
    /// Bytes the store grew by (compressed new pages and maps).
    pub stored_bytes: u64,
}

/// `serve9p.start` arguments.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Serve9pStart {
    /// A mount id or mount point; absent: the attach name picks the mount.
    #[serde(default)]
    pub mount: Option<String>,
    /// `unix:PATH`, `tcp:HOST:PORT` (port 0 picks one) or `fd:N`.
    pub listen: String,
}

/// One 9P listener of the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Serve9pInfo {
    /// Where it listens (a TCP port 0 resolved).
    pub listen: String,
    /// The mount it serves; absent when the attach name picks.
    pub mount: Option<String>,
    /// For a TCP listener serving every mount: the secret an attach name
    /// must begin with (`SECRET:MOUNT`). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub sessions_open: usize,
    pub sessions_total: u64,
    pub requests: u64,
}

/// `snapshot.create` arguments.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SnapshotCreate {
    /// A mount id or mount point.
    pub mount: String,
    /// Snapshot only this directory of the mount (a path inside it).
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Remove the snapshot this many seconds after it was taken (absent:
    /// keep until removed).
    #[serde(default)]
    pub expire_secs: Option<u64>,
    /// Answer only once the snapshot is durable.
    #[serde(default)]
    pub wait_durable: bool,
}

/// `snapshot.list` filters (all optional; all must match).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SnapshotFilter {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub mount: Option<String>,
}

/// `snapshot.fork` arguments.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotFork {
    pub id: String,
    pub count: u32,
    /// Directory (absolute) under which the mount points `ID-N` are made.
    pub under: PathBuf,
    pub quota_bytes: u64,
    /// Inodes each mount may make (absent: the default, 1,048,576).
    #[serde(default)]
    pub inode_quota: Option<u64>,
    #[serde(default)]
    pub threads: Option<usize>,
}

/// Where a snapshot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    /// Taken and restorable; its bytes are being stored.
    Converting,
    /// Stored: survives any crash.
    Durable,
    /// Could not be stored (see `error`); holds nothing.
    Failed,
}

/// One snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: String,
    /// `filesystem`, `directory` or `memory`.
    pub kind: String,
    /// The mount it was taken of.
    pub mount: String,
    /// For a directory snapshot: the directory, from the mount's root.
    #[serde(default)]
    pub path: Option<String>,
    /// The previous snapshot of the same mount, else what the mount was
    /// made from (`image:NAME` or `snapshot:ID`).
    pub parent: String,
    /// The image the mount's lineage starts from.
    pub image: String,
    /// Seconds since the Unix epoch (with fraction).
    pub created: f64,
    pub labels: BTreeMap<String, String>,
    /// When it will be removed (seconds since the Unix epoch), if ever.
    #[serde(default)]
    pub expires: Option<u64>,
    pub state: SnapshotState,
    #[serde(default)]
    pub error: Option<String>,
    /// The snapshot's tree (hex), once durable.
    #[serde(default)]
    pub tree: Option<String>,
    /// Bytes of file data changed since the parent (sealed at the call).
    pub changed_bytes: u64,
    /// Files whose contents changed since the parent.
    pub changed_files: u64,
    /// Bytes the store did not hold before (once durable).
    #[serde(default)]
    pub new_bytes: u64,
    /// How long the snapshot call held the mount (milliseconds).
    pub call_ms: f64,
    /// From the call to durable (milliseconds), once durable.
    #[serde(default)]
    pub durable_ms: Option<f64>,
    /// Total bytes of files in the snapshot (`snapshot.show` computes it).
    #[serde(default)]
    pub total_bytes: Option<u64>,
    /// For a memory snapshot: what it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryInfo>,
}

/// `image.import` arguments. `source` is an absolute path the daemon reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImageImport {
    pub source: PathBuf,
    pub name: String,
    #[serde(default)]
    pub kind: Option<SourceKind>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub limits: Option<ImportLimits>,
}

/// Where `image.export` writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportTarget {
    /// A file the daemon creates (absolute path).
    File(PathBuf),
    /// Frames on this connection.
    Stream,
}

/// `mount.create` arguments.
#[derive(Debug, Serialize, Deserialize)]
pub struct MountCreate {
    /// Image to mount (empty when `snapshot` is given).
    #[serde(default)]
    pub image: String,
    /// Snapshot to mount instead of an image.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// An existing directory (absolute path) for the FUSE mount; absent
    /// or null: no FUSE mount (the mount is served over 9P alone).
    #[serde(default)]
    pub mountpoint: Option<PathBuf>,
    pub quota_bytes: u64,
    /// Inodes the sandbox may make (absent: the default, 1,048,576).
    #[serde(default)]
    pub inode_quota: Option<u64>,
    #[serde(default)]
    pub threads: Option<usize>,
}

/// One mount the daemon serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountInfo {
    pub id: String,
    pub image: String,
    /// The lower tree (hex id).
    pub tree: String,
    /// Where it is FUSE-mounted (null: served over 9P alone).
    #[serde(default)]
    pub mountpoint: Option<PathBuf>,
    pub upper: PathBuf,
    pub quota_bytes: u64,
    pub used_bytes: u64,
    /// Inodes the sandbox may make, and has made (records written before
    /// the inode quota existed read as the default).
    #[serde(default = "default_inode_quota")]
    pub inode_quota: u64,
    #[serde(default)]
    pub inodes_made: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The snapshot it was made from, if any.
    #[serde(default)]
    pub snapshot: Option<String>,
}

fn default_inode_quota() -> u64 {
    layerfs::cowfs::DEFAULT_INODE_QUOTA
}

impl MountInfo {
    /// Where it is mounted, for messages: the mount point, or that it has
    /// none.
    pub fn place(&self) -> String {
        match &self.mountpoint {
            Some(path) => path.display().to_string(),
            None => "(no FUSE mount; served over 9P)".to_string(),
        }
    }
}

/// `daemon.info` result.
#[derive(Debug, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub api: Vec<u32>,
    pub version: String,
    pub pid: u32,
    pub home: PathBuf,
    pub mounts: usize,
}

/// A failure as the daemon reports it: the exit code class `snapctl` uses,
/// its name, and the whole error chain as text.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub kind: String,
    pub code: u8,
    pub message: String,
}

/// One answer line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub api: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RemoteError>,
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of stream.
pub fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    match read_line_bytes(reader)? {
        None => Ok(None),
        Some(line) => String::from_utf8(line)
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8")),
    }
}

/// Reads one line as bytes, without its newline: `None` at the end of
/// the stream; an `InvalidData` error for a line longer than [`MAX_LINE`]
/// or cut off by the end of the stream. Whether the bytes are UTF-8 (and
/// JSON) is for the caller to judge: the daemon answers a request that is
/// not with an error instead of dropping the connection.
pub fn read_line_bytes(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            if line.len() > MAX_LINE {
                "request line too long"
            } else {
                "connection closed in the middle of a line"
            },
        ));
    }
    line.pop();
    Ok(Some(line))
}

/// Decodes one request line (without its newline), as the daemon does:
/// JSON, naming this API's version, an operation this version knows with
/// its arguments. The error says which of those failed, for the answer.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    parse_request_as(line, API_VERSION)
}

/// [`parse_request`] for a daemon whose operations are `O`, speaking API
/// version `version`.
pub fn parse_request_as<O: serde::de::DeserializeOwned>(
    line: &[u8],
    version: u32,
) -> Result<Request<O>, String> {
    let value = serde_json::from_slice::<serde_json::Value>(line)
        .map_err(|e| format!("the request is not JSON: {e}"))?;
    match value.get("api").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(version) => serde_json::from_value::<Request<O>>(value)
            .map_err(|e| format!("unknown operation or bad arguments: {e}")),
        other => Err(format!(
            "this daemon speaks API version {version}; the request asked for {}",
            other.map_or("none".to_string(), |v| v.to_string())
        )),
    }
}

/// Writes `value` as one JSON line.
pub fn write_line(writer: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value)?;
    bytes.push(b'\n');
    writer.write_all(&bytes)?;
    writer.flush()
}

/// A frame of a streamed export: a 4-byte big-endian length, then that
/// many bytes. A zero length ends the stream.
pub fn write_frame(writer: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    writer.write_all(&len.to_be_bytes())?;
    writer.write_all(bytes)
}

/// Reads one frame into `buf`; an empty `buf` marks the end.
pub fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "export frame larger than allowed",
        ));
    }
    buf.resize(len, 0);
    reader.read_exact(buf)
}

/// Largest frame a daemon sends.
pub const FRAME_MAX: usize = 1 << 20;

/// Writes everything given to it as frames of at most [`FRAME_MAX`] bytes.
pub struct FrameWriter<W: Write> {
    inner: W,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> FrameWriter<W> {
        FrameWriter { inner }
    }

    /// Writes the end-of-stream frame and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        write_frame(&mut self.inner, &[])?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(FRAME_MAX);
        write_frame(&mut self.inner, &buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_shape() {
        let request = Request {
            api: 1,
            op: Op::ImageShow {
                name: "debian".into(),
            },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"api":1,"op":"image.show","args":{"name":"debian"}}"#
        );
        let info: Request = serde_json::from_str(r#"{"api":1,"op":"daemon.info"}"#).unwrap();
        assert!(matches!(info.op, Op::Info));
    }

    #[test]
    fn frames_round_trip_and_an_over_long_line_is_refused() {
        let mut wire = Vec::new();
        {
            let mut writer = FrameWriter::new(&mut wire);
            writer.write_all(&vec![7u8; FRAME_MAX + 10]).unwrap();
            writer.finish().unwrap();
        }
        let mut reader = &wire[..];
        let mut buf = Vec::new();
        let mut total = 0;
        loop {
            read_frame(&mut reader, &mut buf).unwrap();
            if buf.is_empty() {
                break;
            }
            total += buf.len();
        }
        assert_eq!(total, FRAME_MAX + 10);

        let long = vec![b'x'; MAX_LINE + 5];
        let mut reader = io::BufReader::new(&long[..]);
        assert!(read_line(&mut reader).is_err());
    }
}
