//! Sandboxes end to end (`snapctl sandbox`): real runtimes (gVisor's
//! `runsc` on the ptrace platform, and `runc`) on Strata roots, with
//! volumes from a real `volume-server` and snapshots from the node daemon,
//! on the cached Debian image. The checks are the ones the seeds report
//! for Modal's sandboxes: the root is a Strata mount with a hard quota,
//! sandboxes do not see each other, snapshots restore with every checksum,
//! volumes keep what a terminated or killed sandbox wrote, directory
//! snapshots move between images, memory snapshots resume processes.
//!
//! Needs root, FUSE, runsc and runc, and the Debian fixture (./test.sh
//! provides them); outside CI a missing one skips with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

/// `snapctl`, built beside `volume-server` when the workspace is tested.
fn snapctl_exe() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_volume-server")).with_file_name("snapctl");
    fixtures::require::path(
        &path,
        "`cargo build -p snapshotter` (or testing the workspace)",
    )
    .then_some(path)
}

/// A node daemon and a volume server in a scratch directory, with the
/// Debian image imported as `debian`.
struct Node {
    exe: PathBuf,
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    /// Kept for the node's life (stopped when dropped).
    _volumes: Server,
    /// PATH the daemon runs with.
    path_env: Option<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // The daemon terminates its sandboxes as it stops.
        self.stop_daemon(libc::SIGTERM);
    }
}

impl Node {
    /// Everything the tests need, or `None` (skipped) outside CI.
    fn start() -> Option<Node> {
        if !fixtures::require::root() || !fixtures::require::fuse() {
            return None;
        }
        if !fixtures::require::program("runsc") || !fixtures::require::program("runc") {
            return None;
        }
        let exe = snapctl_exe()?;
        let debian = fixtures::require::debian_rootfs("bookworm-minbase")?;
        let node = Node::start_with(exe, None);
        node.ok(&[
            "image",
            "import",
            debian.to_str().unwrap(),
            "--name",
            "debian",
        ]);
        Some(node)
    }

