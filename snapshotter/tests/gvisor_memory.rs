//! gVisor end to end: a sandbox whose root is a Strata mount builds state
//! in memory, is checkpointed by `runsc checkpoint`, and the checkpoint is
//! stored as a memory snapshot together with a filesystem snapshot of its
//! root taken at the same instant (the sandbox is stopped between them).
//! The checkpoint directory and the sandbox are deleted; the sandbox is
//! restored from Strata alone (`mem get --dir`, a mount of the filesystem
//! snapshot) and continues with the same memory and a root that matches
//! it.
//!
//! Needs root, FUSE, Debian's `runsc` (ptrace platform) and the
//! `bookworm-minbase` fixture, which `./test.sh` builds.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The sandbox's program: 20 MB of random bytes held only in memory (as
/// base64 in a shell variable), its checksum written once to the root, a
/// counter kept in memory and mirrored to `/root/count`, and on SIGUSR1 a
/// line with the checksum of what is in memory and the counter.
const PROGRAM: &str = r#"
x=$(head -c 20000000 /dev/urandom | base64 -w0)
sum=$(printf %s "$x" | md5sum | cut -c1-32)
echo "$sum" > /root/sum-at-start
i=0
trap 'echo "memory $(printf %s "$x" | md5sum | cut -c1-32) count $i"' USR1
echo ready
while true; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done
"#;

/// `runsc` with this test's state directory, on the ptrace platform; the
/// sandboxes it started are removed when it is dropped (also on a failed
/// assertion, so no sandbox outlives the test).
struct Runsc {
    state: PathBuf,
    started: Vec<String>,
}

impl Drop for Runsc {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.started) {
            self.remove(&id);
        }
    }
}

