//! Two volume servers, one bucket (a real S3 server, moto, on loopback):
//! a volume pushed by node A is pulled by node B, whose sandbox reads it
//! through a FUSE mount; both nodes' sandboxes then write to the volume at
//! once and every file of both lands on both nodes by the background sync
//! alone; a session torn down by stopping its server reaches the other
//! node; bad requests are clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Scratch, Server};
use snapshotter::volume_api::{CommitResult, ServerInfo, SyncResult, VolumeInfo, VolumeOp};

fn start(home: &Path, s3: &fixtures::s3::S3Server) -> Server {
    let endpoint = format!("endpoint={}", s3.endpoint());
    let access = format!("access_key_id={}", fixtures::s3::ACCESS_KEY);
    let secret = format!("secret_access_key={}", fixtures::s3::SECRET_KEY);
    let mut args = vec![
        "--autocommit-secs",
        "1",
        "--sync-secs",
        "1",
        "--remote",
        "s3://strata/volumes",
    ];
    for option in [
        endpoint.as_str(),
        "allow_http=true",
        "region=us-east-1",
        access.as_str(),
        secret.as_str(),
    ] {
        args.extend(["--remote-option", option]);
    }
    Server::start_with(home, &args)
}

/// `snapctl ARGS…` with `--volume-home HOME` after the first argument
/// that takes it (`snapctl` is built beside `volume-server` when the
/// workspace is tested).
fn snapctl(home: &Path, args: &[&str]) -> Option<std::process::Output> {
    let exe = Path::new(env!("CARGO_BIN_EXE_volume-server")).with_file_name("snapctl");
    if !fixtures::require::path(
        &exe,
        "`cargo build -p snapshotter` (or testing the workspace)",
    ) {
        return None;
    }
    // `volume` takes it; `push volume NAME` and `pull volume NAME` at
    // their end.
    let split = match args.iter().position(|a| *a == "volume") {
        Some(i) if i + 1 < args.len() && !matches!(args[0], "push" | "pull") => i + 1,
        _ => args.len(),
    };
    Some(
        std::process::Command::new(exe)
            .args(&args[..split])
            .arg("--volume-home")
            .arg(home)
            .args(&args[split..])
            .output()
            .unwrap(),
    )
}

fn head(server: &Server) -> VolumeInfo {
    server.call(VolumeOp::Show {
        name: "data".into(),
    })
}

/// Waits until `check` holds (the background sync is asynchronous).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

