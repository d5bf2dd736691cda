//! `p9server`: serves Strata mounts over 9P2000.L, the protocol the Linux
//! kernel's `9p` filesystem, QEMU's and gVisor's sandboxes speak.
//!
//! It is a second frontend over the same filesystem core as the FUSE one
//! ([`layerfs::cowfs::CowFs`]): one behaviour, two wire protocols.
//!
//! - [`wire`] and [`proto`]: the message codec, written here (see the
//!   README's "Why our own codec"): every message of the dialect declared
//!   once, decoded with every length checked, fuzzed (`fuzz/`).
//! - [`session`]: fids and what each request does to the core.
//! - [`server`]: listeners (Unix socket, TCP, an inherited socket), one
//!   async task per connection, concurrent requests answered out of order,
//!   `Tflush`, per-session limits.
//! - [`poll`]: adaptive busy-polling of a connection between a reply and
//!   the client's next request.
//! - [`priority`]: a pipelining client's work at a lower CPU priority than
//!   an interactive client's.

#[cfg(feature = "server")]
pub mod client;
mod lane;
#[cfg(feature = "server")]
pub mod poll;
#[cfg(feature = "server")]
pub mod priority;
pub mod proto;
#[cfg(feature = "server")]
pub mod reply;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod session;
pub mod wire;

#[cfg(feature = "server")]
pub use poll::{PollLimits, Pollers};
#[cfg(feature = "server")]
pub use server::{Limits, Listen, Listening, Server};
#[cfg(feature = "server")]
pub use session::{Resolver, ResolverFactory};
