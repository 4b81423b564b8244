//! Phase 6 — deny rules, method-agnostic, checked before anything else may allow the
//! path. Matching is deliberately suspicious (D7): the canonical path or its fully
//! decoded form, case-insensitively, with or without one trailing slash.

use super::path::Target;
use crate::config::provider::ProviderDef;
use crate::error::ProxyError;

/// `403 PROXY_PATH_DENIED` when a deny glob matches.
pub fn check(def: &ProviderDef, target: &Target) -> Result<(), ProxyError> {
    match def.routes.denied_by(&target.canonical) {
        Some(pattern) => {
            tracing::info!(provider = %def.name, path = %target.canonical, pattern, "path denied");
            Err(ProxyError::PathDenied {
                path: target.canonical.clone(),
                provider: def.name.clone(),
            })
        }
        None => Ok(()),
    }
}
