//! The life of a proxied request, as phases in the order a request meets them. Each
//! phase is its own module and says what it decides and why it sits where it does.
//!
//! 1. [`client_ip`] — who is calling: the TCP peer, or the right-most untrusted
//!    `X-Forwarded-For` hop when the peer is a trusted proxy (D4).
//! 2. [`host_policy`] — is that address admitted at all (hosts.yaml)? First, so a
//!    stranger learns nothing, not even which providers exist (D5).
//! 3. [`psk`] — does the admitted host prove itself with its pre-shared key (D6)?
//! 4. [`provider`] — which provider (`X-Provider`, `X-Broker`, `DEFAULT_PROVIDER`),
//!    and is it usable (D3)?
//! 5. [`path`] — the one canonical path every rule matches and the upstream receives (D7).
//! 6. [`deny`] — deny globs, checked suspiciously, before anything may allow.
//! 7. [`classify`] — the allow rule (or transparent defaults) that gives the route its
//!    category, cache TTL and sensitivity (D8).
//! 8. [`sensitive`] — sensitive routes need a host with `can_call_sensitive`.
//! 9. [`rate_limit`] — upstream cooldowns and the category's token buckets (§5, §6, D15).
//! 10. [`headers`] — what the upstream may see of the agent's headers (D9), plus the
//!     provider's default headers.
//! 11. [`sign`] — the provider's auth module signs the request (D16, D21); a failure
//!     is never forwarded.
//! 12. [`forward`] — send it, stream the answer back (D10–D12), turn an upstream 429 into
//!     a cooldown (§6), tell the module the upstream's verdict and retry once with a fresh
//!     credential when it asks (D17).

pub mod classify;
pub mod client_ip;
pub mod deny;
pub mod forward;
pub mod headers;
pub mod host_policy;
pub mod path;
pub mod provider;
pub mod psk;
pub mod rate_limit;
pub mod sensitive;
pub mod sign;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::Request;

use crate::error::ProxyError;
use crate::runtime::Verdict;
use crate::server::AppState;

/// What the log line of a request carries.
#[derive(Debug, Default)]
struct Trace {
    host: Option<String>,
    provider: Option<String>,
    category: Option<String>,
}

/// Time the upstream took to its response head; set on forwarded responses.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLatency(pub Duration);

/// A short unique id per request, for correlating log lines.
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static BOOT: OnceLock<u64> = OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    format!("{boot:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Run every phase for one request, then write its log line and metrics.
pub async fn handle(state: Arc<AppState>, peer: SocketAddr, req: Request<Body>) -> Response {
    let started = Instant::now();
    let id = request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut trace = Trace::default();
    let response = match run(&state, peer, req, &mut trace).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(request_id = %id, host = trace.host.as_deref().unwrap_or("-"),
                provider = trace.provider.as_deref().unwrap_or("-"), code = e.code(), "refused: {e}");
            state.metrics.refusal(e.code());
            e.into_response()
        }
    };
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-proxy-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let upstream = response.extensions().get::<UpstreamLatency>().map(|u| u.0);
    let provider = trace.provider.as_deref().unwrap_or("-");
    if upstream.is_some() {
        state.metrics.request(provider, status, &cache);
    }
    tracing::info!(
        request_id = %id,
        host = trace.host.as_deref().unwrap_or("-"),
        provider,
        method = %method,
        path = %path,
        status,
        category = trace.category.as_deref().unwrap_or("-"),
        cache = %cache,
        upstream_ms = upstream.map(|d| d.as_secs_f64() * 1000.0),
        total_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn run(
    state: &AppState,
    peer: SocketAddr,
    req: Request<Body>,
    trace: &mut Trace,
) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();
    let ip = client_ip::resolve(peer, &parts.headers, &state.settings.trusted_proxies)?;
    let policy = host_policy::admit(&state.hosts, ip)?;
    trace.host = Some(policy.id.clone());
    psk::verify(policy, &parts.headers)?;
    let provider = provider::resolve(
        &state.providers,
        &parts.headers,
        &state.settings.default_provider,
    )?;
    trace.provider = Some(provider.def.name.clone());
    let target = path::build(provider.def, &parts.uri)?;
    deny::check(provider.def, &target)?;
    let route = classify::classify(provider.def, &parts.method, &target)?;
    trace.category = Some(route.category.clone());
    sensitive::gate(
        policy,
        &route,
        &provider.def.name,
        parts.method.as_str(),
        &target.canonical,
    )?;
    rate_limit::acquire(
        &state.state,
        provider.def,
        &route.category,
        state.settings.rate_limit_queue_timeout,
    )
    .await?;
    let headers = headers::outbound(&parts.headers, &provider.def.default_headers);
    let empty_body = http_body::Body::is_end_stream(&body);
    let signed = sign::sign(
        state,
        &provider,
        &parts.method,
        target.clone(),
        headers.clone(),
        body,
    )
    .await?;
    // A body can be sent again only if we hold it (buffered for the signer) or there is none.
    let replay = signed
        .buffered
        .clone()
        .or_else(|| empty_body.then(Bytes::new));
    let (response, verdict) = forward::forward(state, &provider, &route.category, signed).await?;
    match (verdict, replay) {
        // D17: the module dropped a rejected credential and can mint a fresh one: retry once.
        (Verdict::Retry, Some(body)) => {
            tracing::info!(provider = %provider.def.name, "retrying once with a fresh credential");
            let signed = sign::sign(
                state,
                &provider,
                &parts.method,
                target,
                headers,
                Body::from(body),
            )
            .await?;
            Ok(forward::forward(state, &provider, &route.category, signed)
                .await?
                .0)
        }
        _ => Ok(response),
    }
}
