//! Strata's node: the node daemon (`snapctl daemon`: the store's one
//! owner, its mounts, snapshots and 9P listeners), its versioned
//! JSON-lines API and client, and the commands of `snapctl`, as a library
//! that the `snapctl` binary and other daemons (the volume server) build
//! on.
//!
//! - [`api`]: the API's framing and messages (`snapshotter/API.md`);
//! - [`api_server`]: serving such an API (connections, lines, errors);
//! - [`client`]: a connection to a daemon;
//! - [`daemon`]: the daemon itself (mount table, snapshot lifecycle, RPC loop);
//! - [`snapshots`]: the snapshot catalog;
//! - [`serve9p`]: the daemon's 9P listeners;
//! - [`volume_api`] and [`volume_cmd`]: the volume server's API and
//!   `snapctl volume`, its client;
//! - [`home`]: where a node keeps its data and how it is found;
//! - [`exit`]: exit codes by kind of failure;
//! - [`output`]: printing for people and for programs;
//! - the `*_cmd` modules: `snapctl`'s commands.

pub mod api;
pub mod api_server;
pub mod blob_cmd;
pub mod client;
pub mod daemon;
pub mod exit;
pub mod fdpass;
pub mod home;
pub mod image_cmd;
pub mod mem_cmd;
pub mod oci;
pub mod output;
pub mod ref_cmd;
pub mod remote_cmd;
pub mod runtime;
pub mod sandbox_cmd;
pub mod serve9p;
pub mod serve9p_cmd;
pub mod snapshot_cmd;
pub mod snapshots;
pub mod store_cmd;
pub mod volume_api;
pub mod volume_cmd;

#[doc(hidden)]
pub mod fuzzing;
