//! The page server: lazy restore of a memory image into processes that
//! registered their memory with userfaultfd and handed the descriptor over
//! with Firecracker's handshake ([`crate::handshake`]).
//!
//! One server serves one image to any number of clients, a thread each,
//! sharing one cache of decoded chunks. A client's fault is answered with
//! `UFFDIO_COPY` of the image's page (`UFFDIO_ZEROPAGE` for a zero page).
//! A range the client drops (`MADV_DONTNEED`, a balloon: the kernel's
//! `UFFD_EVENT_REMOVE`) reads back as zero from then on. While a remove is
//! pending, the kernel answers copies with `EAGAIN`: the server drains
//! the events, then retries the faults it deferred.
//!
//! The socket is the client's line to the server, and the server never
//! leaves a client waiting without a word on it:
//! - a fault that cannot be served (a chunk fails verification, the store
//!   fails, the fault lies outside every region) ends the client's
//!   service: a JSON line `{"error": …}` is written to its socket, the
//!   socket is shut down, and the server logs the error with the client's
//!   pid and uid (`SO_PEERCRED`);
//! - a fault that takes longer than [`ServeOptions::fault_timeout`] to
//!   serve ends the service the same way (a watchdog does it, whatever
//!   the serving thread is stuck on);
//! - [`PageServer::stop`] first makes every client whole — copies every
//!   page it has not touched — then writes `{"stopped": …}` and closes,
//!   so the client's memory is all its own. (A range the client removes
//!   after that has no server: it must unregister its memory first.)
//! - a server that dies (killed) closes every socket with it; a client
//!   that watches its socket sees the end at once.
//!
//! The first client's faults are recorded as the image's working set
//! ([`ServeOptions::working_set`]); later clients get those pages copied
//! in batches as soon as they connect, faults served first.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use userfaultfd::{Event, EventBuffer, Uffd};

use crate::error::{io, Error, Result};
use crate::handshake::{self, Region, MAX_HANDSHAKE_BYTES};
use crate::image::PAGE_SIZE;
use crate::restore::ImageReader;
use crate::sockets::{self, PeerCred};

/// How a page server behaves; the defaults suit a VM.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Longest one fault may take to serve before the client's service is
    /// ended with an error (default 5 s).
    pub fault_timeout: Duration,
    /// Longest a client may take to send its handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Where the image's working set is kept: read at start (to prefetch),
    /// written once the first client has faulted in `record_pages` pages
    /// or gone.
    pub working_set: Option<PathBuf>,
    /// Most pages recorded as the working set (default 262,144: 1 GiB;
    /// 0: none is recorded).
    pub record_pages: usize,
    /// Pages copied per prefetch batch (default 256: 1 MiB).
    pub prefetch_batch: usize,
    /// Most clients served at once (default 1,024).
    pub max_clients: usize,
    /// How long a client's thread keeps polling after serving a fault
    /// before it sleeps (default 50 µs). Faults come in bursts (a guest
    /// touching new memory): a thread still awake answers the next one
    /// without a wake-up, which is most of a fault's latency. 0: always
    /// sleep.
    pub spin: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            fault_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            working_set: None,
            record_pages: 262_144,
            prefetch_batch: 256,
            max_clients: 1024,
            spin: Duration::from_micros(50),
        }
    }
}

/// One client, as `clients` reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientStats {
    pub id: u64,
    pub pid: i32,
    pub uid: u32,
    pub regions: usize,
    pub faults: u64,
    pub prefetched_pages: u64,
    pub removed_bytes: u64,
    /// Longest fault service so far, in microseconds.
    pub slowest_fault_us: u64,
}

/// What a server did, as `stats` or `stop` reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerStats {
    pub socket: PathBuf,
    pub clients_now: usize,
    pub clients_total: u64,
    pub faults: u64,
    pub prefetched_pages: u64,
    /// Pages of the working set being prefetched (0: none recorded yet).
    pub working_set_pages: usize,
    pub errors: u64,
}

