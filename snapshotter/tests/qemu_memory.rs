//! A QEMU guest end to end (TCG): a guest counting in RAM (the count is a
//! shell variable, printed on the console) runs with its RAM in a shared
//! file (`memory-backend-file,share=on`). It is paused, its device state
//! saved beside the RAM file with `migrate "exec:cat > FILE"` and the
//! `x-ignore-shared` capability, and the directory stored as a memory
//! snapshot — twice, the second with the first as parent. The guest is
//! restored from Strata alone (`mem get --dir`) and counts on from where
//! it stopped; two forks of one snapshot each store almost nothing beyond
//! it.
//!
//! Needs root, `qemu-system-x86_64` and the guest `fixtures/guest-9p.sh`
//! builds (its init's `strata.mode=count`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const RAM_MIB: u64 = 256;

/// The built guest (kernel + initramfs), or `None` (with the reason
/// printed, or a failure under CI) when it cannot run here.
fn guest() -> Option<PathBuf> {
    if !fixtures::require::root() || !fixtures::require::program("qemu-system-x86_64") {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/guest-9p.sh");
    let out = Command::new(&script)
        .output()
        .expect("run fixtures/guest-9p.sh");
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A QEMU process with its QMP connection; killed when dropped.
struct Vm {
    child: Child,
    qmp: BufReader<UnixStream>,
    console: PathBuf,
}

impl Vm {
    /// Boots the counting guest with its RAM in `ram` (created at the
    /// guest's size if missing); with `incoming`, waits for a migration
    /// stream instead of booting afresh.
    fn start(guest: &Path, dir: &Path, name: &str, ram: &Path, incoming: bool) -> Vm {
        if !ram.exists() {
            std::fs::File::create(ram)
                .unwrap()
                .set_len(RAM_MIB << 20)
                .unwrap();
        }
        let qmp_path = dir.join(format!("{name}.qmp"));
        let console = dir.join(format!("{name}.console"));
        let _ = std::fs::remove_file(&qmp_path);
        // Started directly (not under timeout(1)), so dropping the Vm
        // kills QEMU itself; every wait below is bounded.
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-nodefaults", "-no-reboot"])
            .args(["-display", "none", "-m", &format!("{RAM_MIB}M")])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=mem,size={RAM_MIB}M,mem-path={},share=on",
                ram.display()
            ))
            .args(["-machine", "pc,memory-backend=mem"])
            .arg("-kernel")
            .arg(guest.join("vmlinuz"))
            .arg("-initrd")
            .arg(guest.join("initramfs.gz"))
            .args(["-append", "console=ttyS0 quiet panic=-1 strata.mode=count"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let child = cmd.spawn().expect("start qemu-system-x86_64");
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match UnixStream::connect(&qmp_path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "QMP socket: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let mut vm = Vm {
            child,
            qmp: BufReader::new(stream),
            console,
        };
        let mut greeting = String::new();
        vm.qmp.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        vm.cmd("qmp_capabilities", json!({}));
        vm
    }

    /// Runs one QMP command; its `return` value (events are skipped).
    fn cmd(&mut self, execute: &str, arguments: Value) -> Value {
        let line = json!({ "execute": execute, "arguments": arguments }).to_string() + "\n";
        self.qmp.get_mut().write_all(line.as_bytes()).unwrap();
        loop {
            let mut answer = String::new();
            assert!(self.qmp.read_line(&mut answer).unwrap() > 0, "QMP closed");
            let value: Value = serde_json::from_str(&answer).unwrap();
            if value.get("event").is_some() {
                continue;
            }
            assert!(value.get("error").is_none(), "{execute}: {value}");
            return value["return"].clone();
        }
    }

    /// Waits for the migration (outgoing or incoming) to complete.
    fn wait_migrated(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.cmd("query-migrate", json!({}));
            match status["status"].as_str() {
                Some("completed") => return,
                Some("failed") | Some("cancelled") => panic!("migration: {status}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "migration: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Leaves the RAM out of the migration stream: it stays in the shared
    /// file.
    fn ignore_shared(&mut self) {
        self.cmd(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
        );
    }

    /// Pauses the guest and saves its device state to `state` (its RAM
    /// stays in the shared file); the count it had reached.
    fn pause_and_save(&mut self, state: &Path) -> u64 {
        self.cmd("stop", json!({}));
        self.ignore_shared();
        self.cmd(
            "migrate",
            json!({ "uri": format!("exec:cat > {}", state.display()) }),
        );
        self.wait_migrated();
        self.counts().last().copied().expect("the guest counted")
    }

    /// Restores device state from `state` (RAM from the file it was
    /// started with) and lets the guest run.
    fn resume_from(&mut self, state: &Path) {
        self.ignore_shared();
        self.cmd(
            "migrate-incoming",
            json!({ "uri": format!("exec:cat {}", state.display()) }),
        );
        self.wait_migrated();
        self.cmd("cont", json!({}));
    }

    /// The counts printed so far.
    fn counts(&self) -> Vec<u64> {
        std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("COUNT "))
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    }

    /// Waits until the guest has printed at least `n` counts.
    fn wait_counts(&self, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let counts = self.counts();
            if counts.len() >= n {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "the guest printed {} counts: {}",
                counts.len(),
                std::fs::read_to_string(&self.console).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mem_put(home: &Path, dir: &Path, parent: Option<&str>) -> Value {
    let mut args = vec!["--json", "mem", "put", "--dir", dir.to_str().unwrap()];
    if let Some(parent) = parent {
        args.extend(["--parent", parent]);
    }
    json(&must(snapctl(home, &args)))
}

fn mem_get(home: &Path, id: &str, dir: &Path) {
    must(snapctl(
        home,
        &["mem", "get", "--dir", id, dir.to_str().unwrap()],
    ));
}

/// Bytes a snapshot stored beyond what its parent (or the store) had.
fn stored(snapshot: &Value) -> u64 {
    snapshot["memory"]["stored_bytes"].as_u64().unwrap()
}

#[test]
fn a_qemu_guest_counts_on_after_restore_from_strata_and_forks_store_almost_nothing() {
    let Some(guest) = guest() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    must(snapctl(&home, &["store", "init"]));
    let _daemon = Daemon::start(&home);

    // A guest counting, its checkpoint directory the RAM file's.
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let mut vm = Vm::start(&guest, dir.path(), "first", &live.join("ram"), false);
    vm.wait_counts(3);
    let first_count = vm.pause_and_save(&live.join("state"));
    let first = mem_put(&home, &live, None);
    let first_id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first["memory"]["files"], 2, "{first}");

    // It runs on; the second snapshot has the first as parent and stores
    // only what changed.
    vm.cmd("cont", json!({}));
    vm.wait_counts(first_count as usize + 5);
    let second_count = vm.pause_and_save(&live.join("state"));
    assert!(second_count >= first_count + 4);
    let second = mem_put(&home, &live, Some(&first_id));
    let second_id = second["id"].as_str().unwrap().to_string();
    let ram_bytes = RAM_MIB << 20;
    assert!(
        stored(&second) * 10 < stored(&first),
        "the second snapshot stored {} bytes, the first {}",
        stored(&second),
        stored(&first)
    );
    eprintln!(
        "guest of {RAM_MIB} MiB: first snapshot stored {} bytes, its child {} ({} new pages)",
        stored(&first),
        stored(&second),
        second["memory"]["pages"]["new"]
    );
    drop(vm);
    std::fs::remove_dir_all(&live).unwrap();

    // Restored eagerly from Strata alone, it counts on from where it
    // stopped (the count lives only in the guest's RAM).
    let restored = dir.path().join("restored");
    mem_get(&home, &second_id, &restored);
    let ram_meta = std::fs::metadata(restored.join("ram")).unwrap();
    assert_eq!(ram_meta.len(), ram_bytes);
    {
        use std::os::unix::fs::MetadataExt;
        assert!(
            ram_meta.blocks() * 512 < ram_bytes,
            "the restored RAM file is not sparse"
        );
    }
    let mut vm = Vm::start(&guest, dir.path(), "restored", &restored.join("ram"), true);
    vm.resume_from(&restored.join("state"));
    let counts = vm.wait_counts(3);
    assert_eq!(
        counts[0],
        second_count + 1,
        "after restore the guest printed {counts:?}; it stopped at {second_count}"
    );
    assert!(counts.windows(2).all(|w| w[1] == w[0] + 1), "{counts:?}");
    drop(vm);

    // Two forks of the second snapshot, each from a mount of it: the RAM
    // file is mapped shared from the mount (pages come in through FUSE as
    // the guest touches them) and each fork's writes go to its own upper
    // layer. Each snapshot of a fork stores almost nothing beyond it.
    let mut forks = Vec::new();
    for name in ["fork-a", "fork-b"] {
        let at = dir.path().join(name);
        std::fs::create_dir(&at).unwrap();
        must(snapctl(
            &home,
            &["mount", "--snapshot", &second_id, at.to_str().unwrap()],
        ));
        let mut vm = Vm::start(&guest, dir.path(), name, &at.join("ram"), true);
        vm.resume_from(&at.join("state"));
        forks.push((at, vm));
    }
    for (at, vm) in &mut forks {
        let counts = vm.wait_counts(3);
        assert_eq!(counts[0], second_count + 1, "{counts:?}");
        vm.pause_and_save(&at.join("state"));
        let fork = mem_put(&home, at, Some(&second_id));
        eprintln!("a fork stored {} bytes", stored(&fork));
        assert!(
            stored(&fork) < ram_bytes / 50,
            "a fork stored {} bytes of a {ram_bytes}-byte guest",
            stored(&fork)
        );
        assert!(stored(&fork) * 10 < stored(&first), "{fork}");
    }
    drop(forks);
    // The forks wrote into their own upper layers: each mount has used
    // space of its own, and a fresh mount of the snapshot still holds
    // exactly what was stored.
    let used = mounts_used(&home);
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(used.iter().all(|&u| u > 0), "{used:?}");
    let a = std::fs::read(dir.path().join("fork-a/ram")).unwrap();
    let b = std::fs::read(dir.path().join("fork-b/ram")).unwrap();
    assert!(a != b, "the two forks share their RAM");
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    must(snapctl(
        &home,
        &["mount", "--snapshot", &second_id, fresh.to_str().unwrap()],
    ));
    let again = dir.path().join("again");
    mem_get(&home, &second_id, &again);
    assert!(
        std::fs::read(fresh.join("ram")).unwrap() == std::fs::read(again.join("ram")).unwrap(),
        "a mount of the snapshot differs from the snapshot"
    );
}
