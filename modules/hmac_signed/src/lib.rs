//! `hmac_signed`: an API key header plus an HMAC signature over the request, in the
//! style of Binance and similar exchange APIs.
//!
//! Keys (reference §8.8): `key_env`, `secret_env` (required secrets), `key_header`
//! (`X-MBX-APIKEY`), `signature_header` (`""` = signature as a query parameter),
//! `signature_param` (`signature`), `timestamp_param` (`timestamp`), `timestamp_header`
//! (`""` = timestamp as a query parameter), `digest` (`sha256` | `sha512`), `payload`
//! (`query` | `body` | `query+body`, default `query`), `invalidate_on` (`[401]`; the key
//! is static, so a rejection is only reported).
//!
//! Unlike the original (§13 #32) the module signs exactly the bytes that are forwarded:
//! it builds the final query itself — the agent's raw query, byte for byte, minus any
//! agent-supplied parameter named like the timestamp or signature parameter the module
//! adds, then `&<timestamp_param>=<ms>` — signs that, and appends
//! `&<signature_param>=<hex>`. The agent's parameters are never decoded, reordered or
//! re-encoded. An agent parameter named like `timestamp_param` or `signature_param` is
//! only removed when the module itself puts that value in the query (when it goes in a
//! header, such a parameter is ordinary data and covered by the signature).
//!
//! Canonical bytes: `query` → the final query (with the timestamp); `body` → the raw
//! body (the timestamp is not covered, as in the original); `query+body` → the final
//! query, `\n`, then the body. Body modes declare `body-access: read`. An unknown
//! `digest` or `payload` is a configuration error (the Python runtime silently treated
//! an unknown payload as `query+body`).

// Shared with `api_key_query`: one source file, compiled into each module that needs it.
#[path = "../../api_key_query/src/query.rs"]
mod query;

use hmac::{Hmac, Mac};
use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, report_rejection, set_header,
};
use query::{append_param, drop_params};
use sha2::{Sha256, Sha512};

const WHO: &str = "HmacSignedAuth";
const KEYS: &[&str] = &[
    "key_env",
    "secret_env",
    "key_header",
    "signature_header",
    "signature_param",
    "timestamp_param",
    "timestamp_header",
    "digest",
    "payload",
    "invalidate_on",
];
const INVALIDATE_ON: &[u16] = &[401];

/// The HMAC hash function.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Digest {
    Sha256,
    Sha512,
}

/// What the signature covers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Payload {
    Query,
    Body,
    QueryBody,
}

/// The validated configuration (secrets excluded).
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    key_header: String,
    /// `None`: the signature goes in the query as `signature_param`.
    signature_header: Option<String>,
    signature_param: String,
    /// Empty (with no header): no timestamp at all.
    timestamp_param: String,
    /// `None`: the timestamp goes in the query as `timestamp_param`.
    timestamp_header: Option<String>,
    digest: Digest,
    payload: Payload,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn settings(cfg: &Config) -> Result<Settings, Error> {
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(INVALIDATE_ON)?;
    cfg.required_str("key_env")?;
    cfg.required_str("secret_env")?;
    let digest = match cfg.str_or("digest", "sha256")? {
        "sha256" => Digest::Sha256,
        "sha512" => Digest::Sha512,
        other => {
            return Err(cfg.error(format_args!(
                "unsupported digest '{other}'. Use: sha256, sha512."
            )));
        }
    };
    let payload = match cfg.str_or("payload", "query")? {
        "query" => Payload::Query,
        "body" => Payload::Body,
        "query+body" => Payload::QueryBody,
        other => {
            return Err(cfg.error(format_args!(
                "unsupported payload mode '{other}'. Use: query, body, query+body."
            )));
        }
    };
    let key_header = cfg.str_or("key_header", "X-MBX-APIKEY")?;
    if key_header.is_empty() {
        return Err(cfg.error("'key_header' must not be empty."));
    }
    let s = Settings {
        key_header: key_header.to_string(),
        signature_header: non_empty(cfg.str_or("signature_header", "")?),
        signature_param: cfg.str_or("signature_param", "signature")?.to_string(),
        timestamp_param: cfg.str_or("timestamp_param", "timestamp")?.to_string(),
        timestamp_header: non_empty(cfg.str_or("timestamp_header", "")?),
        digest,
        payload,
    };
    if s.signature_header.is_none() && s.signature_param.is_empty() {
        return Err(
            cfg.error("'signature_param' must not be empty when 'signature_header' is not set.")
        );
    }
    for h in [&s.signature_header, &s.timestamp_header]
        .into_iter()
        .flatten()
    {
        if !is_token(h) {
            return Err(cfg.error(format_args!("'{h}' is not a valid HTTP header name.")));
        }
    }
    if !is_token(&s.key_header) {
        return Err(cfg.error(format_args!(
            "'{}' is not a valid HTTP header name.",
            s.key_header
        )));
    }
    Ok(s)
}

