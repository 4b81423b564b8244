//! Example Outpost plugin, `token_mint`: a custom token-minting scheme using every
//! capability a plugin can be granted — a secret, key-value state and outbound HTTP.
//!
//! The scheme (specified in `plugins-sdk/EXAMPLE.md`, and implemented identically in
//! Python and JavaScript next to this crate):
//! 1. look the token up in key-value state under `redis_key` (shared by replicas);
//! 2. if there is none, `POST` the API key (secret named by `api_key_env`) to `mint_url`
//!    and cache the token it returns for `min(expires_in, ttl_seconds)`;
//! 3. send it as `<header>: Bearer <token>`;
//! 4. when the upstream answers 401, drop the cached token and ask the host to retry
//!    once, which mints a fresh one.
//!
//! Build: `cargo build --target wasm32-wasip2 --release`, then copy
//! `target/wasm32-wasip2/release/token_mint.wasm` into Outpost's plugins directory.
//!
//! The pure parts (configuration, the mint request, parsing its answer) are plain
//! functions with native unit tests; only the `Guest` glue touches host imports.

use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Header, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, http, kv, set_header,
};
use serde_json::Value;

/// Prefix of every error message, so operators see which scheme complained.
const WHO: &str = "token_mint";
/// Configuration keys this scheme understands; anything else is a typo.
const KEYS: &[&str] = &[
    "mint_url",
    "api_key_env",
    "redis_key",
    "header",
    "ttl_seconds",
];

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Token endpoint (its origin is the only one this plugin is granted).
    pub mint_url: String,
    /// Name of the secret holding the API key.
    pub api_key_env: String,
    /// Key-value key caching the token.
    pub redis_key: String,
    /// Header carrying the token.
    pub header: String,
    /// Upper bound on the cache lifetime, seconds.
    pub ttl_seconds: u64,
}

impl Settings {
    /// Check keys and types (not the secret: that needs the host).
    pub fn parse(config: &str) -> Result<Self, Error> {
        let cfg = Config::parse(config, WHO)?;
        cfg.allow_only(KEYS)?;
        let mint_url = cfg.required_str("mint_url")?.to_string();
        let api_key_env = cfg.required_str("api_key_env")?.to_string();
        let redis_key = cfg.required_str("redis_key")?.to_string();
        let header = cfg.str_or("header", "Authorization")?.to_string();
        let ttl_seconds = match cfg.get("ttl_seconds") {
            None | Some(Value::Null) => 300,
            Some(v) => v
                .as_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| cfg.error("'ttl_seconds' must be an integer >= 1."))?,
        };
        Ok(Self {
            mint_url,
            api_key_env,
            redis_key,
            header,
            ttl_seconds,
        })
    }

    /// The API key, which must be set (checked at load time too).
    fn api_key(&self) -> Result<String, Error> {
        outpost_plugin_sdk::secret(&self.api_key_env).ok_or_else(|| {
            Error::Config(format!(
                "{WHO}: env var '{}' is not set or empty.",
                self.api_key_env
            ))
        })
    }

    /// The request that mints a token.
    pub fn mint_request(&self, api_key: &str) -> http::OutgoingRequest {
        http::OutgoingRequest {
            method: "POST".into(),
            url: self.mint_url.clone(),
            headers: vec![
                Header {
                    name: "content-type".into(),
                    value: b"application/json".to_vec(),
                },
                Header {
                    name: "x-api-key".into(),
                    value: api_key.as_bytes().to_vec(),
                },
            ],
            body: Some(br#"{"scope":"outpost"}"#.to_vec()),
            timeout_ms: Some(5000),
        }
    }

    /// The token in the mint's answer and how long to cache it (milliseconds).
    pub fn parse_mint_response(&self, status: u16, body: &[u8]) -> Result<(String, u64), Error> {
        if status != 200 {
            return Err(unavailable(format_args!("mint answered {status}")));
        }
        let no_token = || unavailable("mint response has no token");
        let v: Value = serde_json::from_slice(body).map_err(|_| no_token())?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(no_token)?;
        let expires_in = v
            .get("expires_in")
            .and_then(Value::as_u64)
            .filter(|n| *n >= 1)
            .ok_or_else(no_token)?;
        Ok((
            token.to_string(),
            expires_in.min(self.ttl_seconds).saturating_mul(1000),
        ))
    }

    /// Put the token on the request.
    pub fn apply(&self, req: &mut Request, token: &str) {
        set_header(
            &mut req.headers,
            &self.header,
            format!("Bearer {token}").as_bytes(),
        );
    }

    /// The cached token, or a freshly minted (and cached) one.
    fn token(&self) -> Result<String, Error> {
        let state = |e: String| unavailable(format_args!("state: {e}"));
        if let Some(bytes) = kv::get(&self.redis_key).map_err(state)? {
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        let resp = http::send(&self.mint_request(&self.api_key()?))
            .map_err(|e| unavailable(format_args!("mint failed: {e}")))?;
        let (token, ttl_ms) = self.parse_mint_response(resp.status, &resp.body)?;
        kv::set(&self.redis_key, token.as_bytes(), Some(ttl_ms)).map_err(state)?;
        Ok(token)
    }
}

fn unavailable(message: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{WHO}: {message}"))
}

struct TokenMint;

impl Guest for TokenMint {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        Settings::parse(&config)?.api_key()?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let settings = Settings::parse(&config)?;
        let token = settings.token()?;
        settings.apply(&mut req, &token);
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        if resp.status != 401 {
            return Ok(Verdict::Accept);
        }
        let settings = Settings::parse(&config)?;
        kv::delete(&settings.redis_key).map_err(|e| unavailable(format_args!("state: {e}")))?;
        Ok(Verdict::Retry)
    }
}

