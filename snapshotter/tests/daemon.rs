//! The node daemon and its clients: image and mount commands go through
//! `snapctl daemon`; its API is versioned; mounts are isolated, end cleanly,
//! and the mounts of a killed daemon are restored by the next one.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn init_with_source(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let home = dir.join("home");
    assert_eq!(code(&snapctl(&home, &["store", "init"])), 0);
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), b"welcome\n").unwrap();
    (home, src)
}

/// A store in `dir` with the image `tiny` (its `/etc/motd` says
/// "welcome"), and its daemon.
fn daemon_with_tiny(dir: &Path) -> (std::path::PathBuf, Daemon) {
    let (home, src) = init_with_source(dir);
    let daemon = Daemon::start(&home);
    let out = snapctl(
        &home,
        &["image", "import", src.to_str().unwrap(), "--name", "tiny"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    (home, daemon)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn commands_that_need_the_daemon_say_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _) = init_with_source(dir.path());
    for args in [&["image", "ls"][..], &["mounts"], &["umount", "x"]] {
        let out = snapctl(&home, args);
        assert_eq!(code(&out), 8, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no node daemon is running") && stderr(&out).contains("daemon`"),
            "{}",
            stderr(&out)
        );
    }
    // With --json the failure is JSON too.
    let out = snapctl(&home, &["--json", "image", "ls"]);
    assert_eq!(json(&out)["error"]["kind"], "no_daemon");
}

#[test]
fn images_import_list_export_and_remove_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (home, src) = init_with_source(dir.path());
    let daemon = Daemon::start(&home);

    // A second daemon for the same data directory is refused.
    let second = snapctl(&home, &["daemon"]);
    assert_ne!(code(&second), 0);
    assert!(
        stderr(&second).contains("already serves"),
        "{}",
        stderr(&second)
    );
    // Offline store commands say who holds the store.
    let out = snapctl(&home, &["store", "stats"]);
    assert_eq!(code(&out), 4);
    assert!(
        stderr(&out).contains("node daemon owns it"),
        "{}",
        stderr(&out)
    );

    // A relative source path is resolved by the client.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapctl"))
        .current_dir(dir.path())
        .arg("--home")
        .arg(&home)
        .args(["--json", "image", "import", "src", "--name", "tiny"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["kind"], "directory");
    assert_eq!(report["files"], 1);
    let tree = report["tree"].as_str().unwrap().to_string();

    // The same name again: invalid input, nothing changed.
    let again = snapctl(
        &home,
        &["image", "import", src.to_str().unwrap(), "--name", "tiny"],
    );
    assert_eq!(code(&again), 7, "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let list = json(&snapctl(&home, &["--json", "image", "ls"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["tree"], tree.as_str());

    // Export to a file and to stdout (streamed over the socket): the same
    // archive, and importing it gives the same tree.
    let tar = dir.path().join("tiny.tar");
    let out = snapctl(&home, &["image", "export", "tiny", tar.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let streamed = snapctl(&home, &["image", "export", "tiny", "-"]);
    assert_eq!(code(&streamed), 0, "{}", stderr(&streamed));
    assert_eq!(streamed.stdout, std::fs::read(&tar).unwrap());
    let out = snapctl(
        &home,
        &[
            "--json",
            "image",
            "import",
            tar.to_str().unwrap(),
            "--name",
            "copy",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["tree"], tree.as_str());
    let out = snapctl(&home, &["image", "export", "nope", "-"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));

    // A hostile archive: a clear error and no image.
    let evil = dir.path().join("evil.tar");
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..12].copy_from_slice(b"../../escape");
    header.set_size(0);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&evil, bytes).unwrap();
    let out = snapctl(
        &home,
        &["image", "import", evil.to_str().unwrap(), "--name", "evil"],
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("'..' in path"), "{}", stderr(&out));
    assert_eq!(code(&snapctl(&home, &["image", "show", "evil"])), 3);

    let out = snapctl(&home, &["image", "rm", "tiny"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(code(&snapctl(&home, &["image", "rm", "tiny"])), 3);

    // SIGTERM: a clean exit that removes the socket.
    let status = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(!home.join("snapd.sock").exists());
    assert_eq!(code(&snapctl(&home, &["store", "fsck"])), 0);
}

fn request(conn: &mut UnixStream, reader: &mut impl BufRead, line: &str) -> serde_json::Value {
    conn.write_all(line.as_bytes()).unwrap();
    conn.write_all(b"\n").unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[test]
fn the_api_is_versioned_and_answers_bad_requests_without_dropping_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _) = init_with_source(dir.path());
    let _daemon = Daemon::start(&home);
    let socket = home.join("snapd.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the socket is for its owner only");
    let mut conn = UnixStream::connect(&socket).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());

    let info = request(&mut conn, &mut reader, r#"{"api":1,"op":"daemon.info"}"#);
    assert_eq!(info["ok"], true, "{info}");
    assert_eq!(info["result"]["api"], serde_json::json!([1]));
    assert_eq!(info["result"]["home"], home.to_str().unwrap());

    let newer = request(&mut conn, &mut reader, r#"{"api":2,"op":"daemon.info"}"#);
    assert_eq!(newer["ok"], false);
    assert_eq!(newer["error"]["kind"], "invalid_input");
    assert!(newer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API version 1"));

    let garbage = request(&mut conn, &mut reader, "{not json");
    assert_eq!(garbage["ok"], false);
    let unknown = request(
        &mut conn,
        &mut reader,
        r#"{"api":1,"op":"image.frobnicate"}"#,
    );
    assert_eq!(unknown["ok"], false);
    assert!(unknown["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown operation"));
    let bad_args = request(
        &mut conn,
        &mut reader,
        r#"{"api":1,"op":"image.show","args":{}}"#,
    );
    assert_eq!(bad_args["ok"], false);
    let relative = request(
        &mut conn,
        &mut reader,
        r#"{"api":1,"op":"image.import","args":{"source":"src","name":"x"}}"#,
    );
    assert_eq!(relative["ok"], false);
    assert!(relative["error"]["message"]
        .as_str()
        .unwrap()
        .contains("absolute"));

    // The same connection still works.
    let list = request(&mut conn, &mut reader, r#"{"api":1,"op":"image.list"}"#);
    assert_eq!(list["ok"], true);
    assert_eq!(list["result"], serde_json::json!([]));
}

#[test]
fn one_daemon_serves_isolated_mounts_and_ends_them_cleanly() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (home, daemon) = daemon_with_tiny(dir.path());

    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let out = snapctl(
        &home,
        &[
            "--json",
            "mount",
            "--image",
            "tiny",
            "--quota",
            "1M",
            a.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id_a = json(&out)["id"].as_str().unwrap().to_string();
    let out = snapctl(&home, &["mount", "--image", "tiny", b.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id_b = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(id_a, id_b);
    // The same mount point twice is refused.
    let out = snapctl(&home, &["mount", "--image", "tiny", a.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("already serves"), "{}", stderr(&out));
    let out = snapctl(&home, &["mount", "--image", "nope", b.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));

    // Isolation: each sees the image and only its own writes.
    std::fs::write(a.join("etc/motd"), b"changed in a\n").unwrap();
    std::fs::write(b.join("only-b"), b"b").unwrap();
    assert_eq!(std::fs::read(b.join("etc/motd")).unwrap(), b"welcome\n");
    assert!(!a.join("only-b").exists());
    // The quota given at mount time holds.
    let big = std::fs::write(a.join("big"), vec![1u8; 2 << 20]);
    assert_eq!(big.unwrap_err().raw_os_error(), Some(libc::ENOSPC));

    let mounts = json(&snapctl(&home, &["--json", "mounts"]));
    let mounts = mounts.as_array().unwrap();
    assert_eq!(mounts.len(), 2);
    let entry_a = mounts.iter().find(|m| m["id"] == id_a.as_str()).unwrap();
    assert_eq!(entry_a["quota_bytes"], 1 << 20);
    assert!(entry_a["used_bytes"].as_u64().unwrap() > 0);
    assert!(home.join("mounts").join(&id_a).join("upper").is_dir());

    // Busy: a plain unmount fails and the mount stays.
    let busy = std::fs::File::open(a.join("etc/motd")).unwrap();
    let out = snapctl(&home, &["umount", a.to_str().unwrap()]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(a.join("etc/motd")).unwrap(),
        b"changed in a\n"
    );
    drop(busy);
    let out = snapctl(&home, &["umount", &id_a]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!a.join("etc").exists());
    assert!(
        !home.join("mounts").join(&id_a).exists(),
        "upper layer discarded"
    );
    assert_eq!(code(&snapctl(&home, &["umount", &id_a])), 3);

    // Unmounted from outside: the daemon notices and ends the mount.
    assert!(std::process::Command::new("umount")
        .arg(&b)
        .status()
        .unwrap()
        .success());
    wait_until("the daemon to reap the mount", || {
        json(&snapctl(&home, &["--json", "mounts"]))
            .as_array()
            .unwrap()
            .is_empty()
            && !home.join("mounts").join(&id_b).exists()
    });

    // Killed with mounts: the next daemon recovers each from its upper
    // layer's journal and mounts it again where it was.
    let out = snapctl(&home, &["mount", "--image", "tiny", a.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let script = "set -e; mkdir -p var/log; echo kept > var/log/closed; \
                  dd if=/dev/urandom of=var/blob bs=64k count=20 conv=fsync 2>/dev/null; \
                  mv etc/motd etc/motd.old; echo new > etc/motd; chmod 600 etc/motd; \
                  ln etc/motd etc/motd.hard; ln -s motd.old etc/motd.sym";
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(&a)
        .status()
        .unwrap();
    assert!(status.success());
    let listing = |root: &Path| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("find . -printf '%p %y %m %n %s %T@\\n' | sort; md5sum var/blob var/log/closed etc/motd etc/motd.old")
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let before = listing(&a);
    assert!(!daemon.stop(libc::SIGKILL).success());
    let gone = std::fs::metadata(&a).unwrap_err();
    assert!(layerfs::fuse::server_gone(&gone), "{gone}");
    let daemon = Daemon::start(&home);
    let mounts = json(&snapctl(&home, &["--json", "mounts"]));
    assert_eq!(mounts[0]["id"], id.as_str(), "{mounts}");
    assert_eq!(listing(&a), before);
    // The restored mount keeps working and can be ended as usual.
    std::fs::write(a.join("after"), b"x").unwrap();
    let out = snapctl(&home, &["umount", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(std::fs::read_dir(home.join("mounts"))
        .unwrap()
        .next()
        .is_none());
    // It can mount there again; SIGTERM unmounts everything.
    let out = snapctl(&home, &["mount", "--image", "tiny", a.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(a.join("etc/motd").exists());
    assert!(daemon.stop(libc::SIGTERM).success());
    assert!(!a.join("etc").exists());
    let refs = json(&snapctl(&home, &["--json", "ref", "list"]));
    assert!(
        refs.as_array()
            .unwrap()
            .iter()
            .all(|r| !r["name"].as_str().unwrap_or("").starts_with("mount/")),
        "{refs}"
    );
    assert_eq!(code(&snapctl(&home, &["store", "fsck"])), 0);
}

/// Moves process `pid` into a new pids cgroup allowing `extra` more tasks
/// than it has now; returns the cgroup's directory (removed by the caller).
fn limit_tasks(pid: u32, extra: usize) -> Option<std::path::PathBuf> {
    let root = Path::new("/sys/fs/cgroup/pids");
    if !root.join("cgroup.procs").exists() {
        return None;
    }
    let dir = root.join(format!("strata-test-{pid}"));
    std::fs::create_dir(&dir).ok()?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count();
    std::fs::write(dir.join("pids.max"), (tasks + extra).to_string()).ok()?;
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).ok()?;
    Some(dir)
}

fn release_tasks(pid: u32, dir: &Path) {
    let _ = std::fs::write("/sys/fs/cgroup/pids/cgroup.procs", pid.to_string());
    let _ = std::fs::remove_dir(dir);
}

/// Defect 8 of issue 14: the daemon's accept loop returned when it could
/// not start a thread for a connection — the daemon exited and every mount
/// with it. A connection it cannot serve is turned away; the daemon and its
/// mounts go on.
#[test]
fn a_connection_the_daemon_cannot_serve_is_turned_away_and_the_daemon_lives() {
    if !fixtures::require::root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (home, _) = init_with_source(dir.path());
    let mut daemon = Daemon::start(&home);
    let pid = daemon.child.id();
    let cgroup = limit_tasks(pid, 4);
    if !fixtures::require::facility(
        cgroup.is_some(),
        "no pids cgroup to limit the daemon's tasks",
    ) {
        return;
    }
    let cgroup = cgroup.unwrap();
    // Far more connections at once than threads it may start.
    let conns: Vec<UnixStream> = (0..32)
        .filter_map(|_| UnixStream::connect(home.join("snapd.sock")).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let alive = matches!(daemon.child.try_wait(), Ok(None));
    drop(conns);
    release_tasks(pid, &cgroup);
    assert!(alive, "the daemon exited when it could not start a thread");
    wait_until("the daemon to answer again", || {
        snapctl(&home, &["mounts"]).status.success()
    });
}

/// Defect 8 of issue 14: API connections were not capped (a thread each).
/// Past the cap a connection gets one error line and is closed, and the
/// daemon still answers.
#[test]
fn api_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _) = init_with_source(dir.path());
    let _daemon = Daemon::start(&home);
    let socket = home.join("snapd.sock");
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..300 {
        let conn = UnixStream::connect(&socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        if reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            refused = Some(line);
            break;
        }
        held.push(conn);
    }
    let refused = refused.expect("300 idle connections were all accepted");
    let answer: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connections"),
        "{answer}"
    );
    assert!(held.len() >= 16, "only {} connections held", held.len());
    drop(held);
    wait_until("a connection to be served again", || {
        snapctl(&home, &["mounts"]).status.success()
    });
}

/// Defect 8 of issue 14: a mount's FUSE thread count was not validated.
#[test]
fn a_mount_with_an_absurd_thread_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (home, src) = init_with_source(dir.path());
    let _daemon = Daemon::start(&home);
    let out = snapctl(
        &home,
        &["image", "import", src.to_str().unwrap(), "--name", "tiny"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let socket = home.join("snapd.sock");
    let mut conn = UnixStream::connect(&socket).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    for threads in [0, 1_000_000] {
        let line = format!(
            r#"{{"api":1,"op":"mount.create","args":{{"image":"tiny","quota_bytes":1048576,"threads":{threads}}}}}"#
        );
        let answer = request(&mut conn, &mut reader, &line);
        assert_eq!(answer["ok"], false, "threads {threads}: {answer}");
        assert_eq!(answer["error"]["kind"], "invalid_input", "{answer}");
    }
    let mounts = request(&mut conn, &mut reader, r#"{"api":1,"op":"mount.list"}"#);
    assert_eq!(mounts["result"], serde_json::json!([]));
}

/// Defect 6 of issue 14: imports ran on the daemon's connection threads
/// at the priority of everything that serves mounts, so a hostile archive
/// (a sparse bomb) kept a core of the daemon busy for minutes. An import
/// runs on a thread of its own at the lowest priority, and the daemon's
/// mounts answer meanwhile.
#[test]
fn an_import_runs_at_low_priority_while_mounts_are_served() {
    if !fixtures::require::fuse() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (home, daemon) = daemon_with_tiny(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = snapctl(&home, &["mount", "--image", "tiny", mnt.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // An archive that arrives slowly, through a fifo: the import waits on
    // it for as long as the test likes.
    let fifo = dir.path().join("slow.tar");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let importer = {
        let (home, fifo) = (home.clone(), fifo.clone());
        std::thread::spawn(move || {
            snapctl(
                &home,
                &[
                    "image",
                    "import",
                    fifo.to_str().unwrap(),
                    "--name",
                    "slow",
                    "--format",
                    "tar",
                ],
            )
        })
    };
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let pid = daemon.child.id();
    let mut nice = None;
    wait_until("the import's thread", || {
        nice = import_thread_nice(pid);
        nice.is_some()
    });
    assert_eq!(nice, Some(19), "the import runs at the lowest priority");
    // The mount answers while the import waits.
    assert_eq!(std::fs::read(mnt.join("etc/motd")).unwrap(), b"welcome\n");
    assert_eq!(code(&snapctl(&home, &["mounts"])), 0);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "arrived", &b"slowly"[..])
        .unwrap();
    feed.write_all(&tar.into_inner().unwrap()).unwrap();
    drop(feed);
    let out = importer.join().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// The nice value of the daemon's thread named `import`, if it has one.
fn import_thread_nice(pid: u32) -> Option<i64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == "import" {
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            // Fields after the command name (which ends with ')'): state is
            // field 3; nice is field 19.
            let rest = &stat[stat.rfind(')')? + 2..];
            return rest.split_whitespace().nth(16)?.parse().ok();
        }
    }
    None
}

/// The API's request lines under damage (the bounded, stable-Rust side of
/// fuzzing the daemon's API): valid requests of every harmless kind,
/// mutated ([`fixtures::mutate`]) — bytes flipped, lengths and numbers set
/// to boundary values, ranges cut, repeated or spliced, invalid UTF-8 —
/// each get one answer line that says whether it succeeded, on the same
/// connection, and the daemon answers a good request after them all.
/// (Requests that mount, import or bind a path are left out: a mutation
/// must not mount over `/`.) Lines: `STRATA_MUTATIONS` / 10, default 2,000.
#[test]
fn mutated_request_lines_each_get_an_answer_and_the_daemon_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _) = init_with_source(dir.path());
    let _daemon = Daemon::start(&home);
    let mut conn = UnixStream::connect(home.join("snapd.sock")).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let seeds: Vec<Vec<u8>> = snapshotter::fuzzing::SEED_LINES
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let lines = std::env::var("STRATA_MUTATIONS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(20_000)
        / 10;
    // Found by this test: a line that is not UTF-8 closed the connection
    // without an answer.
    conn.write_all(b"{\"api\":1,\"op\":\"image.list\xff\"}\n")
        .unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    assert!(
        answer.contains("not JSON"),
        "a request that is not UTF-8 gets an error answer, not a closed connection: {answer:?}"
    );
    let mut rng = fixtures::workload::Rng::new(fixtures::workload::seed());
    let (mut refused, mut answered) = (0, 0);
    for i in 0..lines {
        let mut line = fixtures::mutate::mutate(&seeds, &mut rng);
        // One request per line: a newline inside would make two.
        for b in &mut line {
            if *b == b'\n' {
                *b = b' ';
            }
        }
        line.push(b'\n');
        conn.write_all(&line).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap_or_else(|e| {
            panic!(
                "request {i} ({:?}) got no answer: {e}",
                String::from_utf8_lossy(&line)
            )
        });
        let value: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| {
            panic!(
                "request {i} ({:?}): the answer is not JSON ({e}): {answer:?}",
                String::from_utf8_lossy(&line)
            )
        });
        match value["ok"].as_bool() {
            Some(true) => answered += 1,
            Some(false) => {
                assert!(
                    value["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "a refusal without a message: {value}"
                );
                refused += 1;
            }
            None => panic!("an answer without ok: {value}"),
        }
    }
    let info = request(&mut conn, &mut reader, r#"{"api":1,"op":"daemon.info"}"#);
    assert_eq!(info["ok"], true, "{info}");
    println!("{lines} mutated request lines: {answered} succeeded, {refused} refused");
}

fn daemon_descriptors(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
        .unwrap()
        .count()
}

/// The daemon's descriptor count once two readings 100 ms apart agree
/// (an API connection just answered may still be closing).
fn settled_descriptors(daemon: &Daemon) -> usize {
    let mut last = daemon_descriptors(daemon);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = daemon_descriptors(daemon);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn mount_with(home: &Path, dir: &Path, extra: &[&str]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec!["--json", "mount", "--image", "tiny"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let out = snapctl(home, &args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    json(&out)["id"].as_str().unwrap().to_string()
}

/// One sandbox writing more small files than the daemon may hold
/// descriptors (20,000 on this machine) must not stop the daemon for the
/// others: a mount keeps a bounded number of data files open. And a
/// sandbox cannot make inodes past its inode quota: ENOSPC, as from a
/// filesystem out of inodes, with `statvfs` and `snapctl mounts` showing
/// the count.
#[test]
fn a_sandbox_making_many_files_holds_neither_descriptors_nor_inodes_past_its_bounds() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (home, daemon) = daemon_with_tiny(dir.path());
    let busy = dir.path().join("busy");
    let other = dir.path().join("other");
    let small = dir.path().join("small");
    mount_with(&home, &busy, &[]);
    mount_with(&home, &other, &[]);
    let small_id = mount_with(&home, &small, &["--inodes", "100"]);
    let idle = settled_descriptors(&daemon);

    const FILES: usize = 25_000;
    for i in 0..FILES {
        let sub = busy.join(format!("d{}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir(&sub).unwrap();
        }
        std::fs::write(sub.join(format!("f{i}")), format!("{i}\n"))
            .unwrap_or_else(|e| panic!("file {i}: {e}"));
    }
    // The idle count may include a descriptor that was closing (an API
    // connection, a store file); fewer now than then is within bounds.
    let held = daemon_descriptors(&daemon).saturating_sub(idle);
    let bound = layerfs::cowfs::OPEN_DATA_FILES + 64;
    assert!(
        held <= bound,
        "{held} descriptors held for {FILES} files written (bound {bound})"
    );
    // Every file reads back, and the other mount works on.
    for i in (0..FILES).step_by(997) {
        let path = busy.join(format!("d{}/f{i}", i / 1000));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{i}\n"));
    }
    std::fs::write(other.join("still"), b"served").unwrap();
    assert_eq!(std::fs::read(other.join("still")).unwrap(), b"served");

    // The inode quota: 100 made (a directory and files), then ENOSPC.
    std::fs::create_dir(small.join("d")).unwrap();
    let mut made = 1;
    let refused = loop {
        match std::fs::write(small.join(format!("d/f{made}")), b"x") {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made <= 100, "the 101st inode was made");
    };
    assert_eq!(made, 100);
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    assert_eq!(
        std::os::unix::fs::symlink("t", small.join("link"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOSPC)
    );
    let vfs = nix_statvfs(&small);
    assert_eq!((vfs.0, vfs.1), (100, 0), "statvfs files, files free");
    // Removing one gives it back.
    std::fs::remove_file(small.join("d/f1")).unwrap();
    std::fs::write(small.join("again"), b"y").unwrap();
    let mounts = json(&snapctl(&home, &["--json", "mounts"]));
    let entry = mounts
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == small_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["inode_quota"], 100);
    assert_eq!(entry["inodes_made"], 100);
    drop(daemon);
}

/// (files, files free) of the filesystem at `path`.
fn nix_statvfs(path: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs with a valid C string and a zeroed out-struct.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut vfs) }, 0);
    (vfs.f_files, vfs.f_ffree)
}

/// Ring threads are pinned to one CPU each and run at idle priority; the
/// daemon's shared threads (rayon's pool, which verifies read-ahead
/// chunks; the data-file remover) must not inherit that from a ring
/// thread that happened to use them first. A cold sequential read over
/// the ring exercises the read-ahead; then every thread but the ring's
/// runs unpinned in the normal class.
#[test]
fn shared_threads_do_not_inherit_a_ring_threads_cpu_or_class() {
    if !fixtures::require::fuse_io_uring() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (home, src) = init_with_source(dir.path());
    let big = fixtures::workload::Rng::new(2).bytes(24 << 20);
    std::fs::write(src.join("big"), &big).unwrap();
    // Imported by an earlier daemon: this one's first use of its pools
    // comes from serving the mount.
    let importer = Daemon::start(&home);
    let out = snapctl(
        &home,
        &["image", "import", src.to_str().unwrap(), "--name", "big"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    drop(importer);
    let daemon = Daemon::start(&home);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = snapctl(&home, &["mount", "--image", "big", mnt.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(std::fs::read(mnt.join("big")).unwrap() == big);
    std::fs::write(mnt.join("gone"), b"x").unwrap();
    std::fs::remove_file(mnt.join("gone")).unwrap();

    let pid = daemon.child.id();
    let field = |tid: &str, key: &str| -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .to_string()
    };
    let all_cpus = field(&pid.to_string(), "Cpus_allowed_list:");
    let mut ring_threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let name = field(&tid, "Name:");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        // Field 41 (policy), counted after the parenthesised name.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let policy: u32 = after_name.split(' ').nth(38).unwrap().parse().unwrap();
        if name.starts_with("fuse-ring-") {
            // A thread started by a ring thread would bear its name too.
            assert!(!ring_threads.contains(&name), "two threads named {name}");
            assert_eq!(policy, libc::SCHED_IDLE as u32, "{name}");
            ring_threads.push(name);
            continue;
        }
        assert_eq!(
            policy,
            libc::SCHED_OTHER as u32,
            "thread {name} ({tid}) runs idle-class"
        );
        assert_eq!(
            field(&tid, "Cpus_allowed_list:"),
            all_cpus,
            "thread {name} ({tid}) is pinned"
        );
    }
    assert!(!ring_threads.is_empty(), "the mount took no ring");
    let out = snapctl(&home, &["umount", mnt.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    drop(daemon);
}
