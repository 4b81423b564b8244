//! The provider YAML schema (reference §1.2), parsed strictly: unknown keys are errors
//! with a did-you-mean hint (D3). Includes the README-style aliases the original's code
//! rejected (D1): allow rules written `{path, methods: [...]}`.

use std::path::Path;

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ConfigError;
use super::yaml;

/// One provider file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// Unique name; agents select it with `X-Provider`.
    pub name: String,
    /// Upstream base URL; may carry a path prefix.
    pub base_url: String,
    /// Informational.
    #[serde(default)]
    pub description: String,
    /// Informational.
    #[serde(default)]
    pub docs_url: String,
    /// `false` skips the file.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Headers added to every forwarded request (after the agent's, before auth).
    #[serde(default)]
    pub default_headers: IndexMap<String, String>,
    /// Response headers removed before the agent sees them.
    #[serde(default)]
    pub strip_response_headers: Vec<String>,
    /// The auth scheme and its configuration.
    pub auth: AuthBlock,
    /// Routing policy.
    #[serde(default)]
    pub forwarding: Forwarding,
}

/// `auth:`: a `type` and whatever keys that scheme takes (validated by the module).
#[derive(Debug, Clone, Deserialize)]
pub struct AuthBlock {
    /// Scheme name: a built-in module, or `plugin`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Everything else, handed to the module as JSON.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `forwarding.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every non-denied path is allowed.
    #[default]
    Transparent,
    /// Only paths matching an allow rule.
    Allowlist,
}

/// `forwarding:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forwarding {
    /// Transparent or allowlist.
    #[serde(default)]
    pub mode: Mode,
    /// Allow rules (allowlist mode).
    #[serde(default)]
    pub allow: Vec<AllowRuleRaw>,
    /// Deny globs, checked before anything else, for every method.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Transparent mode: writes need `can_call_sensitive`.
    #[serde(default = "yes")]
    pub treat_writes_as_sensitive: bool,
    /// Transparent mode: cache TTL for reads, seconds.
    #[serde(default)]
    pub default_cache_ttl: u64,
    /// Transparent mode: rate-limit category.
    #[serde(default = "default_category")]
    pub default_category: String,
    /// Category → windows.
    #[serde(default = "default_rate_limits")]
    pub rate_limits: IndexMap<String, Vec<Window>>,
}

impl Default for Forwarding {
    fn default() -> Self {
        Self {
            mode: Mode::Transparent,
            allow: Vec::new(),
            deny: Vec::new(),
            treat_writes_as_sensitive: true,
            default_cache_ttl: 0,
            default_category: default_category(),
            rate_limits: default_rate_limits(),
        }
    }
}

/// An allow rule as written: `{method, pattern}` or the README's `{path, methods}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRuleRaw {
    /// One method (`*` = any).
    pub method: Option<String>,
    /// Several methods (alias form).
    pub methods: Option<Vec<String>>,
    /// Path glob.
    pub pattern: Option<String>,
    /// Path glob (alias form).
    pub path: Option<String>,
    /// Rate-limit category.
    #[serde(default = "default_category")]
    pub category: String,
    /// Response cache TTL, seconds.
    #[serde(default)]
    pub cache_ttl: u64,
    /// Needs `can_call_sensitive`.
    #[serde(default)]
    pub sensitive: bool,
}

/// An allow rule after alias expansion: exactly one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Upper-cased method or `*`.
    pub method: String,
    /// Path glob.
    pub pattern: String,
    /// Rate-limit category.
    pub category: String,
    /// Cache TTL, seconds.
    pub cache_ttl: u64,
    /// Needs `can_call_sensitive`.
    pub sensitive: bool,
}

/// One token-bucket window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Tokens per window (> 0).
    pub capacity: u64,
    /// Window length in milliseconds (> 0).
    pub window_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_category() -> String {
    "default".to_string()
}

fn default_rate_limits() -> IndexMap<String, Vec<Window>> {
    IndexMap::from([(
        "default".to_string(),
        vec![
            Window {
                capacity: 50,
                window_ms: 1000,
            },
            Window {
                capacity: 500,
                window_ms: 60_000,
            },
        ],
    )])
}