struct ClientState {
    id: u64,
    peer: PeerCred,
    /// For the watchdog: a clone of the client's socket.
    stream: UnixStream,
    /// Milliseconds since the server started at which the fault being
    /// served began (0: none).
    busy_since_ms: AtomicU64,
    faults: AtomicU64,
    prefetched: AtomicU64,
    removed_bytes: AtomicU64,
    slowest_fault_us: AtomicU64,
    regions: AtomicU64,
    /// Set once the service has ended (by the watchdog or the thread).
    ended: AtomicBool,
}

impl ClientState {
    fn stats(&self) -> ClientStats {
        ClientStats {
            id: self.id,
            pid: self.peer.pid,
            uid: self.peer.uid,
            regions: self.regions.load(Ordering::Relaxed) as usize,
            faults: self.faults.load(Ordering::Relaxed),
            prefetched_pages: self.prefetched.load(Ordering::Relaxed),
            removed_bytes: self.removed_bytes.load(Ordering::Relaxed),
            slowest_fault_us: self.slowest_fault_us.load(Ordering::Relaxed),
        }
    }

    /// Ends the service with `message` on the socket (once).
    fn end_with_error(&self, message: &str) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(
            client = self.id,
            pid = self.peer.pid,
            uid = self.peer.uid,
            "page server: {message}"
        );
        let line = serde_json::json!({ "error": message }).to_string() + "\n";
        let _ = (&self.stream).write_all(line.as_bytes());
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The working set: recorded from the first client, prefetched for the
/// others.
#[derive(Default)]
struct Recorder {
    recording_client: Option<u64>,
    pages: Vec<u64>,
    seen: HashSet<u64>,
    saved: bool,
}

struct Shared {
    reader: Arc<ImageReader>,
    socket: PathBuf,
    options: ServeOptions,
    started: Instant,
    stopping: AtomicBool,
    clients: Mutex<BTreeMap<u64, Arc<ClientState>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    recorder: Mutex<Recorder>,
    working_set: RwLock<Option<Arc<Vec<u64>>>>,
    faults: AtomicU64,
    prefetched: AtomicU64,
    errors: AtomicU64,
}

/// A running page server (see the module's documentation).
pub struct PageServer {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

impl PageServer {
    /// Serves `reader`'s image on a Unix socket at `socket` (mode 0600).
    /// The socket exists, ready to accept, when this returns.
    pub fn start(
        reader: Arc<ImageReader>,
        socket: &Path,
        options: ServeOptions,
    ) -> Result<PageServer> {
        clear_stale_socket(socket)?;
        let listener =
            UnixListener::bind(socket).map_err(io(format!("binding {}", socket.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
                .map_err(io(format!("setting the mode of {}", socket.display())))?;
        }
        let working_set = match &options.working_set {
            Some(path) => load_working_set(path, reader.index().page_count()),
            None => None,
        };
        let shared = Arc::new(Shared {
            reader,
            socket: socket.to_path_buf(),
            options,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            clients: Mutex::new(BTreeMap::new()),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            recorder: Mutex::new(Recorder {
                saved: working_set.is_some(),
                ..Recorder::default()
            }),
            working_set: RwLock::new(working_set.map(Arc::new)),
            faults: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pages-accept".into())
                .spawn(move || accept_loop(&shared, listener))
                .map_err(io("starting the page server"))?
        };
        let watchdog = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pages-watchdog".into())
                .spawn(move || watchdog_loop(&shared))
                .map_err(io("starting the page server's watchdog"))?
        };
        Ok(PageServer {
            shared,
            acceptor: Some(acceptor),
            watchdog: Some(watchdog),
        })
    }

    /// The socket served on.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// The clients being served.
    pub fn clients(&self) -> Vec<ClientStats> {
        self.shared
            .clients
            .lock()
            .values()
            .map(|c| c.stats())
            .collect()
    }

    /// Totals so far.
    pub fn stats(&self) -> ServerStats {
        let shared = &self.shared;
        ServerStats {
            socket: shared.socket.clone(),
            clients_now: shared.clients.lock().len(),
            clients_total: shared.next_id.load(Ordering::Relaxed) - 1,
            faults: shared.faults.load(Ordering::Relaxed),
            prefetched_pages: shared.prefetched.load(Ordering::Relaxed),
            working_set_pages: shared.working_set.read().as_ref().map_or(0, |w| w.len()),
            errors: shared.errors.load(Ordering::Relaxed),
        }
    }

    /// Stops serving: no new clients; each client is made whole (every
    /// page it has not touched is copied), told `{"stopped": …}` and
    /// closed. Returns once every client is done and the socket is gone.
    pub fn stop(mut self) -> ServerStats {
        self.stop_now();
        self.stats()
    }

    fn stop_now(&mut self) {
        let shared = &self.shared;
        if shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wakes the acceptor.
        let _ = UnixStream::connect(&shared.socket);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&shared.socket);
        let threads = std::mem::take(&mut *shared.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        save_working_set(shared);
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Removes a socket file nobody listens on; refuses one in use or a file
/// that is not a socket.
fn clear_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        Ok(meta) if !meta.file_type().is_socket() => Err(Error::Invalid(format!(
            "{} exists and is not a socket",
            path.display()
        ))),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(Error::Invalid(format!(
                "{} is already being served",
                path.display()
            ))),
            Err(_) => {
                std::fs::remove_file(path).map_err(io(format!("removing {}", path.display())))
            }
        },
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: UnixListener) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("page server {}: accept: {e}", shared.socket.display());
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let peer = match sockets::peer_cred(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("page server: no credentials for a client: {e}");
                continue;
            }
        };
        let watch = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("page server: {e}");
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ClientState {
            id,
            peer,
            stream: watch,
            busy_since_ms: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
            removed_bytes: AtomicU64::new(0),
            slowest_fault_us: AtomicU64::new(0),
            regions: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        {
            let mut clients = shared.clients.lock();
            if clients.len() >= shared.options.max_clients {
                drop(clients);
                state.end_with_error(&format!(
                    "this server already serves {} clients",
                    shared.options.max_clients
                ));
                continue;
            }
            clients.insert(id, state.clone());
        }
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("pages-{id}"))
            .spawn(move || {
                let outcome = serve_client(&thread_shared, &state, stream);
                if let Err(e) = outcome {
                    thread_shared.errors.fetch_add(1, Ordering::Relaxed);
                    state.end_with_error(&e.to_string());
                }
                thread_shared.clients.lock().remove(&state.id);
                finish_recording(&thread_shared, state.id);
            });
        match spawned {
            Ok(handle) => shared.threads.lock().push(handle),
            Err(e) => tracing::error!("page server: cannot start a client thread: {e}"),
        }
    }
}

fn watchdog_loop(shared: &Arc<Shared>) {
    let limit = shared.options.fault_timeout.as_millis() as u64;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let stopping = shared.stopping.load(Ordering::Acquire);
        let now = shared.started.elapsed().as_millis() as u64 + 1;
        let clients: Vec<Arc<ClientState>> = shared.clients.lock().values().cloned().collect();
        for client in &clients {
            let since = client.busy_since_ms.load(Ordering::Acquire);
            if since != 0 && now.saturating_sub(since) > limit {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                client.end_with_error(&format!(
                    "a fault has waited more than {} ms to be served; service ended",
                    limit
                ));
            }
        }
        if stopping && clients.is_empty() && shared.threads.lock().is_empty() {
            return;
        }
    }
}

