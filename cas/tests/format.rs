//! The on-disk format, checked from outside the crate:
//! - a second reader, written from FORMAT.md alone (no `cas` internals),
//!   parses a fresh store's packs and verifies every frame;
//! - a store written by format version 1 and kept in
//!   `fixtures/cas-format-v1/` still opens and reads back byte for byte.
//!
//! Regenerate the sample (only when the format version changes, keeping
//! the old one): `STRATA_WRITE_FORMAT_SAMPLE=1 cargo test -p cas --test format`.

mod common;

use std::path::{Path, PathBuf};

use cas::{Chunking, FsckOptions, OpenOptions, RefExpectation, Store, StoreConfig};
use common::*;

const NODE_KEY_TEXT: &[u8] = b"strata-cas node chunk v1";

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Parses one sealed pack exactly as FORMAT.md describes it and returns
/// (chunk id, kind, decoded bytes) for every frame.
fn read_pack_by_the_spec(path: &Path) -> Vec<([u8; 32], u8, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let name = path.file_stem().unwrap().to_str().unwrap();
    assert_eq!(name.len(), 12);
    // Header.
    assert_eq!(&bytes[0..8], b"STRATAPK");
    assert_eq!(u32_at(&bytes, 8), 1);
    assert_eq!(u32_at(&bytes, 12), 0);
    assert_eq!(u64_at(&bytes, 16), name.parse::<u64>().unwrap());
    // Footer.
    let f = &bytes[bytes.len() - 40..];
    assert_eq!(&f[32..40], b"STRPKEND");
    assert_eq!(crc32fast::hash(&f[0..24]), u32_at(f, 24));
    let trailer_offset = u64_at(f, 0) as usize;
    let count = u32_at(f, 8) as usize;
    assert_eq!(trailer_offset + 52 * count + 40, bytes.len());
    let trailer = &bytes[trailer_offset..trailer_offset + 52 * count];
    assert_eq!(crc32fast::hash(trailer), u32_at(f, 12));
    // Frames, back to back from offset 24, each listed in the trailer.
    let key = *blake3::hash(NODE_KEY_TEXT).as_bytes();
    let mut at = 24;
    let mut out = Vec::new();
    for entry in trailer.chunks_exact(52) {
        let frame = &bytes[at..];
        assert_eq!(&frame[0..4], b"SCHK");
        let stored = u32_at(frame, 4) as usize;
        let codec = frame[12];
        let kind = frame[13];
        let raw_len = u32_at(frame, 16) as usize;
        let id: [u8; 32] = frame[20..52].try_into().unwrap();
        let payload = &frame[52..52 + stored];
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame[12..52]);
        crc.update(payload);
        assert_eq!(crc.finalize(), u32_at(frame, 8));
        let raw = match codec {
            0 => payload.to_vec(),
            1 => zstd::bulk::decompress(payload, raw_len).unwrap(),
            other => panic!("codec {other}"),
        };
        assert_eq!(raw.len(), raw_len);
        let computed = match kind {
            0 => *blake3::hash(&raw).as_bytes(),
            1 => *blake3::keyed_hash(&key, &raw).as_bytes(),
            other => panic!("kind {other}"),
        };
        assert_eq!(computed, id);
        // Trailer entry.
        assert_eq!(&entry[0..32], &id);
        assert_eq!(u64_at(entry, 32) as usize, at);
        assert_eq!(u32_at(entry, 40) as usize, stored);
        assert_eq!(u32_at(entry, 44) as usize, raw_len);
        assert_eq!((entry[48], entry[49]), (codec, kind));
        if kind == 1 {
            assert_eq!(&raw[0..4], b"SNOD");
            assert_eq!(raw[4], 1);
            let links = u32_at(&raw, 8) as usize;
            assert!(raw.len() >= 12 + 32 * links);
        }
        out.push((id, kind, raw));
        at += 52 + stored;
    }
    assert_eq!(at, trailer_offset);
    out
}

#[test]
fn a_second_reader_written_from_format_md_reads_every_pack() {
    let (_dir, store) = new_store(StoreConfig {
        pack_target_bytes: 64 << 10,
        ..StoreConfig::default()
    });
    let writer = store.writer("format");
    let text = text_bytes(400_000, 1);
    let random = random_bytes(300_000, 2);
    let t = writer
        .write_blob(&mut &text[..], Chunking::ContentDefined)
        .unwrap();
    let r = writer
        .write_blob(&mut &random[..], Chunking::FixedSize)
        .unwrap();
    writer.commit().unwrap();
    let mut seen = std::collections::HashMap::new();
    let mut sealed = 0;
    for entry in std::fs::read_dir(store.packs_dir()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if &bytes[bytes.len() - 8..] != b"STRPKEND" {
            continue; // the active pack has no trailer yet
        }
        sealed += 1;
        for (id, kind, raw) in read_pack_by_the_spec(&path) {
            seen.insert(id, (kind, raw));
        }
    }
    assert!(sealed >= 5, "{sealed} sealed packs");
    // What the spec reader found is what the store returns.
    let mut codecs_seen = 0;
    for (id, (kind, raw)) in &seen {
        let id = cas::ChunkId::from_bytes(*id);
        let (store_kind, bytes) = store.get_with_kind(&id).unwrap();
        assert_eq!(store_kind.code(), *kind);
        assert_eq!(bytes, raw[..]);
        codecs_seen += 1;
    }
    assert!(codecs_seen > 10);
    assert!(
        seen.values().any(|(kind, _)| *kind == 1),
        "no node chunk was sealed"
    );
    let _ = (t, r);
}

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/cas-format-v1")
}

/// The blobs of the sample: (ref, content).
fn sample_contents() -> Vec<(&'static str, Vec<u8>)> {
    let mut sparse = vec![0u8; 300_000];
    sparse[100_000..110_000].copy_from_slice(&random_bytes(10_000, 5));
    vec![
        ("sample/text", text_bytes(200_000, 3)),
        ("sample/random", random_bytes(150_000, 4)),
        ("sample/sparse", sparse),
        ("sample/empty", Vec::new()),
    ]
}

#[test]
fn a_version_1_store_still_opens_and_reads_back() {
    let sample = sample_dir();
    if std::env::var_os("STRATA_WRITE_FORMAT_SAMPLE").is_some() {
        let _ = std::fs::remove_dir_all(&sample);
        let config = StoreConfig {
            pack_target_bytes: 64 << 10,
            ..small_config()
        };
        let store = Store::init(&sample, config).unwrap();
        let writer = store.writer("sample");
        for (name, content) in sample_contents() {
            let chunking = if name.ends_with("sparse") {
                Chunking::FixedSize
            } else {
                Chunking::ContentDefined
            };
            let info = writer.write_blob(&mut &content[..], chunking).unwrap();
            writer
                .set_ref(name, info.id, RefExpectation::Absent)
                .unwrap();
        }
        drop(writer);
        drop(store);
        // RocksDB's info logs are not part of the format.
        for entry in std::fs::read_dir(sample.join("index")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("LOG") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    assert!(
        sample.join("strata-store.json").exists(),
        "missing sample {}",
        sample.display()
    );
    // Opening writes (recovery, logs), so work on a copy.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("store");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&sample)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let store = Store::open(&copy, OpenOptions::default()).unwrap();
    for (name, content) in sample_contents() {
        let root = store.get_ref(name).unwrap().unwrap().root;
        assert_eq!(read_blob(&store, &root).unwrap(), content, "{name}");
    }
    let report = store.fsck(FsckOptions::default(), &|_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}
