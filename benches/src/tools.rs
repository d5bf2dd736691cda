//! Running the other tools and preparing the machine between runs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs a bash command line and returns how long it took. Fails if the
/// command fails.
pub fn timed(cmd: &str) -> Result<Duration> {
    let started = Instant::now();
    let output = Command::new("bash")
        .args(["-o", "pipefail", "-c", cmd])
        .output()
        .with_context(|| format!("running {cmd}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// Writes dirty pages and drops the page cache, so the next reads come from
/// the disk. Returns false when the kernel refused (not root).
pub fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Reads every file once so the input is in the page cache for every tool,
/// then flushes what earlier phases left dirty and lets the disk settle, so
/// no tool pays for another's write-back.
pub fn warm(dir: &Path) -> Result<()> {
    timed(&format!(
        "find {} -type f -print0 | xargs -0 -P2 -n 256 cat > /dev/null 2>&1 || true",
        shell_quote(dir)
    ))?;
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

/// Bytes of disk a path uses (allocated blocks).
pub fn disk_usage(path: &Path) -> Result<u64> {
    let output = Command::new("du")
        .args(["-sB1", "--"])
        .arg(path)
        .output()
        .context("running du")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du printed {text:?}"))
}

/// Removes a directory tree if it exists.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Quotes a path for bash.
pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Checks that a command exists.
pub fn require(tool: &str) -> Result<()> {
    if Command::new("bash")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        Ok(())
    } else {
        bail!("`{tool}` is not installed; run benches/run.sh, which installs it")
    }
}

/// A new store at `dir`, opened as the node daemon and `volume-server`
/// open theirs: with the daemon's default chunk cache (1/16 of memory,
/// 128 MiB–2 GiB), which is what a mounted sandbox reads through and
/// what a volume's sessions load into.
pub fn new_daemon_store(dir: &Path) -> Result<cas::Store> {
    drop(cas::Store::init(dir, cas::StoreConfig::default())?);
    Ok(cas::Store::open(
        dir,
        cas::OpenOptions {
            chunk_cache_bytes: snapshotter::daemon::default_chunk_cache(),
            ..cas::OpenOptions::default()
        },
    )?)
}
