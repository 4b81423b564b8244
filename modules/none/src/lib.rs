//! `none`: forwards requests without adding any credential (public APIs, or upstreams
//! reached through another trust mechanism). Its configuration must be empty.

use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, ModuleInfo, Request, ResponseHook, ResponseInfo, Verdict,
    export_module,
};

const WHO: &str = "NoneAuth";

struct NoneAuth;

impl Guest for NoneAuth {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        Config::parse(&config, WHO)?.allow_only(&[])?;
        Ok(ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::None,
        })
    }

    fn sign_request(_config: String, req: Request) -> Result<Request, Error> {
        Ok(req)
    }

    fn on_response(_config: String, _resp: ResponseInfo) -> Result<Verdict, Error> {
        Ok(Verdict::Accept)
    }
}

export_module!(NoneAuth);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();