fn load_working_set(path: &Path, pages: u64) -> Option<Vec<u64>> {
    let bytes = std::fs::read(path).ok()?;
    let list: Vec<u64> = serde_json::from_slice(&bytes).ok()?;
    let valid: Vec<u64> = list.into_iter().filter(|&p| p < pages).collect();
    (!valid.is_empty()).then_some(valid)
}

fn finish_recording(shared: &Shared, client: u64) {
    let is_recorder = shared.recorder.lock().recording_client == Some(client);
    if is_recorder {
        save_working_set(shared);
    }
}

/// Writes the recorded working set (once) and offers it to later clients.
fn save_working_set(shared: &Shared) {
    let pages = {
        let mut recorder = shared.recorder.lock();
        if recorder.saved || recorder.pages.is_empty() {
            return;
        }
        recorder.saved = true;
        std::mem::take(&mut recorder.pages)
    };
    if let Some(path) = &shared.options.working_set {
        let temp = path.with_extension("tmp");
        let written = serde_json::to_vec(&pages)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&temp, bytes))
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = written {
            tracing::warn!(
                "page server: saving the working set to {}: {e}",
                path.display()
            );
        }
    }
    *shared.working_set.write() = Some(Arc::new(pages));
}

/// What became of one attempt to fill pages.
enum Filled {
    Done,
    /// A remove is pending (`EAGAIN`): drain the events and retry.
    Again,
    /// The client's address space is gone.
    Gone,
}

