//! The OCI bundle of a sandbox: `config.json` beside nothing else (the root
//! filesystem is a Strata mount elsewhere, named by absolute path).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use crate::runtime::RuntimeKind;

/// A host directory bound into the sandbox.
#[derive(Clone, Debug)]
pub struct Bind {
    /// On the host (a Strata mount).
    pub source: PathBuf,
    /// Inside the sandbox (absolute).
    pub destination: String,
    pub readonly: bool,
}

/// What a sandbox's bundle says.
#[derive(Clone, Debug)]
pub struct BundleSpec {
    pub runtime: RuntimeKind,
    /// The root filesystem (a Strata FUSE mount).
    pub root: PathBuf,
    /// The first process.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub binds: Vec<Bind>,
    /// The cgroup (`/strata/ID`).
    pub cgroup: String,
    /// CPUs (quota over a 100 ms period).
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Share the host's network (else a namespace with no interfaces).
    pub network: bool,
}

/// The default `PATH` inside a sandbox.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most processes a sandbox may have.
const PIDS_LIMIT: u64 = 4096;

impl BundleSpec {
    /// The bundle's `config.json`.
    pub fn config(&self) -> Value {
        let mut mounts = vec![
            json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
            json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
            json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                    "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] }),
            json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }),
            json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"] }),
        ];
        for bind in &self.binds {
            let mut options = vec!["rbind", "nosuid", "nodev"];
            options.push(if bind.readonly { "ro" } else { "rw" });
            mounts.push(json!({
                "destination": bind.destination,
                "type": "bind",
                "source": bind.source,
                "options": options,
            }));
        }
        let mut namespaces = vec![
            json!({ "type": "pid" }),
            json!({ "type": "ipc" }),
            json!({ "type": "uts" }),
            json!({ "type": "mount" }),
        ];
        if !self.network {
            namespaces.push(json!({ "type": "network" }));
        }
        let mut resources = json!({ "pids": { "limit": PIDS_LIMIT } });
        if let Some(cpus) = self.cpus {
            let period = 100_000u64;
            resources["cpu"] = json!({
                "quota": (cpus * period as f64).round() as i64,
                "period": period,
            });
        }
        if let Some(bytes) = self.memory_bytes {
            resources["memory"] = json!({ "limit": bytes });
        }
        let mut env = self.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let mut linux = json!({
            "cgroupsPath": self.cgroup,
            "resources": resources,
            "namespaces": namespaces,
        });
        if self.runtime == RuntimeKind::Runc {
            // runc runs the sandbox's processes on the host kernel: hide
            // what a container should not reach.
            linux["maskedPaths"] = json!([
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi"
            ]);
            linux["readonlyPaths"] = json!([
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger"
            ]);
        }
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": self.args,
                "env": env,
                "cwd": self.cwd,
                "capabilities": capabilities(),
                "noNewPrivileges": true,
            },
            "root": { "path": self.root, "readonly": false },
            "hostname": self.hostname,
            "mounts": mounts,
            "linux": linux,
        })
    }

    /// Writes `config.json` into `bundle` (created if absent).
    pub fn write(&self, bundle: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(bundle)
            .with_context(|| format!("creating {}", bundle.display()))?;
        let path = bundle.join("config.json");
        let text = serde_json::to_vec_pretty(&self.config())?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Docker's default capability set: what a root user in a container keeps.
fn capabilities() -> Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    json!({
        "bounding": caps,
        "effective": caps,
        "permitted": caps,
    })
}
