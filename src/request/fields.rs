//! The proxy-wasm serialized header map (what `proxy_get_header_map_pairs` hands over), read in
//! place: the request's [`Headers`] borrow from the host's buffer, with no allocation per
//! header on the hit path (the SDK's reader makes a `String` and a `Vec` of every name and
//! value).
//!
//! Layout (little-endian): the pair count `n` (u32); `n` × (name length, value length) (u32
//! each); then each name and each value in turn, each followed by a NUL byte.
//!
//! Invariant: a buffer that does not follow the layout exactly (lengths past its end, a missing
//! NUL, a name that is not UTF-8, bytes left over) is refused whole (`None`): the caller then
//! fails closed, since a request it cannot read is a request it cannot gate.

/// A request's headers as Envoy hands them over: lowercase names (pseudo-headers included),
/// raw values, a name repeated when the client sent it more than once. Borrowed from the
/// host's buffer (the glue parses it in place: no allocation per header on the hit path).
pub type Headers<'h> = [(&'h str, &'h [u8])];

/// The fields of a serialized header map, or `None` if it is malformed.
pub fn parse(buf: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    let (count, mut rest) = split_u32(buf)?;
    let count = usize::try_from(count).ok()?;
    // Each pair takes at least 10 bytes (8 of lengths, 2 NULs): a count claiming more is a lie.
    if count > buf.len() / 10 {
        return None;
    }
    let mut lengths = Vec::with_capacity(count);
    for _ in 0..count {
        let (name, r) = split_u32(rest)?;
        let (value, r) = split_u32(r)?;
        lengths.push((usize::try_from(name).ok()?, usize::try_from(value).ok()?));
        rest = r;
    }
    let mut out: Vec<(&str, &[u8])> = Vec::with_capacity(count);
    for (name_len, value_len) in lengths {
        let (name, r) = split_nul_terminated(rest, name_len)?;
        let (value, r) = split_nul_terminated(r, value_len)?;
        out.push((std::str::from_utf8(name).ok()?, value));
        rest = r;
    }
    rest.is_empty().then_some(out)
}

/// Serializes fields in the same layout (tests, fuzzing, and the reverse of [`parse`]).
pub fn serialize(fields: &Headers<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let n = u32::try_from(fields.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for (k, v) in fields {
        for len in [k.len(), v.len()] {
            out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        }
    }
    for (k, v) in fields {
        for part in [k.as_bytes(), *v] {
            out.extend_from_slice(part);
            out.push(0);
        }
    }
    out
}

fn split_u32(buf: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = buf.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

fn split_nul_terminated(buf: &[u8], len: usize) -> Option<(&[u8], &[u8])> {
    let (field, rest) = buf.split_at_checked(len)?;
    match rest.split_first() {
        Some((0, rest)) => Some((field, rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn parses_what_it_serializes() {
        let fields: [(&str, &[u8]); 4] = [
            (":path", b"/a?b"),
            ("x-api-key", b"k\x80\xff"),
            ("empty", b""),
            ("x-api-key", b"second"),
        ];
        let buf = serialize(&fields);
        assert_eq!(parse(&buf).unwrap(), fields.to_vec());
        assert_eq!(parse(&serialize(&[])).unwrap(), vec![]);
    }

    #[test]
    fn a_malformed_map_is_refused_whole() {
        let fields: [(&str, &[u8]); 2] = [(":path", b"/"), ("x-api-key", b"k")];
        let good = serialize(&fields);
        assert!(parse(&good).is_some());
        assert!(parse(&[]).is_none(), "no count");
        assert!(parse(&good[..good.len() - 1]).is_none(), "truncated");
        let mut extra = good.clone();
        extra.push(0);
        assert!(parse(&extra).is_none(), "bytes left over");
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(parse(&no_nul).is_none(), "value not NUL-terminated");
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).is_none(), "a count past the buffer");
        let mut long = good.clone();
        long[4..8].copy_from_slice(&1_000u32.to_le_bytes());
        assert!(parse(&long).is_none(), "a length past the buffer");
        let bad_name: [(&str, &[u8]); 1] = [("ab", b"v")];
        let mut not_utf8 = serialize(&bad_name);
        let at = not_utf8.len() - 5; // "ab\0v\0": the 'a'
        not_utf8[at] = 0xff;
        assert!(parse(&not_utf8).is_none(), "a name that is not UTF-8");
    }
}
