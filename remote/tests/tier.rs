//! The remote tier against a local directory, an in-memory bucket and a
//! real S3 server (moto on loopback): push from one store, pull into an
//! empty one and read everything back verified; refs moved concurrently
//! lose no update; the cache can be wiped under readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cas::{ChunkId, Chunking, Node, NodeType, RefExpectation, Store, StoreConfig};
use remote::{Remote, RemoteConfig};

/// Deterministic pseudo-random bytes (xorshift), compressible in part.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Every other 4 KiB run is text-like, so zstd has work.
        if (out.len() / 4096) % 2 == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(b"strata!\n");
        }
    }
    out.truncate(len);
    out
}

struct Node0 {
    _dir: tempfile::TempDir,
    store: Store,
    cache: std::path::PathBuf,
}

fn node() -> Node0 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
    let cache = dir.path().join("cache");
    Node0 {
        _dir: dir,
        store,
        cache,
    }
}

/// Writes `files` blobs under one node and points `name` at it; returns
/// the blob ids with their contents.
fn write_tree(store: &Store, name: &str, files: &[(u64, usize)]) -> Vec<(ChunkId, Vec<u8>)> {
    let writer = store.writer("test");
    let mut out = Vec::new();
    for (seed, len) in files {
        let data = bytes(*seed, *len);
        let blob = writer
            .write_blob(&mut &data[..], Chunking::ContentDefined)
            .unwrap();
        out.push((blob.id, data));
    }
    let root = writer
        .put_node(&Node::new(
            NodeType(255),
            out.iter().map(|(id, _)| *id).collect(),
            b"test tree".to_vec(),
        ))
        .unwrap()
        .id;
    writer.set_ref(name, root, RefExpectation::Any).unwrap();
    out
}

fn read_blob(store: &Store, id: &ChunkId) -> Vec<u8> {
    let mut back = Vec::new();
    store.blob(id).unwrap().copy_to(&mut back).unwrap();
    back
}

fn open(config: &RemoteConfig, node: &Node0) -> Remote {
    let remote = Remote::open(config, &node.cache, node.store.config()).unwrap();
    remote.attach(&node.store);
    remote
}

/// Push from A, pull into an empty B, read every byte back; B's store
/// keeps nothing of it locally (it reads through the cache).
fn push_pull_round_trip(config: &RemoteConfig) -> remote::PushReport {
    let a = node();
    let b = node();
    let files = [(1, 3 << 20), (2, 100_000), (3, 0), (4, 9 << 20), (5, 1)];
    let written = write_tree(&a.store, "snapshot/one", &files);

    let remote_a = open(config, &a);
    let report = remote_a.push(&a.store, &["snapshot/one".into()]).unwrap();
    assert!(report.chunks_uploaded > 10, "{report:?}");
    assert_eq!(report.refs[0].generation, 1);
    // Pushing again uploads nothing and leaves the ref alone.
    let again = remote_a.push(&a.store, &["snapshot/one".into()]).unwrap();
    assert_eq!(again.chunks_uploaded, 0, "{again:?}");
    assert_eq!(again.refs[0].generation, 1);

    let remote_b = open(config, &b);
    let pulled = remote_b.pull(&b.store, &["snapshot/one".into()]).unwrap();
    assert_eq!(
        pulled[0].root,
        a.store.get_ref("snapshot/one").unwrap().unwrap().root
    );
    for (id, data) in &written {
        assert!(b.store.locate_local(id).unwrap().is_none());
        assert_eq!(&read_blob(&b.store, id), data);
    }
    // Reads came through the disk cache, which the limit bounds.
    assert!(remote_b.cache_used_bytes() > 0);
    let fsck = b
        .store
        .fsck(cas::FsckOptions::default(), &|_, _| {})
        .unwrap();
    assert!(fsck.problems.is_empty(), "{:?}", fsck.problems);
    report
}

#[test]
fn a_local_directory_bucket_round_trips_a_tree() {
    let bucket = tempfile::tempdir().unwrap();
    let config = RemoteConfig::new(format!("file://{}", bucket.path().display()));
    let report = push_pull_round_trip(&config);
    // 12 MiB of data in one 32 MiB pack, the nodes in a pack of their
    // own: the two packs, the index, the ref.
    assert_eq!((report.packs, report.requests.puts), (2, 4), "{report:?}");
}

