//! Any bytes as a connection to the node daemon's API, split into request
//! lines and decoded (see `snapshotter::fuzzing::api_stream`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    snapshotter::fuzzing::api_stream(data);
});
