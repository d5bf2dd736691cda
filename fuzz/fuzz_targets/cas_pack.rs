//! Any bytes as a whole pack file (see `cas::fuzzing::pack`).
#![no_main]

use std::io::{Seek, Write};
use std::sync::Mutex;

static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut guard = FILE.lock().unwrap();
    let file = guard.get_or_insert_with(|| tempfile::tempfile().unwrap());
    file.set_len(0).unwrap();
    file.rewind().unwrap();
    file.write_all(data).unwrap();
    cas::fuzzing::pack(file);
});
