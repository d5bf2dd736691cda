//! The 9P server against the Linux kernel's own 9p client: Debian's kernel
//! boots in QEMU (TCG) from the initramfs `fixtures/guest-9p.sh` builds,
//! reaches the server through a virtio-serial port (a socket to the
//! daemon's 9P listener, relayed into `trans=fd`), and runs
//! `fixtures/guest/ops.sh` — the same script against `diod` exporting an
//! identical tree, the two outputs compared line by line. A second guest
//! boots with a Strata image of Debian as its root filesystem.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use base64::Engine;
use common::{json, snapctl, Daemon};

/// Run at msize 256 KiB in the mounted tree (`strata.mode=cmd`).
const LARGE_MESSAGES: &str = r#"
if grep -q 'msize=262144' /proc/mounts; then echo "RESULT PASS msize 262144"; else echo "RESULT FAIL msize: $(grep 9p /proc/mounts)"; fi
dd if=/dev/urandom of=/tmp/rand bs=1M count=64 2>/dev/null
if dd if=/tmp/rand of=big256.bin bs=1M conv=fsync 2>/dev/null; then echo "RESULT PASS dd_write 64 MiB"; else echo "RESULT FAIL dd_write"; fi
if dd if=big256.bin of=/tmp/back bs=1M 2>/dev/null; then echo "RESULT PASS dd_read 64 MiB"; else echo "RESULT FAIL dd_read"; fi
if cmp /tmp/rand /tmp/back; then echo "RESULT PASS dd_compare"; else echo "RESULT FAIL dd_compare"; fi
rm -f /tmp/rand /tmp/back
if dd if=/dev/urandom of=big8 bs=1M count=8 2>/dev/null && sync; then echo "RESULT PASS dd_then_sync"; else echo "RESULT FAIL dd_then_sync"; fi
if [ "$(stat -c %s big8)" = 8388608 ] && rm big8; then echo "RESULT PASS size"; else echo "RESULT FAIL size"; fi
"#;

/// The built guest (kernel + initramfs), or why it cannot run here.
fn guest() -> Result<PathBuf, String> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(
            "qemu-system-x86_64 is not installed (fixtures/guest-9p.sh installs it)".into(),
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/guest-9p.sh");
    let out = Command::new(&script).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// What a guest printed: its RESULT lines and TIME figures.
struct GuestRun {
    results: Vec<String>,
    times: Vec<(String, u64)>,
    console: String,
}

/// Boots the guest with its 9p port connected to `socket`.
fn boot(guest: &Path, socket: &Path, append: &str) -> GuestRun {
    let started = Instant::now();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/boot-guest-9p.sh");
    let out = Command::new(script)
        .arg(guest)
        .arg(socket)
        .args(append.split_whitespace())
        .output()
        .expect("run qemu-system-x86_64");
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        console.contains("GUEST DONE"),
        "the guest did not finish ({:?}, {:.0?}):\n{console}\n{}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    let results = console
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(str::to_string)
        .collect();
    let times = console
        .lines()
        .filter_map(|l| l.strip_prefix("TIME "))
        .filter_map(|l| {
            let (name, ms) = l.split_once(' ')?;
            Some((name.to_string(), ms.trim().parse().ok()?))
        })
        .collect();
    eprintln!("guest run took {:.1?}", started.elapsed());
    GuestRun {
        results,
        times,
        console,
    }
}

fn sh(command: &str) {
    let status = Command::new("sh").arg("-c").arg(command).status().unwrap();
    assert!(status.success(), "{command}");
}

/// The tree both servers export: what ops.sh expects, plus a few hundred
/// files of assorted sizes for `tar` to walk.
fn make_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("dir/nested")).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from the tree\n").unwrap();
    std::fs::write(dir.join("dir/a.txt"), "aaa\n").unwrap();
    std::fs::write(dir.join("dir/b.txt"), "bbb\n").unwrap();
    std::fs::write(dir.join("dir/nested/deep.txt"), "deep\n").unwrap();
    std::os::unix::fs::symlink("dir/a.txt", dir.join("link")).unwrap();
    let mut seed = 0x243f6a8885a308d3u64;
    for d in 0..8 {
        let sub = dir.join(format!("docs/d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..40 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 40) as usize % 40_000;
            let bytes: Vec<u8> = (0..len).map(|i| (seed as usize + i * 31) as u8).collect();
            std::fs::write(sub.join(format!("f{f}.bin")), bytes).unwrap();
        }
    }
    sh(&format!(
        "chmod 644 {0}/hello.txt {0}/dir/*.txt && chmod 755 {0}/dir",
        dir.display()
    ));
}

