//! Chunks and blobs: ids, dedup, round trips, ranged and streaming reads.

mod common;

use std::io::{Read, Seek, SeekFrom};

use cas::{ChunkId, ChunkKind, Chunking, Node, NodeType, RefExpectation, Store, StoreConfig};
use common::*;

#[test]
fn chunk_ids_are_blake3_of_the_uncompressed_bytes() {
    let (_dir, store) = new_store(StoreConfig::default());
    let writer = store.writer("test");
    let bytes = text_bytes(100_000, 1);
    let outcome = writer.put_data(&bytes).unwrap();
    assert_eq!(outcome.id.as_bytes(), blake3::hash(&bytes).as_bytes());
    assert_eq!(store.get(&outcome.id).unwrap(), bytes);
    // Compressible data is stored compressed.
    let location = store.locate(&outcome.id).unwrap().unwrap();
    assert!((location.stored_len as usize) < bytes.len() / 2);
}

#[test]
fn putting_existing_content_writes_nothing_new() {
    let (_dir, store) = new_store(StoreConfig::default());
    let data = random_bytes(3 << 20, 2);
    let writer = store.writer("first");
    let first = writer
        .write_blob(&mut &data[..], Chunking::ContentDefined)
        .unwrap();
    writer.commit().unwrap();
    let before = pack_bytes(&store);
    let chunks_before = store.stats().unwrap().chunks;

    let writer = store.writer("second");
    let second = writer
        .write_blob(&mut &data[..], Chunking::ContentDefined)
        .unwrap();
    writer.commit().unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(second.new_chunks, 0);
    assert_eq!(second.new_bytes, 0);
    assert!(second.chunks > 10);
    assert_eq!(pack_bytes(&store), before, "a duplicate put grew the packs");
    assert_eq!(store.stats().unwrap().chunks, chunks_before);
    let chunk = writer.put_data(b"once").unwrap();
    assert!(chunk.written);
    assert!(!writer.put_data(b"once").unwrap().written);
}

#[test]
fn blobs_of_every_shape_round_trip() {
    let (_dir, store) = new_store(small_config());
    let writer = store.writer("shapes");
    let mut zero_middle = random_bytes(50_000, 3);
    zero_middle.extend(vec![0u8; 40_000]);
    zero_middle.extend(random_bytes(50_000, 4));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![7]),
        ("one chunk", random_bytes(200, 5)),
        ("many chunks, deep tree", random_bytes(600_000, 6)),
        ("text", text_bytes(300_000, 7)),
        ("all zeros", vec![0u8; 100_000]),
        ("zeros in the middle", zero_middle),
        (
            "zeros at the end",
            [random_bytes(9000, 8), vec![0u8; 70_000]].concat(),
        ),
    ];
    for (name, data) in &cases {
        for chunking in [Chunking::ContentDefined, Chunking::FixedSize] {
            let info = writer.write_blob(&mut &data[..], chunking).unwrap();
            assert_eq!(info.len, data.len() as u64, "{name}");
            let back = read_blob(&store, &info.id).unwrap();
            assert!(back == *data, "{name} ({chunking:?}) did not round-trip");
        }
    }
    writer.commit().unwrap();
}

#[test]
fn zero_chunks_are_holes_and_cost_nothing() {
    let (_dir, store) = new_store(StoreConfig::default());
    let writer = store.writer("memory image");
    // 256 MiB "memory image" with one non-zero page in the middle.
    let mut image = vec![0u8; 256 << 20];
    image[100 << 20..(100 << 20) + 4096].copy_from_slice(&random_bytes(4096, 9));
    let before = pack_bytes(&store);
    let info = writer
        .write_blob(&mut &image[..], Chunking::FixedSize)
        .unwrap();
    writer.commit().unwrap();
    assert_eq!(info.chunks, 1);
    assert_eq!(info.zero_bytes, (256 << 20) - 65536);
    assert!(pack_bytes(&store) - before < 200_000);
    let blob = store.blob(&info.id).unwrap();
    let mut page = vec![1u8; 8192];
    blob.read_at((100 << 20) - 4096, &mut page).unwrap();
    assert!(page[..4096].iter().all(|&b| b == 0));
    assert_eq!(&page[4096..], &image[100 << 20..(100 << 20) + 4096]);
}

