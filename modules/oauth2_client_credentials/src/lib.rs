//! `oauth2_client_credentials`: an OAuth2 access token from the client-credentials grant,
//! minted once for the whole fleet and cached in the shared key-value store.
//!
//! Keys (reference §8.9): `client_id_env`, `client_secret_env` (required secrets),
//! `token_url` (required; absolute, or a path such as `/oauth/token` on the provider's
//! own origin), `scope` (`""`), `audience` (`""`), `redis_key` (see below),
//! `redis_lock_key` (`<redis_key>:lock`), `header` (`Authorization`), `prefix`
//! (`"Bearer "`), `ttl_fallback` (3600 s, when the response has no `expires_in`),
//! `invalidate_on` (`[401]`).
//!
//! * Token request: `POST <token_url>` with `Content-Type:
//!   application/x-www-form-urlencoded` and the body
//!   `grant_type=client_credentials&client_id=<id>&client_secret=<secret>[&scope=<scope>][&audience=<aud>]`
//!   (values percent-encoded; credentials in the body, never HTTP Basic), 15 s timeout.
//!   A non-2xx answer is an error (`token endpoint returned <code>.`); the JSON answer
//!   must carry `access_token`; `expires_in` may be a number or a numeric string.
//! * Cache TTL: `max(60, expires_in − 60)` seconds (refresh a minute early, at least a
//!   minute), but never longer than `expires_in` itself: a token that lives less than a
//!   minute is cached only for its lifetime (the original's 60 s floor outlived such
//!   tokens, §13 #35), and `expires_in: 0` means use once, do not cache.
//! * Minting is coordinated across replicas by the lock protocol in `mint.rs`
//!   (`set-if-absent` with a 30 s TTL, peers poll every 250 ms up to 20 times).
//! * `on-response`: a status in `invalidate_on` deletes the cached token and answers
//!   `retry`, so the host re-signs (minting a fresh token) and resends once.
//!
//! Grants (D21): the host lets this module reach `token_url`'s origin (a relative
//! `token_url` means the provider's origin) and the keys named `redis_key` /
//! `redis_lock_key` (or their `:`-sub-keys).

mod mint;

use md5::{Digest as _, Md5};
use mint::{HostKv, Minted, Slot};
use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Header, Memo, ModuleInfo, Request, ResponseHook,
    ResponseInfo, Verdict, export_module, http, kv, set_header,
};
use serde_json::Value;

const WHO: &str = "OAuth2ClientCredentialsAuth";
const KEYS: &[&str] = &[
    "client_id_env",
    "client_secret_env",
    "token_url",
    "scope",
    "audience",
    "redis_key",
    "redis_lock_key",
    "header",
    "prefix",
    "ttl_fallback",
    "invalidate_on",
];
const INVALIDATE_ON: &[u16] = &[401];
const TOKEN_TIMEOUT_MS: u32 = 15_000;

/// The validated configuration (secrets excluded).
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    token_url: String,
    scope: String,
    audience: String,
    redis_key: String,
    redis_lock_key: String,
    header: String,
    prefix: String,
    ttl_fallback: u64,
    invalidate_on: Vec<u16>,
}

/// The Python runtime's default token key: `oauth2:` + the first 8 hex digits of
/// MD5(token_url), so a switched deployment keeps using the tokens already in Redis
/// (the TypeScript runtime used SHA-256 instead). E.g. `http://127.0.0.1:18081/token`
/// → `oauth2:f022d448`.
fn default_redis_key(token_url: &str) -> String {
    let digest = hex::encode(Md5::digest(token_url.as_bytes()));
    format!("oauth2:{}", &digest[..8])
}

