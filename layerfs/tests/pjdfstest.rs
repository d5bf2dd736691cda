//! POSIX conformance: the pjdfstest suite (installed by
//! `fixtures/pjdfstest.sh`, which `./test.sh` runs) against ext4 on this
//! machine and against a Strata FUSE mount. Every test that passes on ext4
//! must pass on Strata, except those listed with their reason.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::store;

/// Tests that pass on ext4 but not through FUSE, and why.
const EXCEPTIONS: &[(&str, &str)] = &[(
    "link::link_count_max",
    "skipped by pjdfstest: pathconf(_PC_LINK_MAX) is unknown through FUSE",
)];

const CONFIG: &str = "[features]\nposix_fallocate = {}\nutime_now = {}\nutimensat = {}\n\n[settings]\nnaptime = 0.01\n";

fn binary() -> Option<PathBuf> {
    let cache =
        std::env::var("STRATA_FIXTURES").unwrap_or_else(|_| "/var/cache/strata-fixtures".into());
    let path = Path::new(&cache).join("pjdfstest/bin/pjdfstest");
    if !fixtures::require::path(&path, "fixtures/pjdfstest.sh (./test.sh runs it)") {
        return None;
    }
    let has_user = Command::new("id")
        .arg("tests")
        .output()
        .is_ok_and(|o| o.status.success());
    if !fixtures::require::facility(
        has_user,
        "pjdfstest needs the user 'tests' (fixtures/pjdfstest.sh creates it)",
    ) {
        return None;
    }
    Some(path)
}

/// Runs the suite in `dir`; returns the names of passed tests and the summary line.
fn run_suite(binary: &Path, config: &Path, dir: &Path) -> (BTreeSet<String>, String) {
    run_tests(binary, config, dir, None)
}

/// Runs the tests whose names contain `filter` (all when `None`).
fn run_tests(
    binary: &Path,
    config: &Path,
    dir: &Path,
    filter: Option<&str>,
) -> (BTreeSet<String>, String) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(binary)
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .args(filter)
        .current_dir(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let passed = text
        .lines()
        .filter(|l| l.trim_end().ends_with(" ok"))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary")
        .to_string();
    (passed, summary)
}

#[test]
fn everything_that_passes_on_ext4_passes_on_a_strata_mount() {
    let Some(binary) = binary() else { return };
    if !common::fuse_available() {
        return;
    }
    let (tmp, store) = store();
    let config = tmp.path().join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();

    // ext4 (the test directory lives on the work disk, not on /tmp).
    let ext4 = tempfile::tempdir_in("/var/tmp").unwrap();
    let (on_ext4, ext4_summary) = run_suite(&binary, &config, ext4.path());
    assert!(on_ext4.len() > 300, "ext4: {ext4_summary}");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let tree = common::import_dir(&store, "empty", &empty);
    // Both transports: requests over io_uring (when the kernel has it) and
    // through /dev/fuse.
    let mut transports = vec![("/dev/fuse", false)];
    if fixtures::require::fuse_io_uring() {
        transports.push(("io_uring", true));
    }
    for (transport, io_uring) in transports {
        let options = layerfs::fuse::FuseOptions {
            io_uring,
            ..Default::default()
        };
        let name = format!("strata-{}", transport.replace('/', ""));
        let (_fs, session, mnt) =
            common::mount_tree_with(&store, tree, tmp.path(), &name, 8 << 30, &options);
        assert_eq!(session.uses_io_uring(), io_uring, "{transport}");
        let (mut on_strata, strata_summary) = run_suite(&binary, &config, &mnt);
        // A test that fails once is run again, alone, up to three times:
        // one that then passes is reported as flaky rather than failed
        // (seen here: `open::etxtbsy` about 3 times in 100 runs on a FUSE
        // mount, never on ext4; it runs the file it wrote and expects the
        // run to have started within pjdfstest's 10 ms nap); one that
        // keeps failing fails this test.
        let failed_once: Vec<String> = on_ext4.difference(&on_strata).cloned().collect();
        for name in failed_once {
            for attempt in 1..=3 {
                let (passed, _) = run_tests(&binary, &config, &mnt, Some(&name));
                if passed.contains(&name) {
                    eprintln!(
                        "FLAKY ({transport}): {name} failed in the full run, passed alone (attempt {attempt})"
                    );
                    on_strata.insert(name.clone());
                    break;
                }
            }
        }
        if io_uring {
            assert!(session.io_uring_requests() > 1000, "{transport}");
        }
        session.umount_and_join().unwrap();

        eprintln!("pjdfstest on ext4:   {ext4_summary}");
        eprintln!("pjdfstest on Strata ({transport}): {strata_summary}");
        let missing: Vec<_> = on_ext4
            .difference(&on_strata)
            .filter(|name| !EXCEPTIONS.iter().any(|(e, _)| e == name))
            .collect();
        assert!(
            missing.is_empty(),
            "pass on ext4 but not on Strata ({transport}): {missing:?}\n{strata_summary}"
        );
    }
}
