//! `api_key_header`: a static API key in one header, `<header>: <prefix><key>`.
//!
//! Keys (reference §8.3): `env` (required: the secret holding the key), `header`
//! (required: the header name, emitted exactly as configured), `prefix` (default `""`),
//! `invalidate_on` (default `[401]`, the Python runtime's default; a static key has
//! nothing to drop, so a rejection is only reported).
//!
//! The header replaces any same-named header the agent sent (case-insensitively), so an
//! agent can never smuggle a second key (D9).

use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, report_rejection, set_header,
};

const WHO: &str = "ApiKeyHeaderAuth";
const KEYS: &[&str] = &["env", "header", "prefix", "invalidate_on"];
const INVALIDATE_ON: &[u16] = &[401];

/// The validated configuration, with the secret resolved.
struct Settings {
    header: String,
    value: String,
}

/// The configuration's shape, before any secret is read.
#[derive(Debug, PartialEq)]
struct Shape<'a> {
    env: &'a str,
    header: &'a str,
    prefix: &'a str,
}

fn shape(cfg: &Config) -> Result<Shape<'_>, Error> {
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(INVALIDATE_ON)?;
    Ok(Shape {
        env: cfg.required_str("env")?,
        header: cfg.required_str("header")?,
        prefix: cfg.str_or("prefix", "")?,
    })
}

fn settings(config: &str) -> Result<Settings, Error> {
    let cfg = Config::parse(config, WHO)?;
    let s = shape(&cfg)?;
    let key = cfg.required_secret("env")?;
    Ok(Settings {
        header: s.header.to_string(),
        value: format!("{}{key}", s.prefix),
    })
}

// Derived once per instance and configuration (see `Memo`), not on every request.
thread_local! { static SETTINGS: Memo<Settings> = const { Memo::new() }; }

struct ApiKeyHeader;

impl Guest for ApiKeyHeader {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        settings(&config)?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let s = SETTINGS.with(|m| m.get(&config, settings))?;
        set_header(&mut req.headers, &s.header, s.value.as_bytes());
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        report_rejection(&config, WHO, INVALIDATE_ON, resp.status)
    }
}

export_module!(ApiKeyHeader);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(json: &str) -> String {
        let cfg = Config::parse(json, WHO).unwrap();
        match shape(&cfg) {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn shape_reads_keys_and_defaults() {
        let cfg = Config::parse(r#"{"env":"K","header":"x-api-key"}"#, WHO).unwrap();
        assert_eq!(
            shape(&cfg).unwrap(),
            Shape {
                env: "K",
                header: "x-api-key",
                prefix: ""
            }
        );
        let cfg = Config::parse(
            r#"{"env":"K","header":"X-Key","prefix":"Token ","invalidate_on":[401,403]}"#,
            WHO,
        )
        .unwrap();
        assert_eq!(shape(&cfg).unwrap().prefix, "Token ");
    }

    #[test]
    fn missing_and_unknown_keys_are_config_errors() {
        assert_eq!(
            config_error(r#"{"env":"K"}"#),
            "ApiKeyHeaderAuth: 'header' config field is required."
        );
        assert_eq!(
            config_error(r#"{"header":"X"}"#),
            "ApiKeyHeaderAuth: 'env' config field is required."
        );
        assert!(
            config_error(r#"{"env":"K","header":"X","prefx":"a"}"#)
                .contains("did you mean 'prefix'")
        );
        assert!(
            config_error(r#"{"env":"K","header":"X","invalidate_on":401}"#)
                .contains("invalidate_on")
        );
    }
}
