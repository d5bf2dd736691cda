//! Capture and eager restore of synthetic images, byte for byte.

mod common;

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use common::{child_of, image};
use memsnap::{capture_dir, capture_file, restore, PAGE_SIZE};

fn store_in(dir: &std::path::Path) -> cas::Store {
    cas::Store::init(&dir.join("store"), Default::default()).unwrap()
}

fn zero_pages(image: &[u8]) -> u64 {
    image
        .chunks(PAGE_SIZE)
        .filter(|p| p.iter().all(|&b| b == 0))
        .count() as u64
}

#[test]
fn an_image_comes_back_byte_for_byte_with_zero_pages_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    // Over two maps (16 MiB each) and a partial last page.
    let ram = image(1, 9000, 1234);
    let path = dir.path().join("ram");
    std::fs::write(&path, &ram).unwrap();
    let writer = store.writer("test");
    let stored = capture_file(&writer, &File::open(&path).unwrap(), None).unwrap();
    writer.commit().unwrap();
    let pages = stored.stats.pages;
    assert_eq!(pages.zero, zero_pages(&ram));
    assert_eq!(pages.parent, 0);
    assert_eq!(pages.zero + pages.new, ram.len().div_ceil(PAGE_SIZE) as u64);
    assert!(
        stored.stats.stored_bytes < stored.stats.new_bytes,
        "text pages compress"
    );
    drop(writer);

    let back = dir.path().join("back");
    let restored = restore(&store, &stored.id, &back).unwrap();
    assert_eq!(restored.size, ram.len() as u64);
    assert_eq!(std::fs::read(&back).unwrap(), ram);
    let allocated = std::fs::metadata(&back).unwrap().blocks() * 512;
    let nonzero = ram.len() as u64 - pages.zero * PAGE_SIZE as u64;
    assert!(
        allocated <= nonzero + 64 * PAGE_SIZE as u64,
        "{allocated} bytes allocated for {nonzero} non-zero bytes: zero pages must be holes"
    );
}

#[test]
fn a_child_stores_only_its_new_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let parent = image(2, 6000, 0);
    let (child, changed) = child_of(&parent, 3);
    let (parent_path, child_path) = (dir.path().join("parent"), dir.path().join("child"));
    std::fs::write(&parent_path, &parent).unwrap();
    std::fs::write(&child_path, &child).unwrap();

    let writer = store.writer("test");
    let first = capture_file(&writer, &File::open(&parent_path).unwrap(), None).unwrap();
    let second = capture_file(&writer, &File::open(&child_path).unwrap(), Some(&first.id)).unwrap();
    writer.commit().unwrap();
    drop(writer);

    let pages = second.stats.pages;
    assert_eq!(
        pages.new, changed as u64,
        "only changed non-zero pages are new"
    );
    assert_eq!(pages.zero, zero_pages(&child));
    assert_eq!(pages.parent + pages.new + pages.zero, 6000);
    assert_eq!(second.stats.new_bytes, changed as u64 * PAGE_SIZE as u64);
    assert!(second.stats.new_bytes * 5 < first.stats.new_bytes);

    // The same image again, with its parent: nothing new at all.
    let writer = store.writer("test");
    let again = capture_file(&writer, &File::open(&child_path).unwrap(), Some(&second.id)).unwrap();
    writer.commit().unwrap();
    drop(writer);
    assert_eq!(again.stats.pages.new, 0);
    assert_eq!(again.stats.stored_bytes, 0, "every map is the parent's");

    for (id, want) in [(first.id, &parent), (second.id, &child), (again.id, &child)] {
        let back = dir.path().join(format!("back-{id}"));
        restore(&store, &id, &back).unwrap();
        assert!(std::fs::read(&back).unwrap() == *want, "image {id} differs");
    }
}

/// Writes `image` with its zero pages as holes (as a VM's sparse RAM file
/// or a diff snapshot is written).
fn write_sparse(path: &std::path::Path, image: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = File::create(path).unwrap();
    for (i, page) in image.chunks(PAGE_SIZE).enumerate() {
        if page.iter().any(|&b| b != 0) {
            file.write_all_at(page, (i * PAGE_SIZE) as u64).unwrap();
        }
    }
    file.set_len(image.len() as u64).unwrap();
}

