//! # Outpost plugin SDK
//!
//! Everything a Rust author needs to write an Outpost auth module: the generated
//! bindings for the `outpost:auth/module` world (see `wit/outpost.wit`), an
//! [`export_module!`] macro, and small helpers for reading configuration, secrets and
//! editing requests.
//!
//! A module is a `cdylib` built with `cargo build --target wasm32-wasip2 --release`;
//! drop the resulting `.wasm` into Outpost's plugins directory and name it in a
//! provider YAML (`auth: {type: plugin, module: my_plugin.wasm, config: {…}}`).
//!
//! ```no_run
//! use outpost_plugin_sdk::{export_module, Config, Error, Guest, ModuleInfo, Request,
//!     ResponseHook, ResponseInfo, Verdict, BodyAccess};
//!
//! struct Fixture;
//!
//! impl Guest for Fixture {
//!     fn validate_config(config: String) -> Result<ModuleInfo, Error> {
//!         let cfg = Config::parse(&config, "Fixture")?;
//!         cfg.required_secret("env")?; // fails at load time if the secret is unset
//!         Ok(ModuleInfo { body_access: BodyAccess::None, response_hook: ResponseHook::Errors })
//!     }
//!
//!     fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
//!         let cfg = Config::parse(&config, "Fixture")?;
//!         let token = cfg.required_secret("env")?;
//!         outpost_plugin_sdk::set_header(&mut req.headers, "X-Fixture", token.as_bytes());
//!         Ok(req)
//!     }
//!
//!     fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
//!         let cfg = Config::parse(&config, "Fixture")?;
//!         Ok(if cfg.invalidate_on(&[401])?.contains(&resp.status) {
//!             Verdict::Invalidated
//!         } else {
//!             Verdict::Accept
//!         })
//!     }
//! }
//!
//! export_module!(Fixture);
//! ```

// Lets the generated code name this crate by its public path from inside it too.
extern crate self as outpost_plugin_sdk;

/// Generated bindings for the `outpost:auth/module` world.
// SAFETY: `unsafe` is necessary here: wit-bindgen's generated glue implements the
// component-model canonical ABI (raw pointers into linear memory, `export_name`
// functions). It is machine-generated from `wit/outpost.wit`; no hand-written unsafe.
#[allow(missing_docs, clippy::all, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "module",
        pub_export_macro: true,
        export_macro_name: "export_module",
        default_bindings_module: "outpost_plugin_sdk::bindings",
        runtime_path: "outpost_plugin_sdk::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen;

pub use bindings::Guest;
pub use bindings::export_module;
pub use bindings::outpost::auth::types::{
    BodyAccess, Error, Header, ModuleInfo, Request, ResponseHook, ResponseInfo, Verdict,
};
pub use bindings::outpost::auth::{http, kv, log, secrets};

mod alloc;
pub use alloc::SmallBlocks;

/// Declare that this module keeps nothing between calls: what one `sign-request`
/// leaves in memory (globals, caches, the heap) never matters to the next, so Outpost
/// may serve many requests of the same provider from one instance instead of a fresh
/// instance per request (`OUTPOST_PLUGIN_REUSE`; about 12 µs less per request).
///
/// Declare it only if it is true: a module that keeps per-request data in a global
/// could show one request's data to the next. Modules that mint or cache credentials
/// through `kv` are better left undeclared. The declaration is a custom section named
/// `outpost:stateless`; `outpost plugin inspect` shows whether a component carries it.
///
/// ```no_run
/// outpost_plugin_sdk::declare_stateless!();
/// ```
#[macro_export]
macro_rules! declare_stateless {
    () => {
        // SAFETY: `unsafe` is necessary here: `link_section` puts this constant into a
        // custom section of the module; nothing ever reads it at run time.
        #[allow(unsafe_code)]
        #[used]
        #[unsafe(link_section = "outpost:stateless")]
        static OUTPOST_STATELESS: [u8; 1] = [1];
    };
}

/// Settings derived from the configuration, kept for the next call with the same
/// configuration.
///
/// An instance that serves many calls (a module that declares itself stateless, see
/// [`declare_stateless!`]) then parses its configuration, and reads the secrets it
/// names, once instead of on every request. The configuration is compared byte for
/// byte on each call, and only a successful derivation is kept, so a call never sees
/// settings derived from another configuration, nor a cached failure. Secrets cannot
/// change under it: Outpost resolves them when it loads the configuration, and a new
/// configuration gets new instances. Settings are kept from an instance's second call
/// on, so a fresh instance per call pays nothing for the memo.
///
/// ```no_run
/// use outpost_plugin_sdk::{Config, Error, Memo};
///
/// struct Settings { token: String }
///
/// fn settings(config: &str) -> Result<Settings, Error> {
///     let cfg = Config::parse(config, "Fixture")?;
///     Ok(Settings { token: cfg.required_secret("env")? })
/// }
///
/// thread_local! { static SETTINGS: Memo<Settings> = const { Memo::new() }; }
///
/// fn token(config: &str) -> Result<String, Error> {
///     SETTINGS.with(|m| m.get(config, settings).map(|s| s.token.clone()))
/// }
/// ```
pub struct Memo<T> {
    slot: std::cell::RefCell<Option<(String, std::rc::Rc<T>)>>,
    /// A derivation was asked for before: the instance serves more than one call.
    asked: std::cell::Cell<bool>,
}