fn is_absolute(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn settings(cfg: &Config) -> Result<Settings, Error> {
    cfg.allow_only(KEYS)?;
    cfg.required_str("client_id_env")?;
    cfg.required_str("client_secret_env")?;
    let token_url = cfg.required_str("token_url")?;
    if !is_absolute(token_url) && !token_url.starts_with('/') {
        return Err(cfg.error(
            "'token_url' must be an absolute http(s) URL or a path starting with '/' (on the provider's origin).",
        ));
    }
    let redis_key = match cfg.str_opt("redis_key")? {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => default_redis_key(token_url),
    };
    let redis_lock_key = match cfg.str_opt("redis_lock_key")? {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => format!("{redis_key}:lock"),
    };
    let header = cfg.str_or("header", "Authorization")?;
    if !is_token(header) {
        return Err(cfg.error("'header' must be a valid HTTP header name."));
    }
    let ttl_fallback = match cfg.get("ttl_fallback") {
        None | Some(Value::Null) => 3600,
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| cfg.error("'ttl_fallback' must be a positive number of seconds."))?,
    };
    Ok(Settings {
        token_url: token_url.to_string(),
        scope: cfg.str_or("scope", "")?.to_string(),
        audience: cfg.str_or("audience", "")?.to_string(),
        redis_key,
        redis_lock_key,
        header: header.to_string(),
        prefix: cfg.str_or("prefix", "Bearer ")?.to_string(),
        ttl_fallback,
        invalidate_on: cfg.invalidate_on(INVALIDATE_ON)?,
    })
}

/// RFC 9110 `token` (a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The token endpoint's absolute URL: `token_url`, or the provider's origin + the path.
fn resolve_url(token_url: &str, scheme: &str, authority: &str) -> String {
    if is_absolute(token_url) {
        token_url.to_string()
    } else {
        format!("{scheme}://{authority}{token_url}")
    }
}

/// Percent-encode every byte except RFC 3986 unreserved characters (a valid
/// `application/x-www-form-urlencoded` value).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token request's form body.
fn token_request_body(s: &Settings, client_id: &str, client_secret: &str) -> String {
    let mut body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        form_encode(client_id),
        form_encode(client_secret)
    );
    if !s.scope.is_empty() {
        body.push_str(&format!("&scope={}", form_encode(&s.scope)));
    }
    if !s.audience.is_empty() {
        body.push_str(&format!("&audience={}", form_encode(&s.audience)));
    }
    body
}

/// `expires_in` as seconds: a JSON number (fractions dropped) or a numeric string.
fn expires_in(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| u64::try_from(i.max(0)).unwrap_or(0)))
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(seconds_of)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(seconds_of)
            })
        }
        _ => None,
    }
}

/// Whole seconds of a non-negative float (negative → 0).
fn seconds_of(f: f64) -> u64 {
    let whole = f.max(0.0).floor();
    // `as` saturates for floats; the value is finite, non-negative and whole here.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = whole as u64;
    n
}

/// How long to cache a token that lives `expires_in` seconds.
fn cache_ttl(expires_in: u64) -> u64 {
    expires_in.saturating_sub(60).max(60).min(expires_in)
}

/// Interpret the token endpoint's answer.
fn parse_token_response(s: &Settings, status: u16, body: &[u8]) -> Result<Minted, Error> {
    if !(200..300).contains(&status) {
        return Err(Error::Unavailable(format!(
            "{WHO}: token endpoint returned {status}."
        )));
    }
    let json: Value = serde_json::from_slice(body).map_err(|_| {
        Error::Unavailable(format!("{WHO}: token endpoint did not answer with JSON."))
    })?;
    let token = match json.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => {
            return Err(Error::Unavailable(format!(
                "{WHO}: token endpoint response has no 'access_token'."
            )));
        }
    };
    let lifetime = expires_in(json.get("expires_in")).unwrap_or(s.ttl_fallback);
    Ok(Minted {
        token,
        ttl_secs: cache_ttl(lifetime),
    })
}