#[test]
fn ranged_reads_at_any_offset_match_the_source() {
    let (_dir, store) = new_store(small_config());
    let writer = store.writer("ranged");
    let mut data = random_bytes(400_000, 10);
    data[100_000..160_000].fill(0);
    let info = writer
        .write_blob(&mut &data[..], Chunking::ContentDefined)
        .unwrap();
    let blob = store.blob(&info.id).unwrap();
    let mut x: u64 = 12345;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % (data.len() as u64 + 100)) as usize;
        let len = ((x >> 20) % 20_000) as usize;
        let mut buf = vec![0xAAu8; len];
        let n = blob.read_at(offset as u64, &mut buf).unwrap();
        let expected = data
            .get(offset..(offset + len).min(data.len()))
            .unwrap_or(&[]);
        assert_eq!(n, expected.len());
        assert_eq!(&buf[..n], expected, "read at {offset}+{len}");
    }
}

#[test]
fn streaming_reader_reads_and_seeks() {
    let (_dir, store) = new_store(small_config());
    let writer = store.writer("stream");
    let data = text_bytes(250_000, 11);
    let info = writer
        .write_blob(&mut &data[..], Chunking::ContentDefined)
        .unwrap();
    let mut reader = store.blob(&info.id).unwrap().reader();
    let mut all = Vec::new();
    reader.read_to_end(&mut all).unwrap();
    assert_eq!(all, data);
    reader.seek(SeekFrom::Start(123_456)).unwrap();
    let mut piece = [0u8; 1000];
    reader.read_exact(&mut piece).unwrap();
    assert_eq!(&piece[..], &data[123_456..124_456]);
    reader.seek(SeekFrom::End(-10)).unwrap();
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &data[data.len() - 10..]);
    assert!(reader.seek(SeekFrom::Current(-1_000_000)).is_err());
}

/// A blob read from a source is stored in batches of 8 MiB, each stored
/// on the pool while the next is read: the result is the blob that the
/// same bytes written in small pieces give, chunk for chunk.
#[test]
fn a_blob_read_in_batches_is_the_blob_written_in_pieces() {
    let (_dir, store) = new_store(StoreConfig::default());
    let writer = store.writer("batches");
    // Zeros across the first batch boundary, text in the third batch.
    let data = [
        random_bytes(7 << 20, 21),
        vec![0u8; 3 << 20],
        random_bytes(9 << 20, 22),
        text_bytes(6 << 20, 23),
        random_bytes(5 << 20, 24),
    ]
    .concat();
    let read = writer
        .write_blob(&mut &data[..], Chunking::ContentDefined)
        .unwrap();
    let mut pieces = writer.blob_writer(Chunking::ContentDefined);
    for piece in data.chunks(100_003) {
        std::io::Write::write_all(&mut pieces, piece).unwrap();
    }
    let written = pieces.finish().unwrap();
    writer.commit().unwrap();
    assert_eq!(read.id, written.id);
    assert_eq!(read.len, data.len() as u64);
    assert_eq!(read.chunks, written.chunks);
    assert!(read.zero_bytes >= 2 << 20, "zero bytes {}", read.zero_bytes);
    assert_eq!(read.zero_bytes, written.zero_bytes);
    assert_eq!(
        written.new_chunks, 0,
        "the second writing found every chunk"
    );
    assert!(read_blob(&store, &read.id).unwrap() == data);
}

#[test]
fn large_blobs_keep_every_node_bounded_by_the_fanout() {
    let (_dir, store) = new_store(small_config());
    let writer = store.writer("big");
    // ~1,000 chunks with fanout 4: a tree five levels deep.
    let data = random_bytes(1 << 20, 12);
    let info = writer
        .write_blob(&mut &data[..], Chunking::ContentDefined)
        .unwrap();
    writer.commit().unwrap();
    let mut depth = 0;
    let mut stack = vec![(info.id, 0)];
    let mut nodes = 0;
    while let Some((id, level)) = stack.pop() {
        let (kind, _) = store.get_with_kind(&id).unwrap();
        if kind == ChunkKind::Node {
            let node = store.get_node(&id).unwrap();
            assert!(
                node.links.len() <= 4,
                "node with {} entries",
                node.links.len()
            );
            nodes += 1;
            depth = depth.max(level);
            stack.extend(node.links.iter().map(|l| (*l, level + 1)));
        }
    }
    assert!(depth >= 4, "depth {depth}");
    assert!(nodes > 250);
    assert_eq!(read_blob(&store, &info.id).unwrap(), data);
}

