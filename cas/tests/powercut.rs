//! Power cuts under the chunk store: a writer process puts blobs, names
//! them, deletes names and runs GC on a filesystem that loses everything
//! not synced ([`fixtures::powercut`]); the power is cut at a random moment
//! (discarding every unsynced change, or keeping a random prefix of them
//! and tearing the last write), the store is opened again on what
//! survived, and:
//! - it opens (recovery cuts torn tails, indexes what reached packs),
//! - fsck finds nothing wrong,
//! - every ref whose `set_ref` had returned is there and its blob reads
//!   back byte for byte; every ref whose delete had returned is gone.
//!
//! In runs of more than 25 cuts, fsck and the check of everything
//! acknowledged so far run every 25th cut and after the last; the cuts
//! between check what their round acknowledged.
//!
//! Acknowledgements are cumulative over all the cuts of a run (the store
//! lives on from cut to cut, as a machine does). Cuts: 12 per mode, or
//! `STRATA_POWER_CUTS`; seed: `STRATA_SEED`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use cas::{Chunking, FsckOptions, OpenOptions, RefExpectation, Store, StoreConfig};
use common::*;
use fixtures::powercut::{Options, PowerCutFs};
use fixtures::workload::{self, Rng, Workload};

fn content(seed: u64) -> Vec<u8> {
    let len = 500 + (seed.wrapping_mul(2654435761) % 300_000) as usize;
    if seed % 3 == 0 {
        text_bytes(len, seed)
    } else {
        random_bytes(len, seed)
    }
}

fn config() -> StoreConfig {
    StoreConfig {
        pack_target_bytes: 1 << 20,
        ..small_config()
    }
}

/// The writer. Does nothing unless started by a power-cut test.
#[test]
fn powercut_writer() {
    let Some(home) = std::env::var_os("CAS_POWERCUT_HOME") else {
        return;
    };
    let round: u64 = std::env::var("CAS_POWERCUT_ROUND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let store = Store::open(Path::new(&home), OpenOptions::default()).expect("open");
    let mut out = std::io::stdout();
    let mut say = |line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    for i in 0u64.. {
        let seed = round * 1_000_000 + i;
        let data = content(seed);
        let writer = store.writer("power-cut writer");
        let Ok(blob) = writer.write_blob(&mut &data[..], Chunking::ContentDefined) else {
            return;
        };
        // Garbage for GC: chunks no ref reaches.
        let _ = writer.put_data(&random_bytes(3_000, seed ^ 0xdead));
        let name = format!("pc/{round}/{i}");
        if writer
            .set_ref(&name, blob.id, RefExpectation::Absent)
            .is_err()
        {
            return;
        }
        drop(writer);
        say(format!("ACK {name} {seed}"));
        if i % 4 == 3 {
            let old = format!("pc/{round}/{}", i - 1);
            say(format!("DELETING {old}"));
            if store.delete_ref(&old, RefExpectation::Any).is_err() {
                return;
            }
            say(format!("DEL {old}"));
        }
        if i % 9 == 8 && store.gc().is_err() {
            return;
        }
    }
}

/// What the writers acknowledged, over all rounds.
#[derive(Default)]
struct Acked {
    live: BTreeMap<String, u64>,
    deleting: BTreeSet<String>,
    deleted: BTreeSet<String>,
    /// Names acknowledged (set or deleted) since the last check.
    recent: BTreeSet<String>,
}

impl Acked {
    fn absorb(&mut self, lines: &[String]) {
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["ACK", name, seed] => {
                    self.recent.insert(name.to_string());
                    self.live.insert(name.to_string(), seed.parse().unwrap());
                }
                ["DELETING", name] => {
                    self.deleting.insert(name.to_string());
                }
                ["DEL", name] => {
                    self.recent.insert(name.to_string());
                    self.deleting.remove(*name);
                    self.live.remove(*name);
                    self.deleted.insert(name.to_string());
                }
                _ => {}
            }
        }
    }

    /// Checks a reopened store against what was acknowledged: everything
    /// (`full`), or what the last round acknowledged.
    fn check(&mut self, store: &Store, round: u64, full: bool) {
        let recent = std::mem::take(&mut self.recent);
        for (name, seed) in &self.live {
            if !full && !recent.contains(name) {
                continue;
            }
            let value = store.get_ref(name).unwrap();
            if self.deleting.contains(name) && value.is_none() {
                continue; // its delete was under way: may have happened
            }
            let value =
                value.unwrap_or_else(|| panic!("round {round}: acknowledged ref {name} is lost"));
            let mut back = Vec::new();
            store
                .blob(&value.root)
                .and_then(|b| b.copy_to(&mut back))
                .unwrap_or_else(|e| panic!("round {round}: ref {name}: {e}"));
            assert!(
                back == content(*seed),
                "round {round}: ref {name} reads other bytes"
            );
        }
        for name in &self.deleted {
            if !full && !recent.contains(name) {
                continue;
            }
            assert!(
                store.get_ref(name).unwrap().is_none(),
                "round {round}: deleted ref {name} came back"
            );
        }
        // A delete in flight is settled now, one way or the other.
        for name in std::mem::take(&mut self.deleting) {
            if store.get_ref(&name).unwrap().is_none() {
                self.live.remove(&name);
            }
        }
    }
}

fn run(options: Options, label: &str) {
    if !fixtures::require::fuse() {
        return;
    }
    let cuts = workload::power_cuts(12);
    let mut rng = Rng::new(workload::seed());
    let base = tempfile::tempdir().unwrap();
    let mut fs = PowerCutFs::mount(base.path(), options).unwrap();
    Store::init(&fs.path().join("store"), config()).unwrap();
    // The store's creation is durable: the power may go at once.
    let mut acked = Acked::default();
    let (mut kept, mut torn, mut lost) = (0, 0, 0);
    for round in 0..cuts {
        let home = fs.path().join("store");
        let mut cmd = workload::this_test("powercut_writer");
        cmd.env("CAS_POWERCUT_HOME", &home)
            .env("CAS_POWERCUT_ROUND", round.to_string());
        let child = Workload::start(cmd).unwrap();
        let (report, lines) = workload::cut_under(
            &mut fs,
            child,
            "ACK",
            Duration::from_millis(400),
            round,
            &mut rng,
        )
        .unwrap();
        kept += report.kept;
        torn += report.torn;
        lost += report.unsynced - report.kept;
        acked.absorb(&lines);
        let store = Store::open(&fs.path().join("store"), OpenOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        let full = workload::full_check(round, cuts);
        if full {
            let fsck = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
            assert!(fsck.is_clean(), "round {round}: fsck: {:?}", fsck.problems);
        }
        acked.check(&store, round, full);
        drop(store);
    }
    let stats = fs.stats();
    println!(
        "RESULT cas-powercut mode={label} cuts={cuts} acknowledged_refs={} deleted={} \
         unsynced_lost={lost} unsynced_kept={kept} torn_writes={torn} syncs={} dir_syncs={} lost_acknowledged=0",
        acked.live.len(),
        acked.deleted.len(),
        stats.syncs,
        stats.dir_syncs,
    );
    assert!(
        acked.live.len() as u64 >= cuts,
        "the writer made too little progress"
    );
}

#[test]
fn acknowledged_blobs_and_refs_survive_power_cuts() {
    run(Options::default(), "write-through");
}

#[test]
fn acknowledged_blobs_and_refs_survive_power_cuts_with_a_writeback_cache() {
    run(
        Options {
            writeback_cache: true,
            ..Options::default()
        },
        "writeback-cache",
    );
}