    fn start_with(exe: PathBuf, path_env: Option<String>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let volumes = Server::start(&dir.path().join("volumes"), 5);
        let mut node = Node {
            exe,
            dir,
            daemon: None,
            _volumes: volumes,
            path_env,
        };
        let init = node.run(&["store", "init"]);
        assert!(init.status.success(), "{init:?}");
        node.start_daemon();
        node
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    fn volume_home(&self) -> PathBuf {
        self.dir.path().join("volumes")
    }

    fn start_daemon(&mut self) {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--home").arg(self.home()).arg("daemon");
        if let Some(path) = &self.path_env {
            cmd.env("PATH", path);
        }
        self.daemon = Some(cmd.stdout(Stdio::null()).spawn().expect("start the daemon"));
        let socket = self.home().join("snapd.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the node daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_daemon(&mut self, signal: i32) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.exe)
            .arg("--home")
            .arg(self.home())
            .args(args)
            .env("STRATA_VOLUME_HOME", self.volume_home())
            .output()
            .expect("run snapctl")
    }

    /// Runs and expects success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "snapctl {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit code `code`; stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        stderr
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// `sandbox create` with `args`; the new sandbox's id.
    fn create(&self, args: &[&str]) -> String {
        let mut all = vec!["sandbox", "create"];
        all.extend_from_slice(args);
        self.ok(&all).trim().to_string()
    }

    /// Runs `script` with `sh -c` in sandbox `id`: exit code, stdout, stderr.
    fn sh(&self, id: &str, script: &str) -> (i32, String, String) {
        let out = self.run(&["sandbox", "exec", id, "--", "sh", "-c", script]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `script` and expects success; its stdout.
    fn sh_ok(&self, id: &str, script: &str) -> String {
        let (code, out, err) = self.sh(id, script);
        assert_eq!(code, 0, "{script}: {out}{err}");
        out
    }

    fn show(&self, id: &str) -> Value {
        self.json(&["sandbox", "show", id])
    }

    /// Waits until sandbox `id` is in `state`.
    fn wait_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = self.show(id);
            if info["state"] == state {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox {id} never became {state}: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn used_bytes(info: &Value) -> u64 {
    info["used_bytes"].as_u64().unwrap_or(0)
}

/// A second image, unlike Debian: busybox alone.
fn busybox_image(node: &Node) -> bool {
    if !fixtures::require::path(Path::new("/bin/busybox"), "the busybox-static package") {
        return false;
    }
    let root = node.dir.path().join("busybox-root");
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "md5sum", "ls", "sleep", "test"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    std::fs::write(root.join("etc/image"), "busybox\n").unwrap();
    node.ok(&[
        "image",
        "import",
        root.to_str().unwrap(),
        "--name",
        "busybox",
    ]);
    true
}

/// The host pid of a sandbox's first process, from its runtime.
fn sandbox_pid(info: &Value) -> i32 {
    let runtime = info["runtime"].as_str().unwrap();
    let out = Command::new(runtime)
        .arg("--root")
        .arg(info["runtime_root"].as_str().unwrap())
        .args(["state", info["container"].as_str().unwrap()])
        .output()
        .unwrap();
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    state["pid"].as_i64().unwrap() as i32
}

/// The whole suite on one runtime (memory snapshots aside).
fn sandboxes_keep_their_promises_on(runtime: &str) {
    let Some(node) = Node::start() else { return };
    let have_busybox = busybox_image(&node);

    // The root is a Strata mount with a hard quota.
    let a = node.create(&["--image", "debian", "--runtime", runtime, "--disk", "64M"]);
    let b = node.create(&["--image", "debian", "--runtime", runtime, "--disk", "64M"]);
    let info_a = node.show(&a);
    assert_eq!(info_a["state"], "running");
    assert_eq!(info_a["runtime"], runtime);
    let rootfs = info_a["rootfs"].as_str().unwrap().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(rootfs.as_str()) && l.contains("fuse")),
        "{rootfs} is not a FUSE mount: {mounts}"
    );
    let listed = node.ok(&["mounts"]);
    assert!(
        listed.contains(info_a["root_mount"].as_str().unwrap()),
        "{listed}"
    );
    node.sh_ok(&a, "echo from-a > /root/hello");
    assert_eq!(
        std::fs::read_to_string(Path::new(&rootfs).join("root/hello")).unwrap(),
        "from-a\n"
    );
    let b_before = used_bytes(&node.show(&b));
    let (code, _, err) = node.sh(&a, "dd if=/dev/zero of=/fill bs=1M count=100");
    assert_ne!(code, 0, "writing past --disk succeeded");
    assert!(err.contains("No space left on device"), "{err}");
    let (code, _, err) = node.sh(&a, "rm -f /fill; fallocate -l 100M /fa");
    assert_ne!(code, 0, "fallocate past --disk succeeded");
    assert!(err.contains("No space left on device"), "{err}");
    node.sh_ok(
        &a,
        "rm -f /fa; dd if=/dev/zero of=/again bs=1M count=40 && rm /again",
    );

    // Limits and isolation the bundle asks for: memory, no network, the
    // first process's output in the log.
    let limited = node.create(&[
        "--image",
        "debian",
        "--runtime",
        runtime,
        "--memory",
        "256M",
        "--cpu",
        "1",
        "--",
        "sh",
        "-c",
        "echo first-process-output; sleep infinity",
    ]);
    let limited_info = node.show(&limited);
    let cgroup = format!(
        "/sys/fs/cgroup/memory/strata/{}/memory.limit_in_bytes",
        limited_info["id"].as_str().unwrap()
    );
    // (This machine's cgroups are v1; on v2 the runtime writes memory.max.)
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert_eq!(
            std::fs::read_to_string(&cgroup).unwrap().trim(),
            "268435456"
        );
    }
    if runtime == "runsc" {
        let meminfo = node.sh_ok(&limited, "head -1 /proc/meminfo");
        assert!(meminfo.contains("262144 kB"), "{meminfo}");
    }
    let interfaces = node.sh_ok(&limited, "tail -n +3 /proc/net/dev | cut -d: -f1");
    assert_eq!(
        interfaces.split_whitespace().collect::<Vec<_>>(),
        ["lo"],
        "{interfaces}"
    );
    assert!(
        node.ok(&["sandbox", "logs", &limited])
            .contains("first-process-output"),
        "no output in the log"
    );
    node.ok(&["sandbox", "terminate", &limited]);

    // Two sandboxes: neither sees the other's files, and writing in one
    // leaves the other's usage unchanged.
    node.sh_ok(&b, "test ! -e /root/hello");
    node.sh_ok(&b, "echo from-b > /root/only-b");
    node.sh_ok(&a, "test ! -e /root/only-b");
    let b_mid = used_bytes(&node.show(&b));
    node.sh_ok(
        &a,
        "dd if=/dev/urandom of=/root/more bs=1M count=8 2>/dev/null",
    );
    assert_eq!(used_bytes(&node.show(&b)), b_mid);
    assert!(b_mid > b_before, "{b_before} -> {b_mid}");

    // A filesystem snapshot with 100 MiB of random data and text files
    // restores in a new sandbox with every checksum matching.
    let c = node.create(&["--image", "debian", "--runtime", runtime, "--disk", "1G"]);
    let sums = node.sh_ok(
        &c,
        "mkdir -p /data/text && head -c 100M /dev/urandom > /data/random.bin && \
         for i in $(seq 1 50); do echo \"line $i of file $i\" > /data/text/f$i.txt; done && \
         cd /data && md5sum random.bin text/*",
    );
    assert_eq!(sums.lines().count(), 51, "{sums}");
    let snapshot = node.ok(&["sandbox", "snapshot", &c, "--label", "step=data"]);
    let snapshot = snapshot.trim();
    let restored = node.create(&["--from-snapshot", snapshot, "--runtime", runtime]);
    assert_eq!(
        node.sh_ok(&restored, "cd /data && md5sum random.bin text/*"),
        sums
    );
    let shown = node.json(&["snapshot", "show", snapshot]);
    assert_eq!(shown["labels"]["strata.sandbox"], c.as_str());

    // A volume written in one sandbox, terminated without waiting, is read
    // back in a new sandbox and from outside.
    node.ok(&["volume", "create", "shared"]);
    let v1 = node.create(&[
        "--image",
        "debian",
        "--runtime",
        runtime,
        "--volume",
        "shared:/shared",
    ]);
    node.sh_ok(&v1, "echo written-by-v1 > /shared/result.txt");
    let ended = node.json(&["sandbox", "terminate", &v1]);
    assert_eq!(ended["state"], "terminated");
    let v2 = node.create(&[
        "--image",
        "debian",
        "--runtime",
        runtime,
        "--volume",
        "shared:/shared",
    ]);
    assert_eq!(node.sh_ok(&v2, "cat /shared/result.txt"), "written-by-v1\n");
    assert_eq!(
        node.ok(&["volume", "get", "shared", "result.txt"]),
        "written-by-v1\n"
    );

    // A sandbox killed with SIGKILL from outside loses no fsync'd write.
    node.sh_ok(
        &v2,
        "echo fsynced-by-v2 > /shared/synced.txt && sync /shared/synced.txt",
    );
    let pid = sandbox_pid(&node.show(&v2));
    // SAFETY: kill(2) of the sandbox's host process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let info = node.wait_state(&v2, "exited");
    assert!(
        info["end_reason"]
            .as_str()
            .unwrap()
            .contains("processes ended"),
        "{info}"
    );
    assert_eq!(
        node.ok(&["volume", "get", "shared", "synced.txt"]),
        "fsynced-by-v2\n"
    );
    node.fails(&["sandbox", "exec", &v2, "--", "true"], 7);

    // A directory snapshot of /project, mounted into a sandbox of another
    // image.
    node.sh_ok(
        &a,
        "mkdir -p /project/src && echo 'fn main() {}' > /project/src/main.rs && \
         head -c 300000 /dev/urandom > /project/blob",
    );
    let project_sums = node.sh_ok(&a, "cd /project && md5sum src/main.rs blob");
    let dir_snapshot = node.ok(&["sandbox", "snapshot", &a, "--dir", "/project"]);
    let dir_snapshot = dir_snapshot.trim();
    assert_eq!(
        node.json(&["snapshot", "show", dir_snapshot])["kind"],
        "directory"
    );
    if have_busybox {
        let other = node.create(&[
            "--image",
            "busybox",
            "--runtime",
            runtime,
            "--dir-snapshot",
            &format!("{dir_snapshot}:/project"),
            "--",
            "/bin/busybox",
            "sleep",
            "100000",
        ]);
        assert_eq!(node.sh_ok(&other, "cat /etc/image"), "busybox\n");
        assert_eq!(
            node.sh_ok(&other, "cd /project && md5sum src/main.rs blob"),
            project_sums
        );
        node.ok(&["sandbox", "terminate", &other]);
    }

    // Fork: copies of a running sandbox's root, each its own.
    let forks = node.ok(&["sandbox", "fork", &a, "--count", "3"]);
    let forks: Vec<&str> = forks.lines().collect();
    assert_eq!(forks.len(), 3);
    for (n, fork) in forks.iter().enumerate() {
        assert_eq!(node.sh_ok(fork, "cat /root/hello"), "from-a\n");
        node.sh_ok(fork, &format!("echo {n} > /root/mine"));
    }
    for (n, fork) in forks.iter().enumerate() {
        assert_eq!(node.sh_ok(fork, "cat /root/mine"), format!("{n}\n"));
    }
    node.sh_ok(&a, "test ! -e /root/mine");

    // Terminate everything: no container and no mount is left.
    let running = node.json(&["sandbox", "ls"]);
    for sandbox in running.as_array().unwrap() {
        node.ok(&["sandbox", "terminate", sandbox["id"].as_str().unwrap()]);
    }
    assert_eq!(node.json(&["sandbox", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(node.json(&["mounts"]).as_array().unwrap().len(), 0);
    let listed = Command::new(runtime)
        .arg("--root")
        .arg(info_a["runtime_root"].as_str().unwrap())
        .arg("list")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().skip(1).count(), 0, "{listed}");
}

#[test]
fn sandboxes_on_gvisor_keep_the_promises_the_seeds_check() {
    sandboxes_keep_their_promises_on("runsc");
}

#[test]
fn sandboxes_on_runc_keep_the_same_promises() {
    sandboxes_keep_their_promises_on("runc");
}

/// Prints the md5 of 3 MB of random text held in a shell variable, and a
/// counter, on SIGUSR1; counts in memory and in /root/count.
const COUNTER: &str = r#"x=$(head -c 3000000 /dev/urandom | base64); i=0
trap 'echo "sum $(printf %s "$x" | md5sum | cut -c1-32) count $i"' USR1
echo ready
while true; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done"#;

/// The `sum …` lines of a sandbox's log (NUL holes left by a restore
/// dropped).
fn sum_lines(node: &Node, id: &str) -> Vec<(String, u64)> {
    let log = node.show(id)["log"].as_str().unwrap().to_string();
    let text = std::fs::read(log).unwrap();
    String::from_utf8_lossy(&text)
        .replace('\0', "")
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts.len() == 4 && parts[0] == "sum")
                .then(|| (parts[1].to_string(), parts[3].parse().unwrap()))
        })
        .collect()
}

/// Signals the sandbox's first process and waits for its `n`-th sum line.
fn ask_sum(node: &Node, id: &str, n: usize) -> (String, u64) {
    node.sh_ok(id, "kill -USR1 1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = sum_lines(node, id);
        if lines.len() >= n {
            return lines[n - 1].clone();
        }
        assert!(Instant::now() < deadline, "no answer from sandbox {id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_memory_snapshot_resumes_a_running_process_with_its_state() {
    let Some(node) = Node::start() else { return };
    let first = node.create(&["--image", "debian", "--", "bash", "-c", COUNTER]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(node.show(&first)["log"].as_str().unwrap())
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(Instant::now() < deadline, "the counter never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (sum, _) = ask_sum(&node, &first, 1);

    let made = node.json(&["sandbox", "snapshot", &first, "--memory"]);
    let memory = made["memory"]["id"].as_str().unwrap().to_string();
    let filesystem = made["filesystem"]["id"].as_str().unwrap().to_string();
    assert_eq!(made["filesystem"]["state"], "durable");
    let shown = node.json(&["snapshot", "show", &memory]);
    assert_eq!(shown["kind"], "memory");
    assert_eq!(shown["labels"]["strata.fs-snapshot"], filesystem.as_str());
    // The count on disk in the snapshot: what the process had written when
    // it stopped.
    let snap_mount = node.dir.path().join("snap-view");
    std::fs::create_dir(&snap_mount).unwrap();
    node.ok(&[
        "mount",
        "--snapshot",
        &filesystem,
        snap_mount.to_str().unwrap(),
    ]);
    let count_at_snapshot: u64 = std::fs::read_to_string(snap_mount.join("root/count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    node.ok(&["umount", snap_mount.to_str().unwrap()]);

    // The original runs on after the snapshot.
    let (sum_after, _) = ask_sum(&node, &first, 2);
    assert_eq!(sum_after, sum);

    // Resumed elsewhere: the same memory, the counter goes on from the
    // snapshot (it did not start again: no new `ready`, same sum).
    node.ok(&["sandbox", "terminate", &first]);
    let resumed = node.create(&["--from-snapshot", &memory]);
    let info = node.show(&resumed);
    assert_eq!(info["state"], "running");
    assert_eq!(info["command"][0], "bash");
    let (resumed_sum, resumed_count) = ask_sum(&node, &resumed, 1);
    assert_eq!(resumed_sum, sum);
    assert!(
        resumed_count >= count_at_snapshot,
        "{resumed_count} < {count_at_snapshot}"
    );
    let log = std::fs::read_to_string(info["log"].as_str().unwrap()).unwrap();
    assert!(!log.contains("ready"), "the program started again: {log}");
    let on_disk: u64 = node
        .sh_ok(&resumed, "cat /root/count")
        .trim()
        .parse()
        .unwrap();
    assert!(on_disk >= count_at_snapshot);

    // runc cannot checkpoint: a clear refusal that changes nothing.
    let plain = node.create(&["--image", "debian", "--runtime", "runc"]);
    let err = node.fails(&["sandbox", "snapshot", &plain, "--memory"], 7);
    assert!(err.contains("memory snapshots need runsc"), "{err}");
    assert_eq!(node.show(&plain)["state"], "running");
}

#[test]
fn timeouts_restarts_and_errors_end_sandboxes_cleanly() {
    let Some(mut node) = Node::start() else {
        return;
    };

    // --timeout terminates the sandbox, its volume committed.
    node.ok(&["volume", "create", "timed"]);
    let timed = node.create(&[
        "--image",
        "debian",
        "--timeout",
        "3s",
        "--volume",
        "timed:/v",
        "--",
        "sh",
        "-c",
        "echo before-timeout > /v/t; sleep infinity",
    ]);
    let info = node.wait_state(&timed, "terminated");
    assert!(
        info["end_reason"].as_str().unwrap().contains("timeout"),
        "{info}"
    );
    assert_eq!(
        node.ok(&["volume", "get", "timed", "t"]),
        "before-timeout\n"
    );

    // Clear errors that leave nothing behind.
    let err = node.fails(&["sandbox", "create", "--image", "no-such-image"], 3);
    assert!(err.contains("no-such-image"), "{err}");
    let err = node.fails(&["sandbox", "create", "--from-snapshot", "0123456789ab"], 3);
    assert!(err.contains("0123456789ab"), "{err}");
    let err = node.fails(
        &[
            "sandbox", "create", "--image", "debian", "--volume", "nope:/v",
        ],
        3,
    );
    assert!(err.contains("nope"), "{err}");
    let err = node.fails(
        &[
            "sandbox",
            "create",
            "--image",
            "debian",
            "--runtime",
            "crun",
        ],
        7,
    );
    assert!(err.contains("runsc or runc"), "{err}");
    node.fails(
        &[
            "sandbox", "create", "--image", "debian", "--volume", "relative",
        ],
        2,
    );
    // A bind through a link of the image would make directories on the
    // host: refused (Debian's /lib is a link to /usr/lib).
    let err = node.fails(
        &[
            "sandbox",
            "create",
            "--image",
            "debian",
            "--volume",
            "timed:/lib/escape",
        ],
        7,
    );
    assert!(err.contains("symbolic link"), "{err}");
    assert!(!Path::new("/usr/lib/escape").exists());
    node.fails(&["sandbox", "exec", "0123456789ab", "--", "true"], 3);
    assert_eq!(
        node.json(&["sandbox", "ls", "--all"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(node.json(&["mounts"]).as_array().unwrap().len(), 0);
    // Refused requests leave no directory either: only the timed one's.
    let dirs = std::fs::read_dir(node.home().join("sandboxes"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1, "a refused sandbox left a directory");

    // A daemon that dies under its sandboxes: the next one lists them as
    // gone (their roots went with it), never half-known, and their volume
    // writes are committed.
    node.ok(&["volume", "create", "kept"]);
    let orphan = node.create(&["--image", "debian", "--volume", "kept:/v"]);
    node.sh_ok(&orphan, "echo before-the-crash > /v/k && sync /v/k");
    node.stop_daemon(libc::SIGKILL);
    node.start_daemon();
    let info = node.show(&orphan);
    assert_eq!(info["state"], "gone", "{info}");
    assert_eq!(
        node.ok(&["volume", "get", "kept", "k"]),
        "before-the-crash\n"
    );
    assert_eq!(node.json(&["sandbox", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(node.json(&["mounts"]).as_array().unwrap().len(), 0);
    // Human output: dates and durations, not raw seconds.
    let text = node.ok(&["sandbox", "show", &timed]);
    assert!(text.contains(" UTC") && text.contains("later"), "{text}");

    // Ended sandboxes are forgotten on request; a running one is not.
    let running = node.create(&["--image", "debian"]);
    let err = node.fails(&["sandbox", "rm", &running], 7);
    assert!(err.contains("terminate it first"), "{err}");
    node.ok(&["sandbox", "rm", &timed, &orphan]);
    let all = node.json(&["sandbox", "ls", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    node.fails(&["sandbox", "show", &timed], 3);
    node.ok(&["sandbox", "terminate", &running]);

    // The runtime missing: which package to install.
    let mut bare = Node::start_with(node.exe.clone(), Some("/nonexistent".into()));
    let debian = fixtures::require::debian_rootfs("bookworm-minbase").unwrap();
    bare.ok(&[
        "image",
        "import",
        debian.to_str().unwrap(),
        "--name",
        "debian",
    ]);
    let err = bare.fails(&["sandbox", "create", "--image", "debian"], 3);
    assert!(err.contains("apt-get install runsc"), "{err}");
    assert_eq!(
        bare.json(&["sandbox", "ls", "--all"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let dirs = std::fs::read_dir(bare.home().join("sandboxes"))
        .unwrap()
        .count();
    assert_eq!(dirs, 0, "a refused sandbox left a directory");
    bare.stop_daemon(libc::SIGTERM);
    drop(bare);
}
