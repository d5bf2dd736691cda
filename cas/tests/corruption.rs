//! Damage on disk: reads fail with an error naming the chunk and the pack,
//! never with different bytes, and fsck names the damage and what it hurts.

mod common;

use std::path::{Path, PathBuf};

use cas::{
    ChunkId, ChunkKind, Chunking, FsckOptions, OpenOptions, Problem, RefExpectation, Store,
    StoreConfig,
};
use common::*;

fn pack_file(store: &Store, pack: cas::PackId) -> PathBuf {
    store.packs_dir().join(format!("{pack}.pack"))
}

/// Stores two blobs under refs and returns (victim blob, one of its data
/// chunks, healthy blob, their contents).
fn two_blobs(store: &Store) -> (ChunkId, ChunkId, ChunkId, Vec<u8>, Vec<u8>) {
    let writer = store.writer("setup");
    let victim_data = text_bytes(600_000, 1);
    let healthy_data = random_bytes(300_000, 2);
    let victim = writer
        .write_blob(&mut &victim_data[..], Chunking::ContentDefined)
        .unwrap();
    let healthy = writer
        .write_blob(&mut &healthy_data[..], Chunking::ContentDefined)
        .unwrap();
    writer
        .set_ref("image/victim", victim.id, RefExpectation::Absent)
        .unwrap();
    writer
        .set_ref("image/healthy", healthy.id, RefExpectation::Absent)
        .unwrap();
    let node = store.get_node(&victim.id).unwrap();
    let chunk = node.links[node.links.len() / 2];
    (victim.id, chunk, healthy.id, victim_data, healthy_data)
}

#[test]
fn a_flipped_pack_byte_fails_the_read_and_fsck_names_chunk_pack_and_ref() {
    let (_dir, store) = new_store(StoreConfig::default());
    let (victim, chunk, healthy, _, healthy_data) = two_blobs(&store);
    let location = store.locate(&chunk).unwrap().unwrap();
    assert_eq!(location.kind, ChunkKind::Data);
    flip(
        &pack_file(&store, location.pack),
        location.offset + 52 + 100,
    );
    store.clear_cache();

    let err = read_blob(&store, &victim).unwrap_err();
    match &err {
        cas::Error::CorruptChunk {
            id, pack, offset, ..
        } => {
            assert_eq!(*id, chunk);
            assert_eq!(*pack, location.pack);
            assert_eq!(*offset, location.offset);
        }
        other => panic!("expected CorruptChunk, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&chunk.to_hex()) && text.contains(&location.pack.to_string()),
        "{text}"
    );
    assert_eq!(err.class(), cas::ErrorClass::Corruption);
    assert_eq!(read_blob(&store, &healthy).unwrap(), healthy_data);

    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(!report.is_clean());
    assert!(
        report.problems.iter().any(|p| matches!(p,
        Problem::ChunkCorrupt { id, pack, .. } if *id == chunk && *pack == location.pack)),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems.iter().any(|p| matches!(p,
        Problem::DamagedReachableChunk { id, referenced_by_ref, parent }
            if *id == chunk && referenced_by_ref == "image/victim" && parent.is_some())),
        "{:?}",
        report.problems
    );
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::FramesDamaged { pack, offset, .. } if *pack == location.pack && *offset == location.offset)));
    // Nothing else is blamed.
    assert!(!report.problems.iter().any(|p| matches!(p,
        Problem::DamagedReachableChunk { referenced_by_ref, .. } if referenced_by_ref == "image/healthy")));
}

