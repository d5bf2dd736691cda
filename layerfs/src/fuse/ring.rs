//! FUSE over io_uring (Linux 6.14+, `CONFIG_FUSE_IO_URING`, the fuse
//! module's `enable_uring` parameter): requests reach this server through
//! io_uring instead of `read`/`write` on `/dev/fuse`.
//!
//! The kernel keeps one request queue per CPU and puts a request on the
//! queue of the CPU its caller runs on. Here each queue is served by
//! threads pinned to that CPU, each owning one ring entry (a header and a
//! payload buffer registered with `FUSE_IO_URING_CMD_REGISTER`): a caller
//! blocked on a request hands its CPU straight to the thread that answers
//! it, instead of waking a thread on another CPU and being woken back from
//! there, which on a virtual machine whose idle CPUs halt is most of a
//! round trip's cost. A reply is committed and the next request fetched in
//! one command (`FUSE_IO_URING_CMD_COMMIT_AND_FETCH`).
//!
//! The ring is ready, and the kernel sends requests through it, once every
//! queue has an entry; until then (and if registering fails) requests keep
//! coming through `/dev/fuse` to fuser's threads, which also receive what
//! never goes through the ring (FORGET, INTERRUPT) and send notifications.
//! A thread ends when the kernel completes its command with an error: the
//! connection was aborted or the mount is gone.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::wire::{self, InHeader, IN_HEADER, OUT_HEADER};
use super::FuseFs;
use crate::cowfs::Errno;

/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: the common header (in or out), the
/// operation's argument, and `struct fuse_uring_ent_in_out`.
const HEADER_LEN: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
/// Payload buffer of an entry: the kernel's largest request or reply
/// (`max_write` and `max_pages` are held to this at INIT).
pub(super) const PAYLOAD_LEN: usize = 1 << 20;

/// Whether the kernel serves FUSE over io_uring (the fuse module's
/// `enable_uring` parameter, off by default; root can turn it on).
pub(super) fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .map(|v| v.trim() == "Y")
        .unwrap_or(false)
}

/// Most ring threads one process runs. A mount over io_uring takes one per
/// CPU, so a node with many mounts on many CPUs would otherwise run
/// mounts × CPUs threads; mounts past the budget take `/dev/fuse`.
const MAX_THREADS: usize = 256;

/// Ring threads running or reserved in this process.
static LIVE_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Ring threads reserved for one mount, given back when dropped (those not
/// handed to a running thread).
pub(super) struct Reservation(usize);

impl Drop for Reservation {
    fn drop(&mut self) {
        LIVE_THREADS.fetch_sub(self.0, Ordering::SeqCst);
    }
}

/// Reserves the threads of one more mount over io_uring, if the budget
/// has room.
pub(super) fn reserve() -> Option<Reservation> {
    let wanted = queue_count();
    LIVE_THREADS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |live| {
            (live + wanted <= MAX_THREADS).then_some(live + wanted)
        })
        .ok()
        .map(|_| Reservation(wanted))
}

/// One ring thread's share of the budget, given back when it ends.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        LIVE_THREADS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The kernel's queues: one per possible CPU.
fn queue_count() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
                .max()
        })
        .map(|max| max + 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Starts a thread on every queue of the connection behind `dev` (a
/// `/dev/fuse` whose INIT asked for `FUSE_OVER_IO_URING`). Fails if any
/// entry cannot be registered; entries registered before that stay idle
/// until the connection ends, and requests keep going to `/dev/fuse`.
///
/// One entry per queue: the requests a CPU sends are answered in the
/// order sent. With two, a `close` and the `unlink` after it could be
/// answered in the other order (RELEASE is sent in the background), and
/// the file's space would still count against the quota when `unlink`
/// returned, as it never does on a local filesystem.
pub(super) fn start(
    fs: &FuseFs,
    dev: &Arc<File>,
    answered: &Arc<AtomicU64>,
    mut reserved: Reservation,
) -> io::Result<Vec<JoinHandle<()>>> {
    let queues = reserved.0;
    // A thread takes its CPU affinity and scheduling class from the thread
    // that starts it. Ring threads are pinned and idle-class, so the
    // process's shared pools must not be started lazily by one of them (a
    // read-ahead would start rayon's global pool pinned to one CPU at idle
    // priority, and verify chunks on that CPU only): start them here, from
    // the mounting thread.
    // (If the pool exists already, it was started the same way or by the
    // program before any mount.)
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("rayon-{i}"))
        .build_global();
    crate::cowfs::start_shared_threads();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for qid in 0..queues {
        let (fs, dev, ready) = (fs.clone(), dev.clone(), ready_tx.clone());
        let answered = answered.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("fuse-ring-{qid}"))
                .spawn(move || {
                    let _slot = Slot;
                    serve(&fs, &dev, qid, ready, &answered)
                })?,
        );
        reserved.0 -= 1;
    }
    drop(ready_tx);
    let mut failed = None;
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some(io::Error::other("a ring thread ended before registering")),
        }
    }
    match failed {
        None => Ok(threads),
        Some(e) => Err(e),
    }
}

