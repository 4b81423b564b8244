//! One canonical path (D7). Before any matching the request path is normalised as RFC
//! 3986 §6.2.2 says — escapes of unreserved characters decoded (`%61` → `a`), the hex of
//! remaining escapes upper-cased — and rejected when it could mean different things to
//! different parsers: dot segments (in any encoding), empty segments (`//`), `\` raw or
//! encoded, NUL and control characters raw or encoded, malformed escapes. Encoded `/`,
//! `?` and `#` stay encoded: they are data inside a segment. The result is both what
//! rules match and exactly what is forwarded.

use std::fmt::Write as _;

/// Why a path was refused (the `PROXY_BAD_PATH` message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// `//` somewhere.
    #[error("empty path segment ('//') is not allowed")]
    EmptySegment,
    /// `.` or `..`, however encoded.
    #[error("dot segments ('.' and '..') are not allowed")]
    DotSegment,
    /// `\`, however encoded.
    #[error("backslash is not allowed in paths")]
    Backslash,
    /// NUL or another control character, however encoded.
    #[error("control characters are not allowed in paths")]
    Control,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-escape")]
    BadEscape,
    /// Longer than we accept.
    #[error("path is longer than {0} bytes")]
    TooLong(usize),
}

/// The longest path accepted (after canonicalisation).
pub const MAX_PATH: usize = 8 * 1024;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed raw in a path segment besides unreserved (RFC 3986 `pchar`).
fn is_sub_delim_or_colon_at(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Canonicalise `raw` (the path of the request target, without the query).
pub fn canonicalize(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.len() > MAX_PATH {
        return Err(PathError::TooLong(MAX_PATH));
    }
    let mut out = String::with_capacity(bytes.len());
    let mut segments = bytes[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        out.push('/');
        if seg.is_empty() {
            // One trailing slash is a legitimate path ("/repos/"); `//` is not.
            if segments.peek().is_none() {
                continue;
            }
            return Err(PathError::EmptySegment);
        }
        let start = out.len();
        let mut j = 0;
        while j < seg.len() {
            let b = seg[j];
            if b == b'%' {
                let (h, l) = match (
                    seg.get(j + 1).copied().and_then(hex),
                    seg.get(j + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let v = h * 16 + l;
                if is_control(v) {
                    return Err(PathError::Control);
                }
                if v == b'\\' {
                    return Err(PathError::Backslash);
                }
                if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    let _ = write!(out, "%{v:02X}");
                }
                j += 3;
                continue;
            }
            if is_control(b) {
                return Err(PathError::Control);
            }
            if b == b'\\' {
                return Err(PathError::Backslash);
            }
            if is_unreserved(b) || is_sub_delim_or_colon_at(b) {
                out.push(char::from(b));
            } else {
                // Anything else (space, quotes, braces, non-ASCII…) is escaped, so the
                // forwarded path is always a valid URI path.
                let _ = write!(out, "%{b:02X}");
            }
            j += 1;
        }
        let segment = &out[start..];
        if segment == "." || segment == ".." {
            return Err(PathError::DotSegment);
        }
    }
    if out.len() > MAX_PATH {
        return Err(PathError::TooLong(MAX_PATH));
    }
    Ok(out)
}

/// The canonical path with every escape decoded (`%2F` → `/`), for the suspicious deny
/// check. Non-UTF-8 results are decoded lossily. A path without escapes is returned as
/// it is.
pub fn fully_decoded(canonical: &str) -> std::borrow::Cow<'_, str> {
    if !canonical.contains('%') {
        return std::borrow::Cow::Borrowed(canonical);
    }
    let b = canonical.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%').then(|| {
            (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        });
        if let Some((Some(h), Some(l))) = escaped {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_escapes() {
        assert_eq!(canonicalize("/%61dmin/%7euser").unwrap(), "/admin/~user");
        assert_eq!(
            canonicalize("/projects/group%2fproject").unwrap(),
            "/projects/group%2Fproject"
        );
        assert_eq!(canonicalize("/a%3fb%23c").unwrap(), "/a%3Fb%23c");
        assert_eq!(canonicalize("/a b/\"q\"").unwrap(), "/a%20b/%22q%22");
        assert_eq!(canonicalize("/v1/x/").unwrap(), "/v1/x/");
        assert_eq!(
            canonicalize("/a;b=c/@:!$&'()*+,").unwrap(),
            "/a;b=c/@:!$&'()*+,"
        );
        assert_eq!(canonicalize("/%25/%2541").unwrap(), "/%25/%2541");
        assert_eq!(canonicalize("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(canonicalize("/café").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn rejects_ambiguous_paths() {
        use PathError::*;
        for (p, e) in [
            ("/a/../b", DotSegment),
            ("/a/./b", DotSegment),
            ("/a/%2e%2e/b", DotSegment),
            ("/a/%2E./b", DotSegment),
            ("/a/.%2e", DotSegment),
            ("/..", DotSegment),
            ("//a", EmptySegment),
            ("/a//b", EmptySegment),
            ("/a\\b", Backslash),
            ("/a%5cb", Backslash),
            ("/a%00", Control),
            ("/a%0ab", Control),
            ("/a\tb", Control),
            ("/a%zz", BadEscape),
            ("/a%2", BadEscape),
            ("a/b", NotAbsolute),
        ] {
            assert_eq!(canonicalize(p), Err(e), "{p}");
        }
        assert_eq!(
            canonicalize(&format!("/{}", "a".repeat(MAX_PATH))),
            Err(TooLong(MAX_PATH))
        );
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for p in ["/%61b%2f%3F", "/x%20y/z~", "/a/b/"] {
            let once = canonicalize(p).unwrap();
            assert_eq!(canonicalize(&once).unwrap(), once);
        }
    }

    #[test]
    fn decodes_everything_for_deny() {
        assert_eq!(fully_decoded("/user%2Fkeys"), "/user/keys");
        assert_eq!(fully_decoded("/a%20b"), "/a b");
    }
}
