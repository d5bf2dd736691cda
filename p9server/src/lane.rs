//! Requests worked on off the runtime's threads: on the blocking pool, and
//! in a pipelining session's lane.
//!
//! A session whose client pipelines (its next requests are already read,
//! or earlier ones are still being worked on) has all its requests worked
//! on here, at [`Limits::queued_nice`](crate::server::Limits) steps lower
//! priority (see [`crate::priority`]), while a client that sends one
//! request at a time is answered on the runtime's own threads at the
//! server's priority. The runtime's threads themselves are never lowered:
//! each holds other sessions' tasks in its queue, and a thread the kernel
//! runs less keeps them all waiting (measured: beside a client flooding
//! `Tflush`, one round in five had an interactive client's p99 above
//! 1 ms, against none with the flood's work at full priority).
//!
//! The lane keeps the order the client sent its requests in, as answering
//! them inline did: a quick request (a walk, a clunk, an attribute) is
//! answered by the lane's thread before the next one is looked at, and a
//! slow one (it may wait on the disk) is handed to the pool from there, so
//! it starts after every request before it and runs beside the ones after
//! it. One lane thread at a time per session, for as long as it has work.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::priority::Lowered;
use crate::proto::{Reply, Request};
use crate::reply::{Encoded, ReplyWriter};
use crate::session::Session;

/// A request being worked on.
#[derive(Default)]
pub(crate) struct InFlight {
    /// Set by `Tflush`: a request that has not started yet is dropped.
    pub(crate) cancelled: AtomicBool,
    pub(crate) done: Notify,
    pub(crate) finished: AtomicBool,
    /// Its reply has been handed to the writer (or it was flushed): the
    /// client may use the tag again from now on, before the entry is gone.
    pub(crate) replied: AtomicBool,
}

/// One request taken off the runtime, holding one of its session's places.
pub(crate) struct Job {
    pub(crate) tag: u16,
    pub(crate) req: Request,
    pub(crate) entry: Arc<InFlight>,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// What a session's jobs need, shared with the threads that work on them.
pub(crate) struct Work {
    pub(crate) session: Arc<Session>,
    pub(crate) writer: Arc<ReplyWriter>,
    pub(crate) inflight: Arc<Mutex<HashMap<u16, Arc<InFlight>>>>,
    pub(crate) encode: fn(u16, &Reply) -> Encoded,
    lane: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    jobs: VecDeque<Job>,
    /// A thread is working through `jobs`.
    draining: bool,
}

impl Work {
    pub(crate) fn new(
        session: Arc<Session>,
        writer: Arc<ReplyWriter>,
        inflight: Arc<Mutex<HashMap<u16, Arc<InFlight>>>>,
        encode: fn(u16, &Reply) -> Encoded,
    ) -> Work {
        Work {
            session,
            writer,
            inflight,
            encode,
            lane: Mutex::default(),
        }
    }

    /// Answers `job` here (unless it was flushed first) and lets go of it.
    fn answer(&self, job: Job) {
        if !job.entry.cancelled.load(Ordering::SeqCst) {
            let reply = match job.req {
                // A flush with nothing to wait for, queued behind the
                // requests before it.
                Request::Flush { .. } => Reply::Flush {},
                req => self.session.handle(req),
            };
            // The writer writes the reply itself (see `reply`). Once it
            // may be out, the client may send a request with this tag
            // again, which then replaces this entry.
            job.entry.replied.store(true, Ordering::SeqCst);
            let _ = self.writer.send((self.encode)(job.tag, &reply));
        }
        let mut inflight = self.inflight.lock();
        if inflight
            .get(&job.tag)
            .is_some_and(|entry| Arc::ptr_eq(entry, &job.entry))
        {
            inflight.remove(&job.tag);
        }
        drop(inflight);
        job.entry.finished.store(true, Ordering::SeqCst);
        job.entry.done.notify_waiters();
        drop(job.permit);
    }

    /// Works on `job` on the blocking pool, `nice` steps lower.
    pub(crate) fn spawn(self: &Arc<Self>, job: Job, nice: i32) {
        let work = self.clone();
        tokio::task::spawn_blocking(move || {
            let _lowered = Lowered::enter(nice);
            work.answer(job);
        });
    }

    /// Whether the lane has nothing queued or being worked on.
    pub(crate) fn lane_idle(&self) -> bool {
        !self.lane.lock().draining
    }

    /// Queues `job` on the session's lane, starting its thread if none
    /// works on it.
    pub(crate) fn push(self: &Arc<Self>, job: Job, nice: i32) {
        let start = {
            let mut lane = self.lane.lock();
            lane.jobs.push_back(job);
            !std::mem::replace(&mut lane.draining, true)
        };
        if start {
            let work = self.clone();
            tokio::task::spawn_blocking(move || work.drain(nice));
        }
    }

    /// Works through the lane in order until it is empty.
    fn drain(self: Arc<Self>, nice: i32) {
        let _lowered = Lowered::enter(nice);
        loop {
            let job = {
                let mut lane = self.lane.lock();
                match lane.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        lane.draining = false;
                        return;
                    }
                }
            };
            match Session::is_slow(&job.req) {
                true => self.spawn(job, nice),
                false => self.answer(job),
            }
        }
    }
}
