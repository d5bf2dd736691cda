//! Any bytes as an image archive to import (see `layerfs::fuzzing::import`).
#![no_main]

use std::sync::OnceLock;

static STATE: OnceLock<(tempfile::TempDir, cas::Store)> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (dir, store) = STATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = cas::Store::init(&dir.path().join("store"), Default::default()).unwrap();
        (dir, store)
    });
    layerfs::fuzzing::import(store, data, dir.path());
});
