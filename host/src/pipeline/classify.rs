//! Phase 7 — which route the request takes: the first matching allow rule (allowlist
//! mode) or the transparent defaults, where every method but GET, HEAD and OPTIONS is a
//! write (D8). The route carries the rate-limit category, cache TTL and sensitivity that
//! the later phases act on.

use http::Method;

use super::path::Target;
use crate::config::provider::ProviderDef;
use crate::error::ProxyError;
use crate::policy::route::Route;

/// The route, or `404 PROXY_NO_ROUTE`.
pub fn classify<'d>(
    def: &'d ProviderDef,
    method: &Method,
    target: &Target,
) -> Result<Route<'d>, ProxyError> {
    def.routes
        .classify(method.as_str(), &target.canonical)
        .ok_or_else(|| {
            ProxyError::NoRoute(format!(
                "No matching route for {} {}",
                method, target.canonical
            ))
        })
}