fn assert_all_pass(name: &str, run: &GuestRun) {
    let failed: Vec<_> = run
        .results
        .iter()
        .filter(|r| !r.starts_with("PASS"))
        .collect();
    assert!(
        failed.is_empty() && !run.results.is_empty(),
        "{name}: failed operations {failed:?}\nconsole:\n{}",
        run.console
    );
}

#[test]
fn kernel_9p_client_agrees_with_diod_and_boots_a_debian_root() {
    let guest = match guest() {
        Ok(g) => g,
        Err(reason) => {
            fixtures::require::facility(false, &reason);
            return;
        }
    };
    if !common::fuse_available() {
        return;
    }
    let which_diod = Command::new("sh")
        .args(["-c", "command -v diod"])
        .output()
        .unwrap();
    assert!(
        which_diod.status.success(),
        "diod is missing although fixtures/guest-9p.sh installs it"
    );
    let diod_bin = String::from_utf8_lossy(&which_diod.stdout)
        .trim()
        .to_string();

    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let tree = base.join("tree");
    make_tree(&tree);

    // diod exports a copy of the tree.
    let export = base.join("export");
    sh(&format!("cp -a {} {}", tree.display(), export.display()));
    let diod_sock = base.join("diod.sock");
    let mut diod = Command::new(&diod_bin)
        .args(["-f", "-n", "-L", "stderr", "-e"])
        .arg(&export)
        .arg("-l")
        .arg(&diod_sock)
        .spawn()
        .expect("start diod");
    for _ in 0..100 {
        if diod_sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let diod_run = boot(
        &guest,
        &diod_sock,
        &format!("strata.mode=ops strata.aname={}", export.display()),
    );
    let _ = diod.kill();
    let _ = diod.wait();

    // Strata serves the tree imported as an image, mounted by the daemon.
    let home = base.join("home");
    assert!(snapctl(&home, &["store", "init"]).status.success());
    let _daemon = Daemon::start(&home);
    let tree_arg = tree.display().to_string();
    let out = snapctl(&home, &["image", "import", &tree_arg, "--name", "ops"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_arg = mnt.display().to_string();
    let out = snapctl(&home, &["--json", "mount", "--image", "ops", &mnt_arg]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let sock = base.join("strata.sock");
    let listen = format!("unix:{}", sock.display());
    let out = snapctl(&home, &["--json", "serve9p", &mnt_arg, "--listen", &listen]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(json(&out)["listen"], listen.as_str());
    let strata_run = boot(&guest, &sock, "strata.mode=ops");
    // Defect 12 of issue 14: the kernel's client stalled for good the first
    // time a request did not fit into the relay's pipe (any request over
    // 64 KiB). 64 MiB each way at 256 KiB messages (64 KiB: ops.sh above),
    // and the reported `dd; sync`.
    let large = boot(
        &guest,
        &sock,
        &format!(
            "strata.mode=cmd strata.msize=262144 strata.cmd={}",
            base64::engine::general_purpose::STANDARD.encode(LARGE_MESSAGES)
        ),
    );

    assert_all_pass("diod", &diod_run);
    assert_all_pass("strata", &strata_run);
    assert_all_pass("strata, 256 KiB messages", &large);
    assert_eq!(large.results.len(), 8, "{:?}", large.results);
    assert_eq!(
        strata_run.results, diod_run.results,
        "the same script through the kernel's client must give the same lines"
    );
    eprintln!("guest smoke figures, diod: {:?}", diod_run.times);
    eprintln!("guest smoke figures, strata: {:?}", strata_run.times);

    // What the guest did is what the FUSE frontend of the same mount shows.
    use std::os::unix::fs::MetadataExt;
    let big = std::fs::metadata(mnt.join("big.bin")).unwrap();
    assert_eq!(big.len(), 64 << 20);
    let big = std::fs::metadata(mnt.join("big256.bin")).unwrap();
    assert_eq!(big.len(), 64 << 20);
    let hello = std::fs::metadata(mnt.join("hello.txt")).unwrap();
    assert_eq!(
        (hello.uid(), hello.gid(), hello.len(), hello.mode() & 0o7777),
        (1234, 5678, 100_000, 0o600)
    );
    assert_eq!(
        std::fs::read_link(mnt.join("sl")).unwrap(),
        Path::new("hello.txt")
    );
    assert!(!mnt.join("many").exists() && !mnt.join("d9").exists());
    let a = std::fs::metadata(mnt.join("dir/a.txt")).unwrap();
    assert_eq!((a.nlink(), a.mode() & 0o7777), (2, 0o4755));
    // The 9P listener is listed with its session, and stops on request.
    let out = snapctl(&home, &["--json", "serve9p", "--list"]);
    let list = json(&out);
    assert_eq!(list[0]["sessions_total"], 2);
    assert!(list[0]["requests"].as_u64().unwrap() > 1000);
    let out = snapctl(&home, &["serve9p", "--stop", &listen]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(!sock.exists());

    // A Debian image as the guest's root filesystem.
    let rootfs = Path::new("/var/cache/strata-fixtures/bookworm-minbase");
    if !rootfs.join("etc/debian_version").exists() {
        panic!(
            "{} is missing: test.sh builds it with fixtures/debian-rootfs.sh",
            rootfs.display()
        );
    }
    let out = snapctl(
        &home,
        &[
            "image",
            "import",
            &rootfs.display().to_string(),
            "--name",
            "debian",
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let root_mnt = base.join("root-mnt");
    std::fs::create_dir_all(&root_mnt).unwrap();
    let root_arg = root_mnt.display().to_string();
    let out = snapctl(&home, &["--json", "mount", "--image", "debian", &root_arg]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mount_id = json(&out)["id"].as_str().unwrap().to_string();
    let root_sock = base.join("root.sock");
    let root_listen = format!("unix:{}", root_sock.display());
    // Served by attach name: the listener serves every mount.
    let out = snapctl(&home, &["serve9p", "--listen", &root_listen]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let command = r#"
        echo "RESULT PASS shell $(readlink /proc/$$/exe)"
        n=$(dpkg -l | grep -c '^ii')
        if [ "$n" -gt 50 ]; then echo "RESULT PASS dpkg -l lists $n packages"; else echo "RESULT FAIL dpkg -l: $n"; fi
        v=$(apt-get --version | head -n 1)
        case "$v" in apt\ *) echo "RESULT PASS $v";; *) echo "RESULT FAIL apt-get --version: $v";; esac
        . /etc/os-release && echo "RESULT PASS $PRETTY_NAME"
        echo written-by-the-guest > /root/guest-note.txt && echo "RESULT PASS write"
    "#;
    let encoded = base64::engine::general_purpose::STANDARD.encode(command);
    let root_run = boot(
        &guest,
        &root_sock,
        &format!("strata.mode=root strata.aname={mount_id} strata.cmd={encoded}"),
    );
    assert_all_pass("debian root", &root_run);
    assert!(
        root_run.results.iter().any(|r| r.contains("dpkg -l lists"))
            && root_run.results.iter().any(|r| r.starts_with("PASS apt "))
            && root_run
                .results
                .iter()
                .any(|r| r.contains("Debian GNU/Linux 12")),
        "{:?}",
        root_run.results
    );
    eprintln!("debian root: {:?}", root_run.results);
    // The guest's write landed in the mount's upper layer: the FUSE view of
    // the same mount shows it; the image itself is unchanged.
    assert_eq!(
        std::fs::read_to_string(root_mnt.join("root/guest-note.txt")).unwrap(),
        "written-by-the-guest\n"
    );
    assert!(!rootfs.join("root/guest-note.txt").exists());
    let other = base.join("other-mnt");
    std::fs::create_dir_all(&other).unwrap();
    let other_arg = other.display().to_string();
    let out = snapctl(&home, &["mount", "--image", "debian", &other_arg]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(!other.join("root/guest-note.txt").exists());
}
