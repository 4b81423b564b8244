//! `bearer_redis`: a bearer token kept in the shared key-value store, where an operator
//! (or another system) rotates it without restarting Outpost.
//!
//! Keys (reference §8.7): `redis_key` (required), `env_seed` (optional secret used when
//! the key is empty), `header` (`Authorization`), `prefix` (`"Bearer "`), `invalidate_on`
//! (`[401]`), `invalidate_on_body_codes: {json_path, codes}`.
//!
//! * Signing: the token at `redis_key`; when the key is empty and `env_seed` names a set
//!   secret, that value is stored there (no TTL, only if the key is still empty) and
//!   used. Nothing → `Token not configured at redis_key='<key>'.` (502).
//! * Rejection: the status is in `invalidate_on`, or (with `invalidate_on_body_codes`)
//!   the JSON body has a leaf at `json_path` equal to one of `codes`. Leaves and codes are
//!   both stringified before comparing (so numeric YAML codes match numeric or string
//!   leaves; booleans are `true`/`false`; `1.0` is `1`), unlike the Python runtime whose
//!   numeric codes never matched (§13 #33). The path walk: split on `.`; a segment `k[]`
//!   takes `k` from every object node and flattens a list value into the next node set;
//!   a plain segment takes `k` from every object node; anything else is dropped (a bare
//!   `[]` flattens the node itself, for a top-level list). 429 responses never count.
//!   With body codes configured the module asks for every response with its JSON body
//!   (`response-hook: all-with-json-body`, a 200 can carry an error code); otherwise for
//!   error responses only.
//! * Invalidation deletes `redis_key`. The verdict is `invalidated`, not `retry`: the
//!   module cannot mint a fresh token itself.
//!
//! **Not re-seeding a rejected token (§13 #33).** The original re-seeded the same stale
//! `env_seed` value on the very next request, so every request kept failing with 401.
//! Here, on invalidation the SHA-256 (hex) of the rejected token is stored at
//! `<redis_key>:rejected` (no TTL), and the env seed is not used while its hash equals
//! that value: requests fail fast with a 502 that says so until the operator stores a
//! fresh token at `redis_key` (e.g. `SET upstox:token <token>`), or rotates the secret
//! and reloads. Only a hash is stored, never the token itself.

use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, kv, secret, set_header,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const WHO: &str = "BearerRedisAuth";
const KEYS: &[&str] = &[
    "redis_key",
    "env_seed",
    "header",
    "prefix",
    "invalidate_on",
    "invalidate_on_body_codes",
];
const BODY_CODE_KEYS: &[&str] = &["json_path", "codes"];
const INVALIDATE_ON: &[u16] = &[401];

/// One step of a `json_path`.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    key: String,
    /// `key[]`: flatten a list value.
    flatten: bool,
}

/// `invalidate_on_body_codes`.
#[derive(Debug, Clone, PartialEq)]
struct BodyCodes {
    path: Vec<Segment>,
    codes: Vec<String>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    redis_key: String,
    env_seed: Option<String>,
    header: String,
    prefix: String,
    invalidate_on: Vec<u16>,
    body_codes: Option<BodyCodes>,
}

impl Settings {
    fn rejected_key(&self) -> String {
        format!("{}:rejected", self.redis_key)
    }

    fn not_configured(&self) -> Error {
        Error::Unavailable(format!(
            "Token not configured at redis_key='{}'.",
            self.redis_key
        ))
    }
}

fn parse_path(cfg: &Config, path: &str) -> Result<Vec<Segment>, Error> {
    path.split('.')
        .map(|seg| {
            let (key, flatten) = match seg.strip_suffix("[]") {
                Some(k) => (k, true),
                None => (seg, false),
            };
            if (key.is_empty() && !flatten) || key.contains(['[', ']']) {
                return Err(cfg.error(format_args!(
                    "invalidate_on_body_codes: invalid json_path '{path}' (segments are 'key' or 'key[]', separated by '.')."
                )));
            }
            Ok(Segment {
                key: key.to_string(),
                flatten,
            })
        })
        .collect()
}

