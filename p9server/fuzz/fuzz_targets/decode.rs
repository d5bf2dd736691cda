//! Any bytes as a request and as a reply: decoding never panics and never
//! allocates past the input (a length is always checked against what is
//! there); what decodes encodes back to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use p9server::proto::{decode_dir_entries, decode_reply, decode_request};

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    if let Ok((tag, req)) = decode_request(input.clone()) {
        let mut out = Vec::new();
        req.encode(tag, &mut out);
        assert_eq!(&out[4..], data, "request re-encoding differs");
    }
    if let Ok((tag, reply)) = decode_reply(input.clone()) {
        let mut out = Vec::new();
        reply.encode(tag, &mut out);
        assert_eq!(&out[4..], data, "reply re-encoding differs");
    }
    let _ = decode_dir_entries(input);
});
