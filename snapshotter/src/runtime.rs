//! The OCI runtimes a sandbox runs on (gVisor's `runsc`, `runc`), driven
//! through their command lines: Strata writes the bundle and calls the
//! runtime; it does not reimplement containers.
//!
//! Each runtime keeps its containers' state under a directory of the node
//! daemon's (`HOME/runtime/NAME`, its `--root`), so the daemon's sandboxes
//! never mix with containers the machine runs otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

/// A sandbox runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// gVisor (`runsc`), on the ptrace platform (works without KVM).
    Runsc,
    /// `runc`: Linux namespaces and cgroups.
    Runc,
}

impl RuntimeKind {
    /// Parses `runsc` or `runc`.
    pub fn parse(name: &str) -> anyhow::Result<RuntimeKind> {
        match name {
            "runsc" | "gvisor" => Ok(RuntimeKind::Runsc),
            "runc" => Ok(RuntimeKind::Runc),
            other => Err(crate::exit::InvalidInput(format!(
                "unknown runtime '{other}' (runsc or runc)"
            ))
            .into()),
        }
    }

    /// The program's name.
    pub fn program(self) -> &'static str {
        match self {
            RuntimeKind::Runsc => "runsc",
            RuntimeKind::Runc => "runc",
        }
    }

    /// Whether it can checkpoint and restore a running sandbox.
    pub fn can_checkpoint(self) -> bool {
        self == RuntimeKind::Runsc
    }
}

/// The runtime is not installed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the sandbox runtime `{program}` is not installed (no `{program}` on PATH); \
     install it with `apt-get install {package}`"
)]
pub struct RuntimeMissing {
    pub program: &'static str,
    pub package: &'static str,
}

/// A runtime command failed.
#[derive(Debug, thiserror::Error)]
#[error("`{program} {action}` failed: {message}")]
pub struct RuntimeFailed {
    pub program: &'static str,
    pub action: String,
    pub message: String,
}

/// What the runtime says about a container.
#[derive(Clone, Debug, Deserialize)]
pub struct ContainerState {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The container's first process on the host (0 or -1 once it is gone).
    #[serde(default)]
    pub pid: i64,
}

/// One runtime with its state directory.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub kind: RuntimeKind,
    /// The runtime's `--root`.
    pub root: PathBuf,
    /// Whether sandboxes get the host's network (else none at all).
    pub network: bool,
}

impl Runtime {
    /// The runtime `kind` keeping state under `HOME/runtime/NAME`; fails
    /// with [`RuntimeMissing`] if it is not installed.
    pub fn new(kind: RuntimeKind, home: &Path, network: bool) -> anyhow::Result<Runtime> {
        if find_program(kind.program()).is_none() {
            return Err(RuntimeMissing {
                program: kind.program(),
                package: kind.program(),
            }
            .into());
        }
        Ok(Runtime {
            kind,
            root: home.join("runtime").join(kind.program()),
            network,
        })
    }