/// A validated provider definition.
#[derive(Debug, Clone)]
pub struct ProviderDef {
    /// Where it came from.
    pub file: std::path::PathBuf,
    /// Lower-cased name.
    pub name: String,
    /// The name as the `X-Proxy-Provider` value of its responses, made once (`None`
    /// when the name is not a valid header value).
    pub name_header: Option<http::HeaderValue>,
    /// The name, shared with what outlives a request (a response body's idle guard).
    pub shared_name: std::sync::Arc<str>,
    /// `scheme://authority` of the upstream, e.g. `https://api.github.com`.
    pub origin: String,
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// Path prefix from `base_url`, without a trailing `/` (empty for none).
    pub base_path: String,
    /// `base_url` as written (for `/providers`).
    pub base_url: String,
    /// Informational.
    pub description: String,
    /// Default headers, in file order.
    pub default_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Lower-cased response header names to strip.
    pub strip_response_headers: Vec<String>,
    /// The auth block.
    pub auth: AuthBlock,
    /// Routing policy.
    pub forwarding: Forwarding,
    /// Expanded allow rules.
    pub allow: Vec<AllowRule>,
    /// Compiled deny/allow policy.
    pub routes: crate::policy::route::RoutePolicy,
}

/// A parsed provider file.
#[derive(Debug)]
pub enum Parsed {
    /// `enabled: true` (the default) and valid.
    Enabled(Box<ProviderDef>),
    /// `enabled: false`; the lower-cased name.
    Disabled(String),
}

/// Parse a provider file's text.
pub fn parse(file: &Path, text: &str) -> Result<Parsed, ConfigError> {
    let raw: ProviderFile = yaml::parse(file, text)?;
    if !raw.enabled {
        return Ok(Parsed::Disabled(raw.name.trim().to_lowercase()));
    }
    validate(file, raw).map(|d| Parsed::Enabled(Box::new(d)))
}

/// The `name:` of a provider file that failed to parse, if it can be read at all, so
/// requests for it get `503 PROXY_PROVIDER_CONFIG_ERROR` instead of "unknown provider".
pub fn salvage_name(text: &str) -> Option<String> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let name = v.get("name")?.as_str()?.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

fn validate(file: &Path, raw: ProviderFile) -> Result<ProviderDef, ConfigError> {
    let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
    let name = raw.name.trim().to_lowercase();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    {
        return Err(err(
            "name",
            "name must be non-empty alphanumeric, dash, or underscore".into(),
        ));
    }
    let (scheme, authority, base_path) =
        split_base_url(&raw.base_url).map_err(|r| err("base_url", r))?;
    let mut default_headers = Vec::new();
    for (k, v) in &raw.default_headers {
        let key = format!("default_headers.{k}");
        let n = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| err(&key, format!("'{k}' is not a valid header name")))?;
        let v = http::HeaderValue::from_str(v).map_err(|_| {
            err(
                &key,
                "value contains characters not allowed in a header".into(),
            )
        })?;
        default_headers.push((n, v));
    }
    let mut allow = Vec::new();
    for (i, rule) in raw.forwarding.allow.iter().enumerate() {
        let key = format!("forwarding.allow[{i}]");
        let pattern = match (&rule.pattern, &rule.path) {
            (Some(p), None) | (None, Some(p)) => p.clone(),
            (Some(_), Some(_)) => {
                return Err(err(&key, "give 'pattern' or 'path', not both".into()));
            }
            (None, None) => return Err(err(&key, "missing 'pattern' (or 'path')".into())),
        };
        let methods = match (&rule.method, &rule.methods) {
            (Some(m), None) => vec![m.clone()],
            (None, Some(ms)) if !ms.is_empty() => ms.clone(),
            (None, Some(_)) => return Err(err(&key, "'methods' must not be empty".into())),
            (Some(_), Some(_)) => {
                return Err(err(&key, "give 'method' or 'methods', not both".into()));
            }
            (None, None) => return Err(err(&key, "missing 'method' (or 'methods')".into())),
        };
        for m in methods {
            let m = m.trim().to_ascii_uppercase();
            if m != "*"
                && (m.is_empty()
                    || !m
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b)))
            {
                return Err(err(&key, format!("'{m}' is not an HTTP method")));
            }
            allow.push(AllowRule {
                method: m,
                pattern: pattern.clone(),
                category: rule.category.clone(),
                cache_ttl: rule.cache_ttl,
                sensitive: rule.sensitive,
            });
        }
    }
    for (cat, windows) in &raw.forwarding.rate_limits {
        for (i, w) in windows.iter().enumerate() {
            if w.capacity == 0 || w.window_ms == 0 {
                return Err(err(
                    &format!("forwarding.rate_limits.{cat}[{i}]"),
                    "capacity and window_ms must be greater than 0".into(),
                ));
            }
        }
    }
    let routes = crate::policy::route::RoutePolicy::compile(&raw.forwarding, &allow)
        .map_err(|(k, r)| err(&k, r))?;
    Ok(ProviderDef {
        routes,
        file: file.to_path_buf(),
        origin: format!("{scheme}://{authority}"),
        name_header: http::HeaderValue::from_str(&name).ok(),
        shared_name: name.as_str().into(),
        name,
        scheme,
        authority,
        base_path,
        base_url: raw.base_url,
        description: raw.description,
        default_headers,
        strip_response_headers: raw
            .strip_response_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        auth: raw.auth,
        forwarding: raw.forwarding,
        allow,
    })
}

