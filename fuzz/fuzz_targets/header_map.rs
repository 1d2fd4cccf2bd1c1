//! `fields::parse`: the proxy-wasm serialized header map, as Envoy hands over request headers
//! and trailers, read in place.
//!
//! Input: any bytes, as the buffer.
//!
//! Properties:
//! - never panics, whatever the bytes;
//! - a buffer it accepts is exactly the serialization of what it returned (nothing skipped,
//!   nothing read past, no second reading of the same bytes);
//! - the fields' names are UTF-8 (they are `&str`) and the count matches the header.
#![no_main]

use keygate::request::fields;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(parsed) = fields::parse(data) {
        assert_eq!(
            fields::serialize(&parsed),
            data,
            "accepted but not canonical"
        );
        let count = data
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        assert_eq!(count, u32::try_from(parsed.len()).ok());
    }
});
