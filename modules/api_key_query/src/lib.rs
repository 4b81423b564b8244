//! `api_key_query`: a static API key as a query parameter, `<param>=<key>`.
//!
//! Keys (reference §8.4): `env` (required: the secret holding the key), `param`
//! (required: the parameter name), `invalidate_on` (default `[401]`; a static key has
//! nothing to drop, so a rejection is only reported).
//!
//! The query is never re-serialised (§13 #32, D9): every agent-supplied parameter whose
//! (percent-decoded) name equals `param` is removed, the other pieces keep their exact
//! bytes and order, and `&<param>=<percent-encoded key>` is appended last.

use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Memo, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict, export_module, report_rejection,
};

mod query;

use query::{append_param, drop_params};

const WHO: &str = "ApiKeyQueryAuth";
const KEYS: &[&str] = &["env", "param", "invalidate_on"];
const INVALIDATE_ON: &[u16] = &[401];

/// The configuration's shape, before the secret is read.
struct Shape<'a> {
    param: &'a str,
}

fn shape(cfg: &Config) -> Result<Shape<'_>, Error> {
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(INVALIDATE_ON)?;
    cfg.required_str("env")?;
    Ok(Shape {
        param: cfg.required_str("param")?,
    })
}

/// `query` with the agent's `param` removed and `param=<key>` appended.
fn signed_query(query: &str, param: &str, key: &str) -> String {
    append_param(&drop_params(query, &[param]), param, key)
}

/// What signing needs: the parameter's name and the key.
struct Signing {
    param: String,
    key: String,
}

fn signing(config: &str) -> Result<Signing, Error> {
    let cfg = Config::parse(config, WHO)?;
    Ok(Signing {
        param: shape(&cfg)?.param.to_string(),
        key: cfg.required_secret("env")?,
    })
}

// Derived once per instance and configuration (see `Memo`), not on every request.
thread_local! { static SIGNING: Memo<Signing> = const { Memo::new() }; }

struct ApiKeyQuery;

impl Guest for ApiKeyQuery {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        let cfg = Config::parse(&config, WHO)?;
        shape(&cfg)?;
        cfg.required_secret("env")?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let s = SIGNING.with(|m| m.get(&config, signing))?;
        req.query = signed_query(&req.query, &s.param, &s.key);
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        report_rejection(&config, WHO, INVALIDATE_ON, resp.status)
    }
}

export_module!(ApiKeyQuery);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_replaces_agent_copies_and_goes_last() {
        assert_eq!(signed_query("", "api_key", "k1"), "api_key=k1");
        assert_eq!(
            signed_query("api_key=evil&q=a%20b+c&x=~&api_key=2", "api_key", "s/k+="),
            "q=a%20b+c&x=~&api_key=s%2Fk%2B%3D"
        );
        assert_eq!(
            signed_query("a=1&a=2&api%5Fkey=smuggled", "api_key", "k"),
            "a=1&a=2&api_key=k",
            "duplicates kept, encoded aliases of the name dropped"
        );
    }

    #[test]
    fn keys_are_checked() {
        for (json, want) in [
            (
                r#"{"param":"k"}"#,
                "ApiKeyQueryAuth: 'env' config field is required.",
            ),
            (
                r#"{"env":"E"}"#,
                "ApiKeyQueryAuth: 'param' config field is required.",
            ),
        ] {
            let cfg = Config::parse(json, WHO).unwrap();
            match shape(&cfg) {
                Err(Error::Config(m)) => assert_eq!(m, want),
                _ => panic!("{json} accepted"),
            }
        }
        let cfg = Config::parse(r#"{"env":"E","param":"k","parm":"x"}"#, WHO).unwrap();
        assert!(shape(&cfg).is_err());
    }
}
