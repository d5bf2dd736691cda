//! GC of a volume server's store, over real FUSE mounts: commits past the
//! retention are reclaimed, and a file a session holds open keeps its
//! bytes after a reload moved the session off the tree it was opened on,
//! until the session ends.

mod common;

use std::io::Read;

use common::{random_bytes, Scratch, Server};
use snapshotter::volume_api::{ReloadResult, ServerInfo, VolumeOp};

fn gc(server: &Server) -> cas::GcReport {
    let report: serde_json::Value = server.call(VolumeOp::Gc);
    cas::GcReport {
        reachable_chunks: report["reachable_chunks"].as_u64().unwrap(),
        swept_chunks: report["swept_chunks"].as_u64().unwrap(),
        swept_bytes: report["swept_bytes"].as_u64().unwrap(),
        ..cas::GcReport::default()
    }
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

#[test]
fn an_open_file_keeps_its_bytes_through_a_reload_and_gc() {
    let Some(scratch) = Scratch::with_mount_points(["a", "b", "c"]) else {
        return;
    };
    let [a, b, c] = &scratch.dirs;
    // Only the head is kept: whatever an older commit alone holds is
    // garbage once nothing else reaches it.
    let server = Server::start_with(
        &scratch.path().join("home"),
        &[
            "--autocommit-secs",
            "0",
            "--keep-commits",
            "1",
            "--gc-interval-secs",
            "0",
        ],
    );
    let info: ServerInfo = server.call(VolumeOp::Info);
    assert_eq!((info.keep_commits, info.gc_interval_secs), (1, 0));
    let _: serde_json::Value = server.call(VolumeOp::Create {
        name: "data".into(),
        quota_bytes: 0,
    });
    const SIZE: usize = 4 << 20;
    let first = random_bytes("first", SIZE);
    let second = random_bytes("second", SIZE);

    server.mount("data", a);
    std::fs::write(a.join("big.bin"), &first).unwrap();
    assert!(server.umount(a).wrote);

    // Session b opens the first version, holds it open and deletes it
    // (so b's own capture no longer holds it either).
    server.mount("data", b);
    let mut open = std::fs::File::open(b.join("big.bin")).unwrap();
    std::fs::remove_file(b.join("big.bin")).unwrap();

    // Another session replaces it; b reloads onto that head.
    server.mount("data", c);
    std::fs::write(c.join("big.bin"), &second).unwrap();
    assert!(server.umount(c).wrote);
    let reloaded: Vec<ReloadResult> = server.call(VolumeOp::Reload {
        target: b.display().to_string(),
    });
    assert_eq!(reloaded.len(), 1);

    // The first version is in no kept commit now (the other session's
    // change survives b's delete), only in the tree b was moved off: GC
    // must keep it while b lives.
    let report = gc(&server);
    assert!(
        report.swept_bytes < (SIZE as u64) / 4,
        "GC took what an open file reads: {report:?}"
    );
    drop_caches();
    let mut held = Vec::new();
    open.read_to_end(&mut held).unwrap();
    assert!(held == first, "the open file reads its first version");
    assert!(std::fs::read(b.join("big.bin")).unwrap() == second);
    drop(open);

    // Once b ends, the first version is reclaimed.
    server.umount(b);
    let report = gc(&server);
    assert!(
        report.swept_bytes >= SIZE as u64,
        "the first version was not reclaimed: {report:?}"
    );
    // The head is whole.
    server.mount("data", a);
    assert!(std::fs::read(a.join("big.bin")).unwrap() == second);
    server.umount(a);
}
