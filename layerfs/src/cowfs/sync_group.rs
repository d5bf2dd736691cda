//! Group commit of one file's syncs.
//!
//! Several writers of one file (a database's threads, a 9P client's
//! sessions) often call `fsync` at once. Each needs a sync that *starts
//! after* its own writes returned; a sync already running may have started
//! before them, so it does not do. [`SyncGroup`] numbers sync rounds: a
//! caller arriving while round `r` runs waits for round `r + 1`, and the
//! first of the waiters to find no round running starts it — one sync
//! then covers every caller that arrived during round `r`. A lone caller
//! syncs at once, as without the group.

use parking_lot::{Condvar, Mutex};

/// Sync rounds of one file (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SyncGroup {
    rounds: Mutex<Rounds>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct Rounds {
    /// The last round that finished (0: none yet).
    completed: u64,
    /// Whether round `completed + 1` is running.
    running: bool,
    /// The latest round that failed, with its error.
    failed: Option<(u64, super::Errno)>,
    /// Callers waiting for a later round.
    waiting: usize,
}

impl SyncGroup {
    /// Returns once a run of `sync` that started after this call began has
    /// finished: this caller's own run, or another caller's that covers
    /// it. An error of a covering run is this caller's error too.
    pub(crate) fn sync(
        &self,
        sync: impl FnOnce() -> super::FsResult<()>,
    ) -> super::FsResult<()> {
        let mut rounds = self.rounds.lock();
        // The first round that starts after now.
        let needed = rounds.completed + 1 + u64::from(rounds.running);
        let mut sync = Some(sync);
        loop {
            if rounds.completed >= needed {
                // Conservative: a failure of any round since `needed`
                // began is reported (the bytes may not be durable).
                return match rounds.failed {
                    Some((round, errno)) if round >= needed => Err(errno),
                    _ => Ok(()),
                };
            }
            if !rounds.running {
                // This caller runs round `completed + 1`, which began after
                // it arrived: it covers this caller and everyone waiting.
                let round = rounds.completed + 1;
                rounds.running = true;
                let run = sync.take().expect("a caller leads at most one round");
                let result = parking_lot::MutexGuard::unlocked(&mut rounds, run);
                rounds.running = false;
                rounds.completed = round;
                if let Err(errno) = result {
                    rounds.failed = Some((round, errno));
                }
                self.finished.notify_all();
                return result;
            }
            rounds.waiting += 1;
            self.finished.wait(&mut rounds);
            rounds.waiting -= 1;
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.rounds.lock().waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cowfs::Errno;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    #[test]
    fn a_lone_caller_runs_its_own_sync() {
        let group = SyncGroup::default();
        let runs = AtomicU64::new(0);
        for _ in 0..3 {
            group
                .sync(|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    /// Every caller returns only after a sync that started after it
    /// arrived, and callers arriving during one sync share the next.
    #[test]
    fn every_caller_is_covered_by_a_sync_that_began_after_it() {
        let group = Arc::new(SyncGroup::default());
        // Each sync records the "write counter" it saw when it began.
        let writes = Arc::new(AtomicU64::new(0));
        let synced_upto = Arc::new(AtomicU64::new(0));
        let runs = Arc::new(AtomicU64::new(0));
        let threads = 8;
        let per_thread = 50;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (group, writes, synced_upto, runs, barrier) = (
                    group.clone(),
                    writes.clone(),
                    synced_upto.clone(),
                    runs.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..per_thread {
                        let mine = writes.fetch_add(1, Ordering::SeqCst) + 1;
                        group
                            .sync(|| {
                                let seen = writes.load(Ordering::SeqCst);
                                std::thread::sleep(Duration::from_micros(300));
                                synced_upto.fetch_max(seen, Ordering::SeqCst);
                                runs.fetch_add(1, Ordering::SeqCst);
                                Ok(())
                            })
                            .unwrap();
                        assert!(
                            synced_upto.load(Ordering::SeqCst) >= mine,
                            "write {mine} returned from sync before a sync covered it"
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let total = (threads * per_thread) as u64;
        let runs = runs.load(Ordering::SeqCst);
        assert!(runs < total, "{runs} syncs for {total} callers: none shared");
    }

    #[test]
    fn a_failed_sync_fails_the_callers_it_covers() {
        let group = Arc::new(SyncGroup::default());
        let runs = Arc::new(AtomicU64::new(0));
        let leader = {
            let (group, runs) = (group.clone(), runs.clone());
            std::thread::spawn(move || {
                group.sync(|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // Round 1 runs until both followers wait for round 2.
                    while group.waiting() < 2 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                })
            })
        };
        while runs.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Both arrive while round 1 runs; whichever leads round 2 covers
        // the other, so both get round 2's result: an error if the first
        // follower's sync ran, success if the second's did.
        let follower = |fail: bool| {
            let (group, runs) = (group.clone(), runs.clone());
            std::thread::spawn(move || {
                group.sync(|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if fail {
                        Err(Errno::EIO)
                    } else {
                        Ok(())
                    }
                })
            })
        };
        let (a, b) = (follower(true), follower(false));
        assert!(leader.join().unwrap().is_ok());
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(a, b, "a covered caller got another result than its round's");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "round 2 ran once for both");
        // A later round succeeds again.
        assert!(group.sync(|| Ok(())).is_ok());
    }
}