    /// The runtime's command with its global flags, for `args`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.kind.program());
        cmd.arg("--root").arg(&self.root);
        if self.kind == RuntimeKind::Runsc {
            cmd.arg("--platform=ptrace");
            cmd.arg(if self.network {
                "--network=host"
            } else {
                "--network=none"
            });
        }
        cmd
    }

    fn run(&self, action: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.kind.program()))?;
        if !out.status.success() {
            return Err(self.failed(action, &out));
        }
        Ok(out)
    }

    fn failed(&self, action: &str, out: &Output) -> anyhow::Error {
        let text = String::from_utf8_lossy(&out.stderr);
        let message = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no message)")
            .trim()
            .to_string();
        RuntimeFailed {
            program: self.kind.program(),
            action: action.to_string(),
            message,
        }
        .into()
    }

    /// Starts container `id` from `bundle` in the background; its first
    /// process writes to `log`. Returns the pid of its first process
    /// (runsc: of the sandbox) on the host.
    pub fn start(&self, bundle: &Path, id: &str, log: &Path) -> anyhow::Result<i64> {
        self.detached(&["run"], bundle, id, log, None)
    }

    /// Restores container `id` from the checkpoint in `image` (runsc);
    /// the pid as for [`Runtime::start`].
    pub fn restore(
        &self,
        bundle: &Path,
        id: &str,
        log: &Path,
        image: &Path,
    ) -> anyhow::Result<i64> {
        self.detached(&["restore"], bundle, id, log, Some(image))
    }

    fn detached(
        &self,
        verb: &[&str],
        bundle: &Path,
        id: &str,
        log: &Path,
        image: Option<&Path>,
    ) -> anyhow::Result<i64> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = self.command();
        // The pid from a file the runtime writes, rather than asking
        // `state` after (a second run of the runtime: ~15 ms for runsc).
        let pid_file = bundle.join(format!("{id}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        cmd.args(verb)
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(image) = image {
            cmd.arg("--image-path").arg(image);
        }
        // The runtime hands these descriptors on to the processes it
        // leaves running, so no pipe may be among them (reading it to its
        // end would wait for the sandbox's end): its own messages go to a
        // file beside the log.
        let messages = log.with_extension("runtime");
        let messages_file = std::fs::File::create(&messages)
            .with_context(|| format!("creating {}", messages.display()))?;
        let status = cmd
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(messages_file))
            .status()
            .with_context(|| format!("running {}", self.kind.program()))?;
        if !status.success() {
            let out = Output {
                status,
                stdout: Vec::new(),
                stderr: std::fs::read(&messages).unwrap_or_default(),
            };
            return Err(self.failed(verb[0], &out));
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .or_else(|| self.state(id).map(|s| s.pid))
            .unwrap_or(0);
        Ok(pid)
    }

    /// The container's state; `None` if the runtime does not know it.
    pub fn state(&self, id: &str) -> Option<ContainerState> {
        let out = self
            .command()
            .args(["state", id])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Whether the container's processes are alive.
    pub fn is_running(&self, id: &str) -> bool {
        self.state(id)
            .is_some_and(|s| s.status == "running" || s.status == "paused")
    }

    /// Stops and removes the container (its processes are killed); fine
    /// if it is already gone.
    pub fn destroy(&self, id: &str) -> anyhow::Result<()> {
        if self.state(id).is_none() {
            return Ok(());
        }
        let _ = self
            .command()
            .args(["kill", id, "KILL"])
            .stdin(Stdio::null())
            .output();
        self.run(
            "delete",
            &["delete".as_ref(), "--force".as_ref(), id.as_ref()],
        )?;
        Ok(())
    }

    /// Checkpoints the container into `image` (runsc; the container stops).
    pub fn checkpoint(&self, id: &str, image: &Path) -> anyhow::Result<()> {
        if !self.kind.can_checkpoint() {
            bail!(crate::exit::InvalidInput(format!(
                "{} cannot checkpoint a running sandbox (memory snapshots need runsc)",
                self.kind.program()
            )));
        }
        self.run(
            "checkpoint",
            &[
                "checkpoint".as_ref(),
                "--image-path".as_ref(),
                image.as_os_str(),
                id.as_ref(),
            ],
        )?;
        Ok(())
    }

    /// The command that runs `argv` in the container (stdio inherited).
    pub fn exec_command(
        &self,
        id: &str,
        workdir: Option<&str>,
        env: &[String],
        argv: &[String],
    ) -> anyhow::Result<Command> {
        if argv.is_empty() {
            return Err(anyhow!("no command to run"));
        }
        let mut cmd = self.command();
        cmd.arg("exec");
        if let Some(dir) = workdir {
            cmd.arg("--cwd").arg(dir);
        }
        for pair in env {
            cmd.arg("--env").arg(pair);
        }
        cmd.arg(id).args(argv);
        Ok(cmd)
    }
}

/// Where `program` is on `PATH`, if anywhere.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}
