//! What a provider lets through: deny globs (checked suspiciously, D7), allow rules or
//! transparent mode (§3.3), and which methods are writes (D8).

use regex::RegexSet;

use super::glob::Glob;
use super::path::fully_decoded;
use crate::config::provider::{AllowRule, Forwarding, Mode};

/// What a matched request is, for the later phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// Rate-limit category (borrowed from the policy: no copy per request).
    pub category: &'a str,
    /// Response cache TTL, seconds.
    pub cache_ttl: u64,
    /// Needs `can_call_sensitive`.
    pub sensitive: bool,
}

#[derive(Debug, Clone)]
struct AllowEntry {
    method: String,
    category: String,
    cache_ttl: u64,
    sensitive: bool,
}

/// A provider's compiled routing policy.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    mode: Mode,
    allow: Vec<AllowEntry>,
    /// Every allow glob in one automaton: one pass over the path tells which match.
    allow_set: RegexSet,
    deny: Vec<Glob>,
    /// Every deny glob in one automaton.
    deny_set: RegexSet,
    treat_writes_as_sensitive: bool,
    default_cache_ttl: u64,
    default_category: String,
}

/// Every glob of `globs` in one automaton, for one pass over a path.
fn regex_set(key: &str, globs: &[Glob]) -> Result<RegexSet, (String, String)> {
    RegexSet::new(globs.iter().map(Glob::regex)).map_err(|e| (key.to_string(), e.to_string()))
}