/// `struct fuse_uring_cmd_req` in the command area of an entry.
fn cmd_req(qid: usize, commit_id: u64) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
    cmd[16..18].copy_from_slice(&(qid as u16).to_le_bytes());
    cmd
}

/// The command registering `entry` on queue `qid`: its two iovecs, header
/// and payload.
fn register(fd: types::Fd, qid: usize, entry: &Entry) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(fd, CMD_REGISTER)
        .cmd(cmd_req(qid, 0))
        .addr(Some(entry.iov.as_ptr() as u64))
        .build();
    with_len(sqe, 2)
}

/// Sets the `len` field of a submission entry, which the io-uring crate
/// does not expose for `UringCmd80`; REGISTER takes its iovec count there.
fn with_len(mut sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]` and begins with the kernel's
    // `struct io_uring_sqe`, whose `len` is a u32 at byte offset 24
    // (include/uapi/linux/io_uring.h); the write stays inside the entry.
    unsafe {
        let base = (&mut sqe as *mut squeue::Entry128).cast::<u8>();
        base.add(24).cast::<u32>().write_unaligned(len);
    }
    sqe
}

/// Pins the calling thread to `cpu` (best effort: a thread left unpinned
/// still serves its queue, only from wherever it runs).
fn pin_to(cpu: usize) {
    // SAFETY: `set` is a plain bitmask owned by this frame; CPU_ZERO and
    // CPU_SET write inside it (CPU_SET ignores CPUs past its size), and
    // sched_setaffinity only reads `size_of_val(&set)` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            tracing::debug!(
                cpu,
                "pinning a FUSE ring thread failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Makes the calling thread idle-class (`SCHED_IDLE`; best effort).
///
/// Why: the kernel wakes a request's caller from the thread that commits
/// the reply, and places it on an idle CPU when the caller's own CPU is
/// busy — which it is, running that thread. On a machine whose idle CPUs
/// halt, that move costs more than the request. A CPU that runs only
/// idle-class threads counts as idle to the placement
/// (`select_idle_sibling`), so the caller stays where it was and runs as
/// soon as the ring thread sleeps. Measured (benches/RESULTS.md): warm
/// `ls -lR` 0.24 s against 0.44 s through `/dev/fuse` and 0.50 s with
/// normal-class ring threads. An idle-class thread still runs promptly
/// when it wakes with a request (the scheduler picks it once it is the
/// eligible one): with four CPU-bound processes on the two CPUs, an
/// `open`+`close` took 20 µs at the median and 52 µs at p99 (7 ms at
/// most), against 37 µs, 1.4–4 ms and 12 ms through `/dev/fuse`.
fn make_idle_class() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0
    // is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(
            "making a FUSE ring thread idle-class failed: {}",
            io::Error::last_os_error()
        );
    }
}

/// One entry's buffers. The kernel writes a request into them only while
/// the entry's command is pending (between submitting REGISTER or
/// COMMIT_AND_FETCH and its completion), so they may be freed once a
/// command has completed and none is pending.
struct Entry {
    header: Box<[u8]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
}

impl Entry {
    fn new() -> Entry {
        let mut header = vec![0u8; HEADER_LEN].into_boxed_slice();
        let mut payload = vec![0u8; PAYLOAD_LEN].into_boxed_slice();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ]);
        Entry {
            header,
            payload,
            iov,
        }
    }
}

fn serve(
    fs: &FuseFs,
    dev: &Arc<File>,
    qid: usize,
    ready: mpsc::Sender<io::Result<()>>,
    answered: &AtomicU64,
) {
    pin_to(qid);
    make_idle_class();
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = match IoUring::builder().build(4) {
        Ok(ring) => ring,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut entry = Entry::new();
    let fd = types::Fd(dev.as_raw_fd());
    if let Err(e) = push_and_submit(&mut ring, register(fd, qid, &entry)) {
        let _ = ready.send(Err(e));
        // Whether the kernel took the command is unknown: the buffers are
        // left to it.
        std::mem::forget(entry);
        return;
    }
    // A REGISTER the kernel refuses completes at once; so may one that
    // made the ring ready, with a request already in it.
    let mut completed = ring.completion().next().map(|c| c.result());
    match completed {
        Some(res) if res < 0 => {
            let _ = ready.send(Err(io::Error::from_raw_os_error(-res)));
            return;
        }
        _ => {
            let _ = ready.send(Ok(()));
        }
    }
    drop(ready);
    let mut out = Vec::with_capacity(4096);
    // Commands refused in a row.
    let mut refused = 0;
    loop {
        let result = match completed.take() {
            Some(res) => res,
            None => {
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(qid, "FUSE ring thread: waiting for a request failed: {e}");
                        std::mem::forget(entry);
                        return;
                    }
                }
                let Some(cqe) = ring.completion().next() else {
                    continue;
                };
                cqe.result()
            }
        };
        if result < 0 {
            // The command ended and nothing is pending.
            let err = -result;
            if matches!(
                err,
                libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV
            ) {
                // The connection is gone (ENOTCONN when the mount ends).
                return;
            }
            // The kernel refused a reply (that request failed). Without an
            // entry this CPU's requests would wait forever: register one
            // again, unless that keeps failing.
            refused += 1;
            tracing::warn!(
                qid,
                "FUSE ring: the kernel refused a command ({}); registering again",
                io::Error::from_raw_os_error(err)
            );
            if refused > 3 {
                tracing::error!(qid, "FUSE ring thread ends: registering keeps failing");
                return;
            }
            if let Err(e) = push_and_submit(&mut ring, register(fd, qid, &entry)) {
                tracing::error!(qid, "FUSE ring thread ends: registering again failed: {e}");
                std::mem::forget(entry);
                return;
            }
            continue;
        }
        refused = 0;
        let commit_id = u64::from_le_bytes(
            entry.header[ENT_IN_OUT + 8..ENT_IN_OUT + 16]
                .try_into()
                .unwrap_or_default(),
        );
        let payload_sz = u32::from_le_bytes(
            entry.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20]
                .try_into()
                .unwrap_or_default(),
        ) as usize;
        out.clear();
        // Where the reply's bytes are: READ data goes straight into the
        // payload buffer; other replies are built in `out`, then copied.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let h = InHeader::parse(&entry.header[..IN_HEADER])?;
            let arg = &entry.header[OP_IN..ENT_IN_OUT];
            if h.opcode == wire::op::READ {
                return wire::read_into(fs, &h, arg, &mut entry.payload).map(Some);
            }
            let payload = entry.payload.get(..payload_sz).ok_or(Errno(libc::EIO))?;
            wire::answer(fs, &h, arg, payload, &mut out).map(|()| None)
        }));
        let (error, in_payload) = match outcome {
            Ok(Ok(Some(n))) => (0, Some(n)),
            Ok(Ok(None)) if out.len() <= PAYLOAD_LEN => (0, None),
            Ok(Ok(None)) => (libc::EIO, None),
            Ok(Err(e)) => (e.0, None),
            Err(_) => {
                tracing::error!(qid, "a FUSE request panicked; answered EIO");
                (libc::EIO, None)
            }
        };
        answered.fetch_add(1, Ordering::Relaxed);
        let len = match (error, in_payload) {
            (0, Some(n)) => n,
            (0, None) => {
                entry.payload[..out.len()].copy_from_slice(&out);
                out.len()
            }
            _ => 0,
        };
        wire::out_header(
            &mut entry.header[..OUT_HEADER],
            OUT_HEADER + len,
            error,
            commit_id,
        );
        entry.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(len as u32).to_le_bytes());
        let commit = opcode::UringCmd80::new(fd, CMD_COMMIT_AND_FETCH)
            .cmd(cmd_req(qid, commit_id))
            .build();
        // SAFETY: as in `push_and_submit`; submitted by the next wait.
        if unsafe { ring.submission().push(&commit) }.is_err() {
            tracing::error!(qid, "FUSE ring thread: the submission queue is full");
            std::mem::forget(entry);
            return;
        }
    }
}

fn push_and_submit(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: squeue::Entry128,
) -> io::Result<()> {
    // SAFETY: the buffers the entry points to (the iovecs, and through
    // them the header and payload) belong to the serving thread's `Entry`,
    // which outlives every command it submits (see `Entry`).
    unsafe {
        ring.submission()
            .push(&sqe)
            .map_err(|_| io::Error::other("the submission queue is full"))?;
    }
    loop {
        match ring.submit() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
