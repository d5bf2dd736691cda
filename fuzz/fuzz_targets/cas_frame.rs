//! Any bytes as a chunk frame (see `cas::fuzzing::frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cas::fuzzing::frame(data));
