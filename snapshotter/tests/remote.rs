//! Two nodes, one bucket (a real S3 server, moto, on loopback): node A
//! imports a Debian image, writes to a mount of it, snapshots the mount
//! and pushes; node B, with an empty store and cache, pulls the snapshot,
//! mounts it at once and reads every file as A wrote it, fetching on
//! demand.

mod common;

use std::path::{Path, PathBuf};

use common::*;

struct Node {
    _dir: tempfile::TempDir,
    home: PathBuf,
    root: PathBuf,
    _daemon: Daemon,
}

fn node(server: &fixtures::s3::S3Server) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    must(snapctl(&home, &["store", "init"]));
    let endpoint = format!("endpoint={}", server.endpoint());
    // Credentials from the environment, the rest by flags.
    let daemon = Daemon::start_with(
        &home,
        &[
            ("AWS_ACCESS_KEY_ID", fixtures::s3::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", fixtures::s3::SECRET_KEY),
        ],
        &[
            "--remote",
            "s3://strata/cluster-1",
            "--remote-option",
            &endpoint,
            "--remote-option",
            "allow_http=true",
            "--remote-option",
            "region=us-east-1",
        ],
    );
    Node {
        root: dir.path().to_path_buf(),
        _dir: dir,
        home,
        _daemon: daemon,
    }
}

fn mount(node: &Node, what: &[&str], name: &str) -> PathBuf {
    let dir = node.root.join(name);
    std::fs::create_dir(&dir).unwrap();
    let mut args = vec!["mount"];
    args.extend_from_slice(what);
    args.push(dir.to_str().unwrap());
    must(snapctl(&node.home, &args));
    dir
}

