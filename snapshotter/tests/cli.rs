//! `snapctl` as a user runs it: real processes, real files, exit codes and
//! JSON output.

use std::os::unix::fs::FileExt;
use std::process::Command;

mod common;
use common::*;

fn sample(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                b'a' + (x % 26) as u8
            } else {
                (x >> 32) as u8
            }
        })
        .collect()
}

#[test]
fn put_get_stats_fsck_and_gc_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let out = snapctl(&home, &["store", "init"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let input = dir.path().join("input.bin");
    let data = sample(3 << 20);
    std::fs::write(&input, &data).unwrap();
    let out = snapctl(&home, &["blob", "put", input.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 64, "blob put prints the id: {id}");

    let copy = dir.path().join("copy.bin");
    let out = snapctl(&home, &["blob", "get", &id, copy.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(&copy).unwrap(), data);

    // By ref name, and as JSON.
    let out = snapctl(
        &home,
        &[
            "--json",
            "blob",
            "put",
            input.to_str().unwrap(),
            "--ref",
            "files/input",
        ],
    );
    assert_eq!(json(&out)["id"], id.as_str());
    assert_eq!(
        json(&out)["blob"]["new_chunks"],
        0,
        "second put of the same file stores nothing"
    );
    let out = snapctl(
        &home,
        &[
            "--json",
            "blob",
            "get",
            "files/input",
            copy.to_str().unwrap(),
        ],
    );
    assert_eq!(json(&out)["bytes"], data.len());

    let out = snapctl(&home, &["--json", "store", "stats"]);
    let stats = json(&out);
    assert!(stats["stats"]["chunks"].as_u64().unwrap() > 10);
    assert_eq!(stats["stats"]["refs"], 2);

    let out = snapctl(&home, &["--json", "store", "fsck"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["clean"], true);

    // Removing both refs makes everything collectable.
    for name in [format!("blob/{id}"), "files/input".to_string()] {
        assert_eq!(code(&snapctl(&home, &["ref", "rm", &name])), 0);
    }
    let out = snapctl(&home, &["--json", "store", "gc"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(json(&out)["swept_chunks"].as_u64().unwrap() > 10);
    let out = snapctl(&home, &["--json", "store", "stats"]);
    assert_eq!(json(&out)["stats"]["chunks"], 0);
    let out = snapctl(&home, &["blob", "get", &id, copy.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        3,
        "a collected blob is not found: {}",
        stderr(&out)
    );
}

#[test]
fn failures_have_distinct_exit_codes_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    // No store yet.
    let out = snapctl(&home, &["store", "stats"]);
    assert_eq!(code(&out), 4);
    assert!(
        stderr(&out).contains("snapctl store init"),
        "{}",
        stderr(&out)
    );
    let out = snapctl(&home, &["--json", "store", "stats"]);
    assert_eq!(json(&out)["error"]["kind"], "store_unavailable");

    assert_eq!(code(&snapctl(&home, &["store", "init"])), 0);
    let out = snapctl(&home, &["store", "init"]);
    assert_eq!(code(&out), 4, "init twice: {}", stderr(&out));
    assert!(stderr(&out).contains("already exists"));

    let target = dir.path().join("out");
    let out = snapctl(
        &home,
        &["blob", "get", "nonsense!", target.to_str().unwrap()],
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let unknown = "ab".repeat(32);
    let out = snapctl(&home, &["blob", "get", &unknown, target.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains(&unknown));
    let out = snapctl(
        &home,
        &["blob", "get", "no/such/ref", target.to_str().unwrap()],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        !target.exists(),
        "a failed get must not leave an output file"
    );
    let out = snapctl(&home, &["blob", "put", "/no/such/file"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = snapctl(&home, &["ref", "rm", "no/such/ref"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = snapctl(&home, &["blob", "put", "/etc/hostname", "--ref", "../bad"]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let out = snapctl(&home, &["store", "frobnicate"]);
    assert_eq!(code(&out), 2);
    // A poll window past 10 ms is refused before a daemon starts.
    let out = snapctl(&home, &["daemon", "--9p-poll-us", "20000"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("9p-poll-us"), "{}", stderr(&out));
    assert!(!home.join("snapd.sock").exists());
}

#[test]
fn a_corrupt_pack_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    assert_eq!(code(&snapctl(&home, &["store", "init"])), 0);
    let input = dir.path().join("input.bin");
    std::fs::write(&input, sample(1 << 20)).unwrap();
    let out = snapctl(&home, &["blob", "put", input.to_str().unwrap()]);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Damage the middle of the (only) pack.
    let pack = std::fs::read_dir(home.join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.write_all_at(b"\xde\xad\xbe\xef", len / 2).unwrap();

    let target = dir.path().join("out");
    let out = snapctl(&home, &["blob", "get", &id, target.to_str().unwrap()]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("corrupt") && stderr(&out).contains("pack"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());

    let out = snapctl(&home, &["store", "fsck"]);
    assert_eq!(code(&out), 5);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("is corrupt") && text.contains(&format!("ref 'blob/{id}'")),
        "{text}"
    );
    let out = snapctl(&home, &["--json", "store", "fsck"]);
    let report = json(&out);
    assert_eq!(report["clean"], false);
    assert!(report["report"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["problem"] == "chunk_corrupt"));
}

#[test]
fn the_data_directory_comes_from_flag_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let from_env = dir.path().join("env-home");
    let from_flag = dir.path().join("flag-home");
    let out = Command::new(env!("CARGO_BIN_EXE_snapctl"))
        .args(["store", "init"])
        .env("STRATA_HOME", &from_env)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(from_env.join("strata-store.json").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_snapctl"))
        .args(["--home", from_flag.to_str().unwrap(), "store", "init"])
        .env("STRATA_HOME", &from_env)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(from_flag.join("strata-store.json").exists());
}