impl Runsc {
    fn command(&self) -> Command {
        let mut cmd = Command::new("runsc");
        cmd.arg("--root")
            .arg(&self.state)
            .args(["--platform=ptrace", "--network=none"]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().expect("run runsc");
        assert!(
            out.status.success(),
            "runsc {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts (or restores) a detached sandbox whose output goes to `log`.
    fn start_detached(&self, args: &[&str], log: &Path) {
        let file = std::fs::File::create(log).unwrap();
        let status = self
            .command()
            .args(args)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .status()
            .expect("run runsc");
        assert!(
            status.success(),
            "runsc {args:?}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    fn remove(&self, id: &str) {
        let _ = self.command().args(["kill", id, "KILL"]).output();
        let _ = self.command().args(["delete", "--force", id]).output();
    }
}

/// Waits until `log` has a line starting with `prefix` after its first
/// `skip` bytes; that line.
fn wait_line(log: &Path, skip: usize, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(log) {
            let _ = f.read_to_string(&mut text);
        }
        if let Some(line) = text
            .get(skip..)
            .unwrap_or("")
            .lines()
            // A restored sandbox writes at its old file offset: the new
            // log starts with a hole, read back as NULs.
            .map(|l| l.trim_start_matches('\0'))
            .find(|l| l.starts_with(prefix))
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line '{prefix}…' in the sandbox's output: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses "memory SUM count N".
fn memory_line(line: &str) -> (String, u64) {
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 4, "{line}");
    (parts[1].to_string(), parts[3].parse().unwrap())
}

fn write_bundle(bundle: &Path, root: &Path) {
    std::fs::create_dir_all(bundle).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/bin/bash", "-c", PROGRAM],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
        },
        "root": { "path": root, "readonly": false },
        "hostname": "strata",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs" },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs" },
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" },
                { "type": "mount" }, { "type": "network" },
            ],
        },
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_gvisor_sandbox_resumes_from_a_memory_snapshot_and_a_filesystem_snapshot_in_strata() {
    if !fixtures::require::root() || !fixtures::require::fuse() {
        return;
    }
    if !fixtures::require::program("runsc") {
        return;
    }
    let Some(debian) = fixtures::require::debian_rootfs("bookworm-minbase") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    must(snapctl(&home, &["store", "init"]));
    let _daemon = Daemon::start(&home);
    must(snapctl(
        &home,
        &[
            "image",
            "import",
            debian.to_str().unwrap(),
            "--name",
            "debian",
        ],
    ));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mount = String::from_utf8(
        must(snapctl(
            &home,
            &["mount", "--image", "debian", root.to_str().unwrap()],
        ))
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();

    // Names unique to this run: a sandbox left by an earlier, killed run
    // keeps its cgroups.
    let (first, second) = (
        format!("strata-mem-{}-a", std::process::id()),
        format!("strata-mem-{}-b", std::process::id()),
    );
    let (first, second) = (first.as_str(), second.as_str());
    let mut runsc = Runsc {
        state: dir.path().join("runsc"),
        started: vec![first.to_string(), second.to_string()],
    };
    let bundle = dir.path().join("bundle");
    write_bundle(&bundle, &root);
    let log = dir.path().join("first.log");
    runsc.start_detached(
        &[
            "run",
            "--detach",
            "--bundle",
            bundle.to_str().unwrap(),
            first,
        ],
        &log,
    );
    wait_line(&log, 0, "ready");
    std::thread::sleep(Duration::from_millis(500));
    let before = std::fs::read_to_string(&log).unwrap().len();
    runsc.run(&["kill", first, "USR1"]);
    let (sum, count_before) = memory_line(&wait_line(&log, before, "memory "));
    assert_eq!(
        std::fs::read_to_string(root.join("root/sum-at-start"))
            .unwrap()
            .trim(),
        sum
    );

    // Checkpoint (the sandbox stops), then both snapshots while it is
    // stopped: the filesystem and the memory of one instant.
    let checkpoint = dir.path().join("checkpoint");
    std::fs::create_dir(&checkpoint).unwrap();
    runsc.run(&[
        "checkpoint",
        "--image-path",
        checkpoint.to_str().unwrap(),
        first,
    ]);
    let count_at_checkpoint: u64 = std::fs::read_to_string(root.join("root/count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(count_at_checkpoint >= count_before);
    let fs_snapshot = json(&must(snapctl(
        &home,
        &[
            "--json",
            "snapshot",
            "create",
            root.to_str().unwrap(),
            "--wait-durable",
            "--label",
            "sandbox=e2e",
        ],
    )));
    let fs_id = fs_snapshot["id"].as_str().unwrap().to_string();
    let mem_snapshot = json(&must(snapctl(
        &home,
        &[
            "--json",
            "mem",
            "put",
            "--dir",
            checkpoint.to_str().unwrap(),
            "--label",
            &format!("fs={fs_id}"),
        ],
    )));
    let mem_id = mem_snapshot["id"].as_str().unwrap().to_string();
    let memory = &mem_snapshot["memory"];
    assert!(memory["files"].as_u64().unwrap() >= 1, "{mem_snapshot}");
    assert!(
        memory["size"].as_u64().unwrap() > 15_000_000,
        "{mem_snapshot}"
    );

    // Nothing of the first sandbox remains: its checkpoint directory, its
    // container and its mount are gone.
    std::fs::remove_dir_all(&checkpoint).unwrap();
    runsc.remove(first);
    must(snapctl(&home, &["umount", &mount]));

    // Back from Strata alone.
    let restored_root = dir.path().join("restored-root");
    std::fs::create_dir(&restored_root).unwrap();
    must(snapctl(
        &home,
        &[
            "mount",
            "--snapshot",
            &fs_id,
            restored_root.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(restored_root.join("root/count"))
            .unwrap()
            .trim(),
        count_at_checkpoint.to_string()
    );
    let restored_checkpoint = dir.path().join("restored-checkpoint");
    must(snapctl(
        &home,
        &[
            "mem",
            "get",
            "--dir",
            &mem_id,
            restored_checkpoint.to_str().unwrap(),
        ],
    ));
    let restored_bundle = dir.path().join("restored-bundle");
    write_bundle(&restored_bundle, &restored_root);
    let log2 = dir.path().join("second.log");
    runsc.start_detached(
        &[
            "restore",
            "--detach",
            "--bundle",
            restored_bundle.to_str().unwrap(),
            "--image-path",
            restored_checkpoint.to_str().unwrap(),
            second,
        ],
        &log2,
    );
    // It continues counting from where it stopped, in memory and on disk.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: u64 = std::fs::read_to_string(restored_root.join("root/count"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        if now > count_at_checkpoint + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored sandbox does not count on: {}",
            std::fs::read_to_string(&log2).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    runsc.run(&["kill", second, "USR1"]);
    let (sum_after, count_after) = memory_line(&wait_line(&log2, 0, "memory "));
    runsc.remove(second);
    runsc.started.clear();
    assert_eq!(sum_after, sum, "the memory the sandbox holds changed");
    assert!(
        count_after > count_at_checkpoint,
        "count {count_after} after restore, {count_at_checkpoint} at checkpoint"
    );
    // The program never started again: no second "ready".
    let restored_log = std::fs::read_to_string(&log2).unwrap();
    assert!(!restored_log.contains("ready"), "{restored_log}");
}
