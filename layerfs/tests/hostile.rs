//! Hostile archives get a clear error and leave no image behind.

mod common;

use std::fs;
use std::io::Write;

use common::{finish, raw_entry, store};
use layerfs::{import_image, list_images, Error, ImportLimits, ImportOptions};
use tar::EntryType;

/// Imports `archive` and returns the error, checking nothing was named.
fn rejected(archive: &[u8], limits: ImportLimits) -> Error {
    let (tmp, store) = store();
    let path = tmp.path().join("hostile.tar");
    fs::write(&path, archive).unwrap();
    let options = ImportOptions {
        limits,
        ..ImportOptions::default()
    };
    let err = import_image(&store, "hostile", &path, &options).expect_err("import must fail");
    assert!(
        list_images(&store).unwrap().is_empty(),
        "no image after {err}"
    );
    assert!(store.list_refs("").unwrap().is_empty());
    err
}

/// (name, type, data, link target) of one raw entry.
type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

fn archive(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        raw_entry(&mut out, name, *kind, data, link);
    }
    finish(&mut out);
    out
}

fn expect(err: Error, needle: &str) {
    let text = err.to_string();
    assert!(
        text.contains(needle),
        "error '{text}' does not mention '{needle}'"
    );
}

#[test]
fn path_traversal_and_absolute_paths_are_refused() {
    let err = rejected(
        &archive(&[
            (b"ok", EntryType::Regular, b"x", b""),
            (b"a/../../etc/passwd", EntryType::Regular, b"x", b""),
        ]),
        ImportLimits::default(),
    );
    expect(err, "'..' in path");
    expect(
        rejected(
            &archive(&[(b"/etc/passwd", EntryType::Regular, b"x", b"")]),
            ImportLimits::default(),
        ),
        "absolute path",
    );
    expect(
        rejected(
            &archive(&[(b"link", EntryType::Link, b"", b"/etc/shadow")]),
            ImportLimits::default(),
        ),
        "absolute path",
    );
    expect(
        rejected(
            &archive(&[(b"link", EntryType::Link, b"", b"../outside")]),
            ImportLimits::default(),
        ),
        "'..' in path",
    );
}

#[test]
fn writing_through_a_planted_symlink_is_refused() {
    let err = rejected(
        &archive(&[
            (b"etc", EntryType::Symlink, b"", b"/etc"),
            (
                b"etc/passwd",
                EntryType::Regular,
                b"root::0:0::/:/bin/sh\n",
                b"",
            ),
        ]),
        ImportLimits::default(),
    );
    expect(err, "goes through the symlink 'etc'");
    // Also when the symlink is relative and deeper.
    let err = rejected(
        &archive(&[
            (b"a/b", EntryType::Symlink, b"", b"../.."),
            (b"a/b/c/file", EntryType::Regular, b"x", b""),
        ]),
        ImportLimits::default(),
    );
    expect(err, "goes through the symlink 'a/b'");
}

#[test]
fn a_planted_hard_link_is_replaced_not_written_through() {
    let (tmp, store) = store();
    let path = tmp.path().join("links.tar");
    fs::write(
        &path,
        archive(&[
            (b"victim", EntryType::Regular, b"original", b""),
            (b"alias", EntryType::Link, b"", b"victim"),
            (b"alias", EntryType::Regular, b"overwritten", b""),
        ]),
    )
    .unwrap();
    let report = import_image(&store, "links", &path, &ImportOptions::default()).unwrap();
    let tree = report.image.tree.parse().unwrap();
    let listing = common::listing(&store, tree);
    assert_eq!(
        listing,
        vec![
            ("/alias".to_string(), "file overwritten".to_string()),
            ("/victim".to_string(), "file original".to_string()),
        ]
    );
    // A hard link to something that is not there (or through a symlink).
    expect(
        rejected(
            &archive(&[(b"alias", EntryType::Link, b"", b"missing")]),
            ImportLimits::default(),
        ),
        "does not exist",
    );
}

