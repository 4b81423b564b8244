//! Phase 4 — which provider: `X-Provider`, else `X-Broker` (legacy), else
//! `DEFAULT_PROVIDER`, lower-cased. Unknown → 400 with the usable names (only admitted
//! callers get this far, D5); known but broken → 503 with the reason (D3).

use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::headers::{X_BROKER, X_PROVIDER};
use crate::config::provider::ProviderDef;
use crate::error::ProxyError;
use crate::providers::{Providers, Signer};

/// A usable provider selected for this request.
#[derive(Debug)]
pub struct Selected<'a> {
    /// Its definition.
    pub def: &'a Arc<ProviderDef>,
    /// Its signer.
    pub signer: &'a Signer,
}

fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Select the provider.
pub fn resolve<'a>(
    providers: &'a Providers,
    headers: &HeaderMap,
    default: &str,
) -> Result<Selected<'a>, ProxyError> {
    let name = header(headers, &X_PROVIDER)
        .or_else(|| {
            let legacy = header(headers, &X_BROKER);
            if legacy.is_some() {
                tracing::debug!("X-Broker is deprecated; send X-Provider");
            }
            legacy
        })
        .unwrap_or(default);
    // Names are matched case-insensitively; most arrive in ASCII lower case already.
    let name = if !name.is_ascii() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    };
    let unknown = || ProxyError::UnknownProvider {
        name: name.to_string(),
        available: providers.usable(),
    };
    let p = providers.by_name.get(name.as_ref()).ok_or_else(unknown)?;
    match (&p.def, &p.signer) {
        (Some(def), Ok(signer)) => Ok(Selected { def, signer }),
        (_, Err(reason)) => Err(ProxyError::ProviderConfig {
            provider: name.to_string(),
            reason: reason.clone(),
        }),
        (None, Ok(_)) => Err(unknown()),
    }
}
