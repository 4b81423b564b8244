//! Phase 12 — send the signed request and stream the answer back. Redirects are not
//! followed (D10); bodies and `Content-Encoding` pass through untouched (D11); the
//! upstream must answer within the first-byte timeout (D12). Module-injected header
//! values are marked sensitive so no debug output can print them (D18). Afterwards the
//! module is told about the response as its `response-hook` asked (`on-response`, D17);
//! its verdict decides whether the pipeline retries once with a fresh credential.

use std::error::Error as _;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;

use super::headers::{DROP_RESPONSE, always_dropped_response, connection_listed, tag_response};
use super::provider::Selected;
use crate::error::ProxyError;
use crate::runtime::{Header, Request, ResponseHook, ResponseInfo, Verdict};

/// Largest JSON response body shown to `on-response`; larger bodies stream unseen.
const MAX_INSPECTED_BODY: usize = 1024 * 1024;
use crate::server::AppState;

/// Forward the signed request `r` with `body` and build the agent's response, with the
/// module's verdict on it and the time the upstream took to its response head. `before`
/// are the headers the module was given: any other header it returned was injected by
/// the module and is marked sensitive.
pub async fn forward(
    state: &AppState,
    provider: &Selected<'_>,
    category: &str,
    r: Request,
    body: Body,
    before: &[(HeaderName, HeaderValue)],
) -> Result<(Response, Verdict, std::time::Duration), ProxyError> {
    let mut uri = String::with_capacity(
        r.scheme.len() + 3 + r.authority.len() + r.path.len() + 1 + r.query.len(),
    );
    for part in [r.scheme.as_str(), "://", &r.authority, &r.path] {
        uri.push_str(part);
    }
    if !r.query.is_empty() {
        uri.push('?');
        uri.push_str(&r.query);
    }
    let mut builder = http::Request::builder().method(r.method.as_str()).uri(uri);
    let headers = builder
        .headers_mut()
        .ok_or_else(|| ProxyError::Auth("module produced an invalid request".into()))?;
    for h in &r.headers {
        // A header the module passed through unchanged keeps its parsed name and value.
        if let Some((name, value)) = before
            .iter()
            .find(|(n, v)| n.as_str() == h.name && v.as_bytes() == h.value.as_slice())
        {
            headers.append(name.clone(), value.clone());
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            ProxyError::Auth(format!(
                "module returned an invalid header name '{}'",
                h.name.escape_debug()
            ))
        })?;
        let mut value = HeaderValue::from_bytes(&h.value).map_err(|_| {
            ProxyError::Auth(format!(
                "module returned an invalid value for header '{name}'"
            ))
        })?;
        if !before
            .iter()
            .any(|(n, v)| *n == name && v.as_bytes() == h.value.as_slice())
        {
            value.set_sensitive(true);
        }
        headers.append(name, value);
    }
    let request = builder
        .body(body)
        .map_err(|e| ProxyError::Auth(format!("module produced an invalid request: {e}")))?;

    let timeout = state.settings.upstream_timeout;
    let sent = std::time::Instant::now();
    let response = match tokio::time::timeout(
        timeout,
        crate::client::request(&state.client, request),
    )
    .await
    {
        Err(_) => return Err(ProxyError::UpstreamTimeout(timeout)),
        Ok(Err(e)) => {
            if let Some(idle) = super::is_body_idle(&e) {
                tracing::warn!(provider = %provider.def.name, "the agent stalled its request body; upstream request aborted");
                return Err(ProxyError::RequestTimeout(idle));
            }
            if is_timeout(&e) {
                return Err(ProxyError::UpstreamTimeout(state.settings.connect_timeout));
            }
            let msg = describe(&e);
            tracing::warn!(provider = %provider.def.name, "upstream request failed: {msg}");
            return Err(ProxyError::Upstream(msg));
        }
        Ok(Ok(resp)) => resp,
    };
    let latency = sent.elapsed();
    provider
        .signer
        .metrics(&provider.def.name, &state.metrics)
        .upstream(latency);

    let (mut parts, incoming) = response.into_parts();
    if parts.status == http::StatusCode::TOO_MANY_REQUESTS {
        // The rare paths are boxed: inline, their futures would make every request's
        // future larger, and hyper moves that twice per request.
        return Err(Box::pin(upstream_429(state, provider, category, &parts, incoming)).await);
    }
    let hook = provider.signer.info.response_hook;
    let status = parts.status.as_u16();
    let (verdict, body) = match hook {
        ResponseHook::None => (Verdict::Accept, Body::new(incoming)),
        ResponseHook::Errors if status < 400 => (Verdict::Accept, Body::new(incoming)),
        ResponseHook::Errors => (
            Box::pin(tell_module(state, provider, &parts, None)).await,
            Body::new(incoming),
        ),
        ResponseHook::AllWithJsonBody => {
            let is_json = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.to_ascii_lowercase().contains("application/json"));
            let (seen, body) = if is_json {
                Box::pin(peek(incoming, MAX_INSPECTED_BODY)).await
            } else {
                (None, Body::new(incoming))
            };
            (
                Box::pin(tell_module(state, provider, &parts, seen)).await,
                body,
            )
        }
    };
    let listed = connection_listed(&parts.headers, always_dropped_response);
    for name in &DROP_RESPONSE {
        parts.headers.remove(name);
    }
    for name in listed.iter().chain(&provider.def.strip_response_headers) {
        parts.headers.remove(name.as_str());
    }
    tag_response(
        &mut parts.headers,
        provider.def.name_header.as_ref(),
        "BYPASS",
    );
    let body = idle_guard(
        body,
        state.settings.idle_timeout,
        provider.def.shared_name.clone(),
    );
    Ok((Response::from_parts(parts, body), verdict, latency))
}

