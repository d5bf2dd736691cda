//! A description of the machine a benchmark ran on, for RESULTS.md.

use std::path::Path;
use std::process::Command;

fn sh(cmd: &str) -> String {
    Command::new("bash")
        .args(["-c", cmd])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Markdown lines describing this machine, the disk under `work` and the
/// tool versions.
pub fn describe(work: &Path) -> String {
    let work = work.display();
    [
        format!("- Date (UTC): {}", sh("date -u '+%Y-%m-%d %H:%M'")),
        format!(
            "- CPU: {} × {}",
            sh("nproc"),
            sh("lscpu | sed -n 's/^Model name: *//p'")
        ),
        format!(
            "- Memory: {}",
            sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'")
        ),
        format!(
            "- Kernel: {}; Debian {}",
            sh("uname -r"),
            sh("cat /etc/debian_version")
        ),
        format!(
            "- Disk under the work directory: {}",
            sh(&format!("df -hT {work} | awk 'NR==2 {{print $1, $2, $3}}'"))
        ),
        format!(
            "- Tools: {}; {}; casync {}; {}",
            sh("zstd --version | head -1"),
            sh("b3sum --version"),
            sh("casync --version | head -1 | awk '{print $2}'"),
            sh("rustc --version")
        ),
    ]
    .join("\n")
}