fn settings(cfg: &Config) -> Result<Settings, Error> {
    cfg.allow_only(KEYS)?;
    let header = cfg.str_or("header", "Authorization")?;
    if !is_token(header) {
        return Err(cfg.error(format_args!("'header' must be a valid HTTP header name.")));
    }
    let body_codes = match cfg.get("invalidate_on_body_codes") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            if let Some(k) = map.keys().find(|k| !BODY_CODE_KEYS.contains(&k.as_str())) {
                return Err(cfg.error(format_args!(
                    "invalidate_on_body_codes: unknown key '{k}'; expected json_path, codes."
                )));
            }
            let path = match map.get("json_path") {
                Some(Value::String(p)) if !p.is_empty() => parse_path(cfg, p)?,
                _ => {
                    return Err(cfg.error(
                        "invalidate_on_body_codes: 'json_path' is required (e.g. \"errors[].errorCode\").",
                    ));
                }
            };
            let codes = match map.get("codes") {
                Some(Value::Array(items)) if !items.is_empty() => items
                    .iter()
                    .map(|v| {
                        stringify(v).ok_or_else(|| {
                            cfg.error(
                                "invalidate_on_body_codes: 'codes' must be strings or numbers.",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(
                        cfg.error("invalidate_on_body_codes: 'codes' must be a non-empty list.")
                    );
                }
            };
            Some(BodyCodes { path, codes })
        }
        Some(_) => {
            return Err(
                cfg.error("'invalidate_on_body_codes' must be a map with 'json_path' and 'codes'.")
            );
        }
    };
    Ok(Settings {
        redis_key: cfg.required_str("redis_key")?.to_string(),
        env_seed: match cfg.str_opt("env_seed")? {
            Some("") | None => None,
            Some(s) => Some(s.to_string()),
        },
        header: header.to_string(),
        prefix: cfg.str_or("prefix", "Bearer ")?.to_string(),
        invalidate_on: cfg.invalidate_on(INVALIDATE_ON)?,
        body_codes,
    })
}

/// RFC 9110 `token` (a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A JSON scalar as the TypeScript runtime's `String(x)` prints it; `None` for
/// objects and arrays (which never match a code).
fn stringify(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                let f = n.as_f64()?;
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
                    Some(format!("{f:.0}"))
                } else {
                    Some(f.to_string())
                }
            }
        }
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// The nodes `path` reaches in `root`.
fn walk<'a>(path: &[Segment], root: &'a Value) -> Vec<&'a Value> {
    let mut nodes = vec![root];
    for seg in path {
        let mut next = Vec::new();
        for node in nodes {
            let value = if seg.key.is_empty() {
                Some(node)
            } else {
                node.as_object().and_then(|m| m.get(&seg.key))
            };
            match value {
                Some(Value::Array(items)) if seg.flatten => next.extend(items.iter()),
                Some(v) => next.push(v),
                None => {}
            }
        }
        nodes = next;
    }
    nodes
}

/// Whether a JSON body carries one of the configured codes.
fn body_has_code(bc: &BodyCodes, body: &[u8]) -> bool {
    let Ok(root) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    walk(&bc.path, &root)
        .into_iter()
        .filter_map(stringify)
        .any(|leaf| bc.codes.contains(&leaf))
}

/// Whether a response says the token was rejected.
fn is_rejection(s: &Settings, status: u16, body: Option<&[u8]>) -> bool {
    if status == 429 {
        return false;
    }
    if s.invalidate_on.contains(&status) {
        return true;
    }
    match (&s.body_codes, body) {
        (Some(bc), Some(body)) => body_has_code(bc, body),
        _ => false,
    }
}

/// SHA-256 hex of a token (what `<redis_key>:rejected` holds).
fn token_hash(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

/// Whether the env seed may be stored, given the hash of the last rejected token.
fn may_seed(seed: &str, rejected: Option<&[u8]>) -> bool {
    rejected.is_none_or(|r| r != token_hash(seed.as_bytes()).as_bytes())
}

fn kv_err(e: String) -> Error {
    Error::Unavailable(format!("{WHO}: state store: {e}"))
}

fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    Ok(kv::get(key).map_err(kv_err)?.filter(|v| !v.is_empty()))
}

