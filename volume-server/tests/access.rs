//! Outside access: put, get, ls-files and rm-file, each change a commit of
//! its own that reads only the directories along its path; concurrent
//! puts to different paths all land; bad paths change nothing.

use std::sync::Arc;

use cas::{Store, StoreConfig};
use volume_server::{CommitKind, Error, Volumes};

fn volumes() -> (tempfile::TempDir, Arc<Volumes>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), StoreConfig::default()).unwrap();
    (dir, Arc::new(Volumes::new(store)))
}

fn get(v: &Volumes, name: &str, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let size = v.read_file(name, path, &mut out).unwrap();
    assert_eq!(size as usize, out.len());
    out
}

#[test]
fn put_get_list_and_remove_are_commits() {
    let (_tmp, v) = volumes();
    v.create("data", 0).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    v.put_file("data", "models/a/weights.bin", &mut &big[..], 0o644, "cli")
        .unwrap();
    let head = v
        .put_file("data", "README", &mut &b"hello\n"[..], 0o600, "cli")
        .unwrap();
    assert_eq!(head.commit.record.kind, CommitKind::Edit);
    assert_eq!(head.commit.record.paths_changed, 1);
    assert_eq!(get(&v, "data", "models/a/weights.bin"), big);
    assert_eq!(get(&v, "data", "README"), b"hello\n");
    // An empty file is a file.
    v.put_file("data", "empty", &mut &b""[..], 0o644, "cli")
        .unwrap();
    assert_eq!(get(&v, "data", "empty"), b"");

    let root = v.list_files("data", "").unwrap();
    let names: Vec<(&str, &str, u64)> = root
        .iter()
        .map(|e| (e.name.as_str(), e.kind.as_str(), e.size))
        .collect();
    assert_eq!(
        names,
        vec![
            ("README", "file", 6),
            ("empty", "file", 0),
            ("models", "dir", 0)
        ]
    );
    assert_eq!(v.list_files("data", "models/a").unwrap()[0].size, 3_000_000);

    // Overwrite, then remove a directory with what it holds.
    v.put_file("data", "README", &mut &b"v2\n"[..], 0o644, "cli")
        .unwrap();
    assert_eq!(get(&v, "data", "README"), b"v2\n");
    let head = v.remove_file("data", "models", "cli").unwrap();
    assert!(matches!(
        v.read_file("data", "models/a/weights.bin", &mut Vec::new()),
        Err(Error::NoSuchPath(_))
    ));
    assert_eq!(head.commit.record.seq, 6);

    // Bad requests are clear errors and commit nothing.
    let before = v.head("data").unwrap();
    assert!(matches!(
        v.remove_file("data", "nope", "cli"),
        Err(Error::NoSuchPath(_))
    ));
    assert!(matches!(
        v.remove_file("data", "nope/deeper", "cli"),
        Err(Error::NoSuchPath(_))
    ));
    assert!(v
        .put_file("data", "README/under-a-file", &mut &b"x"[..], 0o644, "cli")
        .is_err());
    assert!(v
        .put_file("data", "../escape", &mut &b"x"[..], 0o644, "cli")
        .is_err());
    assert!(v
        .put_file("data", "", &mut &b"x"[..], 0o644, "cli")
        .is_err());
    assert!(matches!(
        v.read_file("data", "", &mut Vec::new()),
        Err(Error::NotAFile(_))
    ));
    assert!(matches!(
        v.put_file("missing", "f", &mut &b"x"[..], 0o644, "cli"),
        Err(Error::NotFound(_))
    ));
    assert_eq!(v.head("data").unwrap(), before);
}

#[test]
fn concurrent_puts_to_different_paths_all_land() {
    let (_tmp, v) = volumes();
    v.create("data", 0).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let text = format!("{t}-{i}");
                    v.put_file(
                        "data",
                        &format!("d{t}/f{i}"),
                        &mut text.as_bytes(),
                        0o644,
                        "t",
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..8 {
        for i in 0..10 {
            assert_eq!(
                get(&v, "data", &format!("d{t}/f{i}")),
                format!("{t}-{i}").as_bytes()
            );
        }
    }
    assert_eq!(v.head("data").unwrap().commit.record.seq, 81);
}
