//! What `serve` parses of a client's request: the head (httparse within our bounds and our
//! reading of its headers), the target as a registry route, and `Range` against a blob size.
//! Any bytes must give an answer or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

use cudaimg_serve::http::{parse_head, parse_range, Parsed};
use cudaimg_serve::route;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Done(req, len)) = parse_head(data) {
        assert!(len <= data.len());
        let _ = route::parse(&req.target);
        // Sizes at the edges and in between: empty, one byte, ordinary, the largest.
        for size in [0, 1, 4096, u64::MAX] {
            let _ = parse_range(req.range.as_deref(), size);
        }
    }
    // The target and Range parsers also see bytes httparse would not pass.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = route::parse(text);
        let _ = parse_range(Some(text), 1 << 20);
    }
});
