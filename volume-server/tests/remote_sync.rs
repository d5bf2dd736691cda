//! Volume heads in a shared bucket: two nodes committing to one volume at
//! once, each syncing whenever it likes, lose no update (the loser of a
//! race merges again); a file both changed keeps both versions; misuse is
//! refused and changes nothing. The bucket is `object_store`'s `InMemory`,
//! whose conditional writes are atomic (the S3 path is tested end to end
//! in `server_remote.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cas::{Store, StoreConfig};
use remote::{Remote, RemoteConfig};
use volume_server::remote_sync::{SyncOutcome, VolumeSync};
use volume_server::{Error, Volumes};

mod common;
use common::contents;

struct Node {
    _dir: tempfile::TempDir,
    volumes: Arc<Volumes>,
    sync: VolumeSync,
}

/// A node: its own store and cache, on bucket `memory://BUCKET`.
fn node(bucket: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
    let config = RemoteConfig::new(format!("memory://{bucket}"));
    let remote = Remote::open(&config, &dir.path().join("cache"), store.config()).unwrap();
    remote.attach(&store);
    let volumes = Arc::new(Volumes::new(store));
    let sync = VolumeSync::new(volumes.clone(), remote);
    Node {
        _dir: dir,
        volumes,
        sync,
    }
}

fn unique_bucket(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn put(node: &Node, path: &str, bytes: &[u8]) {
    node.volumes
        .put_file("data", path, &mut &bytes[..], 0o644, "test")
        .unwrap();
}

/// Syncs both until a round changes nothing on either.
fn settle(a: &Node, b: &Node) {
    for _ in 0..10 {
        let ra = a.sync.sync("data").unwrap();
        let rb = b.sync.sync("data").unwrap();
        if ra.outcome == SyncOutcome::Unchanged && rb.outcome == SyncOutcome::Unchanged {
            return;
        }
    }
    panic!("two quiet nodes did not settle in 10 rounds");
}

/// xorshift, for interleavings that differ from seed to seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn two_nodes_committing_and_syncing_at_once_lose_no_update() {
    for seed in 1..=3u64 {
        let bucket = unique_bucket("concurrent");
        let (a, b) = (node(&bucket), node(&bucket));
        a.volumes.create("data", 0).unwrap();
        put(&a, "shared.txt", b"base");
        assert_eq!(a.sync.push("data").unwrap().outcome, SyncOutcome::Created);
        assert_eq!(b.sync.pull("data").unwrap().outcome, SyncOutcome::Pulled);
        let done = AtomicBool::new(false);
        let outcomes = parking_lot::Mutex::new(BTreeMap::<String, u64>::new());
        const COMMITS: u64 = 30;
        std::thread::scope(|s| {
            let mut writers = Vec::new();
            for (tag, node) in [("a", &a), ("b", &b)] {
                writers.push(s.spawn({
                    let mut rng = Rng(seed * 7919 + tag.len() as u64 + tag.as_bytes()[0] as u64);
                    move || {
                        for k in 0..COMMITS {
                            put(node, &format!("{tag}/{k}"), format!("{tag} {k}").as_bytes());
                            if k % 7 == 3 {
                                // Both nodes rewrite one file now and then.
                                put(node, "shared.txt", format!("{tag} {k}").as_bytes());
                            }
                            std::thread::sleep(Duration::from_micros(rng.below(3000)));
                        }
                    }
                }));
            }
            for (tag, node) in [("a", &a), ("b", &b)] {
                let done = &done;
                let outcomes = &outcomes;
                let mut rng = Rng(seed * 104_729 + tag.as_bytes()[0] as u64);
                s.spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        let report = node.sync.sync("data").unwrap();
                        *outcomes
                            .lock()
                            .entry(format!("{:?}", report.outcome))
                            .or_default() += 1;
                        std::thread::sleep(Duration::from_micros(rng.below(4000)));
                    }
                });
            }
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        settle(&a, &b);

        let head_a = a.volumes.head("data").unwrap();
        let head_b = b.volumes.head("data").unwrap();
        assert_eq!(head_a.commit.tree, head_b.commit.tree, "seed {seed}");
        let remote = a.sync.remote().get_ref("volume/data").unwrap().unwrap();
        assert_eq!(remote.root, head_a.commit.id, "seed {seed}");
        assert_eq!(head_a.commit.id, head_b.commit.id, "seed {seed}");
        for (node, name) in [(&a, "a"), (&b, "b")] {
            let files = contents(node.volumes.store(), head_a.commit.tree);
            for tag in ["a", "b"] {
                for k in 0..COMMITS {
                    assert_eq!(
                        files.get(&format!("/{tag}/{k}")).map(Vec::as_slice),
                        Some(format!("{tag} {k}").as_bytes()),
                        "seed {seed}: node {name} lacks {tag}/{k} of the other's commits"
                    );
                }
            }
            // The shared file's last versions from each node are both
            // kept (one as the file, one as a conflict copy) unless one
            // node's write came after it had seen the other's.
            assert!(files.contains_key("/shared.txt"));
        }
        let outcomes = outcomes.into_inner();
        eprintln!("seed {seed}: sync outcomes {outcomes:?}");
        assert!(
            outcomes.contains_key("Merged"),
            "seed {seed}: no sync ever merged ({outcomes:?}): the test did not race"
        );
    }
}

