//! Serving clients that keep requests queued at a lower CPU priority.
//!
//! A client that pipelines (many requests sent before the replies come
//! back) keeps the server's threads busy for as long as it likes; an
//! interactive client (one request, wait, the next) needs a thread for a
//! few microseconds at a time and suffers from every one that is busy. On
//! a machine whose cores are all in use, fair turn-taking inside the
//! server cannot help: the kernel's scheduler decides who runs. So the
//! work of a session that has requests queued runs with a higher nice
//! value, and the kernel lets the interactive client's work go first
//! whenever both want a core — and changes nothing when there is a core to
//! spare (nice only weighs threads against each other). Only threads that
//! work for that session alone are lowered (the blocking pool's, a
//! session's lane: see `lane`), never the runtime's, whose queues hold
//! other sessions' tasks. The thread that did it returns to its own
//! priority as soon as that work is done, before it can run anything
//! else.
//!
//! Returning to a lower nice value needs `CAP_SYS_NICE` (or a
//! `RLIMIT_NICE` that allows it): the first use probes that on a thread of
//! its own, and without it the server never lowers a thread's priority at
//! all (a thread it could not bring back would serve everyone slowly).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

thread_local! {
    /// This thread's nice value as last set or read here (`None`: not read).
    static NICE: Cell<Option<i32>> = const { Cell::new(None) };
}

/// Set when bringing a thread back failed after all: never lower again.
static BROKEN: AtomicBool = AtomicBool::new(false);

/// Whether this process may raise a thread's nice value and bring it back.
fn available() -> bool {
    static PROBED: OnceLock<bool> = OnceLock::new();
    let probed = *PROBED.get_or_init(|| {
        std::thread::Builder::new()
            .name("9p-nice-probe".into())
            .spawn(|| {
                let own = get_nice();
                set_nice(own + 1) && set_nice(own)
            })
            .ok()
            .and_then(|t| t.join().ok())
            .unwrap_or(false)
    });
    probed && !BROKEN.load(Ordering::Relaxed)
}

fn get_nice() -> i32 {
    // SAFETY: getpriority reads the calling thread's nice value (a thread
    // id with PRIO_PROCESS names the thread); it touches no memory of
    // ours. -1 is also a valid value, so errno is cleared first.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
}

fn set_nice(value: i32) -> bool {
    // SAFETY: setpriority changes the calling thread's nice value only;
    // it touches no memory of ours.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, value) == 0 }
}

/// While alive, the calling thread runs `by` nice steps lower in priority
/// than it did; dropped, it returns. Must be dropped on the thread that
/// made it, before that thread runs anything else (not held across an
/// `.await`).
pub struct Lowered {
    restore: Option<i32>,
}

impl Lowered {
    /// Lowers the calling thread's priority by `by` (0: nothing happens,
    /// nor where the process could not bring it back).
    pub fn enter(by: i32) -> Lowered {
        if by <= 0 || !available() {
            return Lowered { restore: None };
        }
        let own = NICE.with(|n| match n.get() {
            Some(v) => v,
            None => {
                let v = get_nice();
                n.set(Some(v));
                v
            }
        });
        let lowered = (own + by).min(19);
        if lowered == own || !set_nice(lowered) {
            return Lowered { restore: None };
        }
        NICE.with(|n| n.set(Some(lowered)));
        Lowered { restore: Some(own) }
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        let Some(own) = self.restore else { return };
        if set_nice(own) {
            NICE.with(|n| n.set(Some(own)));
        } else {
            // Should not happen after the probe; never lower again.
            NICE.with(|n| n.set(None));
            tracing::warn!("9p: could not restore a thread's priority; no longer lowering");
            BROKEN.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_returns_to_its_priority() {
        std::thread::spawn(|| {
            let own = get_nice();
            {
                let _low = Lowered::enter(5);
                if available() {
                    assert_eq!(get_nice(), (own + 5).min(19));
                } else {
                    assert_eq!(get_nice(), own, "lowered without a way back");
                }
            }
            assert_eq!(get_nice(), own);
            let _none = Lowered::enter(0);
            assert_eq!(get_nice(), own);
        })
        .join()
        .unwrap();
    }
}