#[test]
fn two_volume_servers_share_a_volume_through_the_bucket() {
    let Some(scratch) = Scratch::with_mount_points(["a", "b", "b2"]) else {
        return;
    };
    let Some(s3) = fixtures::s3::S3Server::start() else {
        return;
    };
    s3.create_bucket("strata");
    let [mnt_a, mnt_b, mnt_b2]: [PathBuf; 3] = scratch.dirs.clone();
    let a = start(&scratch.path().join("home-a"), &s3);
    let mut b = start(&scratch.path().join("home-b"), &s3);
    let info: ServerInfo = a.call(VolumeOp::Info);
    assert_eq!(info.remote.as_deref(), Some("s3://strata/volumes"));

    // Not in the bucket yet: B cannot pull it (exit 3, not found), and A
    // cannot sync it.
    let Some(out) = snapctl(&b.home, &["pull", "volume", "data"]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bucket has no volume"), "{stderr}");

    // A: a volume with a file, pushed.
    let _: VolumeInfo = a.call(VolumeOp::Create {
        name: "data".into(),
        quota_bytes: 0,
    });
    let err = a
        .try_call::<Vec<SyncResult>>(VolumeOp::Sync {
            name: Some("data".into()),
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("not kept in step"), "{err:#}");
    a.mount("data", &mnt_a);
    write(&mnt_a, "from-a.txt", "written on node A\n");
    let _: Vec<CommitResult> = a.call(VolumeOp::Commit {
        target: mnt_a.display().to_string(),
    });
    let pushed: SyncResult = a.call(VolumeOp::Push {
        name: "data".into(),
    });
    assert_eq!(pushed.outcome, "created", "{pushed:?}");

    // B: pulled, mounted, read.
    let out = snapctl(&b.home, &["pull", "volume", "data"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("data: pulled — commit {}", pushed.seq)),
        "{stdout}"
    );
    let out = snapctl(&b.home, &["--json", "volume", "sync", "data"]).unwrap();
    let synced: Vec<SyncResult> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(synced[0].outcome, "unchanged", "{synced:?}");
    assert_eq!(synced[0].commit, pushed.commit);
    b.mount("data", &mnt_b);
    assert_eq!(
        read(&mnt_b, "from-a.txt").as_deref(),
        Some("written on node A\n")
    );

    // Both sandboxes write at once; the sessions commit every second and
    // the servers sync every second: every file reaches both heads.
    for k in 0..5 {
        write(&mnt_a, &format!("a-{k}.txt"), &format!("a {k}\n"));
        write(&mnt_b, &format!("b-{k}.txt"), &format!("b {k}\n"));
        std::thread::sleep(Duration::from_millis(300));
    }
    eventually("both heads hold every file of both nodes", || {
        let (ha, hb) = (head(&a), head(&b));
        ha.head.id == hb.head.id
            && [&a, &b].iter().all(|s| {
                let files: Vec<snapshotter::volume_api::FileInfo> = s.call(VolumeOp::ListFiles {
                    name: "data".into(),
                    path: String::new(),
                });
                (0..5).all(|k| {
                    files.iter().any(|f| f.name == format!("a-{k}.txt"))
                        && files.iter().any(|f| f.name == format!("b-{k}.txt"))
                })
            })
    });
    // B's sandbox sees A's files after a reload of its session.
    let _: serde_json::Value = b.call(VolumeOp::Reload {
        target: mnt_b.display().to_string(),
    });
    assert_eq!(read(&mnt_b, "a-4.txt").as_deref(), Some("a 4\n"));
    assert_eq!(read(&mnt_b, "b-4.txt").as_deref(), Some("b 4\n"));

    // A session torn down by stopping its server reaches the other node:
    // SIGTERM commits it and syncs once more before the server exits.
    write(
        &mnt_b,
        "last-words.txt",
        "said on node B before it stopped\n",
    );
    let status = b.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    eventually("node A sees what B committed at its stop", || {
        let _: Vec<SyncResult> = a.call(VolumeOp::Sync { name: None });
        let files: Vec<snapshotter::volume_api::FileInfo> = a.call(VolumeOp::ListFiles {
            name: "data".into(),
            path: String::new(),
        });
        files.iter().any(|f| f.name == "last-words.txt")
    });
    let _: serde_json::Value = a.call(VolumeOp::Reload {
        target: mnt_a.display().to_string(),
    });
    assert_eq!(
        read(&mnt_a, "last-words.txt").as_deref(),
        Some("said on node B before it stopped\n")
    );

    // B again, its store kept: it catches up, and a new session reads all.
    let b = start(&scratch.path().join("home-b"), &s3);
    let synced: Vec<SyncResult> = b.call(VolumeOp::Sync { name: None });
    assert_eq!(synced.len(), 1, "{synced:?}");
    assert!(synced[0].error.is_none(), "{synced:?}");
    assert_eq!(synced[0].commit, head(&a).head.id);
    b.mount("data", &mnt_b2);
    for k in 0..5 {
        assert_eq!(
            read(&mnt_b2, &format!("a-{k}.txt")),
            Some(format!("a {k}\n"))
        );
    }
    drop(b);
    let _ = a.umount(&mnt_a);
}

#[test]
fn a_server_without_a_bucket_refuses_sync_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("home"), 0);
    let err = server
        .try_call::<SyncResult>(VolumeOp::Push {
            name: "data".into(),
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("has no bucket"), "{err:#}");
}
