//! `totp`: a time-based one-time password (RFC 6238) on every request, for APIs that
//! want a fresh second factor with each call (D25).
//!
//! Keys: `secret_env` (required: the secret holding the base32 seed), `header` *or*
//! `param` (exactly one: where the code goes), `prefix` (default `""`, put before the
//! code), `digits` (6; 6–10), `period` (30 seconds), `algorithm` (`sha1` default,
//! `sha256`, `sha512`), `invalidate_on` (`[401]`; nothing is stored, so a rejection is
//! only reported).
//!
//! The seed is decoded at load time (strict base32 after upper-casing; whitespace and `=`
//! padding tolerated), so a bad seed is a configuration error, reported without its value.
//! With `param`, agent parameters of that name are dropped and `&<param>=<code>` is
//! appended to the raw query, which is otherwise sent byte for byte.

mod otp;
// Shared with `api_key_query`: one source file, compiled into each module that needs it.
#[path = "../../api_key_query/src/query.rs"]
mod query;

use otp::Algorithm;
use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, report_rejection, set_header,
};
use query::{append_param, drop_params};
use serde_json::Value;

const WHO: &str = "TotpAuth";
const KEYS: &[&str] = &[
    "secret_env",
    "header",
    "param",
    "prefix",
    "digits",
    "period",
    "algorithm",
    "invalidate_on",
];
const INVALIDATE_ON: &[u16] = &[401];

/// Where the code goes.
#[derive(Debug, Clone, PartialEq)]
enum Place {
    Header(String),
    Param(String),
}

/// The validated configuration (the seed excluded).
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    place: Place,
    prefix: String,
    digits: u32,
    period: u64,
    algorithm: Algorithm,
}

fn int_in(
    cfg: &Config,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, Error> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| range.contains(n)).ok_or_else(|| {
            cfg.error(format_args!(
                "'{key}' must be a whole number from {} to {}.",
                range.start(),
                range.end()
            ))
        }),
    }
}

fn settings(cfg: &Config) -> Result<Settings, Error> {
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(INVALIDATE_ON)?;
    cfg.required_str("secret_env")?;
    let place = match (cfg.str_opt("header")?, cfg.str_opt("param")?) {
        (Some(h), None) if is_token(h) => Place::Header(h.to_string()),
        (Some(_), None) => return Err(cfg.error("'header' must be a valid HTTP header name.")),
        (None, Some(p)) if !p.is_empty() => Place::Param(p.to_string()),
        (Some(_), Some(_)) => {
            return Err(cfg.error("give either 'header' or 'param', not both."));
        }
        _ => return Err(cfg.error("one of 'header' or 'param' is required.")),
    };
    let algorithm = match cfg.str_or("algorithm", "sha1")? {
        "sha1" => Algorithm::Sha1,
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        other => {
            return Err(cfg.error(format_args!(
                "unsupported algorithm '{other}'. Use: sha1, sha256, sha512."
            )));
        }
    };
    let digits = int_in(cfg, "digits", 6, 6..=10)?;
    Ok(Settings {
        place,
        prefix: cfg.str_or("prefix", "")?.to_string(),
        digits: u32::try_from(digits).map_err(|_| cfg.error("'digits' is out of range."))?,
        period: int_in(cfg, "period", 30, 1..=86_400)?,
        algorithm,
    })
}

/// RFC 9110 `token` (a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The decoded seed named by `secret_env`.
fn seed(cfg: &Config) -> Result<Vec<u8>, Error> {
    let name = cfg.required_str("secret_env")?;
    let text = cfg.required_secret("secret_env")?;
    otp::base32_decode(&text).map_err(|why| {
        cfg.error(format_args!(
            "the TOTP seed in '{name}' is not valid base32 ({why})."
        ))
    })
}

