//! Adaptive busy-polling of a connection for its next bytes.
//!
//! A client that sends one request at a time (the kernel's 9p client for
//! one process, a `dd`, a `tar`) leaves the server idle between a reply
//! and the next request for a few tens of microseconds. Sleeping in that
//! gap costs a wake-up per request: on a virtual machine an idle vCPU
//! halts, and waking it is an exit to the host (measured on a 2-vCPU VM:
//! a 64 KiB write round trip takes 44 µs with client and server on one
//! CPU, 84 µs on two). So a connection that has just seen
//! its client come back quickly polls the socket for a short while before
//! it sleeps, as QEMU's iothreads poll their event sources (`poll-max-ns`)
//! and Linux's `haltpoll` idles a vCPU.
//!
//! The window adapts per connection: it grows (doubling, up to the
//! server's [`PollLimits::max_wait`]) while the client comes back within
//! that maximum, and halves to nothing once it stays away longer — a
//! quiet connection does not poll at all. At most
//! [`PollLimits::max_pollers`] connections of a server poll at once, so
//! polling never takes every runtime thread, and a poller yields its CPU
//! between tries so that a client sharing that CPU runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How much a server polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollLimits {
    /// Longest a connection polls for its next bytes before sleeping;
    /// zero turns polling off.
    pub max_wait: Duration,
    /// Most connections polling at once.
    pub max_pollers: usize,
}

impl Default for PollLimits {
    fn default() -> PollLimits {
        PollLimits {
            max_wait: Duration::from_micros(50),
            max_pollers: 1,
        }
    }
}

/// The smallest window a connection polls for once it polls at all.
const START: Duration = Duration::from_micros(4);

/// One connection's polling window.
#[derive(Debug)]
pub struct PollWindow {
    window: Duration,
    max: Duration,
}

impl PollWindow {
    /// A window that starts closed and may grow to `max`.
    pub fn new(max: Duration) -> PollWindow {
        PollWindow {
            window: Duration::ZERO,
            max,
        }
    }

    /// How long to poll before sleeping now.
    pub fn current(&self) -> Duration {
        self.window
    }

    /// Adapts to a wait that lasted `waited` until bytes came.
    pub fn record(&mut self, waited: Duration) {
        if waited <= self.window {
            // Caught while polling: the window is right.
        } else if waited <= self.max {
            // A longer window would have caught it.
            self.window = (self.window * 2).max(START).min(self.max);
        } else {
            self.window /= 2;
            if self.window < START {
                self.window = Duration::ZERO;
            }
        }
    }
}

/// The server-wide count of connections polling, and of connections
/// awake (working on requests or polling, not asleep waiting for their
/// client).
#[derive(Debug, Default)]
pub struct Pollers {
    busy: AtomicUsize,
    awake: AtomicUsize,
}

/// A connection counted awake; ends when dropped.
pub struct Awake<'a> {
    pollers: &'a Pollers,
}

impl Drop for Awake<'_> {
    fn drop(&mut self) {
        self.pollers.awake.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An awake connection gone to sleep until its client sends; awake again
/// when dropped.
pub struct Asleep<'a> {
    pollers: &'a Pollers,
}

impl Drop for Asleep<'_> {
    fn drop(&mut self) {
        self.pollers.awake.fetch_add(1, Ordering::AcqRel);
    }
}

/// A connection's turn to poll; ends when dropped.
pub struct PollTurn<'a> {
    pollers: &'a Pollers,
}

impl Pollers {
    /// Counts the calling connection awake while the guard lives.
    pub fn awake(&self) -> Awake<'_> {
        self.awake.fetch_add(1, Ordering::AcqRel);
        Awake { pollers: self }
    }

    /// Counts the calling (awake) connection asleep while the guard lives.
    pub fn asleep(&self) -> Asleep<'_> {
        self.awake.fetch_sub(1, Ordering::AcqRel);
        Asleep { pollers: self }
    }

    /// How many connections are awake.
    pub fn awake_now(&self) -> usize {
        self.awake.load(Ordering::Acquire)
    }

    /// A turn to poll, unless `max` connections poll already.
    pub fn try_turn(&self, max: usize) -> Option<PollTurn<'_>> {
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
                (busy < max).then_some(busy + 1)
            })
            .ok()
            .map(|_| PollTurn { pollers: self })
    }
}

impl Drop for PollTurn<'_> {
    fn drop(&mut self) {
        self.pollers.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Calls `attempt` until it gives something or `until` passes, yielding
/// the CPU between tries; `Ok(None)` when time ran out.
pub fn poll_until<T>(
    until: Instant,
    mut attempt: impl FnMut() -> std::io::Result<Option<T>>,
) -> std::io::Result<Option<T>> {
    loop {
        if let Some(got) = attempt()? {
            return Ok(Some(got));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_window_opens_for_a_quick_client_and_closes_for_a_slow_one() {
        let mut w = PollWindow::new(50 * US);
        assert_eq!(w.current(), Duration::ZERO, "starts closed");
        w.record(20 * US);
        assert_eq!(w.current(), START);
        for _ in 0..10 {
            w.record(20 * US);
        }
        assert_eq!(w.current(), 32 * US, "grows until it catches the client");
        for _ in 0..10 {
            w.record(45 * US);
        }
        assert_eq!(w.current(), 50 * US, "grows to the maximum, no further");
        w.record(30 * US);
        assert_eq!(w.current(), 50 * US, "a wait caught while polling keeps it");
        w.record(10_000 * US);
        assert_eq!(w.current(), 25 * US, "a long absence halves it");
        for _ in 0..4 {
            w.record(10_000 * US);
        }
        assert_eq!(
            w.current(),
            Duration::ZERO,
            "a quiet client is not polled for"
        );
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        for waited in [US, 10 * US, Duration::ZERO] {
            w.record(waited);
            assert_eq!(w.current(), Duration::ZERO);
        }
    }

    #[test]
    fn turns_are_limited_and_given_back() {
        let pollers = Pollers::default();
        let first = pollers.try_turn(1).expect("a first turn");
        assert!(pollers.try_turn(1).is_none(), "one poller at a time");
        drop(first);
        assert!(pollers.try_turn(1).is_some(), "the turn came back");
        assert!(pollers.try_turn(0).is_none(), "zero pollers: none");
    }

    #[test]
    fn polling_stops_at_its_deadline_or_at_what_it_got() {
        let mut tries = 0;
        let got = poll_until(Instant::now() + 1000 * US, || {
            tries += 1;
            Ok((tries == 3).then_some(7))
        });
        assert_eq!(got.unwrap(), Some(7));
        let started = Instant::now();
        let none: Option<()> = poll_until(started + 200 * US, || Ok(None)).unwrap();
        assert!(none.is_none());
        assert!(started.elapsed() >= 200 * US);
        let failed = poll_until(Instant::now() + US, || -> std::io::Result<Option<()>> {
            Err(std::io::ErrorKind::ConnectionReset.into())
        });
        assert!(failed.is_err(), "an error ends polling at once");
    }
}
