//! Entry points for fuzzing the node daemon's API decoding: the `fuzz/`
//! target `api_line` (cargo-fuzz, long runs) and the mutation test in
//! `tests/api_mutations.rs` (bounded, in CI) call these with arbitrary
//! bytes. Not a stable API.

use crate::api::{self, MAX_LINE};

/// Request lines of every kind that takes no path the daemon would act
/// on (a mutation must not mount over `/`): the seeds that mutation tests
/// and the fuzzer's corpus start from.
pub const SEED_LINES: &[&str] = &[
    r#"{"api":1,"op":"daemon.info"}"#,
    r#"{"api":1,"op":"image.list"}"#,
    r#"{"api":1,"op":"image.show","args":{"name":"nope"}}"#,
    r#"{"api":1,"op":"image.remove","args":{"name":"nope"}}"#,
    r#"{"api":1,"op":"mount.list"}"#,
    r#"{"api":1,"op":"mount.remove","args":{"mount":"m-nope"}}"#,
    r#"{"api":1,"op":"snapshot.create","args":{"mount":"m-nope","dir":"x","labels":{"k":"v"},"expire_secs":18446744073709551615,"wait":true}}"#,
    r#"{"api":1,"op":"snapshot.list","args":{"mount":"m-nope","labels":{"a":"b"}}}"#,
    r#"{"api":1,"op":"snapshot.show","args":{"id":"s-nope"}}"#,
    r#"{"api":1,"op":"snapshot.wait","args":{"id":"s-nope"}}"#,
    r#"{"api":1,"op":"snapshot.diff","args":{"a":"s-1","b":"s-2"}}"#,
    r#"{"api":1,"op":"snapshot.remove","args":{"id":"s-nope"}}"#,
    r#"{"api":1,"op":"store.gc"}"#,
    r#"{"api":1,"op":"mount.graft","args":{"mount":"m-nope","snapshot":"s-nope","path":"a/b"}}"#,
    r#"{"api":1,"op":"serve9p.list"}"#,
    r#"{"api":1,"op":"serve9p.stop","args":{"listen":"unix:/nonexistent/9p.sock"}}"#,
];

/// A connection's bytes, split into lines as the daemon reads them: no
/// line longer than [`MAX_LINE`] is returned, a bad ending is an
/// `InvalidData` error, and each line goes through [`api_line`].
pub fn api_stream(bytes: &[u8]) {
    let mut reader = std::io::Cursor::new(bytes);
    loop {
        match api::read_line_bytes(&mut reader) {
            Ok(Some(line)) => {
                assert!(line.len() <= MAX_LINE, "a line past the limit was returned");
                api_line(&line);
            }
            Ok(None) => break,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                break;
            }
        }
    }
}

/// One request line: decoded or refused with a message, never a panic;
/// a request that decodes encodes again to one that decodes the same.
pub fn api_line(line: &[u8]) {
    match api::parse_request(line) {
        Ok(request) => {
            let encoded = serde_json::to_vec(&request).expect("a decoded request encodes");
            let again = api::parse_request(&encoded)
                .unwrap_or_else(|e| panic!("a request encoded again does not decode: {e}"));
            assert_eq!(
                serde_json::to_value(&request).expect("encodes"),
                serde_json::to_value(&again).expect("encodes"),
                "a request changed by encoding it again"
            );
        }
        Err(message) => assert!(!message.is_empty(), "a refusal without a message"),
    }
}