/// One client's service.
struct Session<'a> {
    shared: &'a Shared,
    state: &'a ClientState,
    uffd: Uffd,
    regions: Vec<Region>,
    /// Per region, a bit per page: present in the client.
    present: Vec<Vec<u64>>,
    /// Removed address ranges (start → end): they read as zero.
    removed: BTreeMap<u64, u64>,
    /// Faults waiting for a retry.
    deferred: Vec<u64>,
    buf: Vec<u8>,
    events: EventBuffer,
    recording: bool,
}

fn serve_client(shared: &Shared, state: &ClientState, stream: UnixStream) -> Result<()> {
    let (regions, uffd) = receive_handshake(shared, &stream)?;
    state.regions.store(regions.len() as u64, Ordering::Relaxed);
    tracing::info!(
        client = state.id,
        pid = state.peer.pid,
        uid = state.peer.uid,
        regions = regions.len(),
        "page server: client connected"
    );
    let recording = {
        let mut recorder = shared.recorder.lock();
        if shared.options.record_pages > 0 && !recorder.saved && recorder.recording_client.is_none()
        {
            recorder.recording_client = Some(state.id);
            true
        } else {
            false
        }
    };
    let present = regions
        .iter()
        .map(|r| vec![0u64; (r.size / r.page_size).div_ceil(64) as usize])
        .collect();
    let mut session = Session {
        shared,
        state,
        uffd,
        regions,
        present,
        removed: BTreeMap::new(),
        deferred: Vec::new(),
        buf: Vec::new(),
        events: EventBuffer::new(64),
        recording,
    };
    stream
        .set_nonblocking(true)
        .map_err(io("making the client socket non-blocking"))?;
    let mut prefetch = session.prefetch_plan();
    let mut last_fault = Instant::now();
    loop {
        if state.ended.load(Ordering::Acquire) {
            return Ok(());
        }
        if shared.stopping.load(Ordering::Acquire) {
            if session.make_whole()? {
                let line = serde_json::json!({ "stopped": { "faults": state.faults.load(Ordering::Relaxed) } })
                    .to_string()
                    + "\n";
                let _ = (&stream).write_all(line.as_bytes());
            }
            state.ended.store(true, Ordering::Release);
            return Ok(());
        }
        let spinning = last_fault.elapsed() < shared.options.spin;
        let timeout = if prefetch.is_empty() && !spinning {
            100
        } else {
            0
        };
        let (uffd_ready, socket_ended) =
            poll_two(session.uffd.as_raw_fd(), stream.as_raw_fd(), timeout)?;
        if socket_ended && client_went_away(&stream) {
            tracing::info!(
                client = state.id,
                pid = state.peer.pid,
                "page server: client went away"
            );
            return Ok(());
        }
        if uffd_ready {
            if matches!(session.handle_events()?, Filled::Gone) {
                return Ok(());
            }
            last_fault = Instant::now();
        }
        if let Some(batch) = prefetch.pop() {
            if matches!(session.prefetch(batch)?, Filled::Gone) {
                return Ok(());
            }
        }
    }
}

