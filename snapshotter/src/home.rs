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

/// Creates directory `dir` (and missing parents) if absent, each new name
/// made durable in its parent before this returns: what the daemon keeps
/// under the data directory must survive a power cut from the moment it
/// is acknowledged.
pub fn make_durable_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        make_durable_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", parent.display()))?;
    }
    Ok(())
}

/// Writes `value` as pretty JSON to `dir/name` so that a power cut leaves
/// either the old file or the whole new one: a temporary file, synced,
/// renamed over it, and the directory synced.
pub fn write_json_durably(
    dir: &std::path::Path,
    name: &str,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let record = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(value)?)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &record).with_context(|| format!("renaming {}", tmp.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
