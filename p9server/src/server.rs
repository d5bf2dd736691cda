//! The async server: listeners (Unix socket, TCP, an inherited socket),
//! one task per connection, requests answered concurrently and replied to
//! in whatever order they finish, `Tflush`, and the per-session limits.
//!
//! A connection reads one message at a time: its size is checked against
//! the negotiated `msize` before anything is allocated (a size outside
//! `7..=msize` closes the connection — the stream cannot be resynchronised);
//! a body that does not decode gets `Rlerror` with its tag. Quick requests
//! (walks, attributes, namespace changes) are answered inline; those that
//! may wait on the disk run on the blocking pool, at most
//! [`Limits::max_outstanding`] at once per session — past that the
//! connection stops reading until one finishes, so a client can queue work
//! but not memory. A session that pipelines has all its requests worked on
//! off the runtime's threads, at a lower priority, in order (`lane`).
//! Between a reply and the next request a connection whose client comes
//! back quickly polls its socket briefly before sleeping (see
//! [`crate::poll`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::Interest;
use tokio::sync::{watch, Semaphore};

use crate::lane::{InFlight, Job, Work};
use crate::poll::{poll_until, PollLimits, PollWindow, Pollers};
use crate::proto::{self, Reply, Request};
use crate::reply::{Encoded, ReplyWriter};
use crate::session::{Resolver, ResolverFactory, Session};
use crate::wire::DecodeError;

/// Limits that keep one client from exhausting the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest message size offered in `Rversion`.
    pub max_msize: u32,
    /// Most fids one session may hold.
    pub max_fids: usize,
    /// Most requests of one session being worked on at once.
    pub max_outstanding: usize,
    /// Most connections at once; further ones are closed at accept.
    pub max_sessions: usize,
    /// Most fids all sessions together may hold (ENFILE past it).
    pub max_total_fids: usize,
    /// Most bytes of extended-attribute values and name lists one
    /// session's fids may hold (ENOMEM past it).
    pub max_xattr_bytes: usize,
    /// Most bytes of replies a session may have waiting for its client to
    /// read them: past it the session reads no further request.
    pub max_reply_backlog: usize,
    /// How much connections busy-poll for their next request.
    pub poll: PollLimits,
    /// How many nice steps lower a session's requests are worked on while
    /// it has others queued behind them (a pipelining client), so that an
    /// interactive client's go first when the cores are all busy; 0 works
    /// on every request at the server's own priority (see
    /// [`crate::priority`]).
    pub queued_nice: i32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_msize: 1 << 20,
            max_fids: 65_536,
            max_outstanding: 64,
            max_sessions: 4096,
            max_total_fids: 1 << 20,
            max_xattr_bytes: 4 << 20,
            max_reply_backlog: 4 << 20,
            poll: PollLimits::default(),
            queued_nice: 10,
        }
    }
}

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A Unix stream socket at this path (created; must not exist).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
    /// An already connected stream socket inherited as this descriptor
    /// (a socketpair end handed over by a runtime): one session.
    Fd(RawFd),
}

/// Why a listen address was not understood.
#[derive(Debug, thiserror::Error)]
#[error("listen address {0:?} is not unix:PATH, tcp:HOST:PORT or fd:N")]
pub struct BadListen(pub String);

impl std::str::FromStr for Listen {
    type Err = BadListen;
    fn from_str(s: &str) -> Result<Listen, BadListen> {
        let bad = || BadListen(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            return addr.parse().map(Listen::Tcp).map_err(|_| bad());
        }
        if let Some(fd) = s.strip_prefix("fd:") {
            return fd.parse().map(Listen::Fd).map_err(|_| bad());
        }
        Err(bad())
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
            Listen::Fd(fd) => write!(f, "fd:{fd}"),
        }
    }
}

/// Counters of a server (for status output and tests).
#[derive(Debug, Default)]
pub struct Counters {
    pub sessions_open: AtomicUsize,
    pub sessions_total: AtomicU64,
    pub requests: AtomicU64,
    pub malformed: AtomicU64,
    /// Waits for bytes that began by polling.
    pub polls: AtomicU64,
    /// Polls that got their bytes before their window closed.
    pub polls_caught: AtomicU64,
}

/// What every connection of a server shares.
struct Shared {
    /// Makes each connection's resolver.
    resolvers: ResolverFactory,
    limits: Limits,
    /// Fids held by all sessions (see [`Limits::max_total_fids`]).
    all_fids: Arc<std::sync::atomic::AtomicUsize>,
    counters: Counters,
    next_session: AtomicU64,
    pollers: Arc<Pollers>,
}

