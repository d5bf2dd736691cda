//! Where a Strata data directory is: the one rule every command and daemon
//! follows.
//!
//! 1. `--home DIR` on the command line;
//! 2. otherwise the `STRATA_HOME` environment variable;
//! 3. otherwise `/var/lib/strata` when running as root, and
//!    `$XDG_DATA_HOME/strata` (default `~/.local/share/strata`) for other
//!    users.

use std::path::PathBuf;

/// The default data directory when neither `--home` nor `STRATA_HOME` is set.
pub fn default_home() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        return PathBuf::from("/var/lib/strata");
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(data).join("strata");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/strata"),
        None => PathBuf::from("/var/lib/strata"),
    }
}

/// Resolves the data directory from the `--home` value (which clap already
/// filled from `STRATA_HOME` when the flag was absent).
pub fn resolve(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(default_home)
}