/// RFC 9110 `token` (a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What signing produces: the exact query to send and the headers to set.
#[derive(Debug, PartialEq)]
struct Signature {
    query: String,
    headers: Vec<(String, String)>,
    /// The hex signature (also placed in `query` or `headers`).
    hex: String,
}

/// The query the module sends before the signature is appended: the agent's raw query
/// minus the parameters the module adds, then the timestamp when it goes in the query.
fn query_with_timestamp(s: &Settings, raw: &str, ts_ms: u64) -> String {
    let mut ours: Vec<&str> = Vec::new();
    let ts_in_query = s.timestamp_header.is_none() && !s.timestamp_param.is_empty();
    if ts_in_query {
        ours.push(&s.timestamp_param);
    }
    if s.signature_header.is_none() {
        ours.push(&s.signature_param);
    }
    let q = drop_params(raw, &ours);
    if ts_in_query {
        append_param(&q, &s.timestamp_param, &ts_ms.to_string())
    } else {
        q
    }
}

/// The bytes the HMAC covers.
fn canonical(payload: Payload, query: &str, body: &[u8]) -> Vec<u8> {
    match payload {
        Payload::Query => query.as_bytes().to_vec(),
        Payload::Body => body.to_vec(),
        Payload::QueryBody => {
            let mut v = Vec::with_capacity(query.len() + 1 + body.len());
            v.extend_from_slice(query.as_bytes());
            v.push(b'\n');
            v.extend_from_slice(body);
            v
        }
    }
}

/// The HMAC keyed by the secret: the key is padded and hashed once (two blocks of the hash
/// function), and every signature starts from a copy of that state.
enum Key {
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
}

impl Key {
    /// Key the HMAC with the UTF-8 `secret`.
    fn new(digest: Digest, secret: &str) -> Result<Self, Error> {
        let bad_key = |_| Error::Internal(format!("{WHO}: cannot key the HMAC."));
        Ok(match digest {
            Digest::Sha256 => {
                Key::Sha256(Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(bad_key)?)
            }
            Digest::Sha512 => {
                Key::Sha512(Hmac::<Sha512>::new_from_slice(secret.as_bytes()).map_err(bad_key)?)
            }
        })
    }

    /// Lower-case hex HMAC of `data`.
    fn hex(&self, data: &[u8]) -> String {
        match self {
            Key::Sha256(mac) => mac_hex(mac.clone(), data),
            Key::Sha512(mac) => mac_hex(mac.clone(), data),
        }
    }
}

/// Feed `data` to a keyed `mac` and give its tag in lower-case hex.
fn mac_hex<M: Mac>(mut mac: M, data: &[u8]) -> String {
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// Sign a request: pure, so every vector of §8.8 is checked natively.
fn sign(
    s: &Settings,
    raw_query: &str,
    body: &[u8],
    ts_ms: u64,
    api_key: &str,
    key: &Key,
) -> Signature {
    let q = query_with_timestamp(s, raw_query, ts_ms);
    let hex = key.hex(&canonical(s.payload, &q, body));
    let mut headers = vec![(s.key_header.clone(), api_key.to_string())];
    if let Some(h) = &s.timestamp_header {
        headers.push((h.clone(), ts_ms.to_string()));
    }
    let query = match &s.signature_header {
        Some(h) => {
            headers.push((h.clone(), hex.clone()));
            q
        }
        None => append_param(&q, &s.signature_param, &hex),
    };
    Signature {
        query,
        headers,
        hex,
    }
}

fn now_ms() -> Result<u64, Error> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .ok_or_else(|| Error::Internal(format!("{WHO}: the clock is before 1970.")))
}

/// What signing needs from the configuration: the settings, the API key, and the HMAC
/// keyed by the secret.
struct Signing {
    settings: Settings,
    api_key: String,
    key: Key,
}

fn signing(config: &str) -> Result<Signing, Error> {
    let cfg = Config::parse(config, WHO)?;
    let settings = settings(&cfg)?;
    let key = Key::new(settings.digest, &cfg.required_secret("secret_env")?)?;
    Ok(Signing {
        settings,
        api_key: cfg.required_secret("key_env")?,
        key,
    })
}

// Derived once per instance and configuration (see `Memo`), not on every request.
thread_local! { static SIGNING: Memo<Signing> = const { Memo::new() }; }

struct HmacSigned;