#[test]
fn bad_names_are_refused() {
    let with_pax_path = |path: &[u8]| {
        let mut out = Vec::new();
        common::pax_entry(&mut out, &[("path", path)]);
        raw_entry(&mut out, b"placeholder", EntryType::Regular, b"x", b"");
        finish(&mut out);
        out
    };
    let long = vec![b'n'; 256];
    expect(
        rejected(&with_pax_path(&long), ImportLimits::default()),
        "longer than 255",
    );
    let deep = b"d/".repeat(2100);
    expect(
        rejected(&with_pax_path(&deep), ImportLimits::default()),
        "path longer than 4096",
    );
    expect(
        rejected(&with_pax_path(b"evil\0name"), ImportLimits::default()),
        "NUL",
    );
}

#[test]
fn devices_are_refused_when_not_allowed() {
    let limits = ImportLimits {
        allow_devices: false,
        ..ImportLimits::default()
    };
    expect(
        rejected(
            &archive(&[(b"dev/sda", EntryType::Block, b"", b"")]),
            limits.clone(),
        ),
        "device node",
    );
    expect(
        rejected(&archive(&[(b"dev/mem", EntryType::Char, b"", b"")]), limits),
        "device node",
    );
}

#[test]
fn absurd_sizes_and_tar_bombs_stop_at_the_limits() {
    // A header claiming a file far larger than allowed.
    let mut out = Vec::new();
    let header = common::raw_header(b"huge", EntryType::Regular, 1 << 40, b"");
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, 4096));
    let err = rejected(&out, ImportLimits::default());
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");

    // 64 MiB of zeros compress to almost nothing: a bomb past a 16 MiB limit.
    let zeros = vec![0u8; 64 << 20];
    let tar = archive(&[(b"bomb", EntryType::Regular, &zeros, b"")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20);
    let limits = ImportLimits {
        max_total_bytes: 16 << 20,
        ..ImportLimits::default()
    };
    let err = rejected(&gz, limits);
    expect(err, "uncompressed archive size exceeds the limit");

    let many: Vec<_> = (0..50).map(|i| format!("f{i}").into_bytes()).collect();
    let entries: Vec<_> = many
        .iter()
        .map(|n| (&n[..], EntryType::Regular, &b""[..], &b""[..]))
        .collect();
    let limits = ImportLimits {
        max_entries: 10,
        ..ImportLimits::default()
    };
    expect(rejected(&archive(&entries), limits), "number of entries");
}

#[test]
fn truncated_compressed_archives_are_refused() {
    let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let tar = archive(&[(b"file", EntryType::Regular, &data, b"")]);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    expect(
        rejected(&gz[..gz.len() / 2], ImportLimits::default()),
        "truncated or corrupt",
    );
    // Cut only the gzip trailer (its CRC and length).
    expect(
        rejected(&gz[..gz.len() - 4], ImportLimits::default()),
        "truncated or corrupt",
    );

    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    expect(
        rejected(&zst[..zst.len() / 2], ImportLimits::default()),
        "truncated or corrupt",
    );

    // An uncompressed tar cut inside a file's data.
    expect(
        rejected(&tar[..100_000], ImportLimits::default()),
        "truncated",
    );
}

#[test]
fn whiteouts_cannot_escape_or_remove_the_root() {
    // In a plain tarball .wh. names are ordinary files; as a layer they are
    // whiteouts and still obey the path rules (see tests/oci.rs).
    let (tmp, store) = store();
    let path = tmp.path().join("plain.tar");
    fs::write(
        &path,
        archive(&[(b".wh.file", EntryType::Regular, b"x", b"")]),
    )
    .unwrap();
    let report = import_image(&store, "plain", &path, &ImportOptions::default()).unwrap();
    let listing = common::listing(&store, report.image.tree.parse().unwrap());
    assert_eq!(
        listing,
        vec![("/.wh.file".to_string(), "file x".to_string())]
    );
}
