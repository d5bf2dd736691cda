//! Handing a file descriptor to the daemon over its Unix socket
//! (`SCM_RIGHTS`): how a runtime gives the daemon its end of a socketpair
//! for `serve9p --listen fd:N`. The descriptor travels with one byte; the
//! receiver gets its own copy (close-on-exec). The system calls are
//! `memsnap::sockets`' (the page server's handshake uses the same ones).

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use memsnap::sockets;

/// Sends `fd` over `sock`.
pub fn send_fd(sock: &UnixStream, fd: RawFd) -> io::Result<()> {
    sockets::send_with_fd(sock, &[0u8], fd)
}

/// Receives one descriptor sent by [`send_fd`]; any extra descriptors sent
/// with it are closed.
pub fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let (n, fds) = sockets::recv_with_fds(sock, &mut byte)?;
    match fds.into_iter().next() {
        Some(fd) if n == 1 => Ok(fd),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the client sent no file descriptor",
        )),
    }
}

/// Whether `fd` is a stream socket (what 9P runs over).
pub fn is_stream_socket(fd: RawFd) -> bool {
    let mut typ: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a local int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut typ as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    rc == 0 && typ == libc::SOCK_STREAM
}
