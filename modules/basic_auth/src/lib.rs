//! `basic_auth`: `Authorization: Basic <base64(user ":" pass)>`.
//!
//! Keys (reference §8.5): `username_env` and `password_env` (both required; the secrets
//! must be set and non-empty), `invalidate_on` (default `[401]`; static credentials have
//! nothing to drop, so a rejection is only reported). As D1 asks, the README spelling
//! `user_env` / `pass_env` is accepted as an alias; giving both spellings of one key is
//! an error. Credentials are encoded as UTF-8 (the Python runtime's behaviour), standard
//! base64 with padding.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, report_rejection, set_header,
};

const WHO: &str = "BasicAuth";
const KEYS: &[&str] = &[
    "username_env",
    "password_env",
    "user_env",
    "pass_env",
    "invalidate_on",
];
const INVALIDATE_ON: &[u16] = &[401];

/// Which config keys name the two secrets (the canonical key or its alias).
#[derive(Debug, PartialEq)]
struct Shape {
    user_key: &'static str,
    pass_key: &'static str,
}

fn pick(cfg: &Config, key: &'static str, alias: &'static str) -> Result<&'static str, Error> {
    match (cfg.has(key), cfg.has(alias)) {
        (true, true) => Err(cfg.error(format_args!(
            "give either '{key}' or its alias '{alias}', not both."
        ))),
        (false, true) => {
            cfg.required_str(alias)?;
            Ok(alias)
        }
        _ => {
            cfg.required_str(key)?;
            Ok(key)
        }
    }
}

fn shape(cfg: &Config) -> Result<Shape, Error> {
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(INVALIDATE_ON)?;
    Ok(Shape {
        user_key: pick(cfg, "username_env", "user_env")?,
        pass_key: pick(cfg, "password_env", "pass_env")?,
    })
}

/// The header value for `user` / `pass`.
fn basic_value(user: &str, pass: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")))
}

fn header_value(config: &str) -> Result<String, Error> {
    let cfg = Config::parse(config, WHO)?;
    let s = shape(&cfg)?;
    let user = cfg.required_secret(s.user_key)?;
    let pass = cfg.required_secret(s.pass_key)?;
    Ok(basic_value(&user, &pass))
}

// Derived once per instance and configuration (see `Memo`), not on every request.
thread_local! { static HEADER: Memo<String> = const { Memo::new() }; }

struct BasicAuth;

impl Guest for BasicAuth {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        header_value(&config)?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let value = HEADER.with(|m| m.get(&config, header_value))?;
        set_header(&mut req.headers, "Authorization", value.as_bytes());
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        report_rejection(&config, WHO, INVALIDATE_ON, resp.status)
    }
}

export_module!(BasicAuth);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_of(json: &str) -> Result<Shape, String> {
        let cfg = Config::parse(json, WHO).unwrap();
        shape(&cfg).map_err(|e| match e {
            Error::Config(m) | Error::Unavailable(m) | Error::Internal(m) => m,
        })
    }

    #[test]
    fn reference_vector() {
        assert_eq!(
            basic_value("testuser", "testpass"),
            "Basic dGVzdHVzZXI6dGVzdHBhc3M="
        );
        // UTF-8, padding kept.
        assert_eq!(basic_value("é", "p"), "Basic w6k6cA==");
    }

    #[test]
    fn aliases_are_accepted_but_not_both_spellings() {
        assert_eq!(
            shape_of(r#"{"username_env":"U","password_env":"P"}"#).unwrap(),
            Shape {
                user_key: "username_env",
                pass_key: "password_env"
            }
        );
        assert_eq!(
            shape_of(r#"{"user_env":"U","pass_env":"P"}"#).unwrap(),
            Shape {
                user_key: "user_env",
                pass_key: "pass_env"
            }
        );
        assert!(
            shape_of(r#"{"username_env":"U","user_env":"U","password_env":"P"}"#)
                .unwrap_err()
                .contains("not both")
        );
        assert_eq!(
            shape_of(r#"{"password_env":"P"}"#).unwrap_err(),
            "BasicAuth: 'username_env' config field is required."
        );
        assert!(shape_of(r#"{"user_env":"U","pass_env":"P","passwd_env":"x"}"#).is_err());
    }
}
