//! Least authority (D21): what one provider's auth module may reach, derived from its
//! configuration. Anything not granted here resolves to nothing or is refused.

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::env::Env;

/// The capabilities granted to one provider's module.
#[derive(Debug, Default)]
pub struct Grants {
    /// Provider name (its private key-value prefix is `<provider>:`).
    pub provider: String,
    /// Declared secrets that are set, by name.
    secrets: HashMap<String, SecretString>,
    /// Secret names the configuration declares (set or not).
    declared: Vec<String>,
    /// Keys named by the configuration (`redis_key`, `redis_lock_key`).
    kv_keys: Vec<String>,
    /// Outbound origins, `scheme://host[:port]`, lower-case.
    origins: Vec<String>,
}

impl Grants {
    /// Derive the grants for `provider` (upstream `origin`) from its module `config`,
    /// reading declared secrets from `env`.
    pub fn derive(provider: &str, origin: &str, config: &Value, env: &dyn Env) -> Self {
        let mut g = Grants {
            provider: provider.to_string(),
            ..Default::default()
        };
        let mut wants_base_origin = false;
        walk(config, &mut |key, value| {
            if let Value::String(s) = value {
                if key == "env" || key == "env_seed" || key.ends_with("_env") {
                    g.declared.push(s.clone());
                }
                if key == "redis_key" || key == "redis_lock_key" {
                    g.kv_keys.push(s.clone());
                }
                if let Some(o) = origin_of(s).filter(|_| key.ends_with("url")) {
                    g.origins.push(o);
                }
                // `mint_path: /v1/token`, or a relative `token_url: /oauth/token`, address
                // the provider's own origin.
                if key.ends_with("_path") || (key.ends_with("url") && s.starts_with('/')) {
                    wants_base_origin = true;
                }
            }
        });
        // `oauth2_client_credentials` without `redis_key` uses the original Python
        // runtime's default key: `oauth2:` + the first 8 hex of MD5(token_url).
        if let (Some(Value::String(url)), None) = (config.get("token_url"), config.get("redis_key"))
        {
            use md5::Digest as _;
            g.kv_keys.push(format!(
                "oauth2:{}",
                &hex::encode(md5::Md5::digest(url.as_bytes()))[..8]
            ));
        }
        if wants_base_origin {
            g.origins.push(origin.to_ascii_lowercase());
        }
        for name in &g.declared {
            if let Some(v) = env.var(name).filter(|v| !v.is_empty()) {
                g.secrets.insert(name.clone(), SecretString::from(v));
            }
        }
        g
    }

    /// A declared secret's value.
    pub fn secret(&self, name: &str) -> Option<&SecretString> {
        self.secrets.get(name)
    }

    /// Whether the module may touch `key`.
    pub fn kv_allowed(&self, key: &str) -> bool {
        let private = key
            .strip_prefix(self.provider.as_str())
            .is_some_and(|rest| rest.starts_with(':') && rest.len() > 1);
        private
            || self.kv_keys.iter().any(|k| {
                key == k
                    || key
                        .strip_prefix(k.as_str())
                        .is_some_and(|rest| rest.starts_with(':'))
            })
    }

    /// Whether the module may send a request to `url`.
    pub fn origin_allowed(&self, url: &str) -> bool {
        origin_of(url).is_some_and(|o| self.origins.contains(&o))
    }

    /// Granted origins (for diagnostics).
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// `text` with every secret value replaced by `[REDACTED]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in self.secrets.values() {
            let v = v.expose_secret();
            // Very short values would redact ordinary words; they are not worth it.
            if v.len() >= 4 && out.contains(v) {
                out = out.replace(v, "[REDACTED]");
            }
        }
        out
    }
}

fn walk(value: &Value, f: &mut impl FnMut(&str, &Value)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                f(k, v);
                walk(v, f);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
        _ => {}
    }
}

/// `scheme://authority` (lower-case) of an absolute http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let auth = uri.authority()?.as_str().to_ascii_lowercase();
    if auth.contains('@') {
        return None;
    }
    Some(format!("{scheme}://{auth}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::MapEnv;
    use serde_json::json;

    #[test]
    fn grants_follow_the_configuration() {
        let env = MapEnv::from_pairs([
            ("CID", "id-123"),
            ("CSECRET", "sec-456"),
            ("OTHER", "nope-789"),
        ]);
        let cfg = json!({
            "client_id_env": "CID",
            "client_secret_env": "CSECRET",
            "token_url": "https://auth.example.com/oauth/token",
            "redis_key": "oauth2:abc",
            "headers": {"X-K": {"env": "MISSING"}}
        });
        let g = Grants::derive("acme", "https://api.acme.io", &cfg, &env);
        assert_eq!(g.secret("CID").unwrap().expose_secret(), "id-123");
        assert!(
            g.secret("OTHER").is_none(),
            "undeclared secret must resolve to nothing"
        );
        assert!(g.secret("MISSING").is_none());
        assert!(g.kv_allowed("oauth2:abc"));
        assert!(g.kv_allowed("oauth2:abc:lock"));
        assert!(g.kv_allowed("acme:token"));
        assert!(!g.kv_allowed("acme:"));
        assert!(!g.kv_allowed("acmex:token"));
        assert!(!g.kv_allowed("upstox:token"));
        assert!(g.origin_allowed("https://auth.example.com/other"));
        assert!(
            !g.origin_allowed("https://api.acme.io/v1/token"),
            "base origin needs a *_path key"
        );
        assert!(
            !g.origin_allowed("http://auth.example.com/oauth/token"),
            "scheme is part of the origin"
        );
        assert_eq!(
            g.redact("got sec-456 and id-123"),
            "got [REDACTED] and [REDACTED]"
        );
    }

    #[test]
    fn oauth2_default_key_is_granted() {
        let cfg = json!({"token_url": "http://127.0.0.1:18081/token"});
        let g = Grants::derive("acme", "https://api.acme.io", &cfg, &MapEnv::default());
        assert!(
            g.kv_allowed("oauth2:f022d448"),
            "the reference's example key"
        );
        assert!(g.kv_allowed("oauth2:f022d448:lock"));
        assert!(!g.kv_allowed("oauth2:00000000"));
    }

    #[test]
    fn mint_path_grants_the_base_origin() {
        let g = Grants::derive(
            "groww",
            "https://api.groww.in",
            &json!({"mint_path": "/v1/token"}),
            &MapEnv::default(),
        );
        assert!(g.origin_allowed("https://api.groww.in/v1/token"));
        assert!(g.kv_allowed("groww:token"));
    }
}
