//! Three-way merge of trees: changes on different paths all land, a
//! conflict keeps every version (the head's under the name, the other as a
//! visible conflict copy) and is listed, a change survives a concurrent
//! delete, and a merge reads only what both sides changed.

mod common;

use std::path::Path;

use common::{import_dir, listing, sh, store};
use layerfs::{merge_trees, ConflictKind, MemTree};

/// Imports `base`, then `ours` and `theirs` made from copies of it (`cp
/// -a`, so untouched entries keep their attributes) changed by shell
/// commands; returns the three trees.
fn three(
    store: &cas::Store,
    dir: &Path,
    base: &str,
    ours: &str,
    theirs: &str,
) -> (cas::ChunkId, cas::ChunkId, cas::ChunkId) {
    let b = dir.join("base");
    std::fs::create_dir(&b).unwrap();
    sh(base, &b);
    sh("cp -a base ours && cp -a base theirs", dir);
    sh(ours, &dir.join("ours"));
    sh(theirs, &dir.join("theirs"));
    (
        untimed(store, import_dir(store, "base", &b)),
        untimed(store, import_dir(store, "ours", &dir.join("ours"))),
        untimed(store, import_dir(store, "theirs", &dir.join("theirs"))),
    )
}

/// `tree` with every change time and access time zero: a copy made by
/// `cp -a` has new change times, which a session's capture of an
/// untouched file would not.
fn untimed(store: &cas::Store, tree: cas::ChunkId) -> cas::ChunkId {
    let mut mem = MemTree::load(store, tree).unwrap();
    for (_, index) in mem.walk() {
        let attrs = &mut mem.node_mut(index).attrs;
        attrs.ctime = Default::default();
        attrs.atime = Default::default();
    }
    mem.store(&store.writer("untimed")).unwrap()
}

fn files(store: &cas::Store, tree: cas::ChunkId) -> Vec<(String, String)> {
    listing(store, tree)
}

#[test]
fn changes_to_different_paths_all_land_without_conflicts() {
    let (tmp, store) = store();
    let (b, o, t) = three(
        &store,
        tmp.path(),
        "mkdir -p d/e && echo one > d/a && echo two > d/e/b && echo gone > c",
        "echo ours > d/new-ours && echo changed > d/a",
        "echo theirs > d/e/new-theirs && rm c",
    );
    let writer = store.writer("merge");
    let merged = merge_trees(&store, &writer, b, o, t, "T").unwrap();
    assert!(merged.conflicts.is_empty(), "{:?}", merged.conflicts);
    let got = files(&store, merged.tree);
    let expect = [
        ("/d", "dir"),
        ("/d/a", "file changed\n"),
        ("/d/e", "dir"),
        ("/d/e/b", "file two\n"),
        ("/d/e/new-theirs", "file theirs\n"),
        ("/d/new-ours", "file ours\n"),
    ];
    let expect: Vec<(String, String)> = expect
        .iter()
        .map(|(p, w)| (p.to_string(), w.to_string()))
        .collect();
    assert_eq!(got, expect);
    // Merging is symmetric in what lands.
    let swapped = merge_trees(&store, &writer, b, t, o, "T").unwrap();
    assert_eq!(files(&store, swapped.tree), expect);
    // A side that changed nothing gives the other side's tree, unread.
    let same = merge_trees(&store, &writer, b, b, t, "T").unwrap();
    assert_eq!((same.tree, same.dirs_merged), (t, 0));
    let same = merge_trees(&store, &writer, b, o, b, "T").unwrap();
    assert_eq!((same.tree, same.dirs_merged), (o, 0));
}

#[test]
fn the_same_file_changed_twice_keeps_both_versions_and_lists_the_conflict() {
    let (tmp, store) = store();
    let (b, o, t) = three(
        &store,
        tmp.path(),
        "mkdir d && echo base > d/report.txt && echo base > Makefile && echo x > .bashrc",
        "echo ours > d/report.txt && echo ours > Makefile && echo ours > .bashrc \
         && echo ours > d/report.conflict-S1.txt",
        "echo theirs > d/report.txt && echo theirs > Makefile && echo theirs > .bashrc",
    );
    let writer = store.writer("merge");
    let merged = merge_trees(&store, &writer, b, o, t, "S1").unwrap();
    let got = files(&store, merged.tree);
    let has = |p: &str, w: &str| got.contains(&(p.to_string(), w.to_string()));
    // The head (theirs) keeps the names; ours is beside them.
    assert!(has("/d/report.txt", "file theirs\n"), "{got:?}");
    assert!(has("/Makefile", "file theirs\n"), "{got:?}");
    assert!(has("/.bashrc", "file theirs\n"), "{got:?}");
    assert!(has("/Makefile.conflict-S1", "file ours\n"), "{got:?}");
    assert!(has("/.bashrc.conflict-S1", "file ours\n"), "{got:?}");
    // ours also made a file with the copy's name: the copy is numbered.
    assert!(has("/d/report.conflict-S1.txt", "file ours\n"), "{got:?}");
    assert!(has("/d/report.conflict-S1-2.txt", "file ours\n"), "{got:?}");
    let listed: Vec<(&str, ConflictKind, Option<&str>)> = merged
        .conflicts
        .iter()
        .map(|c| (c.path.as_str(), c.kind, c.copy.as_deref()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                "/.bashrc",
                ConflictKind::BothChanged,
                Some("/.bashrc.conflict-S1")
            ),
            (
                "/Makefile",
                ConflictKind::BothChanged,
                Some("/Makefile.conflict-S1")
            ),
            (
                "/d/report.txt",
                ConflictKind::BothChanged,
                Some("/d/report.conflict-S1-2.txt")
            ),
        ]
    );
}

