//! The API's request decoding under damaged input, on stable Rust and
//! bounded for CI: request lines of every kind, mutated
//! ([`fixtures::mutate`]), and whole mutated connections, go through the
//! properties of [`snapshotter::fuzzing`] — decoded or refused with a
//! message, never a panic; what decodes encodes again the same. The
//! cargo-fuzz target `api_line` in `fuzz/` runs the same properties,
//! coverage-guided. Iterations: `STRATA_MUTATIONS` (default 20,000).
//! (`tests/daemon.rs` sends mutated lines to a live daemon too.)

use fixtures::mutate::mutate;
use fixtures::workload::Rng;
use snapshotter::fuzzing::{api_line, api_stream, SEED_LINES};

fn iterations() -> u64 {
    std::env::var("STRATA_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seeds() -> Vec<Vec<u8>> {
    SEED_LINES.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn every_seed_line_decodes_and_encodes_again_the_same() {
    for line in SEED_LINES {
        snapshotter::api::parse_request(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        api_line(line.as_bytes());
    }
}

#[test]
fn mutated_request_lines_are_decoded_or_refused_never_a_panic() {
    let seeds = seeds();
    let mut rng = Rng::new(fixtures::workload::seed());
    for _ in 0..iterations() {
        api_line(&mutate(&seeds, &mut rng));
    }
}

#[test]
fn mutated_connections_split_into_lines_within_the_limit() {
    let seeds = seeds();
    let mut rng = Rng::new(fixtures::workload::seed());
    for _ in 0..iterations() / 10 {
        let mut stream = Vec::new();
        for _ in 0..rng.below(8) {
            stream.extend_from_slice(&mutate(&seeds, &mut rng));
            stream.push(b'\n');
        }
        // Now and then a line past the limit, or one cut off.
        match rng.below(10) {
            0 => stream.extend(std::iter::repeat_n(b'x', snapshotter::api::MAX_LINE + 1)),
            1 => stream.extend_from_slice(br#"{"api":1,"op""#),
            _ => {}
        }
        api_stream(&stream);
    }
}
