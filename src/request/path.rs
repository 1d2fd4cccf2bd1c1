//! Paths as the upstream will read them.
//!
//! Path rules (`anonymous_paths`, `required_roles`, `invalidate_paths`) match what a path
//! *means*, not its bytes: Envoy forwards the raw `:path` (unless the operator turns on its own
//! normalisation), and the upstream's framework decodes, resolves `..`, merges slashes, and
//! sometimes more. A [`Route`] holds the path's RFC 3986 normal form (unreserved escapes
//! decoded, slashes merged, dot segments removed) and, when the path has any character that
//! lets upstreams disagree, the other readings they make: everything percent-decoded (twice),
//! `\` read as `/`, `;` parameters and trailing dots dropped from segments (Tomcat, Windows),
//! dot segments resolved before or after merging slashes, or not at all; compared without case.
//!
//! Invariants:
//! - a rule applies to a path when *any* reading of it lies under the rule's prefix
//!   ([`Route::maybe_under`]): no reading of an upstream can reach a protected route that the
//!   rule did not see;
//! - a path is anonymous only when *every* reading is the same (no encoded `/` or `\`, no
//!   double encoding, no dot segment, no `;`...) and lies under the prefix
//!   ([`Route::surely_under`]);
//! - prefixes end on a segment boundary: `/public` covers `/public` and `/public/x`, never
//!   `/publicity`.

use std::borrow::Cow;

use crate::text;

/// Why a `:path` cannot be admitted (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    Missing,
    NotUtf8,
    /// Not starting with `/`, a control character or space, or a malformed `%` escape.
    Invalid,
}

impl PathError {
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::Missing => "missing :path",
            PathError::NotUtf8 => ":path is not UTF-8",
            PathError::Invalid => "malformed :path",
        }
    }
}

/// A rule's path prefix in normal form, without its trailing `/` (so `""` is the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// Normalises a configured prefix like a path. `None` if it is not a path.
    pub fn parse(s: &str) -> Option<Prefix> {
        if s.contains(['?', '#']) || !text::all_visible(s.as_bytes()) {
            return None;
        }
        let route = Route::parse(s.as_bytes()).ok()?;
        Some(Prefix(route.canonical.trim_end_matches('/').to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request path as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    canonical: Cow<'a, str>,
    /// Other readings, lowercase; empty when the path has nothing that makes them differ.
    readings: Vec<String>,
    ambiguous: bool,
}

impl<'a> Route<'a> {
    /// Reads a `:path` (with its query). Refuses what no upstream should be handed.
    pub fn parse(raw: &'a [u8]) -> Result<Route<'a>, PathError> {
        let path = std::str::from_utf8(raw).map_err(|_| PathError::NotUtf8)?;
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(PathError::Invalid);
        }
        let part = path.split(['?', '#']).next().unwrap_or(path);
        if is_plain(part) {
            return Ok(Route {
                canonical: Cow::Borrowed(part),
                readings: Vec::new(),
                ambiguous: false,
            });
        }
        let canonical = canonical_form(part).ok_or(PathError::Invalid)?;
        let readings = lenient_readings(part);
        let plain = String::from_utf8_lossy(
            &text::percent_decode(canonical.as_bytes(), false).unwrap_or_default(),
        )
        .to_ascii_lowercase();
        let lower = part.to_ascii_lowercase();
        let ambiguous = lower.contains("%2f")
            || lower.contains("%5c")
            || lower.contains("%25")
            || readings.iter().any(|r| *r != plain);
        Ok(Route {
            canonical: Cow::Owned(canonical),
            readings,
            ambiguous,
        })
    }

    /// The RFC 3986 normal form (without query).
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Whether upstreams may read this path in more than one way.
    pub fn is_ambiguous(&self) -> bool {
        self.ambiguous
    }

    /// Every reading is the same and lies under `prefix` (case-sensitive): for anonymity.
    pub fn surely_under(&self, prefix: &Prefix) -> bool {
        !self.ambiguous && under(&self.canonical, prefix, false)
    }

    /// Some reading lies under `prefix` (case-insensitive): for rules that restrict.
    pub fn maybe_under(&self, prefix: &Prefix) -> bool {
        self.readings().any(|r| lies_under(r, prefix))
    }

    /// The normal form, then the other readings.
    pub fn readings(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.canonical.as_ref()).chain(self.readings.iter().map(String::as_str))
    }

    pub fn into_owned(self) -> Route<'static> {
        Route {
            canonical: Cow::Owned(self.canonical.into_owned()),
            readings: self.readings,
            ambiguous: self.ambiguous,
        }
    }
}