impl<T> Memo<T> {
    /// An empty memo.
    pub const fn new() -> Self {
        Self {
            slot: std::cell::RefCell::new(None),
            asked: std::cell::Cell::new(false),
        }
    }

    /// The settings for `config`: the kept ones when `config` is the one they were
    /// derived from, else `derive(config)`, kept when it succeeds.
    pub fn get(
        &self,
        config: &str,
        derive: impl FnOnce(&str) -> Result<T, Error>,
    ) -> Result<std::rc::Rc<T>, Error> {
        if let Some((kept, value)) = &*self.slot.borrow()
            && kept == config
        {
            return Ok(value.clone());
        }
        let value = std::rc::Rc::new(derive(config)?);
        // Kept from the second derivation on: an instance's first call may be its only
        // one (a fresh instance per call), and what it would keep stays allocated while
        // the call goes on, so the call touches more of the instance's memory. Kept on
        // the first call, a fresh `bearer_static` instance took 17-29 µs at p50 from one
        // run to the next; from the second, 17.5-17.8 µs.
        if self.asked.replace(true) {
            *self.slot.borrow_mut() = Some((config.to_string(), value.clone()));
        }
        Ok(value)
    }
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Self::new()
    }
}

use serde_json::{Map, Value};

/// The module's configuration: the provider's `auth:` block (or a plugin's `config:`
/// map) as a JSON object, with typed accessors whose errors name the key.
#[derive(Debug, Clone)]
pub struct Config {
    who: &'static str,
    map: Map<String, Value>,
}

impl Config {
    /// Parse the JSON text the host passes. `who` prefixes error messages
    /// (e.g. `BearerStaticAuth`), so operators see which scheme complained.
    pub fn parse(text: &str, who: &'static str) -> Result<Self, Error> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Self { who, map }),
            Ok(_) => Err(Error::Config(format!("{who}: config must be a map."))),
            Err(e) => Err(Error::Config(format!(
                "{who}: config is not valid JSON: {e}"
            ))),
        }
    }

    /// The raw JSON value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// Whether `key` is present (even if null).
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The whole map.
    pub fn map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The prefix used in error messages.
    pub fn who(&self) -> &'static str {
        self.who
    }

    /// A config error with the module's prefix.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Config(format!("{}: {message}", self.who))
    }

    /// An optional string; a non-string value is an error naming the key.
    pub fn str_opt(&self, key: &str) -> Result<Option<&str>, Error> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.error(format_args!("'{key}' must be a string."))),
        }
    }

    /// A string with a default.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str, Error> {
        Ok(self.str_opt(key)?.unwrap_or(default))
    }

    /// A required, non-empty string.
    pub fn required_str(&self, key: &str) -> Result<&str, Error> {
        match self.str_opt(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.error(format_args!("'{key}' config field is required."))),
        }
    }

    /// The secret named by the string under `key` (e.g. `env: GITHUB_TOKEN`), which
    /// must be set and non-empty.
    pub fn required_secret(&self, key: &str) -> Result<String, Error> {
        let name = self.required_str(key)?;
        secret(name)
            .ok_or_else(|| self.error(format_args!("env var '{name}' is not set or empty.")))
    }

    /// The secret named under `key`, if the key is present and the secret set.
    pub fn optional_secret(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self.str_opt(key)?.and_then(secret))
    }

    /// Refuse keys other than `known`, with a did-you-mean hint, so a typo in the YAML
    /// is reported at load time instead of silently ignored.
    pub fn allow_only(&self, known: &[&str]) -> Result<(), Error> {
        for key in self.map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let hint = known
                .iter()
                .map(|k| (strsim::levenshtein(k, key), *k))
                .filter(|(d, _)| *d <= 3)
                .min()
                .map(|(_, k)| format!(" (did you mean '{k}'?)"))
                .unwrap_or_default();
            return Err(self.error(format_args!(
                "unknown config key '{key}'{hint}; expected one of: {}.",
                known.join(", ")
            )));
        }
        Ok(())
    }

    /// A list of HTTP statuses under `invalidate_on`, or `default`.
    pub fn invalidate_on(&self, default: &[u16]) -> Result<Vec<u16>, Error> {
        self.status_list("invalidate_on", default)
    }

    /// A list of HTTP statuses under `key`, or `default` when absent.
    pub fn status_list(&self, key: &str, default: &[u16]) -> Result<Vec<u16>, Error> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| (100..=599).contains(n))
                        .ok_or_else(|| {
                            self.error(format_args!("'{key}' must be a list of HTTP status codes."))
                        })
                })
                .collect(),
            Some(_) => {
                Err(self.error(format_args!("'{key}' must be a list of HTTP status codes.")))
            }
        }
    }
}

