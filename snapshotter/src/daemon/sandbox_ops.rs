//! Sandboxes: a thin driver over OCI runtimes. A sandbox is a mount of
//! its image or snapshot as the root (this daemon's), volume sessions (the
//! volume server's) and directory-snapshot mounts bound in, and an OCI
//! bundle the runtime runs. Its record, `HOME/sandboxes/ID/sandbox.json`,
//! is written durably at each change of state.
//!
//! A sandbox ends by `sandbox.terminate`, by its timeout, or by its
//! processes ending (a kill from outside included): the reaper notices
//! within half a second. Each way tears it down the same: the runtime's
//! container is removed, every volume session is unmounted and committed
//! (the volume server answers once the commit is durable), the mounts are
//! removed. A daemon that starts after one that stopped finds the
//! sandboxes it left running without a root (their FUSE mounts went with
//! it): it tears them down and lists them as `gone`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crate::api::{
    DirSnapshotBinding, MemGet, MemPut, SandboxCreate, SandboxDirMount, SandboxInfo,
    SandboxSnapshot, SandboxSnapshotResult, SandboxState, SandboxVolume, VolumeBinding,
};
use crate::oci::{Bind, BundleSpec};
use crate::runtime::{Runtime, RuntimeKind};
use crate::volume_api::{SessionInfo, VolumeOp};

use super::*;

/// The root's quota when `disk_bytes` is not given: 10 GiB.
pub const DEFAULT_DISK_BYTES: u64 = 10 << 30;

/// The first process when none is given: waits until it is killed.
const IDLE: [&str; 2] = ["sleep", "infinity"];

/// The file in a memory snapshot's checkpoint directory that records the
/// sandbox it was taken of (so that it can be resumed alike).
const SANDBOX_RECORD_FILE: &str = "strata-sandbox.json";

/// The label on a sandbox's memory snapshot naming its filesystem snapshot.
pub const FS_SNAPSHOT_LABEL: &str = "strata.fs-snapshot";

/// Most sandboxes started at once by a fork.
const FORK_PARALLELISM: usize = 8;

/// A sandbox the daemon knows.
pub(super) struct LiveSandbox {
    info: SandboxInfo,
    /// Readable once the container's first process (runsc: the sandbox)
    /// has exited.
    pidfd: Option<OwnedFd>,
    /// Held by whoever changes the sandbox (snapshot, terminate, reaper).
    busy: Arc<Mutex<()>>,
    deadline: Option<Instant>,
}

/// Opens a pidfd for `pid` (`None` if it is gone already).
fn pidfd_open(pid: i64) -> Option<OwnedFd> {
    if pid <= 0 || pid > i64::from(i32::MAX) {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; the descriptor is owned by nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor this function owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` has exited.
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & libc::POLLIN != 0
}

/// Makes the daemon the reaper of its orphaned descendants: the runtime's
/// background processes (runsc's sandbox and gofer, runc's container
/// init) outlive the runtime command that started them, and whoever
/// reaps them decides how soon the runtime sees them gone (`runsc delete`
/// waits for that; some init processes reap only every second or so).
pub(super) fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if ret != 0 {
        tracing::warn!(
            "cannot become a subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Reaps, for as long as the daemon runs, this process's exited children
/// that it did not start with a `Command` (which waits for its own):
/// runsc's re-executed processes (named `exe`) and the containers' first
/// processes in `known`.
///
/// Blocks in `waitid(P_ALL, WEXITED | WNOWAIT)` until some child has
/// exited (so an idle daemon spends nothing here, and an orphan is reaped
/// as soon as it exits), then looks at that child without reaping it
/// first. A `Command`'s child is left to its owner, who reaps it shortly;
/// until then `waitid` keeps naming it, so meanwhile every child is
/// looked at every 20 ms (an orphan exiting then is reaped by that scan).
pub(super) fn reap_orphans(known: &Mutex<std::collections::HashSet<i64>>) -> ! {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into `info`; WNOWAIT leaves the child
        // waitable, so its owner (or the code below) still reaps it.
        let ret = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if ret != 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                // No children now: look again later (one may be started).
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        // SAFETY: waitid succeeded with WEXITED, so `info` describes a child.
        let pid = i64::from(unsafe { info.si_pid() });
        if pid == 0 || !reap_if_orphan(pid, known) {
            // Someone else's to reap: give its owner time to.
            std::thread::sleep(Duration::from_millis(20));
            reap_exited_orphans(known);
        }
    }
}

/// Reaps every exited orphan among this process's children (see
/// [`reap_orphans`]).
fn reap_exited_orphans(known: &Mutex<std::collections::HashSet<i64>>) {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(children) = fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i64>().ok())
        {
            reap_if_orphan(pid, known);
        }
    }
}

/// Reaps child `pid` when it has exited and is runsc's `exe` or a known
/// container process; whether it did.
fn reap_if_orphan(pid: i64, known: &Mutex<std::collections::HashSet<i64>>) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state …`: comm may hold spaces and parentheses.
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
    let zombie = rest.trim_start().starts_with('Z');
    if !zombie || (comm != "exe" && !known.lock().contains(&pid)) {
        return false;
    }
    let mut status = 0;
    // SAFETY: waitpid on one pid of ours that has exited.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    known.lock().remove(&pid);
    true
}

/// Makes directory `path` (absolute, inside the sandbox) under `rootfs`,
/// one component at a time, refusing to follow a symbolic link: the
/// image's links point into the sandbox, but followed here, by the daemon
/// on the host, an absolute one would reach the host's own files.
fn make_mount_point(rootfs: &Path, path: &str) -> anyhow::Result<()> {
    let mut at = rootfs.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(invalid(format!(
                    "{path} crosses a symbolic link in the sandbox's image ({}); \
                     bind it at a path of real directories",
                    at.strip_prefix(rootfs).unwrap_or(&at).display()
                )))
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "{path}: /{} is a file in the sandbox's image, not a directory",
                    at.strip_prefix(rootfs).unwrap_or(&at).display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&at).with_context(|| format!("making {path} inside the sandbox"))?
            }
            Err(e) => {
                return Err(e).with_context(|| format!("looking at {path} inside the sandbox"))
            }
        }
    }
    Ok(())
}