export_module!(TokenMint);

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        r#"{"mint_url":"https://mint.example/t","api_key_env":"K","redis_key":"p:tok"}"#;

    fn message(e: Error) -> String {
        match e {
            Error::Config(m) | Error::Unavailable(m) | Error::Internal(m) => m,
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let s = Settings::parse(BASE).unwrap();
        assert_eq!((s.header.as_str(), s.ttl_seconds), ("Authorization", 300));
        let s = Settings::parse(
            r#"{"mint_url":"u","api_key_env":"K","redis_key":"k","header":"X-T","ttl_seconds":5}"#,
        )
        .unwrap();
        assert_eq!((s.header.as_str(), s.ttl_seconds), ("X-T", 5));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let typo = r#"{"mint_url":"u","api_key_env":"K","redis_key":"k","heder":"X"}"#;
        assert_eq!(
            message(Settings::parse(typo).unwrap_err()),
            "token_mint: unknown config key 'heder' (did you mean 'header'?); expected one of: \
             mint_url, api_key_env, redis_key, header, ttl_seconds."
        );
        assert_eq!(
            message(Settings::parse(r#"{"api_key_env":"K","redis_key":"k"}"#).unwrap_err()),
            "token_mint: 'mint_url' config field is required."
        );
        let zero = r#"{"mint_url":"u","api_key_env":"K","redis_key":"k","ttl_seconds":0}"#;
        assert_eq!(
            message(Settings::parse(zero).unwrap_err()),
            "token_mint: 'ttl_seconds' must be an integer >= 1."
        );
    }

    #[test]
    fn mint_answers() {
        let s = Settings::parse(BASE).unwrap();
        assert_eq!(
            s.parse_mint_response(200, br#"{"token":"t1","expires_in":3600}"#)
                .unwrap(),
            ("t1".to_string(), 300_000)
        );
        assert_eq!(
            s.parse_mint_response(200, br#"{"token":"t1","expires_in":10}"#)
                .unwrap()
                .1,
            10_000
        );
        assert_eq!(
            message(s.parse_mint_response(503, b"").unwrap_err()),
            "token_mint: mint answered 503"
        );
        for bad in [
            &b"nope"[..],
            br#"{"token":""}"#,
            br#"{"token":"t","expires_in":0}"#,
        ] {
            assert_eq!(
                message(s.parse_mint_response(200, bad).unwrap_err()),
                "token_mint: mint response has no token"
            );
        }
    }

    #[test]
    fn the_token_replaces_an_agent_supplied_header() {
        let s = Settings::parse(BASE).unwrap();
        let mut req = Request {
            method: "GET".into(),
            scheme: "https".into(),
            authority: "api.example".into(),
            path: "/x".into(),
            query: String::new(),
            headers: vec![Header {
                name: "authorization".into(),
                value: b"Bearer forged".to_vec(),
            }],
            body: None,
        };
        s.apply(&mut req, "t1");
        assert_eq!(req.headers.len(), 1);
        assert_eq!(req.headers[0].value, b"Bearer t1");
        let mint = s.mint_request("key");
        assert_eq!(mint.url, "https://mint.example/t");
        assert_eq!(mint.body.as_deref(), Some(&br#"{"scope":"outpost"}"#[..]));
    }
}
