//! `groww_totp_mint`: the Groww trading API's access token, minted from an API key and a
//! TOTP code (reference §8.12) — the WebAssembly version of the original's
//! `groww_totp_mint` plugin (`module: app.python.plugins.groww_totp_mint:GrowwTotpMintAuth`).
//!
//! Config (the plugin's `config:` map): `api_key_env` (default `GROWW_API_KEY`),
//! `totp_seed_env` (default `GROWW_TOTP_SEED`; a base32 seed), `mint_path` (default
//! `/v1/token/api/access`), `invalidate_on` (`[401]`). The host only hands a module the
//! secrets its configuration names, so name both `*_env` keys explicitly.
//!
//! * TOTP: RFC 6238, HMAC-SHA1, 30 s step, T0 = 0, 6 digits. The seed is decoded as
//!   strict base32 after upper-casing (whitespace and `=` padding are tolerated); a seed
//!   that does not decode is a configuration error at load time.
//! * Mint: `POST <scheme://authority of the request><mint_path>` with
//!   `Authorization: Bearer <api key>`, `Content-Type: application/json` and the body
//!   `{"key_type": "totp", "totp": "<code>"}`, 15 s timeout; the token slot, lock, TTL
//!   rules and output are those of `groww_approval_mint` (`groww:token`,
//!   `groww:token:lock`, `Authorization: Bearer <token>`).
//! * `on-response`: a status in `invalidate_on` deletes `groww:token` and answers `retry`.

// Shared with `groww_approval_mint`: one source file, compiled into each module that needs it.
#[path = "../../groww_approval_mint/src/groww.rs"]
mod groww;
// Shared with `oauth2_client_credentials`: one source file, compiled into each module that needs it.
#[path = "../../oauth2_client_credentials/src/mint.rs"]
mod mint;
// The shared file also offers SHA-256/512, which only the `totp` module uses.
#[allow(dead_code)]
// Shared with `totp`: one source file, compiled into each module that needs it.
#[path = "../../totp/src/otp.rs"]
mod otp;

use mint::Minted;
use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, secret,
};

const WHO: &str = "groww_totp_mint";
const KEYS: &[&str] = &["api_key_env", "totp_seed_env", "mint_path", "invalidate_on"];
const INVALIDATE_ON: &[u16] = &[401];

/// The validated configuration with its secrets.
struct Settings {
    api_key: String,
    seed: Vec<u8>,
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
        cfg.str_or("totp_seed_env", "GROWW_TOTP_SEED")?,
        mint_path,
    ))
}

fn settings(config: &str) -> Result<Settings, Error> {
    let cfg = Config::parse(config, WHO)?;
    let (key_env, seed_env, mint_path) = shape(&cfg)?;
    let api_key = secret(key_env).ok_or_else(|| cfg.error("api_key env var not set"))?;
    let seed = secret(seed_env).ok_or_else(|| cfg.error("totp_seed env var not set"))?;
    let seed = otp::base32_decode(&seed).map_err(|why| {
        cfg.error(format_args!(
            "the TOTP seed in '{seed_env}' is not valid base32 ({why})."
        ))
    })?;
    Ok(Settings {
        api_key,
        seed,
        mint_path,
    })
}

/// The six-digit code at `unix_secs`.
fn code(seed: &[u8], unix_secs: u64) -> Result<String, Error> {
    otp::totp(otp::Algorithm::Sha1, seed, unix_secs, 30, 6)
        .map_err(|why| Error::Internal(format!("{WHO}: TOTP: {why}")))
}

/// The mint request's JSON body.
fn mint_body(code: &str) -> String {
    groww::json_body(&[("key_type", "totp"), ("totp", code)])
}

fn mint(s: &Settings, req: &Request) -> Result<Minted, Error> {
    // Whole seconds; the clock is after 1970 on any real host.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let now = groww::now_secs().floor() as u64;
    groww::send_mint(
        WHO,
        groww::mint_url(&req.scheme, &req.authority, &s.mint_path),
        &s.api_key,
        mint_body(&code(&s.seed, now)?),
    )
}

// Derived once per instance and configuration (see `Memo`), not on every request;
// tokens are read from the state store on every call.
thread_local! { static SETTINGS: Memo<Settings> = const { Memo::new() }; }

struct GrowwTotpMint;

impl Guest for GrowwTotpMint {
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

export_module!(GrowwTotpMint);
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
    fn reference_totp_vectors_and_body() {
        let seed = otp::base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(code(&seed, 59).unwrap(), "287082");
        assert_eq!(code(&seed, 1_111_111_109).unwrap(), "081804");
        let lower = otp::base32_decode("gezdgnbvgy3tqojqgezdgnbvgy3tqojq").unwrap();
        assert_eq!(code(&lower, 59).unwrap(), "287082");
        assert_eq!(
            mint_body("081804"),
            r#"{"key_type": "totp", "totp": "081804"}"#
        );
    }

    #[test]
    fn shape_defaults_and_errors() {
        let cfg = Config::parse("{}", WHO).unwrap();
        let (k, s, p) = shape(&cfg).unwrap();
        assert_eq!(
            (k, s, p.as_str()),
            ("GROWW_API_KEY", "GROWW_TOTP_SEED", "/v1/token/api/access")
        );
        let cfg = Config::parse(r#"{"totp_seed":"X"}"#, WHO).unwrap();
        assert!(shape(&cfg).is_err());
    }
}
