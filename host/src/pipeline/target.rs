//! Phase 5 — where the request goes: the provider's `base_url` path followed by the
//! request path, and the agent's raw query. (Path canonicalisation and route policy,
//! D7, slot in here.)

use http::Uri;

use crate::config::provider::ProviderDef;
use crate::error::ProxyError;

/// The upstream target.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// Full upstream path (base path + request path).
    pub path: String,
    /// Raw query, without `?`.
    pub query: String,
}

/// Build the target for `uri` on provider `def`.
pub fn build(def: &ProviderDef, uri: &Uri) -> Result<Target, ProxyError> {
    let path = uri.path();
    if path.is_empty() || path == "/" {
        return Err(ProxyError::NoRoute("Empty path".into()));
    }
    if !path.starts_with('/') {
        return Err(ProxyError::BadPath(
            "Request target must be a path starting with '/'".into(),
        ));
    }
    Ok(Target {
        scheme: def.scheme.clone(),
        authority: def.authority.clone(),
        path: format!("{}{}", def.base_path, path),
        query: uri.query().unwrap_or("").to_string(),
    })
}
