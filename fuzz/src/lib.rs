//! Helpers shared by the fuzz targets: input splitting and independent re-statements of the
//! documented rules (written from README.md, not from the code under test), used as oracles.

/// Whether `KEYGATE_FUZZ_TRACE` is set: the stateful targets then print every step (see
/// [`trace!`]), to read a failing input's story.
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("KEYGATE_FUZZ_TRACE").is_some())
}

/// `eprintln!` when [`tracing`] is on.
#[macro_export]
macro_rules! trace {
    ($($t:tt)*) => {
        if $crate::tracing() {
            eprintln!($($t)*);
        }
    };
}

/// Splits an input at its first `\n`: `(first line, Some(rest))`, or `(all, None)` without one.
pub fn first_line(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

/// Request headers written one per line as `name:value` (a leading ':' belongs to the name, for
/// pseudo-headers), names lowercased as Envoy hands them over.
pub fn header_lines(mut rest: Option<&[u8]>) -> Vec<(String, Vec<u8>)> {
    let mut headers = Vec::new();
    while let Some(r) = rest {
        let (line, next) = first_line(r);
        rest = next;
        let split = line.iter().skip(1).position(|&b| b == b':').map(|i| i + 1);
        let (name, value) = match split {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    headers
}

/// An HTTP status line of a test input: a number that fits a u16, else "no response".
pub fn status(line: &[u8]) -> Option<u16> {
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

/// A key as README.md describes it: 1 to 512 bytes of visible ASCII (0x21-0x7e).
pub fn is_valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= 512 && key.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// An identity field the filter may put in a header: 1 to 256 bytes of visible ASCII or
/// spaces, no comma (`acme, victim` reads as a list upstream), no space at either end.
pub fn is_header_safe_field(f: &str) -> bool {
    let b = f.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|&c| c == b' ' || ((0x21..=0x7e).contains(&c) && c != b','))
        && b[0] != b' '
        && b[b.len() - 1] != b' '
}

/// A key id: exactly 64 lowercase hex characters.
pub fn is_key_id_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads fixed-size fields from the front of the input; past the end every read gives zeros,
/// so any input is a valid sequence of reads.
pub struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((b, rest)) => {
                self.rest = rest;
                *b
            }
            None => 0,
        }
    }

    /// A clock step in milliseconds, readable in a hand-written input: a digit d is d × 250 ms
    /// (sync intervals and leases), another byte below 128 that many ms, a byte above
    /// (b − 127) × 50 ms.
    pub fn step_ms(&mut self) -> u64 {
        let b = self.u8();
        if b.is_ascii_digit() {
            u64::from(b - b'0') * 250
        } else if b < 128 {
            u64::from(b)
        } else {
            u64::from(b - 127) * 50
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        head
    }

    /// A length byte, then that many bytes.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }

    /// A length byte, then that many bytes as (lossy) UTF-8.
    pub fn short_string(&mut self) -> String {
        String::from_utf8_lossy(self.short_bytes()).into_owned()
    }

    pub fn key_id(&mut self) -> keygate_protocol::KeyId {
        let mut k = [0u8; 32];
        for x in &mut k {
            *x = self.u8();
        }
        keygate_protocol::KeyId(k)
    }
}

/// A field of a JSON body as serde's derived `Deserialize` reads a struct: by name from an
/// object, or by position from an array (serde accepts both forms).
pub fn json_field<'v>(
    v: &'v serde_json::Value,
    name: &str,
    position: usize,
) -> Option<&'v serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m.get(name),
        serde_json::Value::Array(a) => a.get(position),
        _ => None,
    }
}

/// The body as a JSON value, for comparing with what a parser under test accepted. serde skips
/// ignored fields without checking them (invalid UTF-8, lone surrogate escapes), which a
/// `Value` refuses: such bytes are replaced first, and a body that still fails gives `None`.
pub fn json_value(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(body)
        .ok()
        .or_else(|| serde_json::from_str(&String::from_utf8_lossy(body)).ok())
}
