//! `snapctl serve9p` through the daemon: TCP and an inherited socket
//! (passed to the daemon with SCM_RIGHTS), attach names, bad requests, and
//! listeners ending with their mount.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{code, json, snapctl, stderr, Daemon};
use p9server::client::{Client, ClientError};
use p9server::Listen;

fn read_file(c: &mut Client, path: &str) -> Vec<u8> {
    c.walk(0, 1, path).unwrap();
    c.lopen(1, libc::O_RDONLY as u32).unwrap();
    let data = c.read(1, 0, 4096).unwrap().to_vec();
    c.clunk(1).unwrap();
    data
}

/// A store under `base/home` with its daemon running and an image `img`
/// of one file, `motd`, holding `motd`.
fn daemon_with_image(base: &std::path::Path, motd: &str) -> (std::path::PathBuf, Daemon) {
    let src = base.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("motd"), motd).unwrap();
    let home = base.join("home");
    assert!(snapctl(&home, &["store", "init"]).status.success());
    let daemon = Daemon::start(&home);
    let src_arg = src.display().to_string();
    assert!(
        snapctl(&home, &["image", "import", &src_arg, "--name", "img"])
            .status
            .success()
    );
    (home, daemon)
}

#[test]
fn serve9p_over_tcp_and_an_inherited_socket() {
    if !common::fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (home, _daemon) = daemon_with_image(base, "served over 9p\n");
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_arg = mnt.display().to_string();
    let out = snapctl(&home, &["--json", "mount", "--image", "img", &mnt_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json(&out)["id"].as_str().unwrap().to_string();

    // TCP on a port the daemon picks.
    let out = snapctl(
        &home,
        &["--json", "serve9p", &id, "--listen", "tcp:127.0.0.1:0"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listen = json(&out)["listen"].as_str().unwrap().to_string();
    assert!(listen.starts_with("tcp:127.0.0.1:") && !listen.ends_with(":0"));
    let address: Listen = listen.parse().unwrap();
    let mut c = Client::connect(&address, 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    assert_eq!(read_file(&mut c, "motd"), b"served over 9p\n");
    // A listener bound to a mount answers other attach names with ENOENT.
    assert!(matches!(
        c.attach(5, "some-other-mount", 0),
        Err(ClientError::Remote(e)) if e == libc::ENOENT as u32
    ));
    // Writes through 9P show in the FUSE view of the same mount.
    c.walk(0, 2, "").unwrap();
    c.lcreate(2, "from-9p", 0o644).unwrap();
    c.write(2, 0, b"written over tcp").unwrap();
    c.clunk(2).unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("from-9p")).unwrap(),
        "written over tcp"
    );

    // An inherited socket: snapctl passes its descriptor 3 to the daemon.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapctl"));
    cmd.arg("--home")
        .arg(&home)
        .args(["serve9p", &mnt_arg, "--listen", "fd:3"])
        .env_remove("STRATA_HOME");
    // SAFETY: dup2 in the child between fork and exec, on descriptors
    // this process owns; async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(theirs_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    drop(theirs);
    let mut c = Client::over(Box::new(ours), 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    assert_eq!(read_file(&mut c, "from-9p"), b"written over tcp");

    // Bad requests: clear errors, nothing started.
    let out = snapctl(&home, &["serve9p", "nope", "--listen", "tcp:127.0.0.1:0"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("no mount with id or mount point 'nope'"));
    let out = snapctl(&home, &["serve9p", &id, "--listen", "udp:1.2.3.4:5"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("unix:PATH, tcp:HOST:PORT or fd:N"));
    let busy = base.join("busy.sock");
    std::fs::write(&busy, "").unwrap();
    let out = snapctl(
        &home,
        &[
            "serve9p",
            &id,
            "--listen",
            &format!("unix:{}", busy.display()),
        ],
    );
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("listening on unix:"),
        "{}",
        stderr(&out)
    );
    let list = json(&snapctl(&home, &["--json", "serve9p", "--list"]));
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Ending the mount ends its listeners and their sessions.
    assert!(snapctl(&home, &["umount", &mnt_arg]).status.success());
    let list = json(&snapctl(&home, &["--json", "serve9p", "--list"]));
    assert_eq!(list.as_array().unwrap().len(), 0);
    assert!(c.getattr(0).is_err(), "a session outlived its mount");
    let out = snapctl(&home, &["serve9p", "--stop", &listen]);
    assert_eq!(code(&out), 3);
}

/// A mount with no FUSE mount point, served over 9P alone (a VM sandbox's
/// root): made, listed, written through 9P, restored by the next daemon
/// after a SIGKILL with what was synced, and ended by id.
#[test]
fn a_mount_without_fuse_is_served_over_9p_and_survives_a_killed_daemon() {
    if !common::fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (home, daemon) = daemon_with_image(base, "served over 9p alone\n");
    // Neither a mount point nor --no-fuse: a usage error.
    let out = snapctl(&home, &["mount", "--image", "img"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = snapctl(&home, &["--json", "mount", "--image", "img", "--no-fuse"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json(&out)["id"].as_str().unwrap().to_string();
    assert!(json(&out)["mountpoint"].is_null());
    let mounts = json(&snapctl(&home, &["--json", "mounts"]));
    assert_eq!(mounts[0]["id"], id.as_str());
    assert!(mounts[0]["mountpoint"].is_null());

    let sock = base.join("9p.sock");
    let listen = format!("unix:{}", sock.display());
    let out = snapctl(&home, &["serve9p", &id, "--listen", &listen]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut c = Client::connect(&listen.parse().unwrap(), 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    assert_eq!(read_file(&mut c, "motd"), b"served over 9p alone\n");
    c.walk(0, 2, "").unwrap();
    c.lcreate(2, "synced", 0o644).unwrap();
    c.write(2, 0, b"made durable by fsync").unwrap();
    c.call(&p9server::proto::Request::Fsync {
        fid: 2,
        datasync: 0,
    })
    .unwrap();
    c.clunk(2).unwrap();
    // The reaper leaves it alone (it has no FUSE session to end).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        json(&snapctl(&home, &["--json", "mounts"]))[0]["id"],
        id.as_str()
    );

    // A killed daemon: the next one restores the mount, still without FUSE.
    drop(c);
    daemon.stop(libc::SIGKILL);
    let _daemon = Daemon::start(&home);
    let mounts = json(&snapctl(&home, &["--json", "mounts"]));
    assert_eq!(mounts[0]["id"], id.as_str());
    assert!(mounts[0]["mountpoint"].is_null());
    let _ = std::fs::remove_file(&sock);
    let out = snapctl(&home, &["serve9p", &id, "--listen", &listen]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut c = Client::connect(&listen.parse().unwrap(), 65536).unwrap();
    c.attach(0, "", 0).unwrap();
    assert_eq!(read_file(&mut c, "synced"), b"made durable by fsync");
    drop(c);
    let out = snapctl(&home, &["umount", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&snapctl(&home, &["--json", "mounts"])),
        serde_json::json!([])
    );
}