/// The names in a `--json` list of remote refs.
fn ref_names(out: &std::process::Output) -> Vec<String> {
    json(out)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

fn status(home: &Path) -> serde_json::Value {
    json(&must(snapctl(home, &["--json", "remote", "status"])))
}

#[test]
fn a_snapshot_pushed_by_one_node_mounts_and_reads_on_another() {
    if !fuse_available() {
        return;
    }
    let Some(rootfs) = fixtures::require::debian_rootfs("bookworm-minbase") else {
        return;
    };
    let Some(server) = fixtures::s3::S3Server::start() else {
        return;
    };
    server.create_bucket("strata");
    let a = node(&server);
    let b = node(&server);

    // Node A: an image, a mount of it changed, a snapshot, a push.
    must(snapctl(
        &a.home,
        &[
            "image",
            "import",
            rootfs.to_str().unwrap(),
            "--name",
            "debian",
        ],
    ));
    let ma = mount(&a, &["--image", "debian"], "ma");
    std::fs::write(ma.join("root/notes.txt"), b"written on node A\n").unwrap();
    let big: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(ma.join("root/data.bin"), &big).unwrap();
    std::fs::remove_file(ma.join("etc/issue")).unwrap();
    std::os::unix::fs::symlink("/root/notes.txt", ma.join("etc/notes")).unwrap();
    let snap = json(&must(snapctl(
        &a.home,
        &["--json", "snapshot", "create", ma.to_str().unwrap()],
    )));
    let id = snap["id"].as_str().unwrap().to_string();
    // Pushing waits for the snapshot to be stored.
    let pushed = json(&must(snapctl(
        &a.home,
        &["--json", "push", "snapshot", &id],
    )));
    assert!(
        pushed["chunks_uploaded"].as_u64().unwrap() > 1000,
        "{pushed}"
    );
    let uploaded = pushed["bytes_uploaded"].as_u64().unwrap();
    // Packs of 32 MiB: one PUT each, plus the index object and the ref.
    let puts = pushed["requests"]["puts"].as_u64().unwrap();
    assert_eq!(puts, pushed["packs"].as_u64().unwrap() + 2, "{pushed}");
    // The image shares all its files with the snapshot: only its record
    // and the directories the snapshot changed go up.
    let image = json(&must(snapctl(
        &a.home,
        &["--json", "push", "image", "debian"],
    )));
    assert!(
        image["bytes_uploaded"].as_u64().unwrap() < 64 << 10,
        "{image}"
    );

    // Node B sees both, pulls the snapshot and mounts it before anything
    // was downloaded in full.
    let names = ref_names(&must(snapctl(&b.home, &["--json", "remote", "ls"])));
    assert_eq!(
        names,
        vec!["image/debian".to_string(), format!("snapshot/{id}")]
    );
    must(snapctl(&b.home, &["pull", "snapshot", &id]));
    let mb = mount(&b, &["--snapshot", &id], "mb");
    assert_eq!(
        std::fs::read(mb.join("root/notes.txt")).unwrap(),
        b"written on node A\n"
    );
    // A first read fetches its frame's blocks and reads ahead to the end
    // of the next 16 MiB group (remote/src/tier.rs): at most nine 4 MiB
    // blocks, whether or not that read-ahead has finished yet, besides
    // the tree's directories (prefetched whole, well under 4 MiB here).
    const FIRST_READ_BOUND: u64 = (9 + 1) * (4 << 20);
    let early = status(&b.home)["requests"]["bytes_down"].as_u64().unwrap();
    assert!(
        early <= FIRST_READ_BOUND && early + (16 << 20) < uploaded,
        "the first read fetched {early} of {uploaded} bytes"
    );
    // Every file, link, mode, owner and time as on node A.
    assert_eq!(digest(&mb), digest(&ma));
    let after = status(&b.home);
    assert!(after["requests"]["bytes_down"].as_u64().unwrap() >= uploaded / 2);
    assert!(after["cache_used_bytes"].as_u64().unwrap() > 0);

    // The image too, by name.
    must(snapctl(&b.home, &["pull", "image", "debian"]));
    let images = String::from_utf8(must(snapctl(&b.home, &["image", "ls"])).stdout).unwrap();
    assert!(images.contains("debian"), "{images}");
    let mi = mount(&b, &["--image", "debian"], "mi");
    assert_eq!(
        std::fs::read(mi.join("etc/debian_version")).unwrap(),
        std::fs::read(rootfs.join("etc/debian_version")).unwrap()
    );

    // A memory snapshot taken on A resumes on B: its pages come in from
    // the bucket as the file is read through a mount (lazily), and
    // `mem get` writes it back whole.
    let ram: Vec<u8> = (0..24u32 << 20)
        .map(|i| {
            if (i >> 16) % 3 == 0 {
                0
            } else {
                (i.wrapping_mul(40_503) >> 7) as u8
            }
        })
        .collect();
    let ram_file = a.root.join("guest.ram");
    std::fs::write(&ram_file, &ram).unwrap();
    let mem = json(&must(snapctl(
        &a.home,
        &["--json", "mem", "put", ram_file.to_str().unwrap()],
    )));
    let mem_id = mem["id"].as_str().unwrap().to_string();
    must(snapctl(&a.home, &["push", "snapshot", &mem_id]));
    must(snapctl(&b.home, &["pull", "snapshot", &mem_id]));
    let mm = mount(&b, &["--snapshot", &mem_id], "mm");
    assert!(std::fs::read(mm.join("memory")).unwrap() == ram);
    let back = b.root.join("back.ram");
    must(snapctl(
        &b.home,
        &["mem", "get", &mem_id, back.to_str().unwrap()],
    ));
    assert!(std::fs::read(&back).unwrap() == ram);
    must(snapctl(&b.home, &["umount", mm.to_str().unwrap()]));

    // A collection keeps everything the bucket's refs reach.
    let gc = json(&must(snapctl(&a.home, &["--json", "remote", "gc"])));
    assert!(gc["live_chunks"].as_u64().unwrap() > 1000, "{gc}");
    assert_eq!(gc["swept_packs"].as_u64(), Some(0), "{gc}");

    // What B pulled is pinned in the bucket under B's name, until B lets
    // go of it.
    let pinned = ref_names(&must(snapctl(&b.home, &["--json", "remote", "pins"])));
    assert!(pinned.iter().all(|p| p.starts_with("pin/")), "{pinned:?}");
    for pulled in [&id, &mem_id] {
        let suffix = format!("/snapshot/{pulled}");
        assert!(pinned.iter().any(|p| p.ends_with(&suffix)), "{pinned:?}");
    }
    let a_pins = json(&must(snapctl(&a.home, &["--json", "remote", "pins"])));
    assert_eq!(a_pins.as_array().map(Vec::len), Some(0), "{a_pins}");
    let unpinned = must(snapctl(&b.home, &["remote", "unpin", "snapshot", &mem_id]));
    assert_eq!(
        String::from_utf8_lossy(&unpinned.stdout).trim(),
        format!("unpinned snapshot/{mem_id}")
    );
    let again = must(snapctl(&b.home, &["remote", "unpin", "snapshot", &mem_id]));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "no pin to drop"
    );

    // Clear errors: a missing snapshot, a ref that is not shared.
    let missing = snapctl(&b.home, &["pull", "snapshot", "000000000000"]);
    assert_eq!(code(&missing), 3, "{}", stderr(&missing));
    let not_shared = snapctl(&b.home, &["push", "image", "../x"]);
    assert_ne!(code(&not_shared), 0);
    for dir in [&ma, &mb, &mi] {
        must(snapctl(
            if dir == &ma { &a.home } else { &b.home },
            &["umount", dir.to_str().unwrap()],
        ));
    }
}

#[test]
fn push_without_a_bucket_says_how_to_configure_one() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    must(snapctl(&home, &["store", "init"]));
    let _daemon = Daemon::start(&home);
    let out = snapctl(&home, &["push", "image", "debian"]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("--remote URL"), "{}", stderr(&out));
}