#[test]
fn an_s3_bucket_round_trips_a_tree_with_multipart_packs() {
    let Some(server) = fixtures::s3::S3Server::start() else {
        return;
    };
    server.create_bucket("strata");
    let mut config = RemoteConfig::new("s3://strata/nodes");
    config.options.extend(server.options());
    // Small packs and parts: several packs, each uploaded in parts.
    config.pack_bytes = 6 << 20;
    config.multipart_bytes = 5 << 20;
    let report = push_pull_round_trip(&config);
    assert!(report.packs >= 2, "{report:?}");
    // The full pack went up in parts: more PUTs than packs, the index
    // and the ref.
    assert!(report.requests.puts > report.packs + 2, "{report:?}");
}

/// A cold sequential read moves through the pushed packs in few, large
/// GETs: read-ahead asks for 16 MiB groups of blocks and goes on into the
/// pack the push uploaded next, and fetches little twice.
#[test]
fn a_cold_sequential_read_fetches_in_few_large_gets() {
    let bucket = tempfile::tempdir().unwrap();
    let config = RemoteConfig::new(format!("file://{}", bucket.path().display()));
    let a = node();
    let written = write_tree(&a.store, "snapshot/big", &[(900, 320 << 20)]);
    let report = open(&config, &a)
        .push(&a.store, &["snapshot/big".into()])
        .unwrap();
    // Half of it compresses: about 170 MB in six data packs.
    assert!(report.packs >= 6, "{report:?}");
    let b = node();
    let remote_b = open(&config, &b);
    remote_b.pull(&b.store, &["snapshot/big".into()]).unwrap();
    let before = remote_b.counts();
    assert_eq!(read_blob(&b.store, &written[0].0), written[0].1);
    let counts = remote_b.counts();
    let gets = counts.gets - before.gets;
    let down = counts.bytes_down - before.bytes_down;
    eprintln!(
        "{gets} GETs, {down} bytes down, {} stored",
        report.bytes_uploaded
    );
    // Six packs of a little over 32 MiB, each in two 16 MiB GETs and one
    // for its tail, is 18 (in 4 MiB blocks it would be 42); a few more for
    // frames read before their blocks came.
    assert!(gets <= 24, "{gets} GETs for 170 MB stored ({counts:?})");
    assert!(
        down < report.bytes_uploaded + report.bytes_uploaded / 7,
        "{down} bytes down for {} stored",
        report.bytes_uploaded
    );
}

#[test]
fn reads_continue_when_the_cache_is_wiped_under_them() {
    let bucket = tempfile::tempdir().unwrap();
    let config = RemoteConfig::new(format!("file://{}", bucket.path().display()));
    let a = node();
    let b = node();
    let files: Vec<(u64, usize)> = (0..16).map(|i| (100 + i, 1 << 20)).collect();
    let written = write_tree(&a.store, "image/big", &files);
    open(&config, &a)
        .push(&a.store, &["image/big".into()])
        .unwrap();
    let remote_b = open(&config, &b);
    remote_b.pull(&b.store, &["image/big".into()]).unwrap();
    for (i, (id, data)) in written.iter().enumerate() {
        if i % 4 == 2 {
            // Gone from disk and from the store's memory.
            let _ = std::fs::remove_dir_all(&b.cache);
            b.store.clear_cache();
        }
        assert_eq!(&read_blob(&b.store, id), data);
    }
    // Blocks were cached again after the last wipe.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(std::fs::read_dir(&b.cache).unwrap().count() > 0);
}

#[test]
fn a_damaged_pack_in_the_bucket_is_an_error_not_data() {
    let bucket = tempfile::tempdir().unwrap();
    let config = RemoteConfig::new(format!("file://{}", bucket.path().display()));
    let a = node();
    let b = node();
    let written = write_tree(&a.store, "image/x", &[(7, 200_000)]);
    open(&config, &a)
        .push(&a.store, &["image/x".into()])
        .unwrap();
    // Flip one byte in every pack's frame area.
    for entry in std::fs::read_dir(bucket.path().join("packs")).unwrap() {
        let path = entry.unwrap().path();
        let mut data = std::fs::read(&path).unwrap();
        data[100] ^= 0x40;
        std::fs::write(&path, data).unwrap();
    }
    let remote_b = open(&config, &b);
    // The pull fetches and verifies the root (a node): it may or may not
    // sit where the damage is; a blob read must fail either way.
    let pulled = remote_b.pull(&b.store, &["image/x".into()]);
    if pulled.is_ok() {
        let mut out = Vec::new();
        let err = b
            .store
            .blob(&written[0].0)
            .and_then(|blob| blob.copy_to(&mut out))
            .unwrap_err();
        assert_eq!(err.class(), cas::ErrorClass::Corruption, "{err}");
    }
}

