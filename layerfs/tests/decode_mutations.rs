//! layerfs's decoders under damaged input, on stable Rust and bounded for
//! CI: tree nodes, upper-layer journals and archives (tar, gzip'd tar,
//! PAX and GNU extensions), taken from real ones and mutated
//! ([`fixtures::mutate`]), go through the properties of
//! [`layerfs::fuzzing`] — never a panic, limits hold, a failed import
//! leaves no image, an import that succeeds reads back whole. The
//! cargo-fuzz targets in `fuzz/` run the same properties, coverage-guided.
//! Iterations: `STRATA_MUTATIONS` (default 20,000 per decoder; archives a
//! tenth of that).

mod common;

use std::io::Write;

use fixtures::mutate::mutate;
use fixtures::workload::Rng;
use layerfs::cowfs::{Caller, ROOT_INO};

fn iterations() -> u64 {
    std::env::var("STRATA_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn damaged_tree_nodes_are_refused_never_a_panic() {
    let (tmp, store) = common::store();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("a/f{i}")), format!("file {i}")).unwrap();
    }
    std::os::unix::fs::symlink("a/f1", src.join("link")).unwrap();
    std::fs::hard_link(src.join("a/f2"), src.join("a/b/hard")).unwrap();
    let root = common::import_dir(&store, "img", &src);
    let reader = layerfs::TreeReader::new(&store);
    let mut seeds = Vec::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        seeds.push(store.get_node(&id).unwrap().encode().unwrap());
        let dir = reader.dir(id).unwrap();
        for (_, entry) in reader.entries(&dir).unwrap() {
            if let layerfs::tree::Entry::Dir(sub) = entry {
                stack.push(sub);
            }
        }
    }
    assert!(seeds.len() >= 3);
    let mut rng = Rng::new(fixtures::workload::seed());
    for _ in 0..iterations() {
        layerfs::fuzzing::tree_node(&store, &mutate(&seeds, &mut rng));
    }
}

#[test]
fn damaged_journals_are_read_up_to_their_intact_prefix() {
    let (tmp, store) = common::store();
    let tree = common::import_dir(&store, "img", &{
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/motd"), b"lower").unwrap();
        src
    });
    let upper = tmp.path().join("upper");
    let root = Caller { uid: 0, gid: 0 };
    let fs = common::cow_mount(&store, tree, &upper);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, root).unwrap().ino;
    let f = fs.create(d, b"f", 0o644, root).unwrap().ino;
    fs.write(f, 0, &[5u8; 10_000]).unwrap();
    fs.symlink(d, b"s", b"target", root).unwrap();
    fs.rename(d, b"f", ROOT_INO, b"g", Default::default())
        .unwrap();
    fs.setxattr(f, b"user.k", b"v", layerfs::cowfs::XattrMode::Set)
        .unwrap();
    fs.fsync(f).unwrap();
    let _capture = fs.capture(b"").unwrap();
    fs.fsyncdir(ROOT_INO).unwrap();
    let seeds = vec![std::fs::read(upper.join("journal")).unwrap()];
    drop(fs);
    let scratch = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(fixtures::workload::seed());
    for _ in 0..iterations() {
        layerfs::fuzzing::journal(&mutate(&seeds, &mut rng), scratch.path());
    }
}

/// Small archives of every kind the importer reads.
fn archive_seeds() -> Vec<Vec<u8>> {
    let mut plain = Vec::new();
    {
        let mut b = tar::Builder::new(&mut plain);
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        b.append_data(&mut header, "dir/", &[][..]).unwrap();
        for i in 0..5 {
            let data = vec![b'a' + i as u8; 700 * (i + 1)];
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            b.append_data(&mut header, format!("dir/file{i}"), &data[..])
                .unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        b.append_link(&mut header, "dir/link", "file1").unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Link);
        header.set_size(0);
        b.append_link(&mut header, "dir/hard", "dir/file2").unwrap();
        let long = format!("dir/{}", "n".repeat(150));
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o600);
        header.set_size(3);
        b.append_data(&mut header, long, &b"xyz"[..]).unwrap();
        b.finish().unwrap();
    }
    let mut pax = Vec::new();
    common::pax_entry(
        &mut pax,
        &[("path", b"paxname"), ("mtime", b"1700000000.5")],
    );
    common::raw_entry(
        &mut pax,
        b"ignored",
        tar::EntryType::Regular,
        b"pax data",
        b"",
    );
    common::raw_entry(
        &mut pax,
        b"whiteout/.wh.gone",
        tar::EntryType::Regular,
        b"",
        b"",
    );
    common::finish(&mut pax);
    let mut gz = Vec::new();
    {
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        enc.write_all(&plain).unwrap();
        enc.finish().unwrap();
    }
    vec![plain, pax, gz]
}

#[test]
fn damaged_archives_fail_cleanly_or_import_whole() {
    let (_tmp, store) = common::store();
    let scratch = tempfile::tempdir().unwrap();
    let seeds = archive_seeds();
    for seed in &seeds {
        layerfs::fuzzing::import(&store, seed, scratch.path());
    }
    let mut rng = Rng::new(fixtures::workload::seed());
    for _ in 0..iterations() / 10 {
        layerfs::fuzzing::import(&store, &mutate(&seeds, &mut rng), scratch.path());
    }
}
