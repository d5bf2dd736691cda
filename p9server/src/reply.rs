//! Writing replies to a connection from any thread.
//!
//! A request answered on the blocking pool writes its reply itself, on
//! its own descriptor (a `dup` of the connection's socket), instead of
//! handing the reply back to the async runtime: on the virtual machines
//! sandboxes run on, every thread wake-up costs tens of microseconds
//! (a Unix-socket ping-pong between two threads takes ~47 µs on the
//! benchmark machine), so one hand-off less is a large share of a small
//! request's latency.
//!
//! The socket stays non-blocking (the runtime reads it): a writer that
//! finds the client's buffer full waits for room with `poll(2)` — on the
//! blocking pool directly, and from the runtime's threads by moving the
//! rest of the write to the blocking pool, so a client that stops reading
//! never stalls the runtime.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

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
}

/// The bytes of `parts` after the first `at` (a partly sent reply).
fn rest<'a>(parts: &[&'a [u8]], mut at: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    for p in parts {
        if at >= p.len() {
            at -= p.len();
        } else {
            out.push(&p[at..]);
            at = 0;
        }
    }
    out
}

/// How long a reply may wait for a client to make room before the
/// connection is given up.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// The writing side of one connection; replies are written whole, one at a
/// time.
pub struct ReplyWriter {
    fd: OwnedFd,
    /// Whose turn it is to write (a guard can move to the blocking pool
    /// with a half-written reply).
    turn: Arc<tokio::sync::Mutex<()>>,
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
            turn: Arc::default(),
        })
    }

    /// Sends as much of `parts` (one message, in order) as the socket
    /// takes now.
    fn send_some(&self, parts: &[&[u8]]) -> io::Result<Progress> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut at = 0;
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
            // MSG_NOSIGNAL turns a closed peer into EPIPE.
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = iov.len() as _;
                libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
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

    fn wait_writable(&self) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd that lives on the stack.
        let n = unsafe { libc::poll(&mut pfd, 1, STALL_LIMIT.as_millis() as i32) };
        match n {
            0 => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading replies",
            )),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            _ => Ok(()),
        }
    }

    /// Writes what is left of a reply after `at` bytes went out, waiting
    /// for room.
    fn finish(&self, parts: &[&[u8]], mut at: usize) -> io::Result<()> {
        loop {
            self.wait_writable()?;
            match self.send_some(&rest(parts, at))? {
                Progress::Done => return Ok(()),
                Progress::Full { written } => at += written,
            }
        }
    }

    /// Writes a reply (its parts in order) whole, waiting for room as long
    /// as needed (on threads that may block: the blocking pool).
    pub fn send_blocking(&self, reply: &Encoded) -> io::Result<()> {
        let _turn = self.turn.blocking_lock();
        let parts = reply.parts();
        match self.send_some(&parts)? {
            Progress::Done => Ok(()),
            Progress::Full { written } => self.finish(&parts, written),
        }
    }

    /// Writes a reply from an async task: at once when the socket has
    /// room; a reply that does not fit is finished on the blocking pool.
    pub async fn send(self: &Arc<Self>, reply: Encoded) -> io::Result<()> {
        let turn = self.turn.clone().lock_owned().await;
        match self.send_some(&reply.parts())? {
            Progress::Done => Ok(()),
            Progress::Full { written } => {
                let me = self.clone();
                tokio::task::spawn_blocking(move || {
                    let _turn = turn;
                    me.finish(&reply.parts(), written)
                })
                .await
                .map_err(io::Error::other)?
            }
        }
    }
}