/// Put `<prefix><code at unix_secs>` where the settings say. Pure, for native tests.
fn apply(s: &Settings, key: &[u8], unix_secs: u64, req: &mut Request) -> Result<(), Error> {
    let code = otp::totp(s.algorithm, key, unix_secs, s.period, s.digits)
        .map_err(|why| Error::Internal(format!("{WHO}: {why}")))?;
    let value = format!("{}{code}", s.prefix);
    match &s.place {
        Place::Header(h) => set_header(&mut req.headers, h, value.as_bytes()),
        Place::Param(p) => req.query = append_param(&drop_params(&req.query, &[p]), p, &value),
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What signing needs from the configuration: the settings and the decoded seed.
struct Signing {
    settings: Settings,
    seed: Vec<u8>,
}

fn signing(config: &str) -> Result<Signing, Error> {
    let cfg = Config::parse(config, WHO)?;
    Ok(Signing {
        settings: settings(&cfg)?,
        seed: seed(&cfg)?,
    })
}

// Derived once per instance and configuration (see `Memo`), not on every request.
thread_local! { static SIGNING: Memo<Signing> = const { Memo::new() }; }

struct Totp;

impl Guest for Totp {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        let cfg = Config::parse(&config, WHO)?;
        settings(&cfg)?;
        seed(&cfg)?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let s = SIGNING.with(|m| m.get(&config, signing))?;
        apply(&s.settings, &s.seed, now_secs(), &mut req)?;
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        report_rejection(&config, WHO, INVALIDATE_ON, resp.status)
    }
}

export_module!(Totp);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_plugin_sdk::Header;

    fn settings_of(json: &str) -> Result<Settings, String> {
        settings(&Config::parse(json, WHO).unwrap()).map_err(|e| match e {
            Error::Config(m) | Error::Unavailable(m) | Error::Internal(m) => m,
        })
    }

    fn req(query: &str) -> Request {
        Request {
            method: "GET".into(),
            scheme: "https".into(),
            authority: "api.example.com".into(),
            path: "/v1/x".into(),
            query: query.into(),
            headers: vec![Header {
                name: "x-otp".into(),
                value: b"agent".to_vec(),
            }],
            body: None,
        }
    }

    const SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn defaults() {
        let s = settings_of(r#"{"secret_env":"S","header":"X-OTP"}"#).unwrap();
        assert_eq!(
            s,
            Settings {
                place: Place::Header("X-OTP".into()),
                prefix: String::new(),
                digits: 6,
                period: 30,
                algorithm: Algorithm::Sha1
            }
        );
    }

    #[test]
    fn header_output_replaces_the_agents() {
        let s = settings_of(r#"{"secret_env":"S","header":"X-OTP","prefix":"otp "}"#).unwrap();
        let mut r = req("");
        apply(&s, SEED, 59, &mut r).unwrap();
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers[0].name, "X-OTP");
        assert_eq!(r.headers[0].value, b"otp 287082");
        assert_eq!(r.query, "");
    }

    #[test]
    fn param_output_with_rfc6238_sha256_vector() {
        let s = settings_of(r#"{"secret_env":"S","param":"otp","digits":8,"algorithm":"sha256"}"#)
            .unwrap();
        let mut r = req("a=1&otp=000000&b=%20");
        apply(
            &s,
            b"12345678901234567890123456789012",
            1_111_111_109,
            &mut r,
        )
        .unwrap();
        assert_eq!(r.query, "a=1&b=%20&otp=68084774");
    }

    #[test]
    fn period_and_sha512() {
        let s = settings_of(
            r#"{"secret_env":"S","param":"code","digits":8,"algorithm":"sha512","period":60}"#,
        )
        .unwrap();
        let key = b"1234567890123456789012345678901234567890123456789012345678901234";
        let mut r = req("");
        // Counter 2_000_000_000 / 60 = 33_333_333 = RFC 6238 vector time 999_999_990 / 30.
        apply(&s, key, 2_000_000_000, &mut r).unwrap();
        let want = otp::totp(Algorithm::Sha512, key, 999_999_990, 30, 8).unwrap();
        assert_eq!(r.query, format!("code={want}"));
    }

    #[test]
    fn config_errors() {
        for (json, want) in [
            (
                r#"{"secret_env":"S"}"#,
                "one of 'header' or 'param' is required",
            ),
            (r#"{"secret_env":"S","header":"H","param":"p"}"#, "not both"),
            (
                r#"{"secret_env":"S","header":"H","algorithm":"md5"}"#,
                "unsupported algorithm 'md5'",
            ),
            (r#"{"secret_env":"S","header":"H","digits":5}"#, "'digits'"),
            (r#"{"secret_env":"S","header":"H","period":0}"#, "'period'"),
            (r#"{"header":"H"}"#, "'secret_env' config field is required"),
            (
                r#"{"secret_env":"S","header":"H","perod":30}"#,
                "did you mean 'period'",
            ),
        ] {
            let got = settings_of(json).unwrap_err();
            assert!(got.contains(want), "{json}: {got}");
        }
    }
}
