//! Any bytes as a tree directory node (see `layerfs::fuzzing::tree_node`).
#![no_main]

use std::sync::OnceLock;

static STORE: OnceLock<(tempfile::TempDir, cas::Store)> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_, store) = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = cas::Store::init(&dir.path().join("store"), Default::default()).unwrap();
        (dir, store)
    });
    layerfs::fuzzing::tree_node(store, data);
});