#[test]
fn wrong_ids_and_wrong_kinds_get_clear_errors() {
    let (_dir, store) = new_store(StoreConfig::default());
    let missing = ChunkId::compute(ChunkKind::Data, b"never stored");
    assert!(matches!(
        store.get(&missing),
        Err(cas::Error::ChunkNotFound { .. })
    ));
    assert!(matches!(
        store.blob(&missing),
        Err(cas::Error::ChunkNotFound { .. })
    ));
    assert!(matches!(
        "xyz".parse::<ChunkId>(),
        Err(cas::Error::InvalidId { .. })
    ));
    let writer = store.writer("kinds");
    let leaf = writer.put_data(b"leaf").unwrap().id;
    let opaque = writer
        .put_node(&Node::new(NodeType::OPAQUE, vec![leaf], b"x".to_vec()))
        .unwrap()
        .id;
    // A non-blob node is not a blob.
    assert!(matches!(
        store.blob(&opaque),
        Err(cas::Error::WrongKind { .. })
    ));
    // A node may not link to what is not stored.
    let dangling = Node::new(NodeType::OPAQUE, vec![missing], vec![]);
    assert!(matches!(
        writer.put_node(&dangling),
        Err(cas::Error::DanglingLink { .. })
    ));
    // Oversized chunks are refused.
    let huge = vec![1u8; cas::MAX_CHUNK_LEN + 1];
    assert!(matches!(
        writer.put_data(&huge),
        Err(cas::Error::ChunkTooLarge { .. })
    ));
}

#[test]
fn refs_compare_and_swap_and_survive_reopen() {
    let (dir, store) = new_store(StoreConfig::default());
    let writer = store.writer("refs");
    let a = writer.put_data(b"a").unwrap().id;
    let b = writer.put_data(b"b").unwrap().id;
    let first = writer
        .set_ref("image/a", a, RefExpectation::Absent)
        .unwrap();
    assert_eq!(first.generation, 1);
    assert!(matches!(
        writer.set_ref("image/a", b, RefExpectation::Absent),
        Err(cas::Error::RefConflict { .. })
    ));
    let second = writer
        .set_ref("image/a", b, RefExpectation::Generation(1))
        .unwrap();
    assert_eq!(second.generation, 2);
    assert!(matches!(
        writer.set_ref("image/a", a, RefExpectation::Generation(1)),
        Err(cas::Error::RefConflict { .. })
    ));
    assert!(matches!(
        writer.set_ref("../escape", a, RefExpectation::Any),
        Err(cas::Error::InvalidRefName { .. })
    ));
    let missing = ChunkId::compute(ChunkKind::Data, b"missing");
    assert!(matches!(
        writer.set_ref("image/b", missing, RefExpectation::Any),
        Err(cas::Error::ChunkNotFound { .. })
    ));
    drop(writer);
    drop(store);
    let store = Store::open(&dir.path().join("store"), cas::OpenOptions::default()).unwrap();
    assert_eq!(store.get_ref("image/a").unwrap().unwrap().root, b);
    assert_eq!(store.get(&b).unwrap(), &b"b"[..]);
    assert!(store.get_ref("image/b").unwrap().is_none());
}

#[test]
fn opening_what_is_not_a_store_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path(), cas::OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, cas::Error::NotAStore { .. }));
    assert!(err.to_string().contains("snapctl store init"));
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    assert!(matches!(
        Store::init(dir.path(), StoreConfig::default()),
        Err(cas::Error::AlreadyExists { .. })
    ));
    let (dir2, store) = new_store(StoreConfig::default());
    let again = Store::open(&dir2.path().join("store"), cas::OpenOptions::default());
    assert!(
        matches!(again, Err(cas::Error::Locked { .. })),
        "{:?}",
        again.err()
    );
    drop(store);
}

/// Read-ahead: `prefetch` loads a range's chunks into the cache, so reads
/// of that range no longer touch the packs (shown by taking the packs away);
/// reads outside it still need them.
#[test]
fn prefetch_loads_a_range_into_the_chunk_cache() {
    let (_dir, store) = new_store(StoreConfig::default());
    let data = random_bytes(4 << 20, 11);
    let (blob, _) = stored_blob(&store, &data);
    blob.prefetch(0, 1 << 20).unwrap();
    // Past the end is clamped, not an error.
    blob.prefetch(data.len() as u64 - 10, 1 << 30).unwrap();

    let moved = _dir.path().join("packs-away");
    std::fs::rename(store.packs_dir(), &moved).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(blob.read_at(0, &mut buf).unwrap(), 1 << 20);
    assert!(buf == data[..1 << 20]);
    store.clear_cache();
    assert!(
        blob.read_at(0, &mut buf).is_err(),
        "without the cache the packs are needed"
    );
    std::fs::rename(&moved, store.packs_dir()).unwrap();
}