#[test]
fn a_file_both_nodes_changed_keeps_both_versions() {
    let bucket = unique_bucket("conflict");
    let (a, b) = (node(&bucket), node(&bucket));
    a.volumes.create("data", 0).unwrap();
    put(&a, "notes.txt", b"base");
    a.sync.push("data").unwrap();
    b.sync.pull("data").unwrap();
    put(&a, "notes.txt", b"from a");
    put(&b, "notes.txt", b"from b");
    put(&b, "only-b.txt", b"b");
    assert_eq!(a.sync.sync("data").unwrap().outcome, SyncOutcome::Pushed);
    let merged = b.sync.sync("data").unwrap();
    assert_eq!(merged.outcome, SyncOutcome::Merged);
    assert_eq!(merged.conflicts.len(), 1, "{merged:?}");
    assert_eq!(merged.conflicts[0].path, "/notes.txt");
    assert_eq!(a.sync.sync("data").unwrap().outcome, SyncOutcome::Pulled);
    let head = a.volumes.head("data").unwrap();
    assert_eq!(head.commit.record.conflicts.len(), 1);
    let files = contents(a.volumes.store(), head.commit.tree);
    let versions: Vec<&[u8]> = files
        .iter()
        .filter(|(p, _)| p.starts_with("/notes."))
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(versions.len(), 2, "{:?}", files.keys().collect::<Vec<_>>());
    assert!(versions.contains(&&b"from a"[..]) && versions.contains(&&b"from b"[..]));
    assert_eq!(files.get("/only-b.txt").map(Vec::as_slice), Some(&b"b"[..]));
    // The history on a node that pulled reads back through the bucket.
    let history = a.volumes.history("data", 10).unwrap();
    assert!(history.len() >= 3, "{history:?}");
}

#[test]
fn misuse_is_refused_and_changes_nothing() {
    let bucket = unique_bucket("misuse");
    let (a, b) = (node(&bucket), node(&bucket));
    a.volumes.create("data", 0).unwrap();
    assert!(matches!(a.sync.sync("data"), Err(Error::NotTracked(_))));
    assert!(matches!(b.sync.pull("data"), Err(Error::NotInBucket(_))));
    assert!(matches!(b.sync.push("data"), Err(Error::NotFound(_))));
    assert!(matches!(a.sync.pull("bad/name"), Err(Error::BadName(_))));
    assert!(a.sync.remote().get_ref("volume/data").unwrap().is_none());
    a.sync.push("data").unwrap();
    // B made a volume of the same name on its own: no common base.
    b.volumes.create("data", 0).unwrap();
    let before = b.volumes.head("data").unwrap();
    assert!(matches!(b.sync.push("data"), Err(Error::Diverged(_))));
    assert!(matches!(b.sync.pull("data"), Err(Error::Diverged(_))));
    assert_eq!(b.volumes.head("data").unwrap(), before);
    assert!(!b.sync.is_tracked("data").unwrap());
    // Removing it here stops tracking; the bucket keeps it.
    a.volumes.remove("data").unwrap();
    assert!(!a.sync.is_tracked("data").unwrap());
    assert!(a.sync.remote().get_ref("volume/data").unwrap().is_some());
    assert_eq!(a.sync.pull("data").unwrap().outcome, SyncOutcome::Pulled);
}