/// Reads the handshake: the regions, and the userfaultfd sent with them.
fn receive_handshake(shared: &Shared, stream: &UnixStream) -> Result<(Vec<Region>, Uffd)> {
    stream
        .set_read_timeout(Some(shared.options.handshake_timeout))
        .map_err(io("setting the handshake timeout"))?;
    let mut json = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let regions = loop {
        let (n, got) = sockets::recv_with_fds(stream, &mut chunk)
            .map_err(|e| Error::Serve(format!("reading the handshake: {e}")))?;
        fds.extend(got);
        if n == 0 {
            return Err(Error::Serve(
                "the client closed the socket before its handshake".into(),
            ));
        }
        json.extend_from_slice(&chunk[..n]);
        if json.len() > MAX_HANDSHAKE_BYTES {
            return Err(Error::Serve(format!(
                "a handshake longer than {MAX_HANDSHAKE_BYTES} bytes"
            )));
        }
        if let Some(regions) = handshake::parse(&json, shared.reader.size())? {
            break regions;
        }
    };
    if fds.len() != 1 {
        return Err(Error::Serve(format!(
            "the handshake came with {} descriptors; it must carry exactly one userfaultfd",
            fds.len()
        )));
    }
    let fd = fds.pop().expect("one").into_raw_fd();
    // SAFETY: `fd` was just received and is owned by nothing else; `Uffd`
    // takes it over and closes it. If it is not a userfaultfd, the first
    // ioctl fails with ENOTTY/EINVAL and the client is told so.
    let uffd = unsafe { Uffd::from_raw_fd(fd) };
    stream
        .set_read_timeout(None)
        .map_err(io("clearing the handshake timeout"))?;
    Ok((regions, uffd))
}

/// Polls the userfaultfd for events and the socket for its end.
fn poll_two(uffd: i32, socket: i32, timeout_ms: i32) -> Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: uffd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: socket,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a live array of two pollfd, and its length is passed.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(Error::Serve(format!("poll: {e}")));
    }
    let uffd_ready = fds[0].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    let socket_event = fds[1].revents != 0;
    Ok((uffd_ready, socket_event))
}

/// Whether the client's end of the socket is closed (it sent nothing
/// else that matters: any bytes after the handshake are read and dropped).
fn client_went_away(stream: &UnixStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 512];
    let mut reader = stream;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn errno_of(e: &userfaultfd::Error) -> Option<i32> {
    match e {
        userfaultfd::Error::CopyFailed(errno) | userfaultfd::Error::ZeropageFailed(errno) => {
            Some(*errno as i32)
        }
        userfaultfd::Error::SystemError(errno) => Some(*errno as i32),
        userfaultfd::Error::PartiallyCopied(_) => Some(libc::EAGAIN),
        _ => None,
    }
}