/// Stores `data` as one blob (default chunking: about 64 KiB per chunk),
/// commits, empties the cache and returns the blob with its chunks in
/// order (each with the blob offset where it ends).
fn stored_blob(store: &Store, data: &[u8]) -> (cas::Blob, Vec<(u64, ChunkId)>) {
    let writer = store.writer("read-ahead");
    let info = writer
        .write_blob(&mut &data[..], Chunking::ContentDefined)
        .unwrap();
    writer.commit().unwrap();
    store.clear_cache();
    let blob = store.blob(&info.id).unwrap();
    let chunks = blob.prefetch_noting(0, data.len() as u64).unwrap();
    store.clear_cache();
    (blob, chunks)
}

/// A read-ahead window of many chunks (read in large pieces, several
/// frames per read): every chunk of it is loaded, verified and reported
/// once, and reads of the window then need no pack.
#[test]
fn a_read_ahead_window_loads_every_chunk_of_it_once() {
    let (dir, store) = new_store(StoreConfig::default());
    let data = random_bytes(12 << 20, 21);
    let (blob, chunks) = stored_blob(&store, &data);
    assert!(chunks.len() > 100, "{} chunks", chunks.len());
    assert_eq!(chunks.last().unwrap().0, data.len() as u64);
    assert!(chunks.windows(2).all(|w| w[0].0 < w[1].0));

    let loaded = blob.prefetch_noting(0, data.len() as u64).unwrap();
    assert_eq!(loaded, chunks, "each chunk reported once, in order");
    assert!(chunks.iter().all(|(_, id)| store.is_cached(id)));
    // Loaded again: nothing to report.
    assert!(blob
        .prefetch_noting(0, data.len() as u64)
        .unwrap()
        .is_empty());

    let moved = dir.path().join("packs-away");
    std::fs::rename(store.packs_dir(), &moved).unwrap();
    let mut buf = vec![0u8; data.len()];
    assert_eq!(blob.read_at(0, &mut buf).unwrap(), data.len());
    assert!(buf == data);
    std::fs::rename(&moved, store.packs_dir()).unwrap();
}

/// A damaged frame inside a read-ahead window: the chunks around it (read
/// in the same large read) are loaded, the damaged one is not, and the
/// read-ahead and any read of it fail naming that chunk, never returning
/// other bytes.
#[test]
fn a_damaged_frame_in_a_read_ahead_window_fails_only_its_own_reads() {
    let (_dir, store) = new_store(StoreConfig::default());
    let data = random_bytes(8 << 20, 22);
    let (blob, chunks) = stored_blob(&store, &data);
    let k = chunks.len() / 2;
    let (victim_end, victim) = chunks[k];
    let victim_start = chunks[k - 1].0;
    let at = store.locate(&victim).unwrap().unwrap();
    let pack = store.packs_dir().join(format!("{}.pack", at.pack));
    flip(&pack, at.offset + 52 + u64::from(at.stored_len) / 2);
    store.clear_cache();

    let err = blob.prefetch(0, data.len() as u64).unwrap_err();
    assert!(
        matches!(err, cas::Error::CorruptChunk { id, .. } if id == victim),
        "{err}"
    );
    assert!(!store.is_cached(&victim));
    assert!(store.is_cached(&chunks[k - 1].1) && store.is_cached(&chunks[k + 1].1));
    let mut buf = vec![0u8; (victim_end - victim_start) as usize];
    assert!(blob.read_at(victim_start, &mut buf).is_err());
    let mut before = vec![0u8; victim_start as usize];
    assert_eq!(blob.read_at(0, &mut before).unwrap(), before.len());
    assert!(before[..] == data[..victim_start as usize]);
    let mut after = vec![0u8; data.len() - victim_end as usize];
    assert_eq!(blob.read_at(victim_end, &mut after).unwrap(), after.len());
    assert!(after[..] == data[victim_end as usize..]);
}

/// Read-aheads of overlapping windows and readers of the same bytes, all
/// at once: every reader gets the right bytes and nobody waits forever on
/// a chunk another has claimed.
#[test]
fn overlapping_read_aheads_and_readers_at_once_agree() {
    let (_dir, store) = new_store(StoreConfig::default());
    let data = random_bytes(8 << 20, 23);
    let (blob, _) = stored_blob(&store, &data);
    for round in 0..5u64 {
        store.clear_cache();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (blob, data) = (&blob, &data);
                s.spawn(move || {
                    let from = ((t + round) % 4) << 20;
                    blob.prefetch(from, 4 << 20).unwrap();
                    let mut buf = vec![0u8; 3 << 20];
                    let at = (t * 1_234_567 + round) % (5 << 20);
                    assert_eq!(blob.read_at(at, &mut buf).unwrap(), buf.len());
                    assert!(buf[..] == data[at as usize..at as usize + buf.len()]);
                });
            }
        });
    }
}