/// §6: an upstream 429 starts the category's cooldown and becomes
/// `429 PROXY_UPSTREAM_RATE_LIMITED` carrying the upstream's body.
async fn upstream_429(
    state: &AppState,
    provider: &Selected<'_>,
    category: &str,
    parts: &http::response::Parts,
    body: crate::client::UpstreamBody,
) -> ProxyError {
    let retry_after = super::rate_limit::parse_retry_after(
        parts
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    );
    if let Err(e) =
        super::rate_limit::start_cooldown(&state.state, &provider.def.name, category, retry_after)
            .await
    {
        tracing::warn!(provider = %provider.def.name, "cannot record the upstream cooldown: {e}");
    }
    let (bytes, _) = peek(body, 64 * 1024).await;
    let bytes = bytes.unwrap_or_default();
    let is_json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("application/json"));
    let upstream_body = is_json
        .then(|| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .flatten()
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes);
            serde_json::json!({ "raw": text.chars().take(1024).collect::<String>() })
        });
    tracing::info!(provider = %provider.def.name, category, retry_after, "upstream answered 429; cooling down");
    ProxyError::UpstreamRateLimited {
        upstream_body,
        retry_after,
    }
}

/// Abort a streamed body when the upstream sends nothing for `idle` (D12).
fn idle_guard(body: Body, idle: std::time::Duration, provider: std::sync::Arc<str>) -> Body {
    if http_body::Body::is_end_stream(&body) {
        return body;
    }
    Body::new(crate::idle::IdleGuard::new(
        body,
        idle,
        UpstreamIdle(provider),
    ))
}

/// The upstream went quiet in the middle of its response body.
struct UpstreamIdle(std::sync::Arc<str>);

impl crate::idle::OnIdle for UpstreamIdle {
    fn error(&self, idle: std::time::Duration) -> axum::Error {
        let provider = &self.0;
        tracing::warn!(%provider, "upstream stream idle for {} s: aborting", idle.as_secs_f64());
        axum::Error::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "upstream idle",
        ))
    }
}

/// Read up to `cap` bytes of `body`. Returns the whole body when it fits; otherwise
/// `None` and a body that replays what was read, then streams the rest.
pub(super) async fn peek<B>(mut body: B, cap: usize) -> (Option<Bytes>, Body)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                let bytes = buf.freeze();
                return (Some(bytes.clone()), Body::from(bytes));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                if buf.len() > cap {
                    let head =
                        futures_util::stream::once(std::future::ready(Ok::<Bytes, axum::Error>(
                            buf.freeze(),
                        )));
                    let rest = body.into_data_stream().map(|r| r.map_err(axum::Error::new));
                    return (None, Body::from_stream(head.chain(rest)));
                }
            }
            Some(Err(e)) => {
                let head = futures_util::stream::once(std::future::ready(
                    Ok::<Bytes, axum::Error>(buf.freeze()),
                ));
                let fail = futures_util::stream::once(std::future::ready(Err(axum::Error::new(e))));
                return (None, Body::from_stream(head.chain(fail)));
            }
        }
    }
}

async fn tell_module(
    state: &AppState,
    provider: &Selected<'_>,
    parts: &http::response::Parts,
    body: Option<Bytes>,
) -> Verdict {
    let signer = provider.signer;
    let info = ResponseInfo {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| Header {
                name: n.as_str().to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
        body: body.map(|b| b.to_vec()),
    };
    if signer.admit(&provider.def.name).is_err() {
        return Verdict::Accept;
    }
    let outcome = state
        .runtime
        .on_response(&signer.module, signer.env.clone(), &signer.config, &info)
        .await;
    signer.record(&provider.def.name, &outcome, &state.metrics);
    match outcome {
        Ok(Verdict::Accept) => Verdict::Accept,
        Ok(v) => {
            tracing::info!(provider = %provider.def.name, status = info.status,
                "auth module reports the credential was rejected ({v:?})");
            v
        }
        Err(e) => {
            tracing::warn!(provider = %provider.def.name, "on-response failed: {}", signer.env.grants.redact(&e.to_string()));
            Verdict::Accept
        }
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The error and its causes, `a: b: c`.
fn describe(e: &crate::client::SendError) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    parts.dedup();
    parts.join(": ")
}
