//! Any bytes as an upper-layer journal (see `layerfs::fuzzing::journal`).
#![no_main]

use std::sync::OnceLock;

static SCRATCH: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(|| tempfile::tempdir().unwrap());
    layerfs::fuzzing::journal(data, scratch.path());
});