/// A 9P2000.L server over the mounts its resolver names.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

/// A listening server; stops accepting and ends its sessions when
/// dropped or [`Listening::stop`]ped.
pub struct Listening {
    /// The address it listens on (a TCP port 0 resolved).
    pub address: Listen,
    stop: watch::Sender<bool>,
    server: Server,
}

impl Listening {
    /// Stops accepting and closes every session.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// The server's counters.
    pub fn counters(&self) -> &Counters {
        &self.server.shared.counters
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop();
        if let Listen::Unix(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Server {
    /// A server whose attaches are resolved by `resolver`.
    pub fn new(resolver: Resolver, limits: Limits) -> Server {
        Server::sharing_pollers(resolver, limits, Arc::default())
    }

    /// A server whose connections count against `pollers` (shared by the
    /// servers on one runtime, so that [`PollLimits::max_pollers`] holds
    /// across them).
    pub fn sharing_pollers(resolver: Resolver, limits: Limits, pollers: Arc<Pollers>) -> Server {
        Server::per_connection(Arc::new(move |_, _| resolver.clone()), limits, pollers)
    }

    /// A server that makes each connection a resolver of its own with
    /// `resolvers` (given the connection's number): what the resolver
    /// holds lives exactly as long as the connection's session — a
    /// volume session per 9P connection, committed when its last request
    /// is done after the client went away.
    pub fn per_connection(
        resolvers: ResolverFactory,
        limits: Limits,
        pollers: Arc<Pollers>,
    ) -> Server {
        Server {
            shared: Arc::new(Shared {
                resolvers,
                limits,
                all_fids: Arc::default(),
                counters: Counters::default(),
                next_session: AtomicU64::new(1),
                pollers,
            }),
        }
    }

    /// Starts listening on `listen` on `runtime`.
    pub fn listen(
        &self,
        runtime: &tokio::runtime::Handle,
        listen: &Listen,
    ) -> std::io::Result<Listening> {
        let (stop, stopped) = watch::channel(false);
        let _guard = runtime.enter();
        let address = match listen {
            Listen::Unix(path) => {
                let listener = tokio::net::UnixListener::bind(path)?;
                self.spawn_accept_loop(runtime, listener, stopped);
                listen.clone()
            }
            Listen::Tcp(addr) => {
                let std_listener = std::net::TcpListener::bind(addr)?;
                std_listener.set_nonblocking(true)?;
                let local = std_listener.local_addr()?;
                let listener = tokio::net::TcpListener::from_std(std_listener)?;
                self.spawn_accept_loop(runtime, listener, stopped);
                Listen::Tcp(local)
            }
            Listen::Fd(fd) => {
                // SAFETY: the caller hands over an open stream socket it no
                // longer uses; from here this server owns (and closes) it.
                let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(*fd) };
                std_stream.set_nonblocking(true)?;
                let stream = tokio::net::UnixStream::from_std(std_stream)?;
                self.start_session(stream, stopped);
                listen.clone()
            }
        };
        Ok(Listening {
            address,
            stop,
            server: self.clone(),
        })
    }

    /// Accepts connections on `listener` until stopped, each a session.
    fn spawn_accept_loop<A: Acceptor>(
        &self,
        runtime: &tokio::runtime::Handle,
        listener: A,
        stopped: watch::Receiver<bool>,
    ) {
        let server = self.clone();
        runtime.spawn(async move {
            let mut stop = stopped.clone();
            loop {
                tokio::select! {
                    accepted = listener.accept_stream() => match accepted {
                        Ok(stream) => server.start_session(stream, stopped.clone()),
                        Err(e) => tracing::warn!("9p accept: {e}"),
                    },
                    _ = stop.changed() => break,
                }
            }
        });
    }

    fn start_session<S>(&self, stream: S, stopped: watch::Receiver<bool>)
    where
        S: Connection,
    {
        let shared = self.shared.clone();
        let open = shared
            .counters
            .sessions_open
            .fetch_add(1, Ordering::Relaxed);
        if open >= shared.limits.max_sessions {
            shared
                .counters
                .sessions_open
                .fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("9p: {open} sessions open, refusing another");
            return;
        }
        shared
            .counters
            .sessions_total
            .fetch_add(1, Ordering::Relaxed);
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let result = run_session(shared.clone(), id, stream, stopped).await;
            if let Err(e) = result {
                tracing::debug!("9p session {id} ended: {e}");
            }
            shared
                .counters
                .sessions_open
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Send buffer asked for on TCP connections (the kernel caps it at
/// `net.core.wmem_max`).
const TCP_SEND_BUFFER: usize = 4 << 20;

/// A listening socket whose connections become sessions.
trait Acceptor: Send + Sync + 'static {
    type Stream: Connection;
    /// The next connection, set up for a session.
    fn accept_stream(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Acceptor for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        let (stream, _) = self.accept().await?;
        // Replies are whole messages: send each at once.
        let _ = stream.set_nodelay(true);
        // Room for several largest replies, so a reply is rarely cut short
        // by a full send buffer (which costs a trip to the blocking pool);
        // loopback TCP starts at 16 KiB, under one 64 KiB read's reply.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(TCP_SEND_BUFFER);
        Ok(stream)
    }
}

/// A connected stream socket a session reads its requests from.
trait Connection: AsRawFd + std::os::fd::AsFd + Sized + Send + Sync + Unpin + 'static {
    /// Waits until the socket may be readable.
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Runs `f`; a `WouldBlock` from it clears the readiness it acted on.
    fn try_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R>;

    /// Reads what has arrived into `buf`'s spare room (0: end of stream).
    /// A read that leaves room over has drained the socket, so it is told
    /// to the runtime at once (the next read waits for new data) instead of
    /// costing a further `recv` that would find nothing.
    fn read_draining(
        &self,
        buf: &mut BytesMut,
    ) -> impl Future<Output = std::io::Result<usize>> + Send {
        async move {
            loop {
                self.readable().await?;
                let mut got = None;
                let result = self.try_io(|| {
                    let room = buf.spare_capacity_mut().len();
                    let n = recv_into(self, buf, 0)?;
                    got = Some(n);
                    if n > 0 && n < room {
                        // Drained: clear the readiness.
                        Err(std::io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                match (result, got) {
                    (Ok(()), Some(n)) | (Err(_), Some(n)) => return Ok(n),
                    (Err(e), None) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    (Err(e), None) => return Err(e),
                    (Ok(()), None) => unreachable!("recv ran and returned"),
                }
            }
        }
    }
}

/// Receives what has arrived on `socket` into `buf`'s spare room (`flags`
/// as for `recv(2)`); the bytes received become part of `buf`.
fn recv_into(
    socket: &impl std::os::fd::AsFd,
    buf: &mut BytesMut,
    flags: libc::c_int,
) -> std::io::Result<usize> {
    let n = socket2::SockRef::from(socket).recv_with_flags(buf.spare_capacity_mut(), flags)?;
    // SAFETY: recv initialised the first n bytes of the spare room it was
    // given.
    unsafe { bytes::BufMut::advance_mut(buf, n) };
    Ok(n)
}

impl Connection for tokio::net::UnixStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        tokio::net::UnixStream::readable(self)
    }
    fn try_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        tokio::net::UnixStream::try_io(self, Interest::READABLE, f)
    }
}

impl Connection for tokio::net::TcpStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        tokio::net::TcpStream::readable(self)
    }
    fn try_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        tokio::net::TcpStream::try_io(self, Interest::READABLE, f)
    }
}

/// Encodes a reply; the data of `Rread` and `Rreaddir` stays where it is
/// and goes out as a second part.
fn encode(tag: u16, reply: &Reply) -> Encoded {
    tracing::trace!(tag, reply = reply.name(), "9p reply");
    match reply {
        Reply::Read { data } | Reply::Readdir { data } => {
            let mut head = Vec::with_capacity(proto::READ_OVERHEAD as usize);
            let size = proto::READ_OVERHEAD + data.len() as u32;
            head.extend_from_slice(&size.to_le_bytes());
            head.push(reply.code());
            head.extend_from_slice(&tag.to_le_bytes());
            head.extend_from_slice(&(data.len() as u32).to_le_bytes());
            Encoded {
                head,
                payload: Some(data.clone()),
            }
        }
        _ => {
            let mut head = Vec::with_capacity(64);
            reply.encode(tag, &mut head);
            Encoded {
                head,
                payload: None,
            }
        }
    }
}

/// Splits a connection's byte stream into messages without copying: the
/// bytes are read into one buffer and each message body is split off it.
struct Framer<S> {
    stream: S,
    buf: BytesMut,
    window: PollWindow,
}

impl<S: Connection> Framer<S> {
    /// Whether a whole next message is already buffered (reading it
    /// waits for nothing).
    fn has_message(&self) -> bool {
        self.buf.len() >= 4
            && self.buf.len()
                >= u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
    }

