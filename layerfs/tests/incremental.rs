//! Incremental captures (a volume session's commits): a capture that
//! writes only the names edited in each loaded directory over that
//! directory's stored node stores exactly the tree a whole capture of
//! the same mount stores, through seeded random workloads of writes,
//! creates, removals, renames within and across large paged directories,
//! attribute changes, new and removed directories and hard links (which
//! fall back to whole directories), and after a recovery.

mod common;

use std::path::Path;

use cas::{ChunkId, Store};
use common::{cow_mount, import_dir, lookup, store};
use fixtures::workload::Rng;
use layerfs::cowfs::{Caller, CowFs, Errno, SetAttr, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const DIRS: [&str; 5] = ["big", "big2", "small", "nest/a/b", "nest"];

fn source(tmp: &Path) -> std::path::PathBuf {
    let src = tmp.join("src");
    for dir in DIRS {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    for i in 0..1500 {
        std::fs::write(src.join(format!("big/f{i:04}")), format!("big {i}\n")).unwrap();
    }
    for i in 0..700 {
        std::fs::write(src.join(format!("big2/f{i:04}")), format!("big2 {i}\n")).unwrap();
    }
    for i in 0..5 {
        std::fs::write(src.join(format!("small/f{i:04}")), b"small\n").unwrap();
        std::fs::write(src.join(format!("nest/a/b/f{i:04}")), b"deep\n").unwrap();
    }
    src
}

fn child(fs: &CowFs, dir: u64, name: &str) -> Option<layerfs::cowfs::Stat> {
    match fs.lookup(dir, name.as_bytes()) {
        Ok(stat) => Some(stat),
        Err(Errno::ENOENT) => None,
        Err(e) => panic!("lookup {name}: {e:?}"),
    }
}

/// One random change somewhere in the mount; errors a real filesystem
/// gives (a rename onto a directory, removing a non-empty one) are fine.
fn change(fs: &CowFs, rng: &mut Rng, made_dirs: &mut Vec<String>, links: bool) {
    let mut dirs: Vec<String> = DIRS.iter().map(|d| d.to_string()).collect();
    dirs.extend(made_dirs.iter().cloned());
    let dir_path = dirs[rng.below(dirs.len() as u64) as usize].clone();
    let dir = lookup(fs, &dir_path);
    let name = format!("f{:04}", rng.below(1600));
    let found = child(fs, dir, &name);
    let is_file = found
        .as_ref()
        .is_some_and(|s| s.kind == layerfs::cowfs::FileKind::File);
    match rng.below(20) {
        0..=6 if is_file => {
            let ino = found.unwrap().ino;
            let offset = rng.below(64);
            fs.open(ino, false).unwrap();
            fs.write(ino, offset, format!("w{}", rng.next_u64()).as_bytes())
                .unwrap();
            fs.release(ino);
        }
        0..=8 if found.is_none() => {
            let ino = fs.create(dir, name.as_bytes(), 0o644, ROOT).unwrap().ino;
            fs.write(ino, 0, b"new\n").unwrap();
            fs.release(ino);
        }
        9..=10 if is_file => fs.unlink(dir, name.as_bytes()).unwrap(),
        11..=12 if found.is_some() => {
            let to_path = dirs[rng.below(dirs.len() as u64) as usize].clone();
            let to = lookup(fs, &to_path);
            let to_name = format!("f{:04}", rng.below(1600));
            let _ = fs.rename(
                dir,
                name.as_bytes(),
                to,
                to_name.as_bytes(),
                Default::default(),
            );
        }
        13 if found.is_some() => {
            let ino = found.unwrap().ino;
            fs.setattr(
                ino,
                SetAttr {
                    mode: Some(0o600 + rng.below(0o100) as u32),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        }
        14 if is_file => {
            let ino = found.unwrap().ino;
            fs.setattr(
                ino,
                SetAttr {
                    size: Some(rng.below(8)),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        }
        15 if found.is_none() && made_dirs.len() < 6 => {
            fs.mkdir(dir, name.as_bytes(), 0o755, ROOT).unwrap();
            made_dirs.push(format!("{dir_path}/{name}"));
        }
        16 if !made_dirs.is_empty() => {
            let gone = made_dirs.remove(rng.below(made_dirs.len() as u64) as usize);
            let (parent, leaf) = gone.rsplit_once('/').unwrap();
            match fs.rmdir(lookup(fs, parent), leaf.as_bytes()) {
                Ok(()) => made_dirs.retain(|d| !d.starts_with(&format!("{gone}/"))),
                Err(_) => made_dirs.push(gone),
            }
        }
        17 if is_file && links => {
            // A hard link: the next capture walks whole directories.
            let to = lookup(fs, "small");
            let _ = fs.link(
                found.unwrap().ino,
                to,
                format!("l{}", rng.below(100)).as_bytes(),
            );
        }
        _ => {}
    }
}

/// An incremental capture of `fs` and a whole one taken right after it
/// (before the first is converted, so that the whole one walks every
/// directory changed since the last conversion), both stored: their
/// trees, and how many directories the incremental one patched. The
/// incremental one is then converted (as a commit does), and the whole
/// one too when asked.
fn capture_both(
    fs: &CowFs,
    store: &Store,
    convert_whole: bool,
) -> (ChunkId, ChunkId, usize, Option<u64>) {
    let writer = store.writer("incremental test");
    let incremental = fs.capture_incremental(b"").unwrap();
    let patched = incremental.patched_dirs();
    let stored = incremental.store(store, &writer).unwrap();
    let whole = fs.capture(b"").unwrap();
    let whole_stored = whole.store(store, &writer).unwrap();
    writer.commit().unwrap();
    fs.converted(&stored).unwrap();
    if convert_whole {
        fs.converted(&whole_stored).unwrap();
    }
    (
        stored.tree,
        whole_stored.tree,
        patched,
        stored.paths_changed,
    )
}

#[test]
fn incremental_captures_store_the_same_tree_as_whole_captures() {
    let (tmp, store) = store();
    let lower = import_dir(&store, "inc", &source(tmp.path()));
    let mut patched_total = 0;
    let mut counted_rounds = 0;
    for seed in 1..=8u64 {
        let upper = tmp.path().join(format!("upper{seed}"));
        let mut fs = cow_mount(&store, lower, &upper);
        let mut rng = Rng::new(seed);
        let mut made_dirs = Vec::new();
        // The tree the mount's last converted capture stored.
        let mut prev = lower;
        for round in 0..25 {
            let ops = 1 + rng.below(60);
            for _ in 0..ops {
                change(&fs, &mut rng, &mut made_dirs, seed == 8 && round > 15);
            }
            let (tree, whole_tree, patched, counted) = capture_both(&fs, &store, round % 5 == 4);
            patched_total += patched;
            if let Some(counted) = counted {
                let diffed = layerfs::diff_trees(&store, prev, tree).unwrap().len() as u64;
                assert_eq!(counted, diffed, "seed {seed}, round {round}: paths changed");
                counted_rounds += 1;
            }
            prev = tree;
            if tree != whole_tree {
                let a = common::listing(&store, tree);
                let b = common::listing(&store, whole_tree);
                for x in &a {
                    if !b.contains(x) {
                        eprintln!("incremental only: {x:?}");
                    }
                }
                for x in &b {
                    if !a.contains(x) {
                        eprintln!("whole only: {x:?}");
                    }
                }
            }
            assert_eq!(
                tree, whole_tree,
                "seed {seed}, round {round}: an incremental capture differs from a whole one"
            );
            if round == 12 {
                // A recovered mount walks whole directories once, then
                // goes on incrementally.
                drop(fs);
                fs = CowFs::recover(store.clone(), lower, common_config(&upper))
                    .unwrap()
                    .0;
            }
        }
        assert_eq!(fs.getattr(ROOT_INO).unwrap().ino, ROOT_INO);
    }
    assert!(
        counted_rounds > 50,
        "paths were counted in {counted_rounds} rounds"
    );
    assert!(
        patched_total > 100,
        "the incremental path was hardly taken ({patched_total} directories)"
    );
}

fn common_config(upper: &Path) -> layerfs::cowfs::MountConfig {
    layerfs::cowfs::MountConfig {
        upper_dir: upper.to_path_buf(),
        quota_bytes: 1 << 30,
        inode_quota: layerfs::cowfs::DEFAULT_INODE_QUOTA,
    }
}

/// The simplest edits, one at a time: a write to a file of a large lower
/// directory, its removal, a new name, a changed mode, each a
/// one-entry patch of that directory.
#[test]
fn single_edits_of_a_large_directory_are_one_entry_patches() {
    let (tmp, store) = store();
    let lower = import_dir(&store, "inc", &source(tmp.path()));
    let fs = cow_mount(&store, lower, &tmp.path().join("upper"));
    let big = lookup(&fs, "big");
    let mut prev = lower;
    type Step = (&'static str, Box<dyn Fn(&CowFs)>);
    let steps: [Step; 4] = [
        (
            "write",
            Box::new(move |fs: &CowFs| common::write(fs, lookup(fs, "big/f0007"), 3, b"changed")),
        ),
        (
            "unlink",
            Box::new(move |fs: &CowFs| fs.unlink(big, b"f0100").unwrap()),
        ),
        (
            "create",
            Box::new(move |fs: &CowFs| {
                let ino = fs.create(big, b"g0001", 0o644, ROOT).unwrap().ino;
                fs.release(ino);
            }),
        ),
        (
            "chmod",
            Box::new(move |fs: &CowFs| {
                let ino = lookup(fs, "big/f1400");
                fs.setattr(
                    ino,
                    SetAttr {
                        mode: Some(0o600),
                        ..SetAttr::default()
                    },
                )
                .unwrap();
            }),
        ),
    ];
    for (what, step) in steps {
        step(&fs);
        let (tree, whole, patched, counted) = capture_both(&fs, &store, false);
        assert_eq!(patched, 2, "{what}: the root and big");
        assert_eq!(tree, whole, "{what}");
        // The entry, and for a name added or removed, its directory.
        let expected = if what == "unlink" || what == "create" {
            2
        } else {
            1
        };
        assert_eq!(counted, Some(expected), "{what}: paths changed");
        assert_eq!(
            layerfs::diff_trees(&store, prev, tree).unwrap().len(),
            expected as usize,
            "{what}"
        );
        prev = tree;
    }
}