impl Session<'_> {
    fn region_of(&self, addr: u64) -> Option<usize> {
        self.regions.iter().position(|r| r.contains(addr))
    }

    fn is_present(&self, region: usize, page: u64) -> bool {
        self.present[region][(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    fn mark(&mut self, region: usize, first: u64, count: u64, present: bool) {
        for page in first..first + count {
            let word = &mut self.present[region][(page / 64) as usize];
            if present {
                *word |= 1 << (page % 64);
            } else {
                *word &= !(1 << (page % 64));
            }
        }
    }

    fn is_removed(&self, addr: u64) -> bool {
        self.removed
            .range(..=addr)
            .next_back()
            .is_some_and(|(_, &end)| end > addr)
    }

    fn remove(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        self.state
            .removed_bytes
            .fetch_add(end - start, Ordering::Relaxed);
        let (mut start, mut end) = (start, end);
        let overlapping: Vec<(u64, u64)> = self
            .removed
            .range(..=end)
            .filter(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.removed.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.removed.insert(start, end);
        for index in 0..self.regions.len() {
            let r = self.regions[index];
            let lo = start.max(r.base);
            let hi = end.min(r.base + r.size);
            if lo < hi {
                let first = (lo - r.base) / r.page_size;
                let last = (hi - r.base).div_ceil(r.page_size);
                self.mark(index, first, last - first, false);
            }
        }
    }

    /// Reads every event waiting: faults are queued, removes applied.
    fn drain_events(&mut self) -> Result<bool> {
        let mut any = false;
        loop {
            let mut read = 0;
            let mut faults = Vec::new();
            let mut removes = Vec::new();
            {
                let events = match self.uffd.read_events(&mut self.events) {
                    Ok(events) => events,
                    Err(userfaultfd::Error::ReadEof) => return Ok(any),
                    Err(e) => return Err(Error::Serve(format!("reading userfaultfd events: {e}"))),
                };
                for event in events {
                    read += 1;
                    match event {
                        Ok(Event::Pagefault { addr, .. }) => faults.push(addr as u64),
                        Ok(Event::Remove { start, end }) | Ok(Event::Unmap { start, end }) => {
                            removes.push((start as u64, end as u64))
                        }
                        Ok(Event::Remap { from, to, len }) => tracing::warn!(
                            client = self.state.id,
                            "page server: the client moved {len} bytes from {from:?} to {to:?}; not followed"
                        ),
                        Ok(Event::Fork { .. }) => {}
                        Err(e) => return Err(Error::Serve(format!("a userfaultfd event: {e}"))),
                    }
                }
            }
            for (start, end) in removes {
                self.remove(start, end);
            }
            self.deferred.extend(faults);
            if read == 0 {
                return Ok(any);
            }
            any = true;
            // A non-blocking read returns what is there; stop once the
            // descriptor has nothing more.
            let (ready, _) = poll_two(self.uffd.as_raw_fd(), -1, 0)?;
            if !ready {
                return Ok(any);
            }
        }
    }

    /// Serves every waiting fault; retries those that met a pending
    /// remove once the events are drained.
    fn handle_events(&mut self) -> Result<Filled> {
        let started = Instant::now();
        self.state.busy_since_ms.store(
            self.shared.started.elapsed().as_millis() as u64 + 1,
            Ordering::Release,
        );
        let result = (|| loop {
            self.drain_events()?;
            if self.deferred.is_empty() {
                return Ok(Filled::Done);
            }
            let pending = std::mem::take(&mut self.deferred);
            let mut again = Vec::new();
            for addr in pending {
                let fault_start = Instant::now();
                match self.serve_fault(addr)? {
                    Filled::Done => {
                        let us = fault_start.elapsed().as_micros() as u64;
                        self.state.slowest_fault_us.fetch_max(us, Ordering::Relaxed);
                    }
                    Filled::Again => again.push(addr),
                    Filled::Gone => return Ok(Filled::Gone),
                }
            }
            if again.is_empty() {
                if self.deferred.is_empty() {
                    return Ok(Filled::Done);
                }
                continue;
            }
            self.deferred.extend(again);
            if started.elapsed() > self.shared.options.fault_timeout {
                return Err(Error::Serve(format!(
                    "{} faults met a pending remove for {:?}",
                    self.deferred.len(),
                    started.elapsed()
                )));
            }
            std::thread::sleep(Duration::from_micros(20));
        })();
        self.state.busy_since_ms.store(0, Ordering::Release);
        result
    }

    fn serve_fault(&mut self, addr: u64) -> Result<Filled> {
        let Some(region) = self.region_of(addr) else {
            return Err(Error::Serve(format!(
                "a fault at {addr:#x}, outside every region"
            )));
        };
        let r = self.regions[region];
        let page = (addr - r.base) / r.page_size;
        self.state.faults.fetch_add(1, Ordering::Relaxed);
        self.shared.faults.fetch_add(1, Ordering::Relaxed);
        if self.recording && !self.is_removed(addr) {
            let image_page = (r.offset + page * r.page_size) / PAGE_SIZE as u64;
            let mut recorder = self.shared.recorder.lock();
            if recorder.pages.len() < self.shared.options.record_pages
                && recorder.seen.insert(image_page)
            {
                recorder.pages.push(image_page);
            }
            if recorder.pages.len() >= self.shared.options.record_pages {
                drop(recorder);
                self.recording = false;
                save_working_set(self.shared);
            }
        }
        self.fill(region, page, 1)
    }

    /// Makes pages `first..first+count` of `region` present: zero where
    /// removed or zero in the image, the image's bytes elsewhere.
    fn fill(&mut self, region: usize, first: u64, count: u64) -> Result<Filled> {
        let r = self.regions[region];
        let start = r.base + first * r.page_size;
        let len = (count * r.page_size) as usize;
        // The source: one page straight from its decoded chunk (the
        // common fault), else the span gathered into `self.buf`; `None`
        // when all of it is zero (one zeropage).
        let single: Option<Bytes>;
        let source: Option<*const u8> = if len == PAGE_SIZE {
            single = if self.is_removed(start) {
                None
            } else {
                let image_page = (r.offset + first * r.page_size) / PAGE_SIZE as u64;
                self.shared.reader.page(image_page)?
            };
            single.as_ref().map(|bytes| bytes.as_ptr())
        } else {
            let mut all_zero = true;
            self.buf.clear();
            self.buf.resize(len, 0);
            for i in 0..len / PAGE_SIZE {
                let addr = start + (i * PAGE_SIZE) as u64;
                if self.is_removed(addr) {
                    continue;
                }
                let image_page = (r.offset + (addr - r.base)) / PAGE_SIZE as u64;
                if let Some(bytes) = self.shared.reader.page(image_page)? {
                    self.buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(&bytes);
                    all_zero = false;
                }
            }
            (!all_zero).then_some(self.buf.as_ptr())
        };
        let anonymous = r.page_size == PAGE_SIZE as u64;
        // SAFETY: the destination range lies in the client's registered
        // region (checked against the regions it sent); the kernel copies
        // into the client's address space, not ours. The source is either
        // `single` (one page, `PAGE_SIZE` bytes) or `self.buf` (`len`
        // bytes), both live until after the call.
        let result = unsafe {
            match source {
                None if anonymous => self.uffd.zeropage(start as *mut libc::c_void, len, true),
                None => {
                    self.buf.clear();
                    self.buf.resize(len, 0);
                    self.uffd.copy(
                        self.buf.as_ptr() as *const libc::c_void,
                        start as *mut libc::c_void,
                        len,
                        true,
                    )
                }
                Some(ptr) => self.uffd.copy(
                    ptr as *const libc::c_void,
                    start as *mut libc::c_void,
                    len,
                    true,
                ),
            }
        };
        match result {
            Ok(n) if n == len => {
                self.mark(region, first, count, true);
                Ok(Filled::Done)
            }
            Ok(n) => {
                // Partly done: mark what was, retry the rest page by page.
                let done = n as u64 / r.page_size;
                self.mark(region, first, done, true);
                Ok(Filled::Again)
            }
            Err(e) => match errno_of(&e) {
                Some(libc::EEXIST) if count == 1 => {
                    // Present already (a prefetch, another thread's
                    // fault): wake whoever waits on it.
                    self.mark(region, first, 1, true);
                    let _ = self.uffd.wake(start as *mut libc::c_void, len);
                    Ok(Filled::Done)
                }
                Some(libc::EEXIST) => {
                    for page in first..first + count {
                        if !self.is_present(region, page) {
                            if let Filled::Gone = self.fill(region, page, 1)? {
                                return Ok(Filled::Gone);
                            }
                        }
                    }
                    Ok(Filled::Done)
                }
                Some(libc::EAGAIN) => Ok(Filled::Again),
                Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(Filled::Gone),
                _ => Err(Error::Serve(format!(
                    "filling {len} bytes at {start:#x}: {e}"
                ))),
            },
        }
    }

    /// Fills the absent pages of `region` from `page` to `end` (a run that
    /// was absent when chosen), taking pending removes and faults first
    /// whenever the kernel asks. `None` if the client went away, else the
    /// pages this call filled.
    fn fill_absent(&mut self, region: usize, mut page: u64, end: u64) -> Result<Option<u64>> {
        let mut filled = 0;
        for _attempt in 0..1000 {
            match self.fill(region, page, end - page)? {
                Filled::Done => return Ok(Some(filled + end - page)),
                Filled::Gone => return Ok(None),
                Filled::Again => {
                    if let Filled::Gone = self.handle_events()? {
                        return Ok(None);
                    }
                    while page < end && self.is_present(region, page) {
                        page += 1;
                        filled += 1;
                    }
                    if page == end {
                        return Ok(Some(filled));
                    }
                }
            }
        }
        Err(Error::Serve(format!(
            "pages at {:#x} kept meeting pending removes",
            self.regions[region].base + page * self.regions[region].page_size
        )))
    }

    /// The working set as batches of runs of pages, last batch first.
    fn prefetch_plan(&self) -> Vec<Vec<(usize, u64, u64)>> {
        if self.recording {
            return Vec::new();
        }
        let Some(set) = self.shared.working_set.read().clone() else {
            return Vec::new();
        };
        let mut wanted: Vec<(usize, u64)> = Vec::new();
        for &image_page in set.iter() {
            let offset = image_page * PAGE_SIZE as u64;
            for (index, r) in self.regions.iter().enumerate() {
                if offset >= r.offset && offset - r.offset < r.size {
                    wanted.push((index, (offset - r.offset) / r.page_size));
                }
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let batch_pages = self.shared.options.prefetch_batch.max(1) as u64;
        let mut batches = Vec::new();
        let mut batch: Vec<(usize, u64, u64)> = Vec::new();
        let mut in_batch = 0u64;
        for (region, page) in wanted {
            let pages_per = (self.regions[region].page_size / PAGE_SIZE as u64).max(1);
            match batch.last_mut() {
                Some((r, first, count)) if *r == region && *first + *count == page => *count += 1,
                _ => batch.push((region, page, 1)),
            }
            in_batch += pages_per;
            if in_batch >= batch_pages {
                batches.push(std::mem::take(&mut batch));
                in_batch = 0;
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        batches.reverse();
        batches
    }

    /// Copies one batch of the working set (pages already present or
    /// removed are skipped).
    fn prefetch(&mut self, batch: Vec<(usize, u64, u64)>) -> Result<Filled> {
        for (region, first, count) in batch {
            let mut page = first;
            while page < first + count {
                // The longest run of absent pages from here.
                if self.is_present(region, page) {
                    page += 1;
                    continue;
                }
                let mut end = page + 1;
                while end < first + count && !self.is_present(region, end) {
                    end += 1;
                }
                match self.fill_absent(region, page, end)? {
                    None => return Ok(Filled::Gone),
                    Some(copied) => {
                        self.state.prefetched.fetch_add(copied, Ordering::Relaxed);
                        self.shared.prefetched.fetch_add(copied, Ordering::Relaxed);
                    }
                }
                page = end;
            }
        }
        Ok(Filled::Done)
    }

    /// Copies every absent page (the server is stopping). `false` if the
    /// client went away meanwhile.
    fn make_whole(&mut self) -> Result<bool> {
        for region in 0..self.regions.len() {
            let r = self.regions[region];
            let pages = r.size / r.page_size;
            let run_max = (1u64 << 20) / r.page_size.max(1);
            let mut page = 0;
            while page < pages {
                if self.is_present(region, page) {
                    page += 1;
                    continue;
                }
                let mut end = page + 1;
                while end < pages && end - page < run_max.max(1) && !self.is_present(region, end) {
                    end += 1;
                }
                if self.fill_absent(region, page, end)?.is_none() {
                    return Ok(false);
                }
                page = end;
            }
        }
        Ok(true)
    }
}
