//! Query-string editing that never re-serialises what the agent sent (§13 #32, D9):
//! pieces are removed by their decoded name and new ones appended, already
//! percent-encoded, so the module knows the exact bytes the upstream will receive.
//!
//! One source file, compiled (`#[path]`) into every module that edits queries, since
//! each module is an independent component.

/// Percent-encode every byte except RFC 3986 unreserved characters (upper-case hex).
pub fn pct_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n & 0xf)])
}

fn hex_value(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Percent-decode as a server decodes a query name (`+` is a space); malformed escapes
/// stay literal.
pub fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).copied().and_then(hex_value);
            let lo = b.get(i + 2).copied().and_then(hex_value);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    out
}

/// The raw query without the pieces whose decoded name is one of `names`; every other
/// piece keeps its exact bytes and position.
pub fn drop_params(query: &str, names: &[&str]) -> String {
    if query.is_empty() {
        return String::new();
    }
    query
        .split('&')
        .filter(|piece| {
            let name = pct_decode(piece.split('=').next().unwrap_or_default());
            !names.iter().any(|n| n.as_bytes() == name.as_slice())
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `query` followed by `&name=value` (no `&` when `query` is empty), both percent-encoded.
pub fn append_param(query: &str, name: &str, value: &str) -> String {
    let pair = format!(
        "{}={}",
        pct_encode(name.as_bytes()),
        pct_encode(value.as_bytes())
    );
    if query.is_empty() {
        pair
    } else {
        format!("{query}&{pair}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(pct_encode(b"aZ09-._~"), "aZ09-._~");
        assert_eq!(pct_encode(b"a b+c/d=&\xff"), "a%20b%2Bc%2Fd%3D%26%FF");
        assert_eq!(pct_decode("a%20b+c%2fd%zz%"), b"a b c/d%zz%");
    }

    #[test]
    fn dropping_keeps_other_pieces_byte_for_byte() {
        let q = "b=2&api_key=evil&a=%20x+y&&flag&b=1&api%5Fkey=evil2&api_key";
        assert_eq!(drop_params(q, &["api_key"]), "b=2&a=%20x+y&&flag&b=1");
        assert_eq!(drop_params("x=1&y=2", &["z"]), "x=1&y=2");
        assert_eq!(drop_params("", &["z"]), "");
        assert_eq!(drop_params("z=1", &["z"]), "");
        assert_eq!(drop_params("t=1&s=2&u=3", &["t", "s"]), "u=3");
    }

    #[test]
    fn appending_encodes_and_joins() {
        assert_eq!(append_param("", "k", "v"), "k=v");
        assert_eq!(
            append_param("a=1", "api key", "s3cr/t+=="),
            "a=1&api%20key=s3cr%2Ft%2B%3D%3D"
        );
    }
}
