//! Phase 11 — the provider's auth module signs the request (`sign-request`). Runs last
//! before forwarding so it signs exactly what is sent. The body is buffered (capped,
//! D11) only when the module declared it needs it. Any failure — module error, trap,
//! deadline, a result that changes the target — is `502 PROXY_AUTH_ERROR`: a request
//! is never forwarded unsigned (D16).

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Limited};

use super::path::Target;
use super::provider::Selected;
use crate::error::ProxyError;
use crate::runtime::{BodyAccess, Header, Request};
use crate::server::AppState;

/// A signed request ready to forward.
#[derive(Debug)]
pub struct Signed {
    /// What the module returned.
    pub request: Request,
    /// What the module was given: a retry with a fresh credential (D17) signs it again.
    pub unsigned: Request,
    /// The body to send.
    pub body: Body,
    /// The buffered body, when there is one (replayable for a retry).
    pub buffered: Option<Bytes>,
}

/// Read a whole request body, refusing more than `limit` bytes (D11).
pub async fn buffer(body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    Ok(Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ProxyError::BodyTooLarge(limit)
            } else if let Some(idle) = super::is_body_idle(e.as_ref()) {
                ProxyError::RequestTimeout(idle)
            } else {
                ProxyError::BadRequest(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes())
}

/// Sign the request to `target` with `headers` (those of [`super::headers::outbound`]).
pub async fn sign(
    state: &AppState,
    provider: &Selected<'_>,
    method: &Method,
    target: Target,
    headers: &[(HeaderName, HeaderValue)],
    body: Body,
) -> Result<Signed, ProxyError> {
    let request = Request {
        method: method.as_str().to_string(),
        scheme: target.scheme,
        authority: target.authority,
        path: target.path,
        query: target.query,
        headers: headers
            .iter()
            .map(|(n, v)| Header {
                name: n.as_str().to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
        body: None,
    };
    sign_request(state, provider, request, body).await
}

/// Sign `request` (its body, when the module needs one, is read from `body`): the
/// request [`sign`] built, or the one a first attempt signed, for a retry.
pub async fn sign_request(
    state: &AppState,
    provider: &Selected<'_>,
    mut request: Request,
    body: Body,
) -> Result<Signed, ProxyError> {
    let signer = provider.signer;
    let (buffered, stream) = match signer.info.body_access {
        BodyAccess::None => (None, Some(body)),
        BodyAccess::Read | BodyAccess::ReadWrite => {
            let bytes = buffer(body, state.settings.max_body_bytes).await?;
            (Some(bytes), None)
        }
    };
    request.body = buffered.as_ref().map(|b| b.to_vec());
    signer.admit(&provider.def.name)?;
    let started = std::time::Instant::now();
    let outcome = signer
        .sign(&state.runtime, &request, signer.pool.as_ref())
        .await;
    signer.record(&provider.def.name, &outcome, &state.metrics);
    let mut signed = outcome.map_err(|e| {
            let msg = signer.env.grants.redact(&e.to_string());
            tracing::warn!(provider = %provider.def.name, module = %signer.module.name, "signing failed: {msg}");
            match e {
                crate::runtime::CallError::StateUnavailable(_) => ProxyError::StateUnavailable(msg),
                _ => ProxyError::Auth(msg),
            }
        })?;
    signer
        .metrics(&provider.def.name, &state.metrics)
        .signer(started.elapsed());
    let (body, buffered) = match (signed.body.take(), buffered) {
        (Some(replacement), _) => {
            let b = Bytes::from(replacement);
            (Body::from(b.clone()), Some(b))
        }
        (None, Some(b)) => (Body::from(b.clone()), Some(b)),
        (None, None) => (stream.unwrap_or_else(Body::empty), None),
    };
    Ok(Signed {
        request: signed,
        unsigned: request,
        body,
        buffered,
    })
}