/// No character that normalisation or an upstream could read differently: the fast path.
fn is_plain(part: &str) -> bool {
    !part.contains(['%', '\\', ';'])
        && !part.contains("//")
        && !part.contains("/.")
        && !part.contains("./")
        && !part.ends_with('.')
}

/// Whether one reading of a path (see [`Route::readings`]) lies under `prefix`, without case.
pub fn lies_under(reading: &str, prefix: &Prefix) -> bool {
    under(reading, prefix, true)
}

fn under(path: &str, prefix: &Prefix, ignore_case: bool) -> bool {
    let (path, prefix) = (path.as_bytes(), prefix.0.as_bytes());
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let same = if ignore_case {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same && matches!(path.get(prefix.len()), None | Some(b'/'))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §6.2.2: unreserved escapes decoded (others kept, uppercase), empty segments
/// dropped (merged slashes), dot segments removed (§5.2.4). `None` for a malformed escape.
fn canonical_form(part: &str) -> Option<String> {
    let mut decoded: Vec<u8> = Vec::with_capacity(part.len());
    let mut bytes = part.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            decoded.push(b);
            continue;
        }
        let (h, l) = (bytes.next()?, bytes.next()?);
        let v = (text::hex_value(h)? << 4) | text::hex_value(l)?;
        if is_unreserved(v) {
            decoded.push(v);
        } else {
            decoded.extend([b'%', h.to_ascii_uppercase(), l.to_ascii_uppercase()]);
        }
    }
    // Only ASCII was decoded, so the bytes are still the input's UTF-8.
    let decoded = String::from_utf8(decoded).ok()?;
    Some(resolve(decoded.split('/').filter(|s| !s.is_empty())))
}

/// Joins segments after removing `.` and resolving `..` (never above the root).
fn resolve<'s>(segments: impl Iterator<Item = &'s str>) -> String {
    let mut out: Vec<&str> = Vec::new();
    for s in segments {
        match s {
            "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(s),
        }
    }
    join(&out)
}