/// GET, HEAD and OPTIONS are reads; every other method, including unknown tokens, is a
/// write (D8).
pub fn is_write(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

impl RoutePolicy {
    /// Compile; errors carry the key path of the offending rule.
    pub fn compile(fwd: &Forwarding, allow: &[AllowRule]) -> Result<Self, (String, String)> {
        let deny = fwd
            .deny
            .iter()
            .enumerate()
            .map(|(i, p)| Glob::new(p, true).map_err(|e| (format!("forwarding.deny[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_globs = allow
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Glob::new(&r.pattern, false).map_err(|e| (format!("forwarding.allow[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let entries = allow
            .iter()
            .map(|rule| AllowEntry {
                method: rule.method.clone(),
                category: rule.category.clone(),
                cache_ttl: rule.cache_ttl,
                sensitive: rule.sensitive,
            })
            .collect();
        Ok(Self {
            mode: fwd.mode,
            allow: entries,
            allow_set: regex_set("forwarding.allow", &allow_globs)?,
            deny_set: regex_set("forwarding.deny", &deny)?,
            deny,
            treat_writes_as_sensitive: fwd.treat_writes_as_sensitive,
            default_cache_ttl: fwd.default_cache_ttl,
            default_category: fwd.default_category.clone(),
        })
    }

    /// The deny pattern that matches `canonical`, if any: a deny glob matches the
    /// canonical path or its fully decoded form, case-insensitively, with or without one
    /// trailing slash.
    pub fn denied_by(&self, canonical: &str) -> Option<&str> {
        if self.deny.is_empty() {
            return None;
        }
        let decoded = fully_decoded(canonical);
        // The first deny glob, in file order, that matches any candidate. Most paths
        // match none: `is_match` tells without collecting which.
        let mut first: Option<usize> = None;
        let mut consider = |c: &str| {
            if self.deny_set.is_match(c)
                && let Some(i) = self.deny_set.matches(c).iter().next()
            {
                first = Some(first.map_or(i, |f| f.min(i)));
            }
        };
        let forms: &[&str] = if decoded == canonical {
            &[canonical]
        } else {
            &[canonical, &decoded]
        };
        for &p in forms {
            consider(p);
            match p.strip_suffix('/') {
                Some(stripped) if !stripped.is_empty() => consider(stripped),
                Some(_) => {}
                None => consider(&format!("{p}/")),
            }
        }
        first.map(|i| self.deny[i].source())
    }

    /// The route for `method` (upper-case) on `canonical`, or `None` (allowlist miss).
    pub fn classify(&self, method: &str, canonical: &str) -> Option<Route<'_>> {
        match self.mode {
            // The first rule, in file order, whose glob and method match.
            Mode::Allowlist => self
                .allow_set
                .matches(canonical)
                .iter()
                .map(|i| &self.allow[i])
                .find(|e| e.method == "*" || e.method == method)
                .map(|e| Route {
                    category: &e.category,
                    cache_ttl: e.cache_ttl,
                    sensitive: e.sensitive,
                }),
            Mode::Transparent => {
                let write = is_write(method);
                Some(Route {
                    category: &self.default_category,
                    cache_ttl: if write { 0 } else { self.default_cache_ttl },
                    sensitive: write && self.treat_writes_as_sensitive,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::provider::Forwarding;

    fn rule(method: &str, pattern: &str, sensitive: bool) -> AllowRule {
        AllowRule {
            method: method.into(),
            pattern: pattern.into(),
            category: "c".into(),
            cache_ttl: 5,
            sensitive,
        }
    }

    #[test]
    fn deny_is_suspicious() {
        let fwd = Forwarding {
            deny: vec!["/user/keys".into(), "/admin/**".into()],
            ..Forwarding::default()
        };
        let p = RoutePolicy::compile(&fwd, &[]).unwrap();
        for path in [
            "/user/keys",
            "/USER/keys",
            "/user/keys/",
            "/user%2Fkeys",
            "/user%2fkeys/",
            "/admin/x",
            "/Admin/x/y",
        ] {
            let canon = crate::policy::path::canonicalize(path).unwrap();
            assert!(p.denied_by(&canon).is_some(), "{path}");
        }
        for path in ["/user/keysx", "/user", "/admin"] {
            assert!(p.denied_by(path).is_none(), "{path}");
        }
    }

    #[test]
    fn allowlist_first_match_and_methods() {
        let fwd = Forwarding {
            mode: Mode::Allowlist,
            ..Forwarding::default()
        };
        let rules = [
            rule("GET", "/v1/orders/*", false),
            rule("*", "/v1/orders/**", true),
        ];
        let p = RoutePolicy::compile(&fwd, &rules).unwrap();
        assert!(!p.classify("GET", "/v1/orders/1").unwrap().sensitive);
        assert!(p.classify("POST", "/v1/orders/1").unwrap().sensitive);
        assert!(p.classify("GET", "/v1/other").is_none());
    }

    #[test]
    fn matching_all_rules_at_once_picks_what_rule_by_rule_matching_picks() {
        let fwd = Forwarding {
            mode: Mode::Allowlist,
            deny: vec!["/v3/**/secret".into(), "/v1/orders/*/keys".into()],
            ..Forwarding::default()
        };
        let patterns = [
            "/v1/orders/*",
            "/v1/orders/**",
            "/v1/{id}/details",
            "/v2/**/items/{id}",
            "/v3/**",
            "/*/x",
            "/v1/orders/special",
        ];
        let methods = ["GET", "*", "POST", "GET", "*", "DELETE", "GET"];
        let rules: Vec<AllowRule> = patterns
            .iter()
            .zip(methods)
            .enumerate()
            .map(|(i, (p, m))| AllowRule {
                category: format!("c{i}"),
                ..rule(m, p, false)
            })
            .collect();
        let p = RoutePolicy::compile(&fwd, &rules).unwrap();
        let one_by_one = |method: &str, path: &str| {
            rules
                .iter()
                .find(|r| {
                    (r.method == "*" || r.method == method)
                        && Glob::new(&r.pattern, false).unwrap().matches(path)
                })
                .map(|r| r.category.as_str())
        };
        let paths = [
            "/v1/orders/1",
            "/v1/orders/special",
            "/v1/orders/1/keys",
            "/v1/orders",
            "/v1/abc/details",
            "/v2/a/b/items/7",
            "/v2/items/7",
            "/v3/a/secret",
            "/v3/",
            "/q/x",
            "/q/r/x",
            "/",
        ];
        let mut hits = 0;
        for path in paths {
            for method in ["GET", "POST", "DELETE", "PATCH"] {
                let got = p.classify(method, path).map(|r| r.category);
                assert_eq!(got, one_by_one(method, path), "{method} {path}");
                hits += usize::from(got.is_some());
            }
            let denied = fwd.deny.iter().find(|d| {
                let g = Glob::new(d, true).unwrap();
                g.matches(path) || g.matches(&format!("{path}/"))
            });
            assert_eq!(p.denied_by(path), denied.map(String::as_str), "{path}");
        }
        assert!(hits > 10, "the cases exercise matches, not only misses");
    }

    #[test]
    fn transparent_writes_are_sensitive_including_unknown_methods() {
        let fwd = Forwarding {
            default_cache_ttl: 7,
            ..Forwarding::default()
        };
        let p = RoutePolicy::compile(&fwd, &[]).unwrap();
        for m in ["POST", "PUT", "DELETE", "PATCH", "PURGE", "MERGE"] {
            let r = p.classify(m, "/x").unwrap();
            assert!(r.sensitive, "{m}");
            assert_eq!(r.cache_ttl, 0);
        }
        for m in ["GET", "HEAD", "OPTIONS"] {
            let r = p.classify(m, "/x").unwrap();
            assert!(!r.sensitive, "{m}");
            assert_eq!(r.cache_ttl, 7);
        }
    }
}