fn fetch_token(s: &Settings, req: &Request, id: &str, secret: &str) -> Result<Minted, Error> {
    let outgoing = http::OutgoingRequest {
        method: "POST".into(),
        url: resolve_url(&s.token_url, &req.scheme, &req.authority),
        headers: vec![
            Header {
                name: "Content-Type".into(),
                value: b"application/x-www-form-urlencoded".to_vec(),
            },
            Header {
                name: "Accept".into(),
                value: b"application/json".to_vec(),
            },
        ],
        body: Some(token_request_body(s, id, secret).into_bytes()),
        timeout_ms: Some(TOKEN_TIMEOUT_MS),
    };
    let resp = http::send(&outgoing)
        .map_err(|e| Error::Unavailable(format!("{WHO}: token request failed: {e}")))?;
    parse_token_response(s, resp.status, &resp.body)
}

/// What signing needs from the configuration: the settings and the client's secrets.
struct Signing {
    settings: Settings,
    id: String,
    secret: String,
}

fn signing(config: &str) -> Result<Signing, Error> {
    let cfg = Config::parse(config, WHO)?;
    Ok(Signing {
        settings: settings(&cfg)?,
        id: cfg.required_secret("client_id_env")?,
        secret: cfg.required_secret("client_secret_env")?,
    })
}

// Derived once per instance and configuration (see `Memo`), not on every request; the
// token itself is read from the state store on every call.
thread_local! { static SIGNING: Memo<Signing> = const { Memo::new() }; }

struct OAuth2ClientCredentials;

impl Guest for OAuth2ClientCredentials {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        let cfg = Config::parse(&config, WHO)?;
        settings(&cfg)?;
        cfg.required_secret("client_id_env")?;
        cfg.required_secret("client_secret_env")?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let signing = SIGNING.with(|m| m.get(&config, signing))?;
        let (s, id, secret) = (&signing.settings, &signing.id, &signing.secret);
        let slot = Slot {
            who: WHO,
            key: &s.redis_key,
            lock: &s.redis_lock_key,
            timeout_message: format!(
                "Timed out waiting for peer to fetch OAuth2 token (key='{}').",
                s.redis_key
            ),
        };
        let token = slot.get_or_mint(&HostKv, std::thread::sleep, || {
            fetch_token(s, &req, id, secret)
        })?;
        set_header(
            &mut req.headers,
            &s.header,
            format!("{}{token}", s.prefix).as_bytes(),
        );
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        let s = settings(&Config::parse(&config, WHO)?)?;
        if !s.invalidate_on.contains(&resp.status) {
            return Ok(Verdict::Accept);
        }
        kv::delete(&s.redis_key)
            .map_err(|e| Error::Unavailable(format!("{WHO}: state store: {e}")))?;
        Ok(Verdict::Retry)
    }
}