#[test]
fn a_sparse_image_is_stored_as_its_dense_copy() {
    // One image two ways, each into a store of its own: dense, and with
    // its zero pages as holes (cells in holes are skipped unread). Both
    // store the same records, alone and as the child of the same parent.
    let dir = tempfile::tempdir().unwrap();
    let parent = image(11, 9000, 300);
    let (child, _) = child_of(&parent, 12);
    let parent_path = dir.path().join("parent");
    std::fs::write(&parent_path, &parent).unwrap();
    let dense = dir.path().join("dense");
    let sparse = dir.path().join("sparse");
    std::fs::write(&dense, &child).unwrap();
    write_sparse(&sparse, &child);
    let allocated = std::fs::metadata(&sparse).unwrap().blocks() * 512;
    assert!(
        allocated < child.len() as u64 * 3 / 4,
        "the sparse copy has holes ({allocated} bytes allocated)"
    );
    let mut results = Vec::new();
    for way in ["dense", "holes"] {
        let store =
            cas::Store::init(&dir.path().join(format!("store-{way}")), Default::default()).unwrap();
        let writer = store.writer("test");
        let base = capture_file(&writer, &File::open(&parent_path).unwrap(), None).unwrap();
        let path = if way == "holes" { &sparse } else { &dense };
        let alone = capture_file(&writer, &File::open(path).unwrap(), None).unwrap();
        let child_of_base =
            capture_file(&writer, &File::open(path).unwrap(), Some(&base.id)).unwrap();
        writer.commit().unwrap();
        assert_eq!(alone.stats.pages.zero, zero_pages(&child), "{way}");
        let back = dir.path().join(format!("back-{way}"));
        restore(&store, &child_of_base.id, &back).unwrap();
        assert!(
            std::fs::read(&back).unwrap() == child,
            "{way}: restored image differs"
        );
        results.push((way, alone.id, child_of_base.id));
    }
    for (way, alone, child_of_base) in &results[1..] {
        assert_eq!(*alone, results[0].1, "{way} against dense, alone");
        assert_eq!(
            *child_of_base, results[0].2,
            "{way} against dense, with parent"
        );
    }
}

#[test]
fn many_generations_stay_exact() {
    // Each generation changes pages of the last; a cell's pages come from
    // several ancestors until it is stored anew.
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let mut current = image(4, 700, 0);
    let mut parent = None;
    let mut ids = Vec::new();
    for generation in 0..8u64 {
        let path = dir.path().join(format!("gen{generation}"));
        std::fs::write(&path, &current).unwrap();
        let writer = store.writer("test");
        let stored = capture_file(&writer, &File::open(&path).unwrap(), parent.as_ref()).unwrap();
        writer.commit().unwrap();
        ids.push((stored.id, current.clone()));
        parent = Some(stored.id);
        current = child_of(&current, 100 + generation).0;
    }
    for (id, want) in ids {
        let back = dir.path().join("back");
        restore(&store, &id, &back).unwrap();
        assert!(std::fs::read(&back).unwrap() == want);
    }
}

#[test]
fn a_checkpoint_directory_comes_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let source = dir.path().join("checkpoint");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    let pages = image(5, 300, 17);
    std::fs::write(source.join("pages.img"), &pages).unwrap();
    std::fs::write(source.join("checkpoint.img"), b"state of the kernel").unwrap();
    std::fs::write(source.join("sub/empty"), b"").unwrap();

    let writer = store.writer("test");
    let stored = capture_dir(&writer, &source, None).unwrap();
    writer.commit().unwrap();
    drop(writer);
    assert_eq!(stored.files, Some(3));

    // A second checkpoint: the pages file changed a little.
    let (changed, count) = child_of(&pages, 6);
    std::fs::write(source.join("pages.img"), &changed).unwrap();
    let writer = store.writer("test");
    let child = capture_dir(&writer, &source, Some(&stored.id)).unwrap();
    writer.commit().unwrap();
    drop(writer);
    assert_eq!(
        child.stats.pages.new, count as u64,
        "only the changed pages: the other files are the parent's"
    );

    let back = dir.path().join("back");
    restore(&store, &child.id, &back).unwrap();
    assert_eq!(std::fs::read(back.join("pages.img")).unwrap(), changed);
    assert_eq!(
        std::fs::read(back.join("checkpoint.img")).unwrap(),
        b"state of the kernel"
    );
    assert_eq!(std::fs::read(back.join("sub/empty")).unwrap(), b"");
    // Into a directory that holds something: refused, nothing written.
    let err = restore(&store, &stored.id, &back).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read(back.join("pages.img")).unwrap(), changed);
}

#[test]
fn a_checkpoint_directory_with_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let source = dir.path().join("checkpoint");
    std::fs::create_dir_all(&source).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", source.join("link")).unwrap();
    let writer = store.writer("test");
    let err = capture_dir(&writer, &source, None).unwrap_err();
    assert!(err.to_string().contains("only regular files"), "{err}");
}