impl Guest for HmacSigned {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        let cfg = Config::parse(&config, WHO)?;
        let s = settings(&cfg)?;
        cfg.required_secret("key_env")?;
        cfg.required_secret("secret_env")?;
        Ok(ModuleInfo {
            body_access: match s.payload {
                Payload::Query => BodyAccess::None,
                Payload::Body | Payload::QueryBody => BodyAccess::Read,
            },
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let s = SIGNING.with(|m| m.get(&config, signing))?;
        // `body-access: read`: the body is shown, never replaced (`None` = unchanged).
        let body = req.body.take().unwrap_or_default();
        let signed = sign(
            &s.settings,
            &req.query,
            &body,
            now_ms()?,
            &s.api_key,
            &s.key,
        );
        req.query = signed.query;
        for (name, value) in &signed.headers {
            set_header(&mut req.headers, name, value.as_bytes());
        }
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        report_rejection(&config, WHO, INVALIDATE_ON, resp.status)
    }
}

export_module!(HmacSigned);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;

    /// The HMAC computed from scratch, without the keyed state `Key` keeps: the reference
    /// the module's signatures are checked against.
    fn hmac_hex(digest: Digest, secret: &str, data: &[u8]) -> String {
        match digest {
            Digest::Sha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
                mac.update(data);
                hex::encode(mac.finalize().into_bytes())
            }
            Digest::Sha512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(secret.as_bytes()).unwrap();
                mac.update(data);
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }

    fn sign_with(
        s: &Settings,
        raw_query: &str,
        body: &[u8],
        ts_ms: u64,
        api_key: &str,
        secret: &str,
    ) -> Result<Signature, Error> {
        Ok(sign(
            s,
            raw_query,
            body,
            ts_ms,
            api_key,
            &Key::new(s.digest, secret)?,
        ))
    }

    fn settings_of(json: &str) -> Result<Settings, String> {
        let cfg = Config::parse(json, WHO).unwrap();
        settings(&cfg).map_err(|e| match e {
            Error::Config(m) | Error::Unavailable(m) | Error::Internal(m) => m,
        })
    }