/// Whether `id` has the shape of a sandbox id (12 hex digits), and so
/// names nothing but a directory under `HOME/sandboxes`.
fn is_sandbox_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn invalid(message: String) -> anyhow::Error {
    crate::exit::InvalidInput(message).into()
}

/// Checks a path inside the sandbox where something is bound.
fn check_inside_path(path: &str, what: &str) -> anyhow::Result<()> {
    if !path.starts_with('/')
        || path.trim_matches('/').is_empty()
        || path.split('/').any(|p| p == ".." || p == ".")
    {
        return Err(invalid(format!(
            "{what} must be an absolute path inside the sandbox other than /, not '{path}'"
        )));
    }
    Ok(())
}

impl Daemon {
    fn sandboxes_dir(&self) -> PathBuf {
        self.home.join("sandboxes")
    }

    /// Writes a sandbox's record durably.
    fn write_sandbox(&self, info: &SandboxInfo) -> anyhow::Result<()> {
        let dir = self.sandboxes_dir().join(&info.id);
        crate::home::write_json_durably(&dir, "sandbox.json", info)
    }

    fn runtime_of(&self, info: &SandboxInfo) -> Runtime {
        Runtime {
            kind: info.runtime,
            root: info.runtime_root.clone(),
            network: info.network,
        }
    }

    fn volume_client(
        &self,
        volume_home: &Option<PathBuf>,
    ) -> anyhow::Result<crate::client::Client> {
        let home = volume_home
            .clone()
            .unwrap_or_else(crate::volume_api::default_volume_home);
        crate::volume_cmd::connect(&home)
    }

