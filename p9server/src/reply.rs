//! Writing replies to a connection from any thread, never waiting on the
//! client.
//!
//! A request answered on the blocking pool writes its reply itself, on
//! its own descriptor (a `dup` of the connection's socket), instead of
//! handing the reply back to the async runtime: on the virtual machines
//! sandboxes run on, every thread wake-up costs tens of microseconds
//! (a Unix-socket ping-pong between two threads takes ~47 µs on the
//! benchmark machine), so one hand-off less is a large share of a small
//! request's latency.
//!
//! The socket stays non-blocking (the runtime reads it). A reply that does
//! not fit into the socket's buffer now, and every reply after it, waits
//! in the connection's backlog; a drain task on the runtime writes the
//! backlog out as the client makes room. No thread ever waits for a
//! client: a client that stops reading costs its backlog's memory, which
//! the server bounds by reading no further request from it
//! ([`ReplyWriter::backlog`]), and after [`STALL_LIMIT`] without progress
//! its connection is closed.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// An encoded reply: its header and fixed fields, and the payload of a
/// read or a directory listing, sent from where it already is (no copy).
pub struct Encoded {
    pub head: Vec<u8>,
    pub payload: Option<Bytes>,
}

impl Encoded {
    fn parts(&self) -> Vec<&[u8]> {
        match &self.payload {
            Some(p) => vec![&self.head, p],
            None => vec![&self.head],
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.payload.as_ref().map_or(0, Bytes::len)
    }
}

/// How long a backlog may wait for a client to make room before the
/// connection is given up.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// The writing side of one connection; replies are written whole, in the
/// order they were sent.
pub struct ReplyWriter {
    fd: OwnedFd,
    state: Mutex<Backlog>,
    /// Wakes the drain task when the backlog gets a reply.
    queued: Notify,
    /// Wakes a reader waiting for the backlog to shrink.
    drained: Notify,
}

#[derive(Default)]
struct Backlog {
    /// Replies not (wholly) written yet, with the bytes of the first one
    /// already out.
    replies: VecDeque<Encoded>,
    first_written: usize,
    bytes: usize,
    /// Why the connection can take no more replies.
    failed: Option<(io::ErrorKind, String)>,
}

enum Progress {
    Done,
    /// The socket's buffer is full after `written` bytes.
    Full {
        written: usize,
    },
}

impl ReplyWriter {
    /// A writer on a duplicate of `socket`.
    pub fn new(socket: RawFd) -> io::Result<ReplyWriter> {
        // SAFETY: `socket` is an open descriptor of the connection, which
        // outlives this call; try_clone_to_owned dups it.
        let fd = unsafe { BorrowedFd::borrow_raw(socket) }.try_clone_to_owned()?;
        Ok(ReplyWriter {
            fd,
            state: Mutex::new(Backlog::default()),
            queued: Notify::new(),
            drained: Notify::new(),
        })
    }

