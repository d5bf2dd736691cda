//! Handing a file descriptor to the daemon over its Unix socket
//! (`SCM_RIGHTS`): how a runtime gives the daemon its end of a socketpair
//! for `serve9p --listen fd:N`. The descriptor travels with one byte; the
//! receiver gets its own copy (close-on-exec).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

const FD_SIZE: u32 = std::mem::size_of::<RawFd>() as u32;

/// A control buffer with room for one descriptor.
fn control_buffer() -> Vec<u8> {
    // SAFETY: CMSG_SPACE is arithmetic on a constant.
    vec![0u8; unsafe { libc::CMSG_SPACE(FD_SIZE) } as usize]
}

/// A message of the one byte `iov` points at, with `control` for its
/// descriptor. The pointers it holds are valid while `iov` and `control`
/// are.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: a zeroed msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.len() as _;
    msg
}

/// Sends `fd` over `sock`.
pub fn send_fd(sock: &UnixStream, fd: RawFd) -> io::Result<()> {
    let byte = [0u8; 1];
    let mut control = control_buffer();
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let msg = message(&mut iov, &mut control);
    // SAFETY: `msg` points into locals that outlive the sendmsg call, and
    // the control buffer is CMSG_SPACE(one fd) long, so the first header
    // and its data fit in it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FD_SIZE) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        if libc::sendmsg(sock.as_raw_fd(), &msg, 0) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`].
pub fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut control = control_buffer();
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut msg = message(&mut iov, &mut control);
    // SAFETY: as in send_fd; the kernel writes at most msg_controllen
    // bytes of control data, and a descriptor read out of an SCM_RIGHTS
    // header is a new one this process owns.
    unsafe {
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n != 1
            || cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the client sent no file descriptor",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
        Ok(OwnedFd::from_raw_fd(fd))
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