/// Split `base_url` into scheme, authority and path prefix (no trailing `/`).
pub fn split_base_url(url: &str) -> Result<(String, String, String), String> {
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    let Some(scheme) = scheme.filter(|s| s == "http" || s == "https") else {
        return Err(format!("'{url}' must start with http:// or https://"));
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("'{url}' has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "'{url}' must not contain credentials; use the auth block"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("'{url}' must not contain a query string"));
    }
    let path = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority.as_str().to_ascii_lowercase(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Option<ProviderDef>, ConfigError> {
        parse(Path::new("providers/x.yaml"), text).map(|p| match p {
            Parsed::Enabled(d) => Some(*d),
            Parsed::Disabled(_) => None,
        })
    }

    #[test]
    fn minimal_provider_gets_the_original_defaults() {
        let d = p("name: GitHub\nbase_url: https://api.github.com/\nauth: {type: bearer_static, env: GH}\n")
            .unwrap()
            .unwrap();
        assert_eq!(d.name, "github");
        assert_eq!(d.origin, "https://api.github.com");
        assert_eq!(d.base_path, "");
        assert_eq!(d.forwarding.mode, Mode::Transparent);
        assert!(d.forwarding.treat_writes_as_sensitive);
        assert_eq!(d.forwarding.rate_limits["default"].len(), 2);
        assert_eq!(d.auth.kind, "bearer_static");
        assert_eq!(d.auth.rest["env"], "GH");
    }

    #[test]
    fn disabled_is_skipped() {
        assert!(
            p("name: a\nbase_url: http://h\nenabled: false\nauth: {type: none}\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn readme_style_rules_expand_to_one_per_method() {
        let d = p("name: a\nbase_url: http://h/api\nauth: {type: none}\nforwarding:\n  mode: allowlist\n  allow:\n    - {path: /v1/x, methods: [get, POST]}\n")
            .unwrap()
            .unwrap();
        assert_eq!(d.base_path, "/api");
        assert_eq!(d.allow.len(), 2);
        assert_eq!(d.allow[0].method, "GET");
        assert_eq!(d.allow[1].pattern, "/v1/x");
    }

    #[test]
    fn typo_in_deny_is_an_error_with_hint() {
        let e = p(
            "name: a\nbase_url: http://h\nauth: {type: none}\nforwarding:\n  denny: [/admin/**]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "forwarding");
        assert!(e.reason.contains("did you mean 'deny'"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = p("name: 'a b'\nbase_url: http://h\nauth: {type: none}\n").unwrap_err();
        assert_eq!(e.key, "name");
        let e = p("name: a\nbase_url: ftp://h\nauth: {type: none}\n").unwrap_err();
        assert_eq!(e.key, "base_url");
        let e = p("name: a\nbase_url: http://h\n").unwrap_err();
        assert!(e.reason.contains("auth"), "{e}");
        let e = p("name: a\nbase_url: http://h\nauth: {type: none}\nforwarding:\n  rate_limits:\n    default: [{capacity: 0, window_ms: 5}]\n").unwrap_err();
        assert_eq!(e.key, "forwarding.rate_limits.default[0]");
        let e =
            p("name: a\nbase_url: http://h\nauth: {type: none}\nforwarding:\n  mode: sometimes\n")
                .unwrap_err();
        assert_eq!(e.key, "forwarding.mode");
    }
}