#[test]
fn damage_anywhere_in_a_frame_is_caught() {
    // Header fields, id bytes and payload: every place yields an error,
    // never other bytes.
    for at in [0u64, 5, 9, 12, 13, 17, 25, 51, 52, 60, 500] {
        let (_dir, store) = new_store(StoreConfig::default());
        let (victim, chunk, _, victim_data, _) = two_blobs(&store);
        let location = store.locate(&chunk).unwrap().unwrap();
        flip(&pack_file(&store, location.pack), location.offset + at);
        store.clear_cache();
        match read_blob(&store, &victim) {
            Ok(bytes) => panic!(
                "flip at frame byte {at} went unnoticed (same bytes: {})",
                bytes == victim_data
            ),
            Err(cas::Error::CorruptChunk { id, .. }) => assert_eq!(id, chunk, "flip at {at}"),
            Err(other) => panic!("flip at {at}: unexpected error {other:?}"),
        }
    }
}

#[test]
fn a_missing_pack_is_reported_with_the_refs_it_breaks() {
    let (_dir, store) = new_store(small_config());
    let (victim, chunk, _, _, _) = two_blobs(&store);
    let location = store.locate(&chunk).unwrap().unwrap();
    // Seal everything so the victim's pack is not the active one.
    std::fs::remove_file(pack_file(&store, location.pack)).unwrap();
    store.clear_cache();
    assert!(matches!(
        read_blob(&store, &victim),
        Err(cas::Error::PackMissing { .. })
    ));
    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::DamagedReachableChunk { referenced_by_ref, .. } if referenced_by_ref == "image/victim")), "{:?}", report.problems);
}

fn location_bytes(pack: u64, offset: u64, stored_len: u32, raw_len: u32, kind: u8) -> Vec<u8> {
    // The 26-byte index value of FORMAT.md.
    let mut v = vec![1u8];
    v.extend_from_slice(&pack.to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&stored_len.to_le_bytes());
    v.extend_from_slice(&raw_len.to_le_bytes());
    v.push(kind);
    v
}

#[test]
fn a_damaged_index_entry_is_caught_and_rebuilding_from_packs_repairs_it() {
    let (_dir, store) = new_store(StoreConfig::default());
    let (victim, chunk, healthy, victim_data, healthy_data) = two_blobs(&store);
    let other = store.get_node(&healthy).unwrap().links[0];
    let there = store.locate(&other).unwrap().unwrap();
    // Point the victim's chunk at another chunk's frame.
    store
        .index()
        .put_raw_location(
            &chunk,
            &location_bytes(
                there.pack.0,
                there.offset,
                there.stored_len,
                there.raw_len,
                0,
            ),
        )
        .unwrap();
    store.clear_cache();
    match read_blob(&store, &victim) {
        Err(cas::Error::CorruptChunk { id, reason, .. }) => {
            assert_eq!(id, chunk);
            assert!(reason.contains("another chunk"), "{reason}");
        }
        other => panic!("expected CorruptChunk, got {:?}", other.map(|b| b.len())),
    }
    // A garbage value is a clear index error too.
    let third = store.get_node(&victim).unwrap().links[0];
    store.index().put_raw_location(&third, b"garbage").unwrap();
    store.clear_cache();
    assert!(matches!(
        store.get(&third),
        Err(cas::Error::IndexCorrupt { .. })
    ));

    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(report
        .problems
        .iter()
        .any(|p| matches!(p, Problem::ChunkCorrupt { id, .. } if *id == chunk)));
    assert!(report
        .problems
        .iter()
        .any(|p| matches!(p, Problem::IndexUnreadable { .. })));

    let rebuilt = store.rebuild_index(&|_, _| {}).unwrap();
    assert!(rebuilt > 10);
    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(read_blob(&store, &victim).unwrap(), victim_data);
    assert_eq!(read_blob(&store, &healthy).unwrap(), healthy_data);
}