#[test]
fn a_change_survives_a_concurrent_delete_and_file_against_directory_is_a_conflict() {
    let (tmp, store) = store();
    let (b, o, t) = three(
        &store,
        tmp.path(),
        "mkdir -p keep gone && echo 1 > keep/f && echo 2 > gone/g && echo 3 > x && echo 4 > y",
        "echo edited > keep/f && rm -r gone && rm x && echo ours-y > y",
        "rm -r keep && echo edited > gone/g && echo edited > x && rm y && mkdir y && echo in > y/z",
    );
    let writer = store.writer("merge");
    let merged = merge_trees(&store, &writer, b, o, t, "S2").unwrap();
    let got = files(&store, merged.tree);
    let has = |p: &str, w: &str| got.contains(&(p.to_string(), w.to_string()));
    assert!(has("/keep/f", "file edited\n"), "ours' edit kept: {got:?}");
    assert!(
        has("/gone/g", "file edited\n"),
        "theirs' edit kept: {got:?}"
    );
    assert!(has("/x", "file edited\n"), "{got:?}");
    assert!(
        has("/y/z", "file in\n"),
        "theirs' directory keeps y: {got:?}"
    );
    assert!(has("/y.conflict-S2", "file ours-y\n"), "{got:?}");
    let listed: Vec<(&str, ConflictKind)> = merged
        .conflicts
        .iter()
        .map(|c| (c.path.as_str(), c.kind))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("/gone", ConflictKind::DeletedChanged),
            ("/keep", ConflictKind::ChangedDeleted),
            ("/x", ConflictKind::DeletedChanged),
            ("/y", ConflictKind::BothChanged),
        ]
    );
}

#[test]
fn a_merge_reads_only_the_directories_both_sides_changed() {
    let (tmp, store) = store();
    let (b, o, t) = three(
        &store,
        tmp.path(),
        "for i in $(seq 1 200); do mkdir -p d$i/sub && echo $i > d$i/sub/f; done",
        "echo ours > d7/sub/new && echo ours > d50/only-ours",
        "echo theirs > d7/sub/other && echo theirs > d90/only-theirs",
    );
    let writer = store.writer("merge");
    let merged = merge_trees(&store, &writer, b, o, t, "S3").unwrap();
    assert!(merged.conflicts.is_empty());
    // The root, d7 and d7/sub: d50 and d90 changed on one side only.
    assert_eq!(merged.dirs_merged, 3);
    let got = files(&store, merged.tree);
    for (p, w) in [
        ("/d7/sub/new", "file ours\n"),
        ("/d7/sub/other", "file theirs\n"),
        ("/d50/only-ours", "file ours\n"),
        ("/d90/only-theirs", "file theirs\n"),
        ("/d200/sub/f", "file 200\n"),
    ] {
        assert!(got.contains(&(p.to_string(), w.to_string())), "{p}");
    }
}

#[test]
fn hard_links_from_both_sides_give_a_consistent_tree() {
    let (tmp, store) = store();
    let (b, o, t) = three(
        &store,
        tmp.path(),
        "mkdir d && echo base > d/a && echo other > d/b",
        "ln d/a d/a-link && ln d/b b-link",
        "echo theirs > d/a && rm d/b",
    );
    let writer = store.writer("merge");
    let merged = merge_trees(&store, &writer, b, o, t, "S4").unwrap();
    // The merged tree loads (every link reaches an inode) and storing it
    // again changes nothing: first names and link counts are right.
    let tree = MemTree::load(&store, merged.tree).unwrap();
    assert_eq!(tree.store(&writer).unwrap(), merged.tree);
    let got = files(&store, merged.tree);
    let has = |what: &str| got.iter().any(|(_, w)| w == what);
    // Nothing ours wrote is lost: its version of d/a is in the copy.
    for what in ["file base\n", "file theirs\n", "file other\n"] {
        assert!(has(what), "{what:?} in {got:?}");
    }
}

#[test]
fn a_bad_conflict_tag_is_refused() {
    let (tmp, store) = store();
    let (b, o, t) = three(&store, tmp.path(), "echo 1 > f", "echo 2 > f", "echo 3 > f");
    let writer = store.writer("merge");
    for tag in ["", "a/b", "..", &"x".repeat(65)] {
        assert!(
            merge_trees(&store, &writer, b, o, t, tag).is_err(),
            "{tag:?}"
        );
    }
}

#[test]
fn bytes_delta_counts_what_two_trees_differ_by() {
    let (tmp, store) = store();
    let (b, o, _) = three(
        &store,
        tmp.path(),
        "mkdir -p keep gone/deep && head -c 1000 /dev/zero > keep/same && \
         head -c 300 /dev/zero > keep/grows && head -c 700 /dev/zero > gone/deep/x && \
         head -c 50 /dev/zero > gone/y",
        "rm -r gone && head -c 800 /dev/zero > keep/grows && mkdir -p new/sub && \
         head -c 4000 /dev/zero > new/sub/z && ln keep/same keep/link",
        "true",
    );
    let delta = layerfs::bytes_delta(&store, b, o).unwrap();
    // Removed: gone/ (750), the old keep/grows (300) and keep/same as it
    // was (1000: its link count changed); added: the new keep/grows
    // (800), new/ (4000) and keep/same again; the hard link adds nothing.
    assert_eq!(
        delta,
        layerfs::BytesDelta {
            removed: 2050,
            added: 5800
        }
    );
    assert_eq!(layerfs::tree_bytes(&store, b).unwrap(), 2050);
    assert_eq!(delta.apply(2050), layerfs::tree_bytes(&store, o).unwrap());
    assert_eq!(
        layerfs::bytes_delta(&store, o, o).unwrap(),
        Default::default()
    );
}
