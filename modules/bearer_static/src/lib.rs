//! `bearer_static`: a fixed token in one header, `<header>: <prefix><token>`.
//!
//! Keys (reference §8.2): `value` (literal token) or `env` (name of the secret holding
//! it), `header` (default `Authorization`), `prefix` (default `"Bearer "`),
//! `invalidate_on` (default `[401]`; a static token has nothing to drop, so a rejection
//! is only reported).

use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, report_rejection, set_header,
};

const WHO: &str = "BearerStaticAuth";
const KEYS: &[&str] = &["value", "env", "header", "prefix", "invalidate_on"];

struct Settings {
    header: String,
    value: String,
}

fn settings(config: &str) -> Result<Settings, Error> {
    let cfg = Config::parse(config, WHO)?;
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(&[401])?;
    let token = match cfg.str_opt("value")? {
        Some(v) if !v.is_empty() => v.to_string(),
        _ if cfg.has("env") => cfg.required_secret("env")?,
        _ => return Err(cfg.error("config must have 'env' or 'value'.")),
    };
    let header = cfg.str_or("header", "Authorization")?;
    if header.is_empty() {
        return Err(cfg.error("'header' must not be empty."));
    }
    let prefix = cfg.str_or("prefix", "Bearer ")?;
    Ok(Settings {
        header: header.to_string(),
        value: format!("{prefix}{token}"),
    })
}

// Derived once per instance and configuration (see `Memo`), not on every request.
thread_local! { static SETTINGS: Memo<Settings> = const { Memo::new() }; }

struct BearerStatic;

impl Guest for BearerStatic {
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
        report_rejection(&config, WHO, &[401], resp.status)
    }
}

export_module!(BearerStatic);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();
