//! `groww_approval_mint`: the Groww trading API's access token, minted from an API key
//! and secret (reference §8.11) — the WebAssembly version of the original's
//! `groww_approval_mint` plugin, which the shipped `groww.yaml` names
//! (`module: app.python.plugins.groww_approval_mint:GrowwApprovalMintAuth`).
//!
//! Config (the plugin's `config:` map): `api_key_env` (default `GROWW_API_KEY`),
//! `api_secret_env` (default `GROWW_API_SECRET`), `mint_path` (default
//! `/v1/token/api/access`), `invalidate_on` (`[401]`). The host only hands a module the
//! secrets its configuration names, so name both `*_env` keys explicitly (as the shipped
//! `groww.yaml` does); likewise `mint_path` is what grants the provider's origin.
//!
//! * Mint: `ts` = Unix time in seconds; `checksum` = hex SHA-256(secret + ts);
//!   `POST <scheme://authority of the request><mint_path>` with
//!   `Authorization: Bearer <api key>`, `Content-Type: application/json` and the body
//!   `{"key_type": "approval", "checksum": "<checksum>", "timestamp": "<ts>"}` (the Python
//!   runtime's separators), 15 s timeout. The JSON answer's `token` is the credential;
//!   it is kept at `groww:token` for `max(60, expiry − now − 120)` seconds when `expiry`
//!   is an ISO-8601 string, else 18 h. One replica mints at a time (`groww:token:lock`).
//! * Output: `Authorization: Bearer <token>`.
//! * `on-response`: a status in `invalidate_on` deletes `groww:token` and answers `retry`.

mod groww;
// Shared with `oauth2_client_credentials`: one source file, compiled into each module that needs it.
#[path = "../../oauth2_client_credentials/src/mint.rs"]
mod mint;

use mint::Minted;
use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, secret,
};
use sha2::{Digest as _, Sha256};

const WHO: &str = "groww_approval_mint";
const KEYS: &[&str] = &[
    "api_key_env",
    "api_secret_env",
    "mint_path",
    "invalidate_on",
];
const INVALIDATE_ON: &[u16] = &[401];

/// The validated configuration with its secrets.
struct Settings {
    api_key: String,
    api_secret: String,
    mint_path: String,
}

/// The configuration's shape (no secrets): the secrets' names and the mint path.
fn shape(cfg: &Config) -> Result<(&str, &str, String), Error> {
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(INVALIDATE_ON)?;
    let path = cfg.str_or("mint_path", groww::DEFAULT_MINT_PATH)?;
    let mint_path = groww::normalise_mint_path(path).map_err(|m| cfg.error(m))?;
    Ok((
        cfg.str_or("api_key_env", "GROWW_API_KEY")?,
        cfg.str_or("api_secret_env", "GROWW_API_SECRET")?,
        mint_path,
    ))
}

fn settings(config: &str) -> Result<Settings, Error> {
    let cfg = Config::parse(config, WHO)?;
    let (key_env, secret_env, mint_path) = shape(&cfg)?;
    Ok(Settings {
        api_key: secret(key_env).ok_or_else(|| cfg.error("api_key env var not set"))?,
        api_secret: secret(secret_env).ok_or_else(|| cfg.error("api_secret env var not set"))?,
        mint_path,
    })
}

/// hex SHA-256(secret + ts).
fn checksum(secret: &str, ts: &str) -> String {
    hex::encode(Sha256::digest(format!("{secret}{ts}").as_bytes()))
}

/// The mint request's JSON body.
fn mint_body(secret: &str, ts: &str) -> String {
    groww::json_body(&[
        ("key_type", "approval"),
        ("checksum", &checksum(secret, ts)),
        ("timestamp", ts),
    ])
}

fn mint(s: &Settings, req: &Request) -> Result<Minted, Error> {
    let now = groww::now_secs();
    // Whole seconds; the clock is after 1970 on any real host.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ts = (now.floor() as u64).to_string();
    groww::send_mint(
        WHO,
        groww::mint_url(&req.scheme, &req.authority, &s.mint_path),
        &s.api_key,
        mint_body(&s.api_secret, &ts),
    )
}

// Derived once per instance and configuration (see `Memo`), not on every request;
// tokens are read from the state store on every call.
thread_local! { static SETTINGS: Memo<Settings> = const { Memo::new() }; }

struct GrowwApprovalMint;

impl Guest for GrowwApprovalMint {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        settings(&config)?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, req: Request) -> Result<Request, Error> {
        let s = SETTINGS.with(|m| m.get(&config, settings))?;
        groww::sign(WHO, req, |req| mint(&s, req))
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        groww::on_response(WHO, &config, resp.status, INVALIDATE_ON)
    }
}

export_module!(GrowwApprovalMint);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Whatever it mints or caches lives in the host's key-value state, shared with other
// replicas; nothing in its memory matters to the next call: one instance may serve many
// requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_vector() {
        assert_eq!(
            checksum("super_secret", "1700000000"),
            "acba90ab6c8a44580e0969b3a068c4abd3e6a31cc0c27b9087bb1d23fded98b6"
        );
        assert_eq!(
            mint_body("super_secret", "1700000000"),
            r#"{"key_type": "approval", "checksum": "acba90ab6c8a44580e0969b3a068c4abd3e6a31cc0c27b9087bb1d23fded98b6", "timestamp": "1700000000"}"#
        );
    }

    #[test]
    fn shape_defaults_and_errors() {
        let cfg = Config::parse("{}", WHO).unwrap();
        let (k, s, p) = shape(&cfg).unwrap();
        assert_eq!(
            (k, s, p.as_str()),
            ("GROWW_API_KEY", "GROWW_API_SECRET", "/v1/token/api/access")
        );
        let cfg = Config::parse(r#"{"invalidate_on":"401"}"#, WHO).unwrap();
        assert!(shape(&cfg).is_err());
        let cfg = Config::parse(
            r#"{"api_key_env":"K","mint_path":"https://x.example/t"}"#,
            WHO,
        )
        .unwrap();
        assert!(shape(&cfg).is_err());
        let cfg = Config::parse(r#"{"api_key":"K"}"#, WHO).unwrap();
        assert!(shape(&cfg).is_err());
    }
}
