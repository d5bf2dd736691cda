//! Entry points for fuzzing layerfs's decoders: the `fuzz/` targets
//! (cargo-fuzz, long runs) and the mutation tests in `tests/` (bounded, in
//! CI) call these with arbitrary bytes. Each checks that decoding never
//! panics, never runs past its limits, and that what it accepts is
//! consistent. Not a stable API.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use cas::{ChunkId, ChunkKind, Node, Store};

use crate::import::ImportLimits;
use crate::memtree::TreeReader;
use crate::{image, tree};

/// A tree node's bytes: a directory that decodes lists its entries (or
/// fails cleanly where a page it links to is not in the store).
pub fn tree_node(store: &Store, bytes: &[u8]) {
    let id = ChunkId::compute(ChunkKind::Node, bytes);
    if let Ok(node) = Node::decode(id, bytes) {
        if let Ok(dir) = tree::decode_dir(id, &node) {
            let _ = TreeReader::new(store).entries(&dir);
        }
    }
}

/// A journal's bytes, written to `scratch/journal` and read as recovery
/// reads it: the intact prefix and the torn tail add up to the file.
pub fn journal(bytes: &[u8], scratch: &Path) {
    let path = scratch.join("journal");
    std::fs::write(&path, bytes).expect("writing the scratch journal");
    if let Ok(contents) = crate::cowfs::read_journal(&path) {
        assert_eq!(contents.0 + contents.1, bytes.len() as u64);
    }
}

/// An archive's bytes (tar, compressed tar, OCI or docker archive),
/// written to `scratch/input` and imported into `store` under small
/// limits: an import either fails with an error and leaves no image, or
/// makes an image whose whole tree reads back.
pub fn import(store: &Store, bytes: &[u8], scratch: &Path) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = scratch.join("input");
    std::fs::write(&path, bytes).expect("writing the scratch archive");
    let name = format!("fuzz-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let options = image::ImportOptions {
        limits: ImportLimits {
            max_total_bytes: 64 << 20,
            max_file_bytes: 16 << 20,
            max_entries: 100_000,
            allow_devices: true,
        },
        ..image::ImportOptions::default()
    };
    match image::import_image(store, &name, &path, &options) {
        Ok(report) => {
            let root = image::image_tree(store, &name).expect("an imported image has a tree");
            walk(store, root);
            let _ = report;
            image::remove_image(store, &name).expect("removing the image");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(
                image::get_image(store, &name).is_err(),
                "a failed import left an image"
            );
        }
    }
}

/// Reads every directory and every file's bytes of a tree.
fn walk(store: &Store, root: ChunkId) {
    let reader = TreeReader::new(store);
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        let dir = reader.dir(id).expect("an imported directory reads");
        for (_, entry) in reader.entries(&dir).expect("its entries read") {
            match entry {
                tree::Entry::Dir(tree) => stack.push(tree),
                tree::Entry::Inode(inode) => {
                    if let tree::InodeKind::File {
                        blob: Some(blob), ..
                    } = inode.kind
                    {
                        let mut sink = std::io::sink();
                        store
                            .blob(&blob)
                            .and_then(|b| b.copy_to(&mut sink))
                            .expect("an imported file reads");
                    }
                }
                tree::Entry::HardLink { .. } => {}
            }
        }
    }
}
