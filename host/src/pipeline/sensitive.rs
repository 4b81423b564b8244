//! Phase 8 — the sensitive gate: a route marked sensitive (or a write in transparent
//! mode with `treat_writes_as_sensitive`) needs a host with `can_call_sensitive`. It
//! runs after classification, which decides sensitivity, and before anything costs
//! state, tokens or an upstream call.

use crate::config::hosts::HostPolicy;
use crate::error::ProxyError;
use crate::policy::route::Route;

/// `403 PROXY_SENSITIVE_DENIED` when the host may not make this call.
pub fn gate(
    policy: &HostPolicy,
    route: &Route<'_>,
    provider: &str,
    method: &str,
    path: &str,
) -> Result<(), ProxyError> {
    if route.sensitive && !policy.can_call_sensitive {
        tracing::warn!(host = %policy.id, provider, "attempted sensitive op {method} {path}");
        return Err(ProxyError::SensitiveDenied {
            host: policy.id.clone(),
        });
    }
    Ok(())
}
