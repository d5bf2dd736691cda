//! A volume's quota bounds the volume, not each session: the head's bytes
//! and what every session holds uncommitted count together; a write past
//! it fails with ENOSPC in whichever session makes it, a `put` from
//! outside is refused with a clear error and changes nothing, space
//! freed by a committed delete comes back, and the bound survives a
//! restart of the server.

mod common;

use std::io::Write;
use std::path::Path;

use common::{random_bytes, Scratch, Server};
use snapshotter::volume_api::{CommitResult, VolumeInfo, VolumeOp};

const MIB: usize = 1 << 20;

fn commit(server: &Server, dir: &Path) -> CommitResult {
    let mut results: Vec<CommitResult> = server.call(VolumeOp::Commit {
        target: dir.display().to_string(),
    });
    results.remove(0)
}

/// Writes `n` bytes to `path` and closes it; the error of the first
/// write or close that fails.
fn write(path: &Path, n: usize) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&random_bytes(&path.display().to_string(), n))?;
    file.sync_all()
}

fn is_enospc(result: std::io::Result<()>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::ENOSPC))
}

/// Bytes `statvfs` says are free at `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

#[test]
fn a_quota_bounds_the_whole_volume() {
    let Some(scratch) = Scratch::with_mount_points(["a", "b", "c"]) else {
        return;
    };
    let [a, b, c] = &scratch.dirs;
    let home = scratch.path().join("home");
    let mut server = Server::start(&home, 0);
    let _: serde_json::Value = server.call(VolumeOp::Create {
        name: "data".into(),
        quota_bytes: 8 * MIB as u64,
    });

    // Two sessions draw on one quota: 5 MiB uncommitted in a leaves 3.
    server.mount("data", a);
    server.mount("data", b);
    write(&a.join("five"), 5 * MIB).unwrap();
    assert!(
        is_enospc(write(&b.join("five"), 5 * MIB)),
        "b wrote past the volume's quota"
    );
    // What fitted before the failure stays, as on any filesystem.
    std::fs::remove_file(b.join("five")).unwrap();
    write(&b.join("two"), 2 * MIB).unwrap();
    let free = free_bytes(b);
    assert!(
        free <= MIB as u64,
        "statfs shows {free} bytes free of 1 MiB left"
    );

    // Committed, a's file counts as the head's: still 1 MiB left.
    assert!(commit(&server, a).wrote);
    assert!(is_enospc(write(&b.join("more"), 2 * MIB)));
    std::fs::remove_file(b.join("more")).unwrap();
    write(&b.join("half"), MIB / 2).unwrap();

    // From outside: refused, nothing changed.
    let before: VolumeInfo = server.call(VolumeOp::Show {
        name: "data".into(),
    });
    let file = scratch.path().join("four");
    std::fs::write(&file, random_bytes("four", 4 * MIB)).unwrap();
    let refused = snapshotter::volume_cmd::connect(&home)
        .unwrap()
        .call_sending::<serde_json::Value>(
            VolumeOp::PutFile {
                name: "data".into(),
                path: "four".into(),
                mode: 0o644,
            },
            &mut std::fs::File::open(&file).unwrap(),
        )
        .unwrap_err();
    assert!(format!("{refused:#}").contains("is full"), "{refused:#}");
    let after: VolumeInfo = server.call(VolumeOp::Show {
        name: "data".into(),
    });
    assert_eq!(after.head.seq, before.head.seq);

    // A committed delete gives its space back.
    std::fs::remove_file(a.join("five")).unwrap();
    assert!(commit(&server, a).wrote);
    write(&b.join("four"), 4 * MIB).unwrap();
    for dir in [a, b] {
        let _: CommitResult = server.call(VolumeOp::Umount {
            session: dir.display().to_string(),
        });
    }

    // After a restart the head's bytes (6.5 MiB) still count.
    assert!(server.stop_with(libc::SIGTERM).success());
    let server = Server::start(&home, 0);
    server.mount("data", c);
    assert!(is_enospc(write(&c.join("two"), 2 * MIB)));
    std::fs::remove_file(c.join("two")).unwrap();
    write(&c.join("one"), MIB).unwrap();
    let _: CommitResult = server.call(VolumeOp::Umount {
        session: c.display().to_string(),
    });
}
