//! Crash safety: a writer process is killed with SIGKILL at random moments,
//! many times. After each kill the store opens, fsck is clean, and every
//! blob whose ref had been acknowledged is there, byte for byte.
//!
//! The writer is this test binary re-executed with `CAS_CRASH_CHILD` set;
//! it prints `ACK <ref> <seed>` only after `set_ref` returned (durable),
//! `DELETING <ref>` before it deletes one and `DEL <ref>` after the delete
//! returned. A ref killed between the two may or may not be gone, but if it
//! is still there it must still be right. Iterations: 25, or
//! `STRATA_CRASH_ITERATIONS`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cas::{Chunking, FsckOptions, OpenOptions, RefExpectation, Store, StoreConfig};
use common::*;

fn content(seed: u64) -> Vec<u8> {
    let len = 1_000 + (seed.wrapping_mul(2654435761) % 120_000) as usize;
    if seed % 2 == 0 {
        text_bytes(len, seed)
    } else {
        random_bytes(len, seed)
    }
}

fn crash_config() -> StoreConfig {
    StoreConfig {
        pack_target_bytes: 1 << 20,
        ..small_config()
    }
}

/// The writer process. Does nothing unless started by the parent test.
#[test]
fn crash_child() {
    let Some(home) = std::env::var_os("CAS_CRASH_CHILD") else {
        return;
    };
    let iteration: u64 = std::env::var("CAS_CRASH_ITERATION")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(Path::new(&home), OpenOptions::default()).unwrap();
    let mut stdout = std::io::stdout();
    for i in 0u64.. {
        let seed = iteration * 1_000_000 + i;
        let data = content(seed);
        let writer = store.writer("crash child");
        let info = writer
            .write_blob(&mut &data[..], Chunking::ContentDefined)
            .unwrap();
        // Some loose chunks that no ref will reach: garbage for GC.
        writer
            .put_data(&random_bytes(5_000, seed ^ 0xdead))
            .unwrap();
        let name = format!("crash/{iteration}/{i}");
        writer
            .set_ref(&name, info.id, RefExpectation::Absent)
            .unwrap();
        drop(writer);
        writeln!(stdout, "ACK {name} {seed}").unwrap();
        stdout.flush().unwrap();
        if i % 4 == 3 {
            let old = format!("crash/{iteration}/{}", i - 1);
            writeln!(stdout, "DELETING {old}").unwrap();
            stdout.flush().unwrap();
            store.delete_ref(&old, RefExpectation::Any).unwrap();
            writeln!(stdout, "DEL {old}").unwrap();
            stdout.flush().unwrap();
        }
        if i % 10 == 9 {
            store.gc().unwrap();
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let iterations: u64 = std::env::var("STRATA_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("store");
    drop(Store::init(&home, crash_config()).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut acked: std::collections::BTreeMap<String, u64> = Default::default();
    // Refs whose delete began but was never acknowledged: either state is fine.
    let mut maybe_deleted: std::collections::BTreeMap<String, u64> = Default::default();
    let mut total_acks = 0;
    let mut rng = 0x1234_5678_u64;
    for iteration in 0..iterations {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("CAS_CRASH_CHILD", &home)
            .env("CAS_CRASH_ITERATION", iteration.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Let it start (open, recover) and then die somewhere in the middle.
        std::thread::sleep(Duration::from_millis(150 + rng % 600));
        // SAFETY: kill(2) with a child pid we own; no memory is involved.
        let killed = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        assert_eq!(killed, 0);
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the child finished instead of being killed"
        );
        reader.join().unwrap();
        for line in lines.try_iter() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("ACK"), Some(name), Some(seed)) => {
                    acked.insert(name.to_string(), seed.parse().unwrap());
                    total_acks += 1;
                }
                (Some("DELETING"), Some(name), None) => {
                    if let Some(seed) = acked.remove(name) {
                        maybe_deleted.insert(name.to_string(), seed);
                    }
                }
                (Some("DEL"), Some(name), None) => {
                    acked.remove(name);
                    maybe_deleted.remove(name);
                }
                _ => {}
            }
        }

        let store = Store::open(&home, OpenOptions::default())
            .unwrap_or_else(|e| panic!("iteration {iteration}: store does not open: {e}"));
        let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
        assert!(
            report.is_clean(),
            "iteration {iteration}: {:?}",
            report.problems
        );
        for (name, seed) in &acked {
            let value = store.get_ref(name).unwrap().unwrap_or_else(|| {
                panic!("iteration {iteration}: acknowledged ref {name} is gone")
            });
            let bytes = read_blob(&store, &value.root)
                .unwrap_or_else(|e| panic!("iteration {iteration}: {name}: {e}"));
            assert!(
                bytes == content(*seed),
                "iteration {iteration}: {name} has wrong bytes"
            );
        }
        for (name, seed) in &maybe_deleted {
            if let Some(value) = store.get_ref(name).unwrap() {
                let bytes = read_blob(&store, &value.root)
                    .unwrap_or_else(|e| panic!("iteration {iteration}: {name}: {e}"));
                assert!(
                    bytes == content(*seed),
                    "iteration {iteration}: {name} (delete interrupted) has wrong bytes"
                );
            }
        }
    }
    assert!(
        total_acks >= iterations as usize,
        "the writer acknowledged only {total_acks} refs in {iterations} runs; it never got going"
    );
}