fn as_token(s: &Settings, bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|_| {
        Error::Unavailable(format!(
            "{WHO}: the value at redis_key='{}' is not UTF-8.",
            s.redis_key
        ))
    })
}

/// The current token, seeding it from `env_seed` when allowed.
fn token(s: &Settings) -> Result<String, Error> {
    if let Some(t) = get(&s.redis_key)? {
        return as_token(s, t);
    }
    let Some(seed) = s.env_seed.as_deref().and_then(secret) else {
        return Err(s.not_configured());
    };
    if !may_seed(&seed, get(&s.rejected_key())?.as_deref()) {
        return Err(Error::Unavailable(format!(
            "Token not configured at redis_key='{}'. The token from env_seed '{}' was rejected upstream and is not reused; store a fresh token at that key or rotate the secret.",
            s.redis_key,
            s.env_seed.as_deref().unwrap_or_default()
        )));
    }
    if kv::set_if_absent(&s.redis_key, seed.as_bytes(), None).map_err(kv_err)? {
        return Ok(seed);
    }
    // Someone stored a token meanwhile: use theirs.
    match get(&s.redis_key)? {
        Some(t) => as_token(s, t),
        None => Ok(seed),
    }
}

// Derived once per instance and configuration (see `Memo`), not on every request;
// the token itself is read from the state store on every call.
thread_local! { static SETTINGS: Memo<Settings> = const { Memo::new() }; }

struct BearerRedis;

impl Guest for BearerRedis {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        let s = settings(&Config::parse(&config, WHO)?)?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: if s.body_codes.is_some() {
                ResponseHook::AllWithJsonBody
            } else {
                ResponseHook::Errors
            },
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let s = SETTINGS.with(|m| m.get(&config, |c| settings(&Config::parse(c, WHO)?)))?;
        let token = token(&s)?;
        set_header(
            &mut req.headers,
            &s.header,
            format!("{}{token}", s.prefix).as_bytes(),
        );
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        let s = settings(&Config::parse(&config, WHO)?)?;
        if !is_rejection(&s, resp.status, resp.body.as_deref()) {
            return Ok(Verdict::Accept);
        }
        let current = get(&s.redis_key)?;
        kv::delete(&s.redis_key).map_err(kv_err)?;
        if let Some(t) = current {
            kv::set(&s.rejected_key(), token_hash(&t).as_bytes(), None).map_err(kv_err)?;
        }
        Ok(Verdict::Invalidated)
    }
}

