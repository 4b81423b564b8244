//! Phase 5 — the one canonical path (D7), computed before any rule looks at it, and the
//! upstream target: the provider's `base_url` path followed by that canonical path, with
//! the agent's raw query. What the rules match is exactly what is forwarded.

use http::Uri;

use crate::config::provider::ProviderDef;
use crate::error::ProxyError;
use crate::policy::path::canonicalize;

/// The upstream target.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// The canonical request path (what rules match).
    pub canonical: String,
    /// Full upstream path (base path + canonical path).
    pub path: String,
    /// Raw query, without `?`.
    pub query: String,
}

/// Canonicalise `uri`'s path and build the target on provider `def`.
pub fn build(def: &ProviderDef, uri: &Uri) -> Result<Target, ProxyError> {
    let raw = uri.path();
    if raw.is_empty() || raw == "/" {
        return Err(ProxyError::NoRoute("Empty path".into()));
    }
    let canonical =
        canonicalize(raw).map_err(|e| ProxyError::BadPath(format!("Bad request path: {e}")))?;
    Ok(Target {
        scheme: def.scheme.clone(),
        authority: def.authority.clone(),
        path: [def.base_path.as_str(), &canonical].concat(),
        canonical,
        query: uri.query().unwrap_or("").to_string(),
    })
}