    /// `sandbox.create`.
    pub(super) fn sandbox_create(&self, args: SandboxCreate) -> anyhow::Result<SandboxInfo> {
        let started = Instant::now();
        check_labels(&args.labels)?;
        // A memory snapshot taken of a sandbox resumes it: its record says
        // how it ran, its label which filesystem it ran on.
        let resume = match &args.snapshot {
            Some(id) => {
                let snapshot = self.catalog.get(id)?;
                if snapshot.memory.is_some() {
                    let fs_snapshot = snapshot.labels.get(FS_SNAPSHOT_LABEL).cloned().ok_or_else(|| {
                        invalid(format!(
                            "memory snapshot {id} was not taken of a sandbox (it has no {FS_SNAPSHOT_LABEL} label); \
                             sandboxes resume from `sandbox snapshot --memory`"
                        ))
                    })?;
                    Some((id.clone(), fs_snapshot))
                } else {
                    None
                }
            }
            None => None,
        };
        match (&args.image, &args.snapshot) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    "a sandbox starts from exactly one of an image and a snapshot".into(),
                ))
            }
            (Some(image), None) => {
                layerfs::image_tree(&self.store, image)?;
            }
            (None, Some(id)) if resume.is_none() => {
                let snapshot = self.catalog.get(id)?;
                if snapshot.kind != "filesystem" {
                    return Err(invalid(format!(
                        "snapshot {id} is a {} snapshot; a sandbox's root comes from an image or a \
                         filesystem snapshot (bind a directory snapshot with --dir-snapshot)",
                        snapshot.kind
                    )));
                }
            }
            _ => {}
        }
        let id = self.new_id();
        let dir = self.sandboxes_dir().join(&id);
        crate::home::make_durable_dir(&dir)?;
        let checkpoint = dir.join("checkpoint");
        let mut args = args;
        let mut root_snapshot = args.snapshot.clone();
        if let Some((memory, fs_snapshot)) = &resume {
            let saved = self
                .mem_get(MemGet {
                    id: memory.clone(),
                    target: checkpoint.clone(),
                    dir: true,
                })
                .with_context(|| format!("writing memory snapshot {memory} back"))
                .and_then(|_| {
                    let bytes = fs::read(checkpoint.join(SANDBOX_RECORD_FILE))?;
                    Ok(serde_json::from_slice::<SandboxInfo>(&bytes)?)
                })
                .with_context(|| format!("reading the sandbox record of memory snapshot {memory}"));
            let saved = match saved {
                Ok(saved) => saved,
                Err(e) => {
                    // Nothing was started: nothing of it stays.
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            };
            // It resumes as it ran: the same process, runtime, limits and
            // bindings (volumes at their newest heads).
            args.command = saved.command.clone();
            args.env = saved.env.clone();
            args.workdir = saved.workdir.clone();
            args.runtime = Some(saved.runtime.program().to_string());
            args.network = saved.network;
            args.cpus = args.cpus.or(saved.cpus);
            args.memory_bytes = args.memory_bytes.or(saved.memory_bytes);
            args.disk_bytes = args.disk_bytes.or(Some(saved.disk_bytes));
            if args.volumes.is_empty() {
                args.volumes = saved
                    .volumes
                    .iter()
                    .map(|v| VolumeBinding {
                        name: v.name.clone(),
                        path: v.path.clone(),
                    })
                    .collect();
            }
            if args.dir_snapshots.is_empty() {
                args.dir_snapshots = saved
                    .dir_snapshots
                    .iter()
                    .map(|d| DirSnapshotBinding {
                        snapshot: d.snapshot.clone(),
                        path: d.path.clone(),
                    })
                    .collect();
            }
            if args.volume_home.is_none() {
                args.volume_home = saved.volume_home.clone();
            }
            root_snapshot = Some(fs_snapshot.clone());
        }
        let result = self.sandbox_build(&id, &dir, args, root_snapshot, resume.is_some(), started);
        let _ = fs::remove_dir_all(&checkpoint);
        if result.is_err() {
            // Refused before anything was made, or torn down: no trace.
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    fn sandbox_build(
        &self,
        id: &str,
        dir: &Path,
        args: SandboxCreate,
        root_snapshot: Option<String>,
        resume: bool,
        started: Instant,
    ) -> anyhow::Result<SandboxInfo> {
        let kind = RuntimeKind::parse(args.runtime.as_deref().unwrap_or("runsc"))?;
        let runtime = Runtime::new(kind, &self.home, args.network)?;
        for binding in &args.volumes {
            check_inside_path(&binding.path, "a volume's path")?;
        }
        for binding in &args.dir_snapshots {
            check_inside_path(&binding.path, "a directory snapshot's path")?;
            let snapshot = self.catalog.get(&binding.snapshot)?;
            if snapshot.memory.is_some() {
                return Err(invalid(format!(
                    "snapshot {} is a memory snapshot; --dir-snapshot takes a directory or filesystem snapshot",
                    binding.snapshot
                )));
            }
        }
        if let Some(cpus) = args.cpus {
            if !(cpus > 0.0 && cpus <= 1024.0) {
                return Err(invalid(format!(
                    "--cpu must be above 0 and at most 1024, not {cpus}"
                )));
            }
        }
        if args.memory_bytes.is_some_and(|m| m < 16 << 20) {
            return Err(invalid("--memory must be at least 16 MiB".into()));
        }
        if let Some(t) = args.timeout_secs {
            if t == 0 || t > MAX_EXPIRE_SECS {
                return Err(invalid(format!(
                    "--timeout must be between 1 s and 100 years, not {t} s"
                )));
            }
        }
        let disk_bytes = args.disk_bytes.unwrap_or(DEFAULT_DISK_BYTES);
        let rootfs = dir.join("rootfs");
        let bundle = dir.join("bundle");
        let mut info = SandboxInfo {
            id: id.to_string(),
            state: SandboxState::Starting,
            runtime: kind,
            container: format!("strata-{id}"),
            runtime_root: runtime.root.clone(),
            network: args.network,
            source: match (&args.image, &args.snapshot) {
                (Some(image), _) => format!("image:{image}"),
                (None, Some(snapshot)) => format!("snapshot:{snapshot}"),
                (None, None) => String::new(),
            },
            image: args.image.clone().unwrap_or_default(),
            root_mount: String::new(),
            rootfs: rootfs.clone(),
            bundle: bundle.clone(),
            log: dir.join("log"),
            command: if args.command.is_empty() {
                IDLE.iter().map(|s| s.to_string()).collect()
            } else {
                args.command.clone()
            },
            env: args.env.clone(),
            workdir: args.workdir.clone(),
            volumes: Vec::new(),
            dir_snapshots: Vec::new(),
            volume_home: args.volume_home.clone(),
            cpus: args.cpus,
            memory_bytes: args.memory_bytes,
            disk_bytes,
            timeout_secs: args.timeout_secs,
            labels: args.labels.clone(),
            created: now_secs(),
            ended: None,
            end_reason: None,
            used_bytes: None,
            start_ms: 0.0,
        };
        self.write_sandbox(&info)?;
        tracing::debug!(
            sandbox = id,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "recorded"
        );
        // From here on, a failure tears down whatever was made.
        let made = (|| -> anyhow::Result<i64> {
            fs::create_dir_all(&rootfs)
                .with_context(|| format!("creating {}", rootfs.display()))?;
            let root = self.mount_create(MountCreate {
                image: args.image.clone().unwrap_or_default(),
                snapshot: root_snapshot.clone(),
                mountpoint: Some(rootfs.clone()),
                quota_bytes: disk_bytes,
                inode_quota: None,
                threads: None,
            })?;
            tracing::debug!(
                sandbox = id,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "root mounted"
            );
            info.root_mount = root.id.clone();
            if info.image.is_empty() {
                info.image = root.image.clone();
            }
            for (n, binding) in args.dir_snapshots.iter().enumerate() {
                let host = dir.join("dirs").join(n.to_string());
                fs::create_dir_all(&host)
                    .with_context(|| format!("creating {}", host.display()))?;
                let mount = self.mount_create(MountCreate {
                    image: String::new(),
                    snapshot: Some(binding.snapshot.clone()),
                    mountpoint: Some(host.clone()),
                    quota_bytes: disk_bytes,
                    inode_quota: None,
                    threads: None,
                })?;
                info.dir_snapshots.push(SandboxDirMount {
                    snapshot: binding.snapshot.clone(),
                    path: binding.path.clone(),
                    mount: mount.id,
                    host,
                });
            }
            if !args.volumes.is_empty() {
                let mut client = self.volume_client(&args.volume_home)?;
                for (n, binding) in args.volumes.iter().enumerate() {
                    let host = dir.join("volumes").join(n.to_string());
                    fs::create_dir_all(&host)
                        .with_context(|| format!("creating {}", host.display()))?;
                    let session: SessionInfo = client
                        .call(VolumeOp::Mount {
                            name: binding.name.clone(),
                            mountpoint: host.clone(),
                            commit: None,
                        })
                        .with_context(|| format!("mounting volume '{}'", binding.name))?;
                    info.volumes.push(SandboxVolume {
                        name: binding.name.clone(),
                        path: binding.path.clone(),
                        session: session.id,
                        host,
                    });
                }
            }
            // Mount points inside the root for what is bound in (made in
            // the sandbox's own upper layer).
            for path in info
                .volumes
                .iter()
                .map(|v| &v.path)
                .chain(info.dir_snapshots.iter().map(|d| &d.path))
            {
                make_mount_point(&rootfs, path)?;
            }
            let spec = BundleSpec {
                runtime: kind,
                root: rootfs.clone(),
                args: info.command.clone(),
                env: info.env.clone(),
                cwd: info.workdir.clone().unwrap_or_else(|| "/".into()),
                hostname: format!("sandbox-{id}"),
                binds: info
                    .volumes
                    .iter()
                    .map(|v| Bind {
                        source: v.host.clone(),
                        destination: v.path.clone(),
                        readonly: false,
                    })
                    .chain(info.dir_snapshots.iter().map(|d| Bind {
                        source: d.host.clone(),
                        destination: d.path.clone(),
                        readonly: false,
                    }))
                    .collect(),
                cgroup: format!("/strata/{id}"),
                cpus: info.cpus,
                memory_bytes: info.memory_bytes,
                network: info.network,
            };
            spec.write(&bundle)?;
            tracing::debug!(
                sandbox = id,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "bundle written"
            );
            if resume {
                runtime.restore(&bundle, &info.container, &info.log, &dir.join("checkpoint"))
            } else {
                runtime.start(&bundle, &info.container, &info.log)
            }
        })();
        tracing::debug!(
            sandbox = id,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "runtime started"
        );
        let pid = match made {
            Ok(pid) => pid,
            Err(e) => {
                // Nothing of it stays: a sandbox that never ran leaves no record.
                let _ = self.teardown(&mut info, SandboxState::Exited, "it failed to start");
                let _ = fs::remove_dir_all(dir);
                return Err(e);
            }
        };
        self.runtime_pids.lock().insert(pid);
        let pidfd = pidfd_open(pid);
        info.state = SandboxState::Running;
        info.start_ms = started.elapsed().as_secs_f64() * 1e3;
        self.write_sandbox(&info)?;
        let deadline = info
            .timeout_secs
            .map(|secs| Instant::now() + Duration::from_secs(secs));
        self.sandboxes.lock().insert(
            id.to_string(),
            LiveSandbox {
                info: info.clone(),
                pidfd,
                busy: Arc::new(Mutex::new(())),
                deadline,
            },
        );
        Ok(info)
    }

    /// Ends everything a sandbox holds: its container, its volume sessions
    /// (committed and durable before this returns), its mounts. Records
    /// the end in `info` (the caller writes it). Failures are kept in
    /// `end_reason` and returned: a teardown always runs to its end.
    fn teardown(&self, info: &mut SandboxInfo, state: SandboxState, reason: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.runtime_of(info).destroy(&info.container) {
            problems.push(format!("removing the container: {e:#}"));
        }
        if !info.volumes.is_empty() {
            match self.volume_client(&info.volume_home) {
                Ok(mut client) => {
                    for volume in &info.volumes {
                        let ended: anyhow::Result<serde_json::Value> =
                            client.call(VolumeOp::Umount {
                                session: volume.session.clone(),
                            });
                        if let Err(e) = ended {
                            problems.push(format!("committing volume '{}': {e:#}", volume.name));
                        }
                    }
                }
                Err(e) => problems.push(format!("reaching the volume server: {e:#}")),
            }
        }
        let mut mounts: Vec<String> = info.dir_snapshots.iter().map(|d| d.mount.clone()).collect();
        // The record is written when the sandbox starts to be made and when
        // it runs: one whose daemon died in between names no bindings and
        // perhaps no root mount, so what it made is found by mount point.
        let dir = self.sandboxes_dir().join(&info.id);
        let unrecorded = |sub: &str, known: &[PathBuf]| -> Vec<PathBuf> {
            fs::read_dir(dir.join(sub))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| !known.contains(p))
                        .collect()
                })
                .unwrap_or_default()
        };
        let known_volumes: Vec<PathBuf> = info.volumes.iter().map(|v| v.host.clone()).collect();
        let stray_volumes = unrecorded("volumes", &known_volumes);
        if !stray_volumes.is_empty() {
            if let Ok(mut client) = self.volume_client(&info.volume_home) {
                for host in stray_volumes {
                    let _: anyhow::Result<serde_json::Value> = client.call(VolumeOp::Umount {
                        session: host.display().to_string(),
                    });
                }
            }
        }
        let known_dirs: Vec<PathBuf> = info.dir_snapshots.iter().map(|d| d.host.clone()).collect();
        mounts.extend(
            unrecorded("dirs", &known_dirs)
                .into_iter()
                .map(|p| p.display().to_string()),
        );
        mounts.push(if info.root_mount.is_empty() {
            info.rootfs.display().to_string()
        } else {
            info.root_mount.clone()
        });
        for mount in mounts {
            if let Err(e) = self.remove_mount_patiently(&mount) {
                problems.push(format!("removing mount {mount}: {e:#}"));
            }
        }
        info.state = state;
        info.ended = Some(now_secs());
        info.end_reason = Some(if problems.is_empty() {
            reason.to_string()
        } else {
            format!("{reason}; {}", problems.join("; "))
        });
        problems
    }

    /// Removes a mount, retrying a while if the runtime's last process
    /// still holds it; a mount the daemon no longer has is fine.
    fn remove_mount_patiently(&self, mount: &str) -> anyhow::Result<()> {
        let mut tries = 0;
        loop {
            match self.mount_remove(mount) {
                Ok(_) => return Ok(()),
                Err(e) if crate::exit::code_for(&e) == crate::exit::NOT_FOUND => return Ok(()),
                Err(e) if tries < 50 => {
                    tracing::debug!(mount, "removing a sandbox's mount: {e:#}; retrying");
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn sandbox_lock(&self, id: &str) -> anyhow::Result<Arc<Mutex<()>>> {
        self.sandboxes
            .lock()
            .get(id)
            .map(|s| s.busy.clone())
            .ok_or_else(|| self.sandbox_missing(id))
    }

    fn sandbox_missing(&self, id: &str) -> anyhow::Error {
        if is_sandbox_id(id) && self.sandboxes_dir().join(id).join("sandbox.json").is_file() {
            invalid(format!("sandbox {id} is not running"))
        } else {
            anyhow::Error::from(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no sandbox {id}"),
            ))
        }
    }

    /// Reads every sandbox record, running ones from memory.
    fn sandbox_records(&self) -> Vec<SandboxInfo> {
        let live: HashMap<String, SandboxInfo> = self
            .sandboxes
            .lock()
            .iter()
            .map(|(id, s)| (id.clone(), s.info.clone()))
            .collect();
        let mut out: Vec<SandboxInfo> = live.values().cloned().collect();
        if let Ok(entries) = fs::read_dir(self.sandboxes_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if live.contains_key(&name) {
                    continue;
                }
                if let Ok(bytes) = fs::read(entry.path().join("sandbox.json")) {
                    if let Ok(info) = serde_json::from_slice::<SandboxInfo>(&bytes) {
                        out.push(info);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.created.total_cmp(&b.created));
        for info in &mut out {
            if info.state == SandboxState::Running {
                info.used_bytes = self
                    .find_fs(&info.root_mount)
                    .map(|(_, fs)| fs.used_bytes());
            }
        }
        out
    }

    pub(super) fn sandbox_list(&self) -> Vec<SandboxInfo> {
        self.sandbox_records()
    }

    pub(super) fn sandbox_show(&self, id: &str) -> anyhow::Result<SandboxInfo> {
        if let Some(mut info) = self.sandboxes.lock().get(id).map(|s| s.info.clone()) {
            info.used_bytes = self
                .find_fs(&info.root_mount)
                .map(|(_, fs)| fs.used_bytes());
            return Ok(info);
        }
        // An ended one: its record alone.
        if is_sandbox_id(id) {
            if let Ok(bytes) = fs::read(self.sandboxes_dir().join(id).join("sandbox.json")) {
                return serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading the record of sandbox {id}"));
            }
        }
        Err(self.sandbox_missing(id))
    }

    /// `sandbox.remove`: forgets an ended sandbox (its directory: record,
    /// log, bundle); a running one is refused.
    pub(super) fn sandbox_remove(&self, id: &str) -> anyhow::Result<SandboxInfo> {
        if self.sandboxes.lock().contains_key(id) {
            return Err(invalid(format!(
                "sandbox {id} is running; terminate it first"
            )));
        }
        let info = self.sandbox_show(id)?;
        let dir = self.sandboxes_dir().join(&info.id);
        // Its mount points are empty directories once it ended; a mount
        // still there (a teardown that failed) stops the removal.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let dir_text = format!("{}/", dir.display());
        if let Some(line) = mounts.lines().find(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|m| m.starts_with(&dir_text))
        }) {
            return Err(invalid(format!(
                "sandbox {id} still has a mount ({}); end it first",
                line.split(' ').nth(1).unwrap_or("")
            )));
        }
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        File::open(self.sandboxes_dir())
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.sandboxes_dir().display()))?;
        Ok(info)
    }

    /// `sandbox.terminate`: answers once the volumes are committed.
    pub(super) fn sandbox_terminate(&self, id: &str) -> anyhow::Result<SandboxInfo> {
        let busy = self.sandbox_lock(id)?;
        let _held = busy.lock();
        self.end_sandbox(id, SandboxState::Terminated, "terminated on request")
    }

    /// Tears a running sandbox down (its lock held) and forgets it.
    fn end_sandbox(
        &self,
        id: &str,
        state: SandboxState,
        reason: &str,
    ) -> anyhow::Result<SandboxInfo> {
        let Some(mut info) = self.sandboxes.lock().get(id).map(|s| s.info.clone()) else {
            return self.sandbox_show(id);
        };
        let problems = self.teardown(&mut info, state, reason);
        let written = self.write_sandbox(&info);
        self.sandboxes.lock().remove(id);
        written?;
        if !problems.is_empty() {
            bail!("sandbox {id} ended, but: {}", problems.join("; "));
        }
        Ok(info)
    }

    /// Ends sandboxes whose processes ended or whose time is up (called
    /// by the reaper every half second).
    pub(super) fn reap_sandboxes(&self) {
        let now = Instant::now();
        let due: Vec<(String, Arc<Mutex<()>>, bool)> = self
            .sandboxes
            .lock()
            .iter()
            .filter_map(|(id, s)| {
                let timed_out = s.deadline.is_some_and(|d| d <= now);
                let exited = s.pidfd.as_ref().is_some_and(has_exited);
                (timed_out || exited).then(|| (id.clone(), s.busy.clone(), timed_out))
            })
            .collect();
        for (id, busy, timed_out) in due {
            // Someone else is changing it (a memory snapshot stops and
            // restores it): look again next round.
            let Some(_held) = busy.try_lock() else {
                continue;
            };
            let (state, reason) = if timed_out {
                (SandboxState::Terminated, "its timeout passed")
            } else {
                (SandboxState::Exited, "its processes ended")
            };
            match self.end_sandbox(&id, state, reason) {
                Ok(info) => tracing::info!(sandbox = id, "ended: {:?}", info.end_reason),
                Err(e) => tracing::warn!(sandbox = id, "ending: {e:#}"),
            }
        }
    }

    /// At start: sandboxes a previous daemon left running lost their root
    /// with it; they are torn down (volumes committed) and recorded gone.
    pub(super) fn recover_sandboxes(&self) -> anyhow::Result<()> {
        crate::home::make_durable_dir(&self.sandboxes_dir())?;
        for mut info in self.sandbox_records() {
            if matches!(info.state, SandboxState::Starting | SandboxState::Running) {
                tracing::warn!(sandbox = info.id, "the daemon that served its root stopped");
                let _ = self.teardown(
                    &mut info,
                    SandboxState::Gone,
                    "the node daemon that served its root stopped",
                );
                self.write_sandbox(&info)?;
            }
        }
        Ok(())
    }

    /// Terminates every sandbox (the daemon is stopping).
    pub(super) fn stop_sandboxes(&self) {
        let ids: Vec<(String, Arc<Mutex<()>>)> = self
            .sandboxes
            .lock()
            .iter()
            .map(|(id, s)| (id.clone(), s.busy.clone()))
            .collect();
        for (id, busy) in ids {
            let _held = busy.lock();
            if let Err(e) =
                self.end_sandbox(&id, SandboxState::Terminated, "the node daemon stopped")
            {
                tracing::warn!(sandbox = id, "ending: {e:#}");
            }
        }
    }

    /// `sandbox.snapshot`.
    pub(super) fn sandbox_snapshot(
        &self,
        args: SandboxSnapshot,
    ) -> anyhow::Result<SandboxSnapshotResult> {
        check_labels(&args.labels)?;
        let busy = self.sandbox_lock(&args.id)?;
        let _held = busy.lock();
        let info = self
            .sandboxes
            .lock()
            .get(&args.id)
            .map(|s| s.info.clone())
            .ok_or_else(|| self.sandbox_missing(&args.id))?;
        let mut labels = args.labels.clone();
        labels.insert("strata.sandbox".into(), info.id.clone());
        if let Some(dir) = &args.dir {
            if args.memory {
                return Err(invalid(
                    "a memory snapshot is of the whole sandbox: leave out --dir".into(),
                ));
            }
            check_inside_path(dir, "the directory to snapshot")?;
            let inside = |p: &str| {
                let p = p.trim_end_matches('/');
                dir == p || dir.starts_with(&format!("{p}/"))
            };
            if let Some(v) = info.volumes.iter().find(|v| inside(&v.path)) {
                return Err(invalid(format!(
                    "{dir} is in volume '{}' (bound at {}): a volume keeps its own history (`snapctl volume history`)",
                    v.name, v.path
                )));
            }
            if let Some(d) = info.dir_snapshots.iter().find(|d| inside(&d.path)) {
                return Err(invalid(format!(
                    "{dir} is in directory snapshot {} (bound at {}), not in the sandbox's root",
                    d.snapshot, d.path
                )));
            }
        }
        if !args.memory {
            let filesystem = self.snapshot_create(SnapshotCreate {
                mount: info.root_mount.clone(),
                dir: args.dir.clone(),
                labels,
                expire_secs: None,
                wait_durable: false,
            })?;
            return Ok(SandboxSnapshotResult {
                filesystem,
                memory: None,
                paused_ms: None,
            });
        }
        let runtime = self.runtime_of(&info);
        if !runtime.kind.can_checkpoint() {
            return Err(invalid(format!(
                "sandbox {} runs on {}, which cannot checkpoint memory; memory snapshots need runsc",
                info.id,
                runtime.kind.program()
            )));
        }
        // The runtime's checkpoint stops the sandbox: the filesystem
        // snapshot is taken while it is stopped, so both hold one instant;
        // then it is restored from the checkpoint and runs on.
        let dir = self.sandboxes_dir().join(&info.id);
        let image = dir.join("checkpoint");
        let _ = fs::remove_dir_all(&image);
        fs::create_dir_all(&image).with_context(|| format!("creating {}", image.display()))?;
        let paused = Instant::now();
        runtime.checkpoint(&info.container, &image)?;
        let filesystem = self.snapshot_create(SnapshotCreate {
            mount: info.root_mount.clone(),
            dir: None,
            labels: labels.clone(),
            expire_secs: None,
            wait_durable: false,
        });
        let resumed = runtime
            .destroy(&info.container)
            .and_then(|()| runtime.restore(&info.bundle, &info.container, &info.log, &image));
        let paused_ms = paused.elapsed().as_secs_f64() * 1e3;
        let pid = match resumed {
            Ok(pid) => pid,
            Err(e) => {
                // It cannot run on: end it properly (volumes committed).
                let _ = self.end_sandbox(
                    &info.id,
                    SandboxState::Exited,
                    "it could not be restored after a checkpoint",
                );
                let _ = fs::remove_dir_all(&image);
                return Err(e.context("restoring the sandbox after its checkpoint"));
            }
        };
        self.runtime_pids.lock().insert(pid);
        let pidfd = pidfd_open(pid);
        if let Some(live) = self.sandboxes.lock().get_mut(&info.id) {
            live.pidfd = pidfd;
        }
        let stored = filesystem.and_then(|filesystem| {
            fs::write(
                image.join(SANDBOX_RECORD_FILE),
                serde_json::to_vec_pretty(&info)?,
            )
            .context("recording the sandbox beside its checkpoint")?;
            let mut memory_labels = labels;
            memory_labels.insert(FS_SNAPSHOT_LABEL.into(), filesystem.id.clone());
            let memory = self.mem_put(MemPut {
                source: image.clone(),
                dir: true,
                parent: None,
                labels: memory_labels,
                expire_secs: None,
            })?;
            let filesystem = self.catalog.wait(&filesystem.id)?;
            Ok(SandboxSnapshotResult {
                filesystem,
                memory: Some(memory),
                paused_ms: Some(paused_ms),
            })
        });
        let _ = fs::remove_dir_all(&image);
        stored
    }

    /// `sandbox.fork`: a snapshot of the sandbox's root (the copies start
    /// from it at once, while it is stored), then `count` sandboxes on it
    /// alike (same command, runtime, limits and bindings). All or none.
    pub(super) fn sandbox_fork(&self, id: &str, count: usize) -> anyhow::Result<Vec<SandboxInfo>> {
        if count == 0 || count > 1000 {
            return Err(invalid(format!(
                "--count must be between 1 and 1000, not {count}"
            )));
        }
        let source = self.sandbox_show(id)?;
        if source.state != SandboxState::Running {
            return Err(self.sandbox_missing(id));
        }
        let snapshot = self
            .sandbox_snapshot(SandboxSnapshot {
                id: id.to_string(),
                dir: None,
                memory: false,
                labels: BTreeMap::from([("strata.fork-of".to_string(), id.to_string())]),
            })?
            .filesystem;
        let mut labels = source.labels.clone();
        labels.insert("strata.fork-of".into(), id.to_string());
        let create = SandboxCreate {
            image: None,
            snapshot: Some(snapshot.id.clone()),
            volumes: source
                .volumes
                .iter()
                .map(|v| VolumeBinding {
                    name: v.name.clone(),
                    path: v.path.clone(),
                })
                .collect(),
            dir_snapshots: source
                .dir_snapshots
                .iter()
                .map(|d| DirSnapshotBinding {
                    snapshot: d.snapshot.clone(),
                    path: d.path.clone(),
                })
                .collect(),
            runtime: Some(source.runtime.program().to_string()),
            cpus: source.cpus,
            memory_bytes: source.memory_bytes,
            disk_bytes: Some(source.disk_bytes),
            timeout_secs: source.timeout_secs,
            labels,
            network: source.network,
            command: source.command.clone(),
            env: source.env.clone(),
            workdir: source.workdir.clone(),
            volume_home: source.volume_home.clone(),
        };
        let results: Mutex<Vec<(usize, anyhow::Result<SandboxInfo>)>> = Mutex::new(Vec::new());
        let next = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..FORK_PARALLELISM.min(count) {
                scope.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= count {
                        break;
                    }
                    let made = self.sandbox_create(create.clone());
                    results.lock().push((n, made));
                });
            }
        });
        let mut results = results.into_inner();
        results.sort_by_key(|(n, _)| *n);
        if let Some(pos) = results.iter().position(|(_, r)| r.is_err()) {
            for (_, made) in &results {
                if let Ok(info) = made {
                    let _ = self.sandbox_terminate(&info.id);
                }
            }
            let (n, failed) = results.swap_remove(pos);
            return Err(failed
                .expect_err("found above")
                .context(format!("fork {n} of {count}")));
        }
        Ok(results.into_iter().filter_map(|(_, r)| r.ok()).collect())
    }
}