/// `on-response` for a module with a static credential: there is nothing to drop, so a
/// status in the config's `invalidate_on` (else `default`) is only reported as
/// `Invalidated`; anything else is `Accept`.
pub fn report_rejection(
    config: &str,
    who: &'static str,
    default: &[u16],
    status: u16,
) -> Result<Verdict, Error> {
    let cfg = Config::parse(config, who)?;
    Ok(if cfg.invalidate_on(default)?.contains(&status) {
        Verdict::Invalidated
    } else {
        Verdict::Accept
    })
}

/// A secret by name, `None` when unset, empty, or not declared by the configuration.
pub fn secret(name: &str) -> Option<String> {
    secrets::get(name).filter(|v| !v.is_empty())
}

/// Set a header, replacing every same-named header (ASCII case-insensitive) so an agent
/// can never smuggle a second credential. The first replaced header keeps its position;
/// a new header is appended.
pub fn set_header(headers: &mut Vec<Header>, name: &str, value: &[u8]) {
    let mut placed = false;
    headers.retain_mut(|h| {
        if !h.name.eq_ignore_ascii_case(name) {
            return true;
        }
        if placed {
            return false;
        }
        placed = true;
        h.name = name.to_string();
        h.value = value.to_vec();
        true
    });
    if !placed {
        headers.push(Header {
            name: name.to_string(),
            value: value.to_vec(),
        });
    }
}

/// Log through the host (secret values are redacted by the host as well).
pub fn log(level: log::Level, message: &str) {
    log::log(level, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn memo_derives_again_only_for_another_config_and_keeps_no_failure() {
        let memo = Memo::new();
        let calls = std::cell::Cell::new(0);
        let derive = |config: &str| {
            calls.set(calls.get() + 1);
            if config == "bad" {
                Err(Error::Config("bad".into()))
            } else {
                Ok(config.len())
            }
        };
        // The first call keeps nothing: it may be the instance's only one.
        assert_eq!(*memo.get("abc", derive).unwrap(), 3);
        assert_eq!(*memo.get("abc", derive).unwrap(), 3);
        assert_eq!(calls.get(), 2);
        assert_eq!(*memo.get("abc", derive).unwrap(), 3);
        assert_eq!(*memo.get("abc", derive).unwrap(), 3);
        assert_eq!(
            calls.get(),
            2,
            "from the second call on, the same config is kept"
        );
        assert_eq!(*memo.get("abcd", derive).unwrap(), 4);
        assert_eq!(calls.get(), 3, "another config is derived anew");
        assert_eq!(*memo.get("abcd", derive).unwrap(), 4);
        assert_eq!(calls.get(), 3);
        assert!(memo.get("bad", derive).is_err());
        assert!(memo.get("bad", derive).is_err());
        assert_eq!(calls.get(), 5, "a failure is not kept");
        assert_eq!(*memo.get("abcd", derive).unwrap(), 4);
        assert_eq!(
            calls.get(),
            5,
            "a failed derivation leaves the kept settings"
        );
    }

    #[test]
    fn set_header_replaces_case_insensitively_in_place() {
        let mut headers = vec![
            h("accept", "*/*"),
            h("authorization", "evil"),
            h("AUTHORIZATION", "x"),
        ];
        set_header(&mut headers, "Authorization", b"Bearer t");
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1].name, "Authorization");
        assert_eq!(headers[1].value, b"Bearer t");
    }

    #[test]
    fn set_header_appends_when_absent() {
        let mut headers = vec![h("accept", "*/*")];
        set_header(&mut headers, "X-Api-Key", b"k");
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1].name, "X-Api-Key");
    }

    #[test]
    fn static_modules_only_report_rejections() {
        let v = |cfg: &str, status| report_rejection(cfg, "T", &[401], status).unwrap();
        assert!(matches!(v("{}", 401), Verdict::Invalidated));
        assert!(matches!(v("{}", 403), Verdict::Accept));
        assert!(matches!(
            v(r#"{"invalidate_on": [403]}"#, 403),
            Verdict::Invalidated
        ));
        assert!(matches!(
            v(r#"{"invalidate_on": [403]}"#, 401),
            Verdict::Accept
        ));
        assert!(report_rejection(r#"{"invalidate_on": 401}"#, "T", &[401], 401).is_err());
    }

    #[test]
    fn config_type_errors_name_the_key() {
        let cfg = Config::parse(r#"{"header": 5}"#, "T").unwrap();
        match cfg.str_opt("header") {
            Err(Error::Config(m)) => assert_eq!(m, "T: 'header' must be a string."),
            other => panic!("{other:?}"),
        }
        match cfg.status_list("invalidate_on", &[401]) {
            Ok(v) => assert_eq!(v, vec![401]),
            other => panic!("{other:?}"),
        }
        let cfg = Config::parse(r#"{"invalidate_on": 401}"#, "T").unwrap();
        assert!(cfg.invalidate_on(&[401]).is_err());
        assert!(Config::parse("[]", "T").is_err());
    }
}