#[test]
fn flipped_bytes_in_an_index_table_file_are_caught_and_repaired_from_packs() {
    let (dir, store) = new_store(StoreConfig::default());
    let home = dir.path().join("store");
    let writer = store.writer("many chunks");
    let mut ids = Vec::new();
    for i in 0..20_000u32 {
        ids.push((writer.put_data(&i.to_le_bytes().repeat(8)).unwrap().id, i));
    }
    let root = writer
        .put_node(&cas::Node::new(
            cas::NodeType::OPAQUE,
            ids.iter().take(1000).map(|(id, _)| *id).collect(),
            vec![],
        ))
        .unwrap()
        .id;
    writer
        .set_ref("test/root", root, RefExpectation::Absent)
        .unwrap();
    drop(writer);
    store.index().flush().unwrap();
    let tables = store.index().chunk_table_files().unwrap();
    assert!(!tables.is_empty());
    drop(store);
    // Damage the middle of every chunk-index table file.
    for name in &tables {
        let path = home.join("index").join(name.trim_start_matches('/'));
        let len = std::fs::metadata(&path).unwrap().len();
        for k in 0..64 {
            flip(&path, len / 3 + k * 7);
        }
    }
    match Store::open(&home, OpenOptions::default()) {
        Err(e) => assert!(matches!(e, cas::Error::IndexCorrupt { .. }), "{e:?}"),
        Ok(store) => {
            let mut corrupt = 0;
            for (id, i) in &ids {
                match store.get(id) {
                    Ok(bytes) => {
                        assert_eq!(bytes, i.to_le_bytes().repeat(8), "wrong bytes for {i}")
                    }
                    Err(cas::Error::IndexCorrupt { .. }) => corrupt += 1,
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            assert!(corrupt > 0, "no lookup noticed the damaged table");
            let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| matches!(p, Problem::IndexUnreadable { .. })),
                "{:?}",
                report.problems
            );
        }
    }
    let store = cas::repair_index(&home, &|_, _| {}).unwrap();
    for (id, i) in &ids {
        assert_eq!(store.get(id).unwrap(), i.to_le_bytes().repeat(8));
    }
    assert_eq!(store.get_ref("test/root").unwrap().unwrap().root, root);
    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// The reader of [`an_absurd_length_in_the_index_is_an_error_not_an_allocation`]:
/// runs under a 3 GiB address-space limit.
#[test]
fn absurd_length_reader() {
    let (Some(home), Some(chunk)) = (
        std::env::var_os("CAS_ABSURD_HOME"),
        std::env::var("CAS_ABSURD_CHUNK").ok(),
    ) else {
        return;
    };
    let limit = libc::rlimit {
        rlim_cur: 3 << 30,
        rlim_max: 3 << 30,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
    let store = Store::open(Path::new(&home), OpenOptions::default()).unwrap();
    let chunk: ChunkId = chunk.parse().unwrap();
    let got = store.get(&chunk);
    println!(
        "GET {}",
        got.map(|b| b.len().to_string())
            .unwrap_or_else(|e| format!("{e:?}"))
    );
    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    println!("FSCK problems={}", report.problems.len());
}

/// Defect 9 of issue 14: a read sized its buffer by the index entry's
/// stored length, unchecked — one damaged entry made a read (and fsck)
/// allocate 4 GiB. A length no frame can have is index damage, reported as
/// such without allocating it.
#[test]
fn an_absurd_length_in_the_index_is_an_error_not_an_allocation() {
    let (dir, store) = new_store(StoreConfig::default());
    let (_, chunk, _, _, _) = two_blobs(&store);
    let there = store.locate(&chunk).unwrap().unwrap();
    store
        .index()
        .put_raw_location(
            &chunk,
            &location_bytes(there.pack.0, there.offset, u32::MAX, u32::MAX, 0),
        )
        .unwrap();
    let home = store.home().to_path_buf();
    drop(store);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["absurd_length_reader", "--exact", "--nocapture"])
        .env("CAS_ABSURD_HOME", &home)
        .env("CAS_ABSURD_CHUNK", chunk.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the reader died ({:?}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("GET IndexCorrupt"), "{stdout}");
    assert!(!stdout.contains("FSCK problems=0"), "{stdout}");
    drop(dir);
}