    fn base() -> Settings {
        settings_of(r#"{"key_env":"K","secret_env":"S"}"#).unwrap()
    }

    const BINANCE_SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
    const BINANCE_QUERY: &str =
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000";
    const BINANCE_SIG: &str = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71";

    #[test]
    fn defaults() {
        assert_eq!(
            base(),
            Settings {
                key_header: "X-MBX-APIKEY".into(),
                signature_header: None,
                signature_param: "signature".into(),
                timestamp_param: "timestamp".into(),
                timestamp_header: None,
                digest: Digest::Sha256,
                payload: Payload::Query,
            }
        );
    }

    #[test]
    fn binance_vector_signs_the_bytes_it_sends() {
        let got = sign_with(
            &base(),
            BINANCE_QUERY,
            b"",
            1_499_827_319_559,
            "api-key",
            BINANCE_SECRET,
        )
        .unwrap();
        assert_eq!(got.hex, BINANCE_SIG);
        assert_eq!(
            got.query,
            format!("{BINANCE_QUERY}&timestamp=1499827319559&signature={BINANCE_SIG}")
        );
        assert_eq!(
            got.headers,
            vec![("X-MBX-APIKEY".to_string(), "api-key".to_string())]
        );
        // What is sent, minus the signature, is exactly what was signed.
        let sent_without_sig = got
            .query
            .strip_suffix(&format!("&signature={}", got.hex))
            .unwrap();
        assert_eq!(
            hmac_hex(Digest::Sha256, BINANCE_SECRET, sent_without_sig.as_bytes()),
            got.hex
        );
    }

    #[test]
    fn one_key_signs_every_request_as_a_fresh_one_would() {
        // `Signing` (and its `Key`) is kept between calls: signing must not change it.
        for digest in [Digest::Sha256, Digest::Sha512] {
            let key = Key::new(digest, BINANCE_SECRET).unwrap();
            for data in [b"a=1".as_slice(), b"", BINANCE_QUERY.as_bytes(), b"a=1"] {
                assert_eq!(key.hex(data), hmac_hex(digest, BINANCE_SECRET, data));
            }
        }
    }

    #[test]
    fn agent_timestamp_and_signature_are_dropped_not_signed_twice() {
        let q = format!("timestamp=1&{BINANCE_QUERY}&signature=forged&timestamp=2");
        let got = sign_with(&base(), &q, b"", 1_499_827_319_559, "k", BINANCE_SECRET).unwrap();
        assert_eq!(got.hex, BINANCE_SIG, "agent copies removed before signing");
        assert_eq!(
            got.query,
            format!("{BINANCE_QUERY}&timestamp=1499827319559&signature={BINANCE_SIG}")
        );
    }

    #[test]
    fn raw_query_is_never_reencoded() {
        let q = "a=1&a=3&b=x%20y+z&c=~&d=%2f&flag";
        let got = sign_with(&base(), q, b"", 1000, "k", "s").unwrap();
        let signed_part = format!("{q}&timestamp=1000");
        assert_eq!(got.query, format!("{signed_part}&signature={}", got.hex));
        assert_eq!(
            got.hex,
            hmac_hex(Digest::Sha256, "s", signed_part.as_bytes())
        );
    }

    #[test]
    fn body_mode_vector() {
        let s = settings_of(r#"{"key_env":"K","secret_env":"S","payload":"body"}"#).unwrap();
        let got = sign_with(&s, "", br#"{"side":"BUY"}"#, 1000, "k", "mysecret").unwrap();
        assert_eq!(
            got.hex,
            "3ed2d0816c975209299f4090d47a9df399027ad8b5d5ba391d3cd627779b7d92"
        );
        // The timestamp still goes in the query, but the body alone is signed.
        assert_eq!(got.query, format!("timestamp=1000&signature={}", got.hex));
    }

    #[test]
    fn header_mode_vector() {
        let s = settings_of(
            r#"{"key_env":"K","secret_env":"S","signature_header":"X-Sig","timestamp_param":"ts"}"#,
        )
        .unwrap();
        let got = sign_with(&s, "a=1", b"", 1000, "k", "s").unwrap();
        let want = "812414d702a91cacd96af5f531d7b8ffc43aac365e283f3706cc84ab4cee59e3";
        assert_eq!(got.hex, want);
        assert_eq!(got.query, "a=1&ts=1000");
        assert_eq!(
            got.headers,
            vec![
                ("X-MBX-APIKEY".to_string(), "k".to_string()),
                ("X-Sig".to_string(), want.to_string())
            ]
        );
    }

    #[test]
    fn sha512_vector() {
        let s = settings_of(r#"{"key_env":"K","secret_env":"S","digest":"sha512"}"#).unwrap();
        let got = sign_with(&s, "x=1", b"", 1000, "k", "s").unwrap();
        assert_eq!(
            got.hex,
            "c6f1da68d3231798445a85132fbbb5b3943cf0d32ae7e236d2630e113fb1df7513c17adc241ae0cabac7b275db3014f0c4a502a62e71706a811764a3dcf2ce96"
        );
        assert_eq!(
            got.query,
            format!("x=1&timestamp=1000&signature={}", got.hex)
        );
    }

    #[test]
    fn query_plus_body_and_timestamp_header() {
        let s = settings_of(
            r#"{"key_env":"K","secret_env":"S","payload":"query+body","timestamp_header":"X-TS","signature_header":"X-Sig"}"#,
        )
        .unwrap();
        // With the timestamp in a header an agent `timestamp` parameter is plain data.
        let got = sign_with(&s, "a=1&timestamp=9", b"{}", 1000, "k", "s").unwrap();
        assert_eq!(got.query, "a=1&timestamp=9");
        assert_eq!(
            got.hex,
            hmac_hex(Digest::Sha256, "s", b"a=1&timestamp=9\n{}")
        );
        assert!(
            got.headers
                .contains(&("X-TS".to_string(), "1000".to_string()))
        );
        assert_eq!(canonical(Payload::QueryBody, "", b"b"), b"\nb");
    }

    #[test]
    fn empty_timestamp_param_means_no_timestamp() {
        let s = settings_of(r#"{"key_env":"K","secret_env":"S","timestamp_param":""}"#).unwrap();
        let got = sign_with(&s, "a=1", b"", 1000, "k", "s").unwrap();
        assert_eq!(got.query, format!("a=1&signature={}", got.hex));
        assert_eq!(got.hex, hmac_hex(Digest::Sha256, "s", b"a=1"));
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            settings_of(r#"{"key_env":"K","secret_env":"S","digest":"sha384"}"#).unwrap_err(),
            "HmacSignedAuth: unsupported digest 'sha384'. Use: sha256, sha512."
        );
        assert_eq!(
            settings_of(r#"{"key_env":"K","secret_env":"S","payload":"headers"}"#).unwrap_err(),
            "HmacSignedAuth: unsupported payload mode 'headers'. Use: query, body, query+body."
        );
        assert_eq!(
            settings_of(r#"{"secret_env":"S"}"#).unwrap_err(),
            "HmacSignedAuth: 'key_env' config field is required."
        );
        assert!(settings_of(r#"{"key_env":"K","secret_env":"S","signature_param":""}"#).is_err());
        assert!(
            settings_of(r#"{"key_env":"K","secret_env":"S","signature_header":"a b"}"#).is_err()
        );
        assert!(
            settings_of(r#"{"key_env":"K","secret_env":"S","timestamp_parm":"t"}"#)
                .unwrap_err()
                .contains("did you mean 'timestamp_param'")
        );
    }
}