    /// The next message's bytes after its size field. A size outside
    /// `7..=max` is an error (the stream cannot be resynchronised).
    /// `answered` says whether every request read so far is answered: only
    /// then is the wait for more the client's own time, worth polling for.
    async fn next(&mut self, max: u32, shared: &Shared, answered: bool) -> std::io::Result<Bytes> {
        loop {
            if self.buf.len() >= 4 {
                let size = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if !(7..=max).contains(&size) {
                    let e = DecodeError::BadSize { size, max };
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
                let size = size as usize;
                if self.buf.len() >= size {
                    let mut msg = self.buf.split_to(size);
                    let _ = msg.split_to(4);
                    return Ok(msg.freeze());
                }
                self.buf.reserve(size - self.buf.len());
            } else {
                self.buf.reserve(64 * 1024);
            }
            let got = match answered {
                true => self.read_some(shared).await?,
                false => {
                    let _asleep = shared.pollers.asleep();
                    self.stream.read_draining(&mut self.buf).await?
                }
            };
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads what arrives next (0: end of stream): polls for it while this
    /// connection's window is open and a polling turn is free, else waits
    /// on the runtime; the wait's length adapts the window.
    async fn read_some(&mut self, shared: &Shared) -> std::io::Result<usize> {
        let started = Instant::now();
        let window = self.window.current();
        let turn = match window.is_zero() {
            true => None,
            false => shared.pollers.try_turn(shared.limits.poll.max_pollers),
        };
        let polled = match turn {
            Some(_turn) => {
                shared.counters.polls.fetch_add(1, Ordering::Relaxed);
                let (stream, buf) = (&self.stream, &mut self.buf);
                poll_until(started + window, || {
                    match recv_into(stream, buf, libc::MSG_DONTWAIT) {
                        Ok(n) => Ok(Some(n)),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                            ) =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                })?
            }
            None => None,
        };
        let n = match polled {
            Some(n) => {
                shared.counters.polls_caught.fetch_add(1, Ordering::Relaxed);
                n
            }
            None => {
                let _asleep = shared.pollers.asleep();
                self.stream.read_draining(&mut self.buf).await?
            }
        };
        self.window.record(started.elapsed());
        Ok(n)
    }
}

async fn run_session<S>(
    shared: Arc<Shared>,
    id: u64,
    stream: S,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    S: Connection,
{
    let writer = Arc::new(ReplyWriter::new(stream.as_raw_fd())?);
    tokio::spawn(writer.clone().drain());
    let mut framer = Framer {
        stream,
        buf: BytesMut::with_capacity(64 * 1024),
        window: PollWindow::new(shared.limits.poll.max_wait),
    };
    let session = Arc::new(Session::sharing_fids(
        (shared.resolvers)(id, std::os::fd::AsFd::as_fd(&framer.stream)),
        shared.limits,
        id,
        shared.all_fids.clone(),
    ));
    let outstanding = Arc::new(Semaphore::new(shared.limits.max_outstanding));
    let inflight: Arc<Mutex<HashMap<u16, Arc<InFlight>>>> = Arc::default();
    let work = Arc::new(Work::new(
        session.clone(),
        writer.clone(),
        inflight.clone(),
        encode,
    ));
    // One of the session's places, once one is free.
    let place = || {
        let outstanding = outstanding.clone();
        async move {
            outstanding
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)
        }
    };
    // Marks `tag` in flight, holding `permit`.
    let job = |tag: u16, req: Request, permit| -> std::io::Result<Job> {
        let entry = Arc::new(InFlight::default());
        // A tag whose reply is already out may come back before its job
        // has let go of it: the new request takes the tag over.
        let mut inflight = inflight.lock();
        if let Some(old) = inflight.insert(tag, entry.clone()) {
            if !old.replied.load(Ordering::SeqCst) {
                inflight.insert(tag, old);
                let e = format!("tag {tag} reused while in flight");
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        }
        drop(inflight);
        Ok(Job {
            tag,
            req,
            entry,
            permit,
        })
    };

    let _awake = shared.pollers.awake();
    let result: std::io::Result<()> = async {
        loop {
            // One request at a time per turn: a session whose client
            // floods it lets the others' requests in between (the
            // runtime's own budget would let it run 128 first), and so
            // does one that may poll next while other sessions are awake.
            // A lone session skips it: with nothing else to run, the
            // yield only woke an idle worker to take this task over (an
            // eventfd write and a cross-CPU wake-up per request).
            if framer.has_message() || shared.pollers.awake_now() > 1 {
                tokio::task::yield_now().await;
            }
            // A client that does not read its replies gets no further
            // request read: its backlog is all it can cost.
            tokio::select! {
                r = writer.backlog_below(shared.limits.max_reply_backlog) => r?,
                _ = stopped.changed() => return Ok(()),
            }
            let body = tokio::select! {
                r = framer.next(
                    session.msize(),
                    &shared,
                    outstanding.available_permits() == shared.limits.max_outstanding,
                ) => match r {
                    Ok(body) => body,
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("9p session {id}: {e}; closing");
                        }
                        return Err(e);
                    }
                },
                _ = stopped.changed() => return Ok(()),
            };
            shared.counters.requests.fetch_add(1, Ordering::Relaxed);
            let tag = u16::from_le_bytes([body[1], body[2]]);
            let req = match proto::decode_request(body) {
                Ok((_, req)) => req,
                Err(e) => {
                    shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("9p session {id}: tag {tag}: {e}");
                    let ecode = match e {
                        DecodeError::UnknownType(_) => libc::EOPNOTSUPP,
                        _ => libc::EINVAL,
                    };
                    let reply = Reply::Lerror {
                        ecode: ecode as u32,
                    };
                    writer.send(encode(tag, &reply))?;
                    continue;
                }
            };
            tracing::trace!(session = id, tag, request = req.name(), "9p request");
            // Requests already waiting behind this one (or still being
            // worked on): this client pipelines, and its work, taken off
            // the runtime's threads, yields the CPU to interactive
            // clients' (`lane`, `priority`).
            let queued = !framer.buf.is_empty()
                || outstanding.available_permits() < shared.limits.max_outstanding;
            let nice = match queued {
                true => shared.limits.queued_nice,
                false => 0,
            };
            // While the lane works, everything goes through it, in order.
            // A lane job holds one of the session's places until it has
            // replied, so a session with all its places free has nothing
            // in its lane (and a serial client's request takes no lock).
            let laned = queued && (nice > 0 || !work.lane_idle());
            match req {
                Request::Version { msize, version } => {
                    // Let everything in flight finish, then start over.
                    let all = shared.limits.max_outstanding as u32;
                    let permits = outstanding
                        .acquire_many(all)
                        .await
                        .map_err(std::io::Error::other)?;
                    let reply = session.version(msize, &version);
                    drop(permits);
                    writer.send(encode(tag, &reply))?;
                }
                Request::Flush { oldtag } => {
                    let pending = inflight.lock().get(&oldtag).cloned();
                    let Some(old) = pending else {
                        // Nothing to wait for: answered at once, or after
                        // the requests queued before it.
                        if laned {
                            let permit = place().await?;
                            work.push(job(tag, Request::Flush { oldtag }, permit)?, nice);
                        } else {
                            writer.send(encode(tag, &Reply::Flush {}))?;
                        }
                        continue;
                    };
                    // Waiting for a request to finish is work in flight
                    // like any other: it takes one of the session's
                    // places, so flushes cannot pile up.
                    let permit = place().await?;
                    let writer = writer.clone();
                    tokio::spawn(async move {
                        old.cancelled.store(true, Ordering::SeqCst);
                        let notified = old.done.notified();
                        if !old.finished.load(Ordering::SeqCst) {
                            notified.await;
                        }
                        let _ = writer.send(encode(tag, &Reply::Flush {}));
                        drop(permit);
                    });
                }
                // A pipelining client's quick requests, and any request
                // while its lane works, go through the lane in order.
                req if laned && (!Session::is_slow(&req) || !work.lane_idle()) => {
                    let permit = place().await?;
                    work.push(job(tag, req, permit)?, nice);
                }
                // Reads, writes, listings, opens and removals are mostly memory
                // work: answered inline while nothing else of this session
                // is in flight or waiting (one thread hand-off less), else
                // on the pool so that a pipelining client's requests run
                // side by side.
                req if Session::is_slow(&req) && (queued || !Session::is_usually_quick(&req)) => {
                    let permit = place().await?;
                    work.spawn(job(tag, req, permit)?, nice);
                }
                req => {
                    let reply = session.handle(req);
                    writer.send(encode(tag, &reply))?;
                }
            }
        }
    }
    .await;
    // Wait for requests in flight before the session lets go of its fids.
    let _ = outstanding
        .acquire_many(shared.limits.max_outstanding as u32)
        .await;
    session.end();
    writer.close();
    result
}
