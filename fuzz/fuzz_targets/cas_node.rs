//! Any bytes as a node (see `cas::fuzzing::node`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cas::fuzzing::node(data));