    /// Sends as much of `parts` (one message, in order) as the socket
    /// takes now, starting `at` bytes in.
    fn send_some(&self, parts: &[&[u8]], at: usize) -> io::Result<Progress> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut at = at;
        while at < total {
            // The iovecs of what is left.
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(parts.len());
            let mut skip = at;
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                let rest = &p[skip..];
                skip = 0;
                iov.push(libc::iovec {
                    iov_base: rest.as_ptr() as *mut libc::c_void,
                    iov_len: rest.len(),
                });
            }
            // SAFETY: a zeroed msghdr is an empty message; its iovecs point
            // into `parts`, live for this call, and sendmsg only reads them.
            // MSG_NOSIGNAL turns a closed peer into EPIPE; MSG_DONTWAIT
            // never waits.
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = iov.len() as _;
                libc::sendmsg(
                    self.fd.as_raw_fd(),
                    &msg,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                at += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return Ok(Progress::Full { written: at }),
                _ => return Err(e),
            }
        }
        Ok(Progress::Done)
    }

    /// Sends a reply (whole, after every reply sent before it), from any
    /// thread, without waiting: at once when the socket has room and
    /// nothing waits before it, else into the backlog.
    pub fn send(&self, reply: Encoded) -> io::Result<()> {
        let mut state = self.state.lock();
        if let Some((kind, message)) = &state.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        let written = match state.replies.is_empty() {
            true => match self.send_some(&reply.parts(), 0) {
                Ok(Progress::Done) => return Ok(()),
                Ok(Progress::Full { written }) => written,
                Err(e) => {
                    state.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
            },
            false => 0,
        };
        if state.replies.is_empty() {
            state.first_written = written;
        }
        state.bytes += reply.len() - written;
        state.replies.push_back(reply);
        drop(state);
        self.queued.notify_one();
        Ok(())
    }

    /// Bytes of replies waiting for the client to make room.
    pub fn backlog(&self) -> usize {
        self.state.lock().bytes
    }

    /// Waits until the backlog holds at most `limit` bytes; an error once
    /// the connection failed.
    pub async fn backlog_below(&self, limit: usize) -> io::Result<()> {
        loop {
            let drained = self.drained.notified();
            {
                let state = self.state.lock();
                if let Some((kind, message)) = &state.failed {
                    return Err(io::Error::new(*kind, message.clone()));
                }
                if state.bytes <= limit {
                    return Ok(());
                }
            }
            drained.await;
        }
    }

    /// Writes as much of the backlog as the socket takes now; whether it
    /// is empty.
    fn drain_some(&self) -> io::Result<bool> {
        let mut state = self.state.lock();
        while let Some(first) = state.replies.front() {
            let at = state.first_written;
            let total = first.len();
            match self.send_some(&first.parts(), at)? {
                Progress::Done => {
                    state.bytes -= total - at;
                    state.replies.pop_front();
                    state.first_written = 0;
                }
                Progress::Full { written } => {
                    state.bytes -= written - at;
                    state.first_written = written;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The connection is ending: later sends fail and the drain task
    /// stops.
    pub fn close(&self) {
        self.fail(&io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the connection ended",
        ));
        self.queued.notify_one();
    }

    fn fail(&self, error: &io::Error) {
        let mut state = self.state.lock();
        state
            .failed
            .get_or_insert((error.kind(), error.to_string()));
        state.replies.clear();
        state.bytes = 0;
        drop(state);
        self.drained.notify_waiters();
    }

    /// Writes the backlog out as the client makes room, until the writer
    /// is dropped or the connection fails (then every later `send` fails
    /// and a reader waiting in [`ReplyWriter::backlog_below`] is told).
    /// Runs on the runtime, one per connection.
    pub async fn drain(self: Arc<Self>) {
        let Ok(dup) = self.fd.try_clone() else {
            self.fail(&io::Error::other("cannot watch the socket for room"));
            return;
        };
        // SAFETY: `dup` is an owned descriptor moved into the AsyncFd,
        // which owns it (and closes it) for its whole life; an OwnedFd's
        // as_raw_fd always returns that same descriptor.
        let registered = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) };
        let ready = match registered {
            Ok(ready) => ready,
            Err(e) => {
                self.fail(&io::Error::other(e.to_string()));
                return;
            }
        };
        loop {
            let queued = self.queued.notified();
            let (failed, empty) = {
                let state = self.state.lock();
                (state.failed.is_some(), state.replies.is_empty())
            };
            if failed {
                return;
            }
            if empty {
                queued.await;
                continue;
            }
            let mut guard = match tokio::time::timeout(STALL_LIMIT, ready.writable()).await {
                Ok(Ok(guard)) => guard,
                Ok(Err(e)) => return self.fail(&e),
                Err(_) => {
                    return self.fail(&io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading replies",
                    ))
                }
            };
            match self.drain_some() {
                Ok(true) => {}
                Ok(false) => guard.clear_ready(),
                Err(e) => return self.fail(&e),
            }
            self.drained.notify_waiters();
        }
    }
}