fn join(segments: &[&str]) -> String {
    let mut s = String::new();
    for seg in segments {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// How many times a lenient upstream may percent-decode a path (a framework, then a
/// rewriting proxy or a handler that decodes again).
const DECODINGS: usize = 3;

/// The readings of lenient upstreams, lowercase (see the module docs): for each number of
/// percent-decodings from one to [`DECODINGS`], each way of resolving the result.
///
/// Every depth gives its own readings, not only the last: an upstream that decodes once
/// routes `/public/x%2f..%2f..%2fapi%2f%252e%252e%2f%252e%252e%2fpublic` as
/// `/api/%2e%2e/%2e%2e/public`, under `/api`, although twice decoded it is `/public`.
/// Decoding is lenient (a malformed escape stays as it is, as Python's `unquote` keeps it),
/// so `%25/` cannot hide the escapes after it from the deeper readings.
fn lenient_readings(part: &str) -> Vec<String> {
    let mut readings: Vec<String> = Vec::new();
    let mut bytes = part.as_bytes().to_vec();
    for _ in 0..DECODINGS {
        let decoded = text::percent_decode_lenient(&bytes);
        if decoded == bytes && !readings.is_empty() {
            break;
        }
        bytes = decoded;
        for reading in readings_of(&bytes) {
            if !readings.contains(&reading) {
                readings.push(reading);
            }
        }
    }
    readings
}

/// The ways of resolving one decoded path: slashes merged then dot segments resolved, not
/// resolved at all, dot segments resolved before merging; `\` read as `/`, lowercase.
fn readings_of(bytes: &[u8]) -> [String; 3] {
    let decoded = String::from_utf8_lossy(bytes)
        .replace('\\', "/")
        .to_ascii_lowercase();
    let segments: Vec<&str> = decoded.split('/').map(lenient_segment).collect();
    let non_empty = || segments.iter().copied().filter(|s| !s.is_empty());
    let merged_then_resolved = resolve(non_empty());
    let unresolved = join(&non_empty().collect::<Vec<_>>());
    let resolved_then_merged = resolve_keeping_empty(&segments);
    [merged_then_resolved, unresolved, resolved_then_merged]
}

/// A segment as Tomcat (`;` parameters) and Windows (trailing dots and spaces) read it.
fn lenient_segment(seg: &str) -> &str {
    let seg = seg.split(';').next().unwrap_or(seg);
    match seg {
        "." | ".." => seg,
        _ => seg.trim_end_matches(['.', ' ']),
    }
}

/// RFC 3986 §5.2.4 on the raw segments (an empty segment counts: `/a//../b` is `/a/b`), then
/// empty segments dropped.
fn resolve_keeping_empty(segments: &[&str]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for s in segments.iter().skip(1) {
        match *s {
            "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(s),
        }
    }
    let kept: Vec<&str> = out.into_iter().filter(|s| !s.is_empty()).collect();
    join(&kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    fn route(p: &str) -> Route<'_> {
        Route::parse(p.as_bytes()).unwrap()
    }

    fn prefix(p: &str) -> Prefix {
        Prefix::parse(p).unwrap()
    }

    #[test]
    fn plain_paths_take_the_fast_path_and_keep_their_bytes() {
        let r = route("/api/v1/items?x=1#f");
        assert_eq!(r.canonical(), "/api/v1/items");
        assert!(!r.is_ambiguous());
        assert!(matches!(r.canonical, Cow::Borrowed(_)));
        assert_eq!(route("/").canonical(), "/");
        assert_eq!(route("/v1.2/file.txt").canonical(), "/v1.2/file.txt");
    }

    #[test]
    fn prefixes_end_on_a_segment_boundary() {
        let p = prefix("/public");
        assert!(route("/public").surely_under(&p));
        assert!(route("/public/").surely_under(&p));
        assert!(route("/public/x?y").surely_under(&p));
        assert!(!route("/publicity").surely_under(&p));
        assert!(!route("/publicity").maybe_under(&p));
        let admin = prefix("/api/v1/admin/");
        assert!(route("/api/v1/admin").maybe_under(&admin));
        assert!(route("/api/v1/admin/users").maybe_under(&admin));
        assert!(!route("/api/v1/administrators").maybe_under(&admin));
        assert!(route("/anything").surely_under(&prefix("/")));
    }

    #[test]
    fn dot_segments_and_repeated_slashes_are_resolved() {
        let admin = prefix("/api/v1/admin/");
        let public = prefix("/public");
        for p in [
            "/public/../api/v1/admin/users",
            "/api/v1//admin/users",
            "/api/v1/./admin/users",
            "/api/v1/x/../admin/users",
            "//api/v1/admin/users",
            "/../api/v1/admin/users",
        ] {
            let r = route(p);
            assert_eq!(r.canonical(), "/api/v1/admin/users", "{p}");
            assert!(r.maybe_under(&admin), "{p}");
            assert!(!r.surely_under(&public), "{p}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept() {
        let r = route("/%61pi/v1/%41dmin/%7Euser/a%20b");
        assert_eq!(r.canonical(), "/api/v1/Admin/~user/a%20b");
        assert!(r.maybe_under(&prefix("/api/v1/admin/")));
        assert!(!r.is_ambiguous(), "decoding space changes no structure");
        assert!(route("/public/my%20file").surely_under(&prefix("/public")));
    }

    #[test]
    fn paths_upstreams_read_differently_are_never_anonymous_and_always_checked() {
        let admin = prefix("/api/v1/admin");
        let public = prefix("/public");
        let cases = [
            "/public/..%2Fapi/v1/admin/users",
            "/public/..%2fapi/v1/admin/users",
            "/public/..%5Capi/v1/admin/users",
            "/public/..\\api/v1/admin/users",
            "/public/%2e%2e/api/v1/admin/users",
            "/public/%2E%2E/api/v1/admin/users",
            "/public/%252e%252e/api/v1/admin/users",
            "/public/%252E%252E%252Fapi/v1/admin/users",
            "/public/..;/api/v1/admin/users",
            "/public;x=1/../api/v1/admin/users",
            "/api/v1/admin//../public",
            "/api/v1/admin/./../../public/x/..",
            "/api/v1/admin%2F..%2F..%2F..%2Fpublic",
        ];
        for p in cases {
            let r = route(p);
            assert!(r.is_ambiguous(), "{p}");
            assert!(!r.surely_under(&public), "{p} must not be anonymous");
            assert!(r.maybe_under(&admin), "{p} must meet the admin rule");
        }
        for p in [
            "/api/v1/admin;jsessionid=1/users",
            "/api/v1/admin./users",
            "/api/v1/admin%20/users",
            "/API/V1/ADMIN/users",
            "/api/v1/%61dmin/users",
        ] {
            assert!(route(p).maybe_under(&admin), "{p} must meet the admin rule");
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        assert_eq!(Route::parse(b"/a?x=\xff").unwrap_err(), PathError::NotUtf8);
        assert_eq!(Route::parse(b"").unwrap_err(), PathError::Invalid);
        assert_eq!(Route::parse(b"*").unwrap_err(), PathError::Invalid);
        assert_eq!(Route::parse(b"http://h/a").unwrap_err(), PathError::Invalid);
        assert_eq!(Route::parse(b"/a b").unwrap_err(), PathError::Invalid);
        assert_eq!(Route::parse(b"/a\x01").unwrap_err(), PathError::Invalid);
        assert_eq!(Route::parse(b"/a%zz").unwrap_err(), PathError::Invalid);
        assert_eq!(Route::parse(b"/a%2").unwrap_err(), PathError::Invalid);
        // Non-ASCII UTF-8 is a path like any other.
        assert_eq!(route("/caf\u{e9}").canonical(), "/caf\u{e9}");
    }

    #[test]
    fn prefixes_are_normalised_like_paths() {
        assert_eq!(prefix("/api/v1/admin/").as_str(), "/api/v1/admin");
        assert_eq!(prefix("/a//b/./c").as_str(), "/a/b/c");
        assert_eq!(prefix("/").as_str(), "");
        assert_eq!(prefix("/%61").as_str(), "/a");
        assert!(Prefix::parse("/a?b").is_none());
        assert!(Prefix::parse("a").is_none());
        assert!(Prefix::parse("/a b").is_none());
    }

    #[test]
    fn a_malformed_escape_revealed_by_decoding_does_not_hide_the_escapes_after_it() {
        // `%25/` decodes to `%/`: a strict second decoding fails there, while a lenient
        // upstream (Python's unquote) keeps the `%` and still decodes `%2e%2e` to `..`.
        // Found by the admission fuzz target (fuzz/regressions/admission/).
        let api = prefix("/api");
        let r = route("/public/%25/%252e%252e/%252e%252e/api/x");
        assert!(r.readings().any(|x| x == "/api/x"), "{:?}", r.readings);
        assert!(r.maybe_under(&api));
        assert!(!r.surely_under(&prefix("/public")));
    }

    #[test]
    fn every_depth_of_decoding_is_a_reading_of_its_own() {
        // Decoded once (as most upstreams do) this path routes under /api; decoded twice it
        // is /public. Both readings must meet their rules.
        let p = "/public/x%2f..%2f..%2fapi%2f%252e%252e%2f%252e%252e%2fpublic";
        let r = route(p);
        assert!(r.readings().any(|x| x == "/api/%2e%2e/%2e%2e/public"));
        assert!(r.readings().any(|x| x == "/public"));
        assert!(r.maybe_under(&prefix("/api")));
        assert!(!r.surely_under(&prefix("/public")));
    }
}