export_module!(BearerRedis);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Whatever it mints or caches lives in the host's key-value state, shared with other
// replicas; nothing in its memory matters to the next call: one instance may serve many
// requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings_of(json: &str) -> Result<Settings, String> {
        settings(&Config::parse(json, WHO).unwrap()).map_err(|e| match e {
            Error::Config(m) | Error::Unavailable(m) | Error::Internal(m) => m,
        })
    }

    fn upstox() -> Settings {
        settings_of(
            r#"{"redis_key":"upstox:token","env_seed":"UPSTOX_ACCESS_TOKEN","header":"Authorization","prefix":"Bearer ","invalidate_on":[401],"invalidate_on_body_codes":{"json_path":"errors[].errorCode","codes":["UDAPI100050"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_required_key() {
        let s = settings_of(r#"{"redis_key":"k"}"#).unwrap();
        assert_eq!(s.header, "Authorization");
        assert_eq!(s.prefix, "Bearer ");
        assert_eq!(s.invalidate_on, vec![401]);
        assert_eq!(s.env_seed, None);
        assert_eq!(s.body_codes, None);
        assert_eq!(
            settings_of("{}").unwrap_err(),
            "BearerRedisAuth: 'redis_key' config field is required."
        );
        assert!(
            settings_of(r#"{"redis_key":"k","env_sed":"X"}"#)
                .unwrap_err()
                .contains("did you mean 'env_seed'")
        );
    }

    #[test]
    fn body_code_config_is_checked() {
        for bad in [
            r#"{"redis_key":"k","invalidate_on_body_codes":{"codes":["A"]}}"#,
            r#"{"redis_key":"k","invalidate_on_body_codes":{"json_path":"a","codes":[]}}"#,
            r#"{"redis_key":"k","invalidate_on_body_codes":{"json_path":"a..b","codes":["A"]}}"#,
            r#"{"redis_key":"k","invalidate_on_body_codes":{"json_path":"a","codes":[{"x":1}]}}"#,
            r#"{"redis_key":"k","invalidate_on_body_codes":{"json_path":"a","codes":["A"],"code":1}}"#,
            r#"{"redis_key":"k","invalidate_on_body_codes":["a"]}"#,
        ] {
            assert!(settings_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstox_body_code_in_a_200_is_a_rejection() {
        let s = upstox();
        let body = br#"{"status":"error","errors":[{"errorCode":"UDAPI100050","message":"Invalid token"}]}"#;
        assert!(is_rejection(&s, 200, Some(body)));
        assert!(!is_rejection(
            &s,
            200,
            Some(br#"{"errors":[{"errorCode":"UDAPI1"}]}"#)
        ));
        assert!(!is_rejection(&s, 200, Some(b"not json")));
        assert!(!is_rejection(&s, 200, None));
        assert!(is_rejection(&s, 401, None));
        assert!(
            !is_rejection(&s, 429, Some(body)),
            "a 429 never invalidates"
        );
        assert!(!is_rejection(&s, 403, None));
    }

    #[test]
    fn json_path_walk() {
        let path = |p: &str| parse_path(&Config::parse("{}", WHO).unwrap(), p).unwrap();
        let doc = json!({
            "errors": [{"errorCode": "A"}, {"errorCode": 7}, "junk", {"other": 1}],
            "data": {"code": true, "list": [[1, 2], 3]}
        });
        let leaves = |p: &str| -> Vec<String> {
            walk(&path(p), &doc)
                .into_iter()
                .filter_map(stringify)
                .collect()
        };
        assert_eq!(leaves("errors[].errorCode"), vec!["A", "7"]);
        assert_eq!(leaves("data.code"), vec!["true"]);
        assert_eq!(
            leaves("data.list[]"),
            vec!["3"],
            "nested lists are not leaves"
        );
        assert_eq!(
            leaves("errors.errorCode"),
            Vec::<String>::new(),
            "no flatten without []"
        );
        assert_eq!(leaves("missing[].x"), Vec::<String>::new());
        let top = json!([{"code": "X"}]);
        let got: Vec<String> = walk(&path("[].code"), &top)
            .into_iter()
            .filter_map(stringify)
            .collect();
        assert_eq!(got, vec!["X"]);
    }

    #[test]
    fn codes_and_leaves_compare_stringified() {
        let s = settings_of(
            r#"{"redis_key":"k","invalidate_on_body_codes":{"json_path":"error.code","codes":[100, "E1", true]}}"#,
        )
        .unwrap();
        assert_eq!(
            s.body_codes.as_ref().unwrap().codes,
            vec!["100", "E1", "true"]
        );
        for (body, hit) in [
            (r#"{"error":{"code":100}}"#, true),
            (r#"{"error":{"code":"100"}}"#, true),
            (r#"{"error":{"code":100.0}}"#, true),
            (r#"{"error":{"code":1000}}"#, false),
            (r#"{"error":{"code":true}}"#, true),
            (r#"{"error":{"code":"e1"}}"#, false),
        ] {
            assert_eq!(is_rejection(&s, 200, Some(body.as_bytes())), hit, "{body}");
        }
    }

    #[test]
    fn a_rejected_seed_is_not_reused() {
        let hash = token_hash(b"stale-token");
        assert!(may_seed("stale-token", None));
        assert!(!may_seed("stale-token", Some(hash.as_bytes())));
        assert!(may_seed("fresh-token", Some(hash.as_bytes())));
        assert_eq!(
            token_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
