//! `custom_headers`: any number of static headers, each a literal or a secret.
//!
//! Keys (reference §8.6): `headers`, a map of header name → `{value: <literal>}` or
//! `{env: <SECRET NAME>}` (`value` wins when both are given, as in the original),
//! `invalidate_on` (default `[401]`, the Python runtime's default; static headers have
//! nothing to drop, so a rejection is only reported). As in the Python runtime an absent
//! `headers` map is allowed (nothing is injected). Header names are emitted exactly as
//! configured and replace same-named agent headers case-insensitively (D9).

use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, report_rejection, secret, set_header,
};
use serde_json::Value;

const WHO: &str = "CustomHeadersAuth";
const KEYS: &[&str] = &["headers", "invalidate_on"];
const SPEC_KEYS: &[&str] = &["value", "env"];
const INVALIDATE_ON: &[u16] = &[401];

/// Where one header's value comes from.
#[derive(Debug, PartialEq)]
enum Source<'a> {
    Literal(&'a str),
    Secret(&'a str),
}

/// The configured headers, in configuration order.
fn shape(cfg: &Config) -> Result<Vec<(&str, Source<'_>)>, Error> {
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(INVALIDATE_ON)?;
    let map = match cfg.get("headers") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(cfg.error("'headers' config field is required and must be an object."));
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (name, spec) in map {
        if !is_token(name) {
            return Err(cfg.error(format_args!(
                "header name '{}' is not a valid HTTP header name.",
                name.escape_debug()
            )));
        }
        let Value::Object(spec) = spec else {
            return Err(cfg.error(format_args!("header '{name}' must have 'env' or 'value'.")));
        };
        if let Some(k) = spec.keys().find(|k| !SPEC_KEYS.contains(&k.as_str())) {
            return Err(cfg.error(format_args!(
                "header '{name}': unknown key '{k}'; expected 'value' or 'env'."
            )));
        }
        let source = match (spec.get("value"), spec.get("env")) {
            (Some(Value::String(v)), _) => {
                if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(cfg.error(format_args!(
                        "header '{name}': 'value' must not contain line breaks or NUL."
                    )));
                }
                Source::Literal(v.as_str())
            }
            (Some(_), _) => {
                return Err(cfg.error(format_args!("header '{name}': 'value' must be a string.")));
            }
            (None, Some(Value::String(e))) if !e.is_empty() => Source::Secret(e.as_str()),
            (None, Some(Value::String(_)) | None) => {
                return Err(cfg.error(format_args!("header '{name}' must have 'env' or 'value'.")));
            }
            (None, Some(_)) => {
                return Err(cfg.error(format_args!("header '{name}': 'env' must be a string.")));
            }
        };
        out.push((name.as_str(), source));
    }
    Ok(out)
}

/// RFC 9110 `token` (a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Every header with its value resolved.
fn resolve(config: &str) -> Result<Vec<(String, String)>, Error> {
    let cfg = Config::parse(config, WHO)?;
    shape(&cfg)?
        .into_iter()
        .map(|(name, source)| match source {
            Source::Literal(v) => Ok((name.to_string(), v.to_string())),
            Source::Secret(env) => secret(env).map(|v| (name.to_string(), v)).ok_or_else(|| {
                cfg.error(format_args!(
                    "env var '{env}' for header '{name}' is not set or empty."
                ))
            }),
        })
        .collect()
}

// Derived once per instance and configuration (see `Memo`), not on every request.
thread_local! { static HEADERS: Memo<Vec<(String, String)>> = const { Memo::new() }; }

struct CustomHeaders;

impl Guest for CustomHeaders {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        resolve(&config)?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        for (name, value) in HEADERS.with(|m| m.get(&config, resolve))?.iter() {
            set_header(&mut req.headers, name, value.as_bytes());
        }
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        report_rejection(&config, WHO, INVALIDATE_ON, resp.status)
    }
}

export_module!(CustomHeaders);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<Vec<(String, Source<'static>)>, String> {
        let cfg: &'static Config = Box::leak(Box::new(Config::parse(json, WHO).unwrap()));
        shape(cfg)
            .map(|v| v.into_iter().map(|(n, s)| (n.to_string(), s)).collect())
            .map_err(|e| match e {
                Error::Config(m) | Error::Unavailable(m) | Error::Internal(m) => m,
            })
    }

    #[test]
    fn headers_in_order_value_before_env() {
        let got = check(
            r#"{"headers":{"X-Tenant":{"value":"acme"},"X-Key":{"env":"K"},"X-Both":{"value":"lit","env":"K"}}}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("X-Tenant".to_string(), Source::Literal("acme")),
                ("X-Key".to_string(), Source::Secret("K")),
                ("X-Both".to_string(), Source::Literal("lit")),
            ]
        );
        assert_eq!(check("{}").unwrap(), vec![]);
    }

    #[test]
    fn bad_specs_are_config_errors_with_the_original_texts() {
        assert_eq!(
            check(r#"{"headers":{"X-A":{}}}"#).unwrap_err(),
            "CustomHeadersAuth: header 'X-A' must have 'env' or 'value'."
        );
        assert_eq!(
            check(r#"{"headers":["X-A"]}"#).unwrap_err(),
            "CustomHeadersAuth: 'headers' config field is required and must be an object."
        );
        assert!(
            check(r#"{"headers":{"X-A":{"valu":"x"}}}"#)
                .unwrap_err()
                .contains("unknown key 'valu'")
        );
        assert!(check(r#"{"headers":{"X A":{"value":"x"}}}"#).is_err());
        assert!(check(r#"{"headers":{"X-A":{"value":"a\nb"}}}"#).is_err());
        assert!(check(r#"{"headers":{"X-A":{"value":5}}}"#).is_err());
        assert!(
            check(r#"{"headers":{}, "header":{}}"#)
                .unwrap_err()
                .contains("did you mean 'headers'")
        );
    }
}
