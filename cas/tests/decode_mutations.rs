//! The store's decoders under damaged input, on stable Rust and bounded
//! for CI: frames, nodes and whole pack files, taken from a real store and
//! mutated ([`fixtures::mutate`]), go through the properties of
//! [`cas::fuzzing`] — never a panic, and what decodes is consistent. The
//! cargo-fuzz targets in `fuzz/` run the same properties, coverage-guided,
//! for as long as one asks. Iterations: `STRATA_MUTATIONS` (default
//! 20,000 per decoder).

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;

use cas::{Chunking, Node, NodeType, StoreConfig};
use common::*;
use fixtures::mutate::mutate;
use fixtures::workload::Rng;

fn iterations() -> u64 {
    std::env::var("STRATA_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Pack files of a store holding raw, compressed and node chunks.
fn pack_files() -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let (dir, store) = new_store(StoreConfig {
        pack_target_bytes: 64 << 10,
        ..small_config()
    });
    let writer = store.writer("mutation seeds");
    for seed in 0..6 {
        let data = if seed % 2 == 0 {
            text_bytes(40_000, seed)
        } else {
            random_bytes(30_000, seed)
        };
        writer
            .write_blob(&mut &data[..], Chunking::ContentDefined)
            .unwrap();
    }
    writer
        .put_node(&Node::new(NodeType(7), vec![], b"a node body".to_vec()))
        .unwrap();
    writer.commit().unwrap();
    drop(writer);
    drop(store);
    let mut packs: Vec<_> = std::fs::read_dir(dir.path().join("store/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort();
    assert!(packs.len() >= 2, "the seeds span sealed and open packs");
    (dir, packs)
}

#[test]
fn damaged_frames_are_refused_never_a_panic() {
    let (_dir, packs) = pack_files();
    let mut seeds = Vec::new();
    for path in &packs {
        let file = std::fs::File::open(path).unwrap();
        for (offset, len) in cas::fuzzing::frame_ranges(&file) {
            let mut frame = vec![0u8; len as usize];
            file.read_exact_at(&mut frame, offset).unwrap();
            seeds.push(frame);
        }
    }
    assert!(seeds.len() >= 6, "frames to start from");
    for seed in &seeds {
        cas::fuzzing::frame(seed);
    }
    let mut rng = Rng::new(fixtures::workload::seed());
    for _ in 0..iterations() {
        cas::fuzzing::frame(&mutate(&seeds, &mut rng));
    }
}

#[test]
fn damaged_nodes_are_refused_never_a_panic() {
    let seeds: Vec<Vec<u8>> = (0..4u8)
        .map(|i| {
            let links = (0..i)
                .map(|j| cas::ChunkId::compute(cas::ChunkKind::Data, &[j]))
                .collect();
            Node::new(NodeType(i), links, vec![i; 40 * i as usize])
                .encode()
                .unwrap()
        })
        .collect();
    let mut rng = Rng::new(fixtures::workload::seed());
    for _ in 0..iterations() {
        cas::fuzzing::node(&mutate(&seeds, &mut rng));
    }
}

#[test]
fn damaged_pack_files_are_read_without_a_panic() {
    let (_dir, packs) = pack_files();
    let seeds: Vec<Vec<u8>> = packs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("pack");
    let mut rng = Rng::new(fixtures::workload::seed());
    // A pack is a file: fewer, larger inputs.
    for _ in 0..iterations() / 10 {
        let bytes = mutate(&seeds, &mut rng);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        cas::fuzzing::pack(&file);
    }
}
