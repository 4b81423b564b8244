//! Path globs (reference §3.1): `*` is one or more non-`/` characters, `**` one or more
//! of any character, `{name}` like `*`, everything else literal; anchored at both ends.
//! `/a/**` matches neither `/a` nor `/a/`.

use regex::Regex;

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    source: String,
    re: Regex,
}

impl Glob {
    /// Compile `pattern`; `case_insensitive` for deny rules (D7).
    pub fn new(pattern: &str, case_insensitive: bool) -> Result<Self, String> {
        let mut re = String::with_capacity(pattern.len() * 2 + 8);
        re.push_str(if case_insensitive { "(?i)^" } else { "^" });
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    re.push_str("(?s:.+)");
                    i += 2;
                }
                '*' => {
                    re.push_str("[^/]+");
                    i += 1;
                }
                '{' => match chars[i..].iter().position(|&c| c == '}') {
                    Some(close) => {
                        re.push_str("[^/]+");
                        i += close + 1;
                    }
                    None => {
                        re.push_str(&regex::escape("{"));
                        i += 1;
                    }
                },
                c => {
                    re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
                    i += 1;
                }
            }
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|e| format!("invalid pattern '{pattern}': {e}"))?;
        Ok(Glob {
            source: pattern.to_string(),
            re,
        })
    }

    /// Whether the whole of `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        self.re.is_match(path)
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The regular expression it compiled to (anchored at both ends).
    pub fn regex(&self) -> &str {
        self.re.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        Glob::new(p, false).unwrap().matches(path)
    }

    #[test]
    fn reference_semantics() {
        assert!(m("/v1/customers", "/v1/customers"));
        assert!(!m("/v1/customers", "/v1/customers/"));
        assert!(m("/v1/customers/*", "/v1/customers/abc"));
        assert!(!m("/v1/customers/*", "/v1/customers/abc/cards"));
        assert!(m("/v1/customers/**", "/v1/customers/abc/cards"));
        assert!(!m("/v1/customers/**", "/v1/customers"));
        assert!(!m("/v1/customers/**", "/v1/customers/"));
        assert!(m("/v1/{id}/details", "/v1/ACC123/details"));
        assert!(!m("/v1/{id}/details", "/v1/a/b/details"));
        assert!(!m("/v1/{id}/details", "/v1//details"));
        assert!(m("/*/foo", "/bar/foo"));
        assert!(!m("/*/foo", "/bar/baz/foo"));
        assert!(!m("/v1/users", "prefix/v1/users"));
        assert!(!m("/a.b", "/aXb"), ". is literal");
        assert!(m(
            "/v2/fundamentals/**/balance-sheet",
            "/v2/fundamentals/x/y/balance-sheet"
        ));
        assert!(m("/x{", "/x{"), "unclosed brace is literal");
        assert!(!m("/V1/x", "/v1/x"), "case-sensitive by default");
        assert!(Glob::new("/V1/X", true).unwrap().matches("/v1/x"));
    }
}