export_module!(OAuth2ClientCredentials);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Whatever it mints or caches lives in the host's key-value state, shared with other
// replicas; nothing in its memory matters to the next call: one instance may serve many
// requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_of(json: &str) -> Result<Settings, String> {
        settings(&Config::parse(json, WHO).unwrap()).map_err(|e| match e {
            Error::Config(m) | Error::Unavailable(m) | Error::Internal(m) => m,
        })
    }

    fn base() -> Settings {
        settings_of(r#"{"client_id_env":"I","client_secret_env":"S","token_url":"http://127.0.0.1:18081/token"}"#)
            .unwrap()
    }

    #[test]
    fn default_key_is_the_python_runtimes() {
        assert_eq!(
            default_redis_key("http://127.0.0.1:18081/token"),
            "oauth2:f022d448"
        );
        let s = base();
        assert_eq!(s.redis_key, "oauth2:f022d448");
        assert_eq!(s.redis_lock_key, "oauth2:f022d448:lock");
        assert_eq!(s.header, "Authorization");
        assert_eq!(s.prefix, "Bearer ");
        assert_eq!(s.ttl_fallback, 3600);
        assert_eq!(s.invalidate_on, vec![401]);
        let s = settings_of(r#"{"client_id_env":"I","client_secret_env":"S","token_url":"/t","redis_key":"acme:tok"}"#).unwrap();
        assert_eq!(
            (s.redis_key.as_str(), s.redis_lock_key.as_str()),
            ("acme:tok", "acme:tok:lock")
        );
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            settings_of(r#"{"client_id_env":"I","client_secret_env":"S"}"#).unwrap_err(),
            "OAuth2ClientCredentialsAuth: 'token_url' config field is required."
        );
        assert!(
            settings_of(
                r#"{"client_id_env":"I","client_secret_env":"S","token_url":"auth.example/t"}"#
            )
            .is_err()
        );
        assert!(
            settings_of(
                r#"{"client_id_env":"I","client_secret_env":"S","token_url":"/t","ttl_fallback":0}"#
            )
            .is_err()
        );
        assert!(
            settings_of(
                r#"{"client_id_env":"I","client_secret_env":"S","token_url":"/t","scopes":"x"}"#
            )
            .unwrap_err()
            .contains("did you mean 'scope'")
        );
    }

    #[test]
    fn token_request_body_is_exact() {
        let mut s = base();
        assert_eq!(
            token_request_body(&s, "my id", "s&c=r+t~"),
            "grant_type=client_credentials&client_id=my%20id&client_secret=s%26c%3Dr%2Bt~"
        );
        s.scope = "read write".into();
        s.audience = "https://api.example.com/".into();
        assert_eq!(
            token_request_body(&s, "i", "s"),
            "grant_type=client_credentials&client_id=i&client_secret=s&scope=read%20write&audience=https%3A%2F%2Fapi.example.com%2F"
        );
    }

    #[test]
    fn urls_resolve_against_the_provider_origin() {
        assert_eq!(
            resolve_url("/oauth/token", "https", "api.x.io:8443"),
            "https://api.x.io:8443/oauth/token"
        );
        assert_eq!(
            resolve_url("https://auth.x.io/t", "http", "api"),
            "https://auth.x.io/t"
        );
    }

    #[test]
    fn ttl_rules() {
        assert_eq!(cache_ttl(3600), 3540);
        assert_eq!(cache_ttl(100), 60);
        assert_eq!(cache_ttl(60), 60);
        assert_eq!(cache_ttl(30), 30, "never cached past its own lifetime");
        assert_eq!(cache_ttl(0), 0);
        assert_eq!(expires_in(Some(&serde_json::json!(3600))), Some(3600));
        assert_eq!(expires_in(Some(&serde_json::json!(3599.9))), Some(3599));
        assert_eq!(expires_in(Some(&serde_json::json!("7200"))), Some(7200));
        assert_eq!(expires_in(Some(&serde_json::json!(-5))), Some(0));
        assert_eq!(expires_in(Some(&serde_json::json!("soon"))), None);
        assert_eq!(expires_in(None), None);
    }

    #[test]
    fn token_responses() {
        let s = base();
        assert_eq!(
            parse_token_response(
                &s,
                200,
                br#"{"access_token":"tok","expires_in":3600,"token_type":"Bearer"}"#
            )
            .unwrap(),
            Minted {
                token: "tok".into(),
                ttl_secs: 3540
            }
        );
        assert_eq!(
            parse_token_response(&s, 200, br#"{"access_token":"tok"}"#)
                .unwrap()
                .ttl_secs,
            3540,
            "ttl_fallback 3600 → 3540"
        );
        let msg = |r: Result<Minted, Error>| match r {
            Err(Error::Unavailable(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            msg(parse_token_response(
                &s,
                401,
                br#"{"error":"invalid_client"}"#
            )),
            "OAuth2ClientCredentialsAuth: token endpoint returned 401."
        );
        assert!(msg(parse_token_response(&s, 200, br#"{"token":"x"}"#)).contains("access_token"));
        assert!(msg(parse_token_response(&s, 200, b"<html>")).contains("JSON"));
    }
}