#[test]
fn a_store_that_chunks_differently_is_refused() {
    let bucket = tempfile::tempdir().unwrap();
    let config = RemoteConfig::new(format!("file://{}", bucket.path().display()));
    let a = node();
    open(&config, &a);
    let dir = tempfile::tempdir().unwrap();
    let mut other = StoreConfig::default();
    other.chunking.cdc_avg *= 2;
    other.chunking.cdc_max *= 2;
    let err = Remote::open(&config, &dir.path().join("c"), &other)
        .err()
        .expect("refused");
    assert!(matches!(err, remote::Error::Incompatible(_)), "{err}");
}

/// Many nodes increment one remote ref by compare-and-swap at once; every
/// successful update is kept (the final generation counts them all).
#[test]
fn concurrent_ref_updates_lose_nothing() {
    let config = RemoteConfig::new("memory://ref-race");
    let a = node();
    let roots: Vec<ChunkId> = write_tree(&a.store, "image/base", &[(9, 10)])
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let remote = open(&config, &a);
    remote.push(&a.store, &["image/base".into()]).unwrap();
    let wins = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let remote = remote.clone();
            let wins = wins.clone();
            let conflicts = conflicts.clone();
            let root = roots[0];
            std::thread::spawn(move || {
                for _ in 0..25 {
                    loop {
                        let current = remote.get_ref("volume/shared").unwrap();
                        let expect = current.map_or(RefExpectation::Absent, |c| {
                            RefExpectation::Generation(c.generation)
                        });
                        match remote.set_ref("volume/shared", Some(root), expect) {
                            Ok(_) => {
                                wins.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(remote::Error::RefConflict { .. }) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(wins.load(Ordering::Relaxed), 200);
    let last = remote.get_ref("volume/shared").unwrap().unwrap();
    assert_eq!(last.generation, 200, "every win is one generation");
    eprintln!("{} conflicts retried", conflicts.load(Ordering::Relaxed));
    // A deletion is a version too; the ref then reads as absent.
    remote
        .set_ref("volume/shared", None, RefExpectation::Generation(200))
        .unwrap();
    assert!(remote.get_ref("volume/shared").unwrap().is_none());
    let listed: Vec<String> = remote
        .list_refs("")
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, vec!["image/base".to_string()]);
}

fn shaped_remote(
    inner: Arc<dyn object_store::ObjectStore>,
    faults: remote::shaped::Faults,
    node: &Node0,
    config: &RemoteConfig,
) -> (Remote, Arc<remote::shaped::ShapedStore>) {
    let shaped = remote::shaped::ShapedStore::new(inner, Default::default(), faults);
    let remote =
        Remote::with_object_store(shaped.clone(), config, &node.cache, node.store.config())
            .unwrap();
    remote.attach(&node.store);
    (remote, shaped)
}

/// Failed, throttled and slow requests are retried: the push, the pull
/// and every read complete, and the bytes are right.
#[test]
fn failing_throttled_and_slow_requests_are_retried() {
    let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let mut config = RemoteConfig::new("memory://unused");
    config.pack_bytes = 1 << 20;
    let faults = remote::shaped::Faults {
        fail_one_in: 3,
        throttle_one_in: 5,
        slow_one_in: 7,
        slow_by: std::time::Duration::from_millis(100),
        fail_from: 0,
    };
    let a = node();
    let b = node();
    let files: Vec<(u64, usize)> = (0..8).map(|i| (300 + i, 700_000)).collect();
    let written = write_tree(&a.store, "snapshot/faulty", &files);
    let (remote_a, _) = shaped_remote(inner.clone(), faults, &a, &config);
    let report = remote_a
        .push(&a.store, &["snapshot/faulty".into()])
        .unwrap();
    assert!(report.packs >= 3, "{report:?}");
    let (remote_b, shaped_b) = shaped_remote(inner, faults, &b, &config);
    remote_b
        .pull(&b.store, &["snapshot/faulty".into()])
        .unwrap();
    for (id, data) in &written {
        assert_eq!(&read_blob(&b.store, id), data);
    }
    assert!(remote_a.counts().retries > 0 && remote_b.counts().retries > 0);
    assert!(shaped_b.counts().1 > 0, "faults were injected");
}

/// The store goes away in the middle of a push: the push fails with an
/// error naming the request, the bucket has no ref to what was cut off,
/// and once the store is back the same push completes.
#[test]
fn a_push_cut_off_by_a_dead_store_fails_clearly_and_leaves_no_ref() {
    let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let mut config = RemoteConfig::new("memory://unused");
    config.pack_bytes = 1 << 20;
    config.retry_secs = 1;
    let a = node();
    let files: Vec<(u64, usize)> = (0..12).map(|i| (400 + i, 600_000)).collect();
    let written = write_tree(&a.store, "snapshot/cut", &files);
    let (remote_a, shaped) = shaped_remote(inner.clone(), Default::default(), &a, &config);
    let (seen, _) = shaped.counts();
    // A few pack uploads get through, then nothing does.
    shaped.set_faults(remote::shaped::Faults {
        fail_from: seen + 5,
        ..Default::default()
    });
    let err = remote_a
        .push(&a.store, &["snapshot/cut".into()])
        .unwrap_err();
    assert!(matches!(err, remote::Error::Bucket { .. }), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    let refs: Vec<_> = futures::executor::block_on(async {
        use futures::TryStreamExt;
        inner
            .list(Some(&object_store::path::Path::from("refs")))
            .try_collect::<Vec<_>>()
            .await
    })
    .unwrap();
    assert!(refs.is_empty(), "no ref after a failed push: {refs:?}");

    shaped.set_faults(Default::default());
    remote_a.push(&a.store, &["snapshot/cut".into()]).unwrap();
    let b = node();
    let (remote_b, _) = shaped_remote(inner, Default::default(), &b, &config);
    remote_b.pull(&b.store, &["snapshot/cut".into()]).unwrap();
    for (id, data) in &written {
        assert_eq!(&read_blob(&b.store, id), data);
    }
}

/// Every ref in the bucket reads whole on a fresh node: each chunk its
/// closure reaches is fetched and verified.
fn every_ref_reads_whole(config: &RemoteConfig) -> usize {
    let fresh = node();
    let remote = open(config, &fresh);
    let refs = remote.list_refs("").unwrap();
    for r in &refs {
        remote
            .pull(&fresh.store, std::slice::from_ref(&r.name))
            .unwrap();
        let mut stack = vec![r.root];
        while let Some(id) = stack.pop() {
            let (kind, _) = fresh.store.get_with_kind(&id).unwrap();
            if kind == cas::ChunkKind::Node {
                stack.extend(fresh.store.get_node(&id).unwrap().links.iter().copied());
            }
        }
    }
    refs.len()
}

/// A real S3 server (s3s-fs, which keeps its objects on disk) killed with
/// SIGKILL in the middle of a push: restarted within the retry period,
/// the push completes and the tree reads back; kept down past it, the push
/// fails with an error naming the bucket, no ref names what was cut off,
/// and the same push completes once the server is back.
#[test]
fn an_s3_server_killed_in_the_middle_of_a_push() {
    let root = tempfile::tempdir().unwrap();
    let Some(mut server) = fixtures::s3::S3Server::start_persistent(root.path()) else {
        return;
    };
    server.create_bucket("strata");
    let a = node();
    let files: Vec<(u64, usize)> = (0..24).map(|i| (500 + i, 2 << 20)).collect();
    let written = write_tree(&a.store, "snapshot/killed", &files);
    for (scenario, retry_secs, down_for) in [("back in time", 30, 700), ("down too long", 2, 0)] {
        let mut config = RemoteConfig::new(format!("s3://strata/{}", scenario.replace(' ', "-")));
        config.options.extend(server.options());
        config.pack_bytes = 6 << 20;
        config.multipart_bytes = 5 << 20;
        config.parallel = 2;
        config.retry_secs = retry_secs;
        // Slow enough that the kill lands mid-push: 20 MB/s a connection.
        let shaped = remote::shaped::ShapedStore::new(
            config.open_store().unwrap(),
            remote::shaped::Shape {
                latency: std::time::Duration::from_millis(5),
                bytes_per_sec: 20_000_000,
            },
            Default::default(),
        );
        let cache = tempfile::tempdir().unwrap();
        let remote_a =
            Remote::with_object_store(shaped.clone(), &config, cache.path(), a.store.config())
                .unwrap();
        let result = std::thread::scope(|s| {
            let push = s.spawn(|| remote_a.push(&a.store, &["snapshot/killed".into()]));
            let started = shaped.counts().0;
            while shaped.counts().0 < started + 6 && !push.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(
                !push.is_finished(),
                "{scenario}: the push ended before the kill"
            );
            server.kill();
            if down_for > 0 {
                std::thread::sleep(std::time::Duration::from_millis(down_for));
                server.restart();
            }
            push.join().unwrap()
        });
        match (scenario, result) {
            ("back in time", Ok(report)) => {
                assert!(remote_a.counts().retries > 0, "{scenario}: {report:?}")
            }
            ("down too long", Err(err)) => {
                assert!(
                    matches!(err, remote::Error::Bucket { .. }),
                    "{scenario}: {err}"
                );
                eprintln!("{scenario}: the push failed: {err}");
                server.restart();
                assert!(remote_a.list_refs("").unwrap().is_empty(), "{scenario}");
                assert_eq!(every_ref_reads_whole(&config), 0);
                remote_a
                    .push(&a.store, &["snapshot/killed".into()])
                    .unwrap();
            }
            (_, result) => panic!("{scenario}: {:?}", result.map(|r| r.refs)),
        }
        assert_eq!(every_ref_reads_whole(&config), 1, "{scenario}");
        let b = node();
        let remote_b = open(&config, &b);
        remote_b
            .pull(&b.store, &["snapshot/killed".into()])
            .unwrap();
        for (id, data) in &written {
            assert_eq!(&read_blob(&b.store, id), data, "{scenario}");
        }
    }
}

/// What a node pulled stays in the bucket after the node that pushed it
/// deletes its ref and collects: the pull pinned it. Once unpinned, the
/// next collections take it.
#[test]
fn a_pulled_tree_is_pinned_until_its_node_lets_go() {
    let bucket = tempfile::tempdir().unwrap();
    let config = RemoteConfig::new(format!("file://{}", bucket.path().display()));
    // Collections with a grace period of 1 ms (pushes refuse to run
    // against one that short), from a node of their own.
    let mut gc_config = config.clone();
    gc_config.gc_grace_ms = 1;
    let collector = node();
    let remote_gc = open(&gc_config, &collector);
    let a = node();
    let written = write_tree(&a.store, "snapshot/pinned", &[(700, 3 << 20), (701, 5000)]);
    let remote_a = open(&config, &a);
    remote_a
        .push(&a.store, &["snapshot/pinned".into()])
        .unwrap();
    let b = node();
    let remote_b = open(&config, &b);
    remote_b
        .pull(&b.store, &["snapshot/pinned".into()])
        .unwrap();
    let pins = remote_b.pins().unwrap();
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(pins[0].name, remote_b.pin_name("snapshot/pinned"));
    assert_ne!(remote_a.node_name(), remote_b.node_name());

    // A lets go of it and collects twice (condemn, then sweep).
    remote_a
        .set_ref("snapshot/pinned", None, cas::RefExpectation::Any)
        .unwrap();
    let collect = || {
        let mut swept = 0;
        for _ in 0..2 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            swept += remote_gc.gc(&collector.store).unwrap().swept_packs;
        }
        swept
    };
    assert_eq!(collect(), 0, "a pinned tree was swept");
    remote_b.clear_cache();
    for (id, data) in &written {
        assert_eq!(&read_blob(&b.store, id), data);
    }

    // B lets go too: the next collections take it, and B's reads of what
    // it no longer pins fail (they do not return other bytes).
    assert_eq!(
        remote_b.unpin(&["snapshot/pinned".into()]).unwrap(),
        vec!["snapshot/pinned".to_string()]
    );
    assert!(remote_b
        .unpin(&["snapshot/pinned".into()])
        .unwrap()
        .is_empty());
    assert!(collect() > 0, "nothing was swept once unpinned");
    remote_b.clear_cache();
    let fresh = node();
    let remote_fresh = open(&config, &fresh);
    assert!(remote_fresh.fetch(&written[0].0).is_err());
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Node B pushes trees that reuse chunks of trees it deleted from the
/// bucket, while node A collects the bucket with a short grace period,
/// in random interleavings: every ref left in the bucket reads whole on
/// a fresh node, also after later collections sweep everything dead.
#[test]
fn collection_beside_pushes_never_deletes_what_a_ref_reaches() {
    for seed in 1..=3u64 {
        let bucket: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let mut config = RemoteConfig::new("memory://unused");
        config.pack_bytes = 1 << 20;
        config.gc_grace_ms = 1000;
        let grace = std::time::Duration::from_millis(config.gc_grace_ms);
        let a = node();
        let b = node();
        let remote_a =
            Remote::with_object_store(bucket.clone(), &config, &a.cache, a.store.config()).unwrap();
        remote_a.attach(&a.store);
        // B's requests are slow, so that its pushes take long enough for
        // collections to run between its checks and its refs.
        let slow = remote::shaped::ShapedStore::new(
            bucket.clone(),
            remote::shaped::Shape {
                latency: std::time::Duration::from_millis(5),
                bytes_per_sec: 0,
            },
            Default::default(),
        );
        let remote_b =
            Remote::with_object_store(slow, &config, &b.cache, b.store.config()).unwrap();
        remote_b.attach(&b.store);
        // B's pool of blobs, reused by its trees.
        let writer = b.store.writer("pool");
        let pool: Vec<ChunkId> = (0..24)
            .map(|i| {
                let data = bytes(seed * 1000 + i, 150_000 + (i as usize) * 1000);
                writer
                    .write_blob(&mut &data[..], Chunking::ContentDefined)
                    .unwrap()
                    .id
            })
            .collect();
        writer.commit().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let collector = {
            let remote_a = remote_a.clone();
            let store = a.store.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed * 77 + 1);
                let mut swept = 0;
                while !stop.load(Ordering::Relaxed) {
                    swept += remote_a.gc(&store).unwrap().swept_packs;
                    std::thread::sleep(std::time::Duration::from_millis(rng.next() % 30));
                }
                swept
            })
        };
        let mut rng = Rng(seed);
        let mut names: Vec<String> = Vec::new();
        for round in 0..40 {
            let links: Vec<ChunkId> = (0..4)
                .map(|_| pool[(rng.next() % pool.len() as u64) as usize])
                .collect();
            let writer = b.store.writer("round");
            let root = writer
                .put_node(&Node::new(
                    NodeType(255),
                    links,
                    format!("round {round}").into_bytes(),
                ))
                .unwrap()
                .id;
            let name = format!("snapshot/s{seed}-{round}");
            writer.set_ref(&name, root, RefExpectation::Any).unwrap();
            remote_b
                .push(&b.store, std::slice::from_ref(&name))
                .unwrap();
            names.push(name);
            // Drop some refs from the bucket: their chunks become dead,
            // and later rounds reuse them.
            if rng.next() % 2 == 0 && names.len() > 2 {
                let victim = names.remove((rng.next() % names.len() as u64) as usize);
                remote_b
                    .set_ref(&victim, None, RefExpectation::Any)
                    .unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(rng.next() % 25));
        }
        stop.store(true, Ordering::Relaxed);
        let swept = collector.join().unwrap();
        // A tree of its own, pushed and dropped: packs wholly dead, so the
        // last collections surely delete something (how much was deleted
        // while the pushes ran depends on timing, and is printed).
        let writer = b.store.writer("doomed");
        let data = bytes(seed * 999_999, 300_000);
        let blob = writer
            .write_blob(&mut &data[..], Chunking::ContentDefined)
            .unwrap()
            .id;
        let doomed = writer
            .put_node(&Node::new(NodeType(255), vec![blob], b"doomed".to_vec()))
            .unwrap()
            .id;
        writer
            .set_ref("snapshot/doomed", doomed, RefExpectation::Any)
            .unwrap();
        remote_b
            .push(&b.store, &["snapshot/doomed".to_string()])
            .unwrap();
        remote_b
            .set_ref("snapshot/doomed", None, RefExpectation::Any)
            .unwrap();
        // Condemn, then (a grace period later) delete.
        let first = remote_a.gc(&a.store).unwrap();
        std::thread::sleep(grace + std::time::Duration::from_millis(50));
        let last = remote_a.gc(&a.store).unwrap();
        eprintln!("seed {seed}: {swept} packs swept during the pushes; then {first:?}, {last:?}");
        assert!(
            first.swept_packs + last.swept_packs > 0,
            "the dropped tree's packs were not deleted"
        );
        // A fresh node reads every ref left, whole.
        let c = node();
        let remote_c =
            Remote::with_object_store(bucket.clone(), &config, &c.cache, c.store.config()).unwrap();
        remote_c.attach(&c.store);
        let left: Vec<String> = remote_c
            .list_refs("snapshot/")
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(left, {
            let mut sorted = names.clone();
            sorted.sort();
            sorted
        });
        remote_c.pull(&c.store, &left).unwrap();
        for name in &left {
            let root = c.store.get_ref(name).unwrap().unwrap().root;
            for link in c.store.get_node(&root).unwrap().links {
                let mut out = Vec::new();
                c.store.blob(&link).unwrap().copy_to(&mut out).unwrap();
            }
        }
    }
}
