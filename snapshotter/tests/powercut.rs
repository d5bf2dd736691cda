//! The node daemon's data directory on a filesystem that loses whatever was
//! not synced ([`fixtures::powercut`]): what the daemon acknowledged — a
//! mount it made, a file fsynced inside it — survives a power cut taken
//! right after, and the next daemon brings it back.

mod common;

use common::*;
use fixtures::powercut::{Cut, Options, PowerCutFs};
use std::io::Write;

/// Defect 9 of issue 14: the daemon created `HOME/mounts` and
/// `mounts/ID/upper` without ever syncing the directories that hold their
/// names, so a power cut right after `snapctl mount` returned — even
/// after an fsync inside the mount — lost the whole mount.
#[test]
fn an_acknowledged_mount_and_its_fsynced_file_survive_a_power_cut() {
    if !fixtures::require::fuse() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut power = PowerCutFs::mount(dir.path(), Options::default()).unwrap();
    // The data directory itself exists durably (`store init` on a new
    // machine makes it; that is the store's own test).
    let home = power.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::File::open(power.path())
        .unwrap()
        .sync_all()
        .unwrap();
    assert_eq!(code(&snapctl(&home, &["store", "init"])), 0);
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), b"welcome\n").unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    let daemon = Daemon::start(&home);
    let out = snapctl(
        &home,
        &["image", "import", src.to_str().unwrap(), "--name", "tiny"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = snapctl(
        &home,
        &["--json", "mount", "--image", "tiny", mnt.to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = json(&out)["id"].as_str().unwrap().to_string();
    // A second mount, acknowledged and never written to.
    let idle = dir.path().join("idle");
    std::fs::create_dir(&idle).unwrap();
    let out = snapctl(
        &home,
        &["--json", "mount", "--image", "tiny", idle.to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let idle_id = json(&out)["id"].as_str().unwrap().to_string();
    let mut file = std::fs::File::create(mnt.join("acknowledged")).unwrap();
    file.write_all(b"fsynced before the cut\n").unwrap();
    file.sync_all().unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    drop(file);

    power.power_off(Cut::DiscardUnsynced);
    daemon.stop(libc::SIGKILL);
    power.power_on().unwrap();

    let _daemon = Daemon::start(&home);
    let mounts = json(&snapctl(&home, &["--json", "mounts"]));
    let ids: Vec<&str> = mounts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    for id in [&id, &idle_id] {
        assert!(
            ids.contains(&id.as_str()),
            "mount {id} was acknowledged but is gone after a power cut (mounts now: {ids:?})"
        );
    }
    assert_eq!(std::fs::read(idle.join("etc/motd")).unwrap(), b"welcome\n");
    assert_eq!(
        std::fs::read(mnt.join("acknowledged")).unwrap(),
        b"fsynced before the cut\n"
    );
    assert_eq!(
        std::fs::read(mnt.join("etc/motd")).unwrap(),
        b"welcome\n",
        "the image is still under the mount"
    );
}
