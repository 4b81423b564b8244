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
//! 9. [`replay`] — idempotent replays (D13) and the response cache (§7, D14): answers
//!    from state, before any token or credential is spent; [`rate_limit`] — upstream
//!    cooldowns and the category's token buckets (§5, §6, D15).
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
pub mod replay;
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

/// What the log line of a request carries, borrowed from the configuration generation
/// the request runs on.
#[derive(Debug, Default)]
struct Trace<'g> {
    host: Option<&'g str>,
    provider: Option<&'g str>,
    category: Option<&'g str>,
    /// Time the upstream took to its response head, when the request was forwarded.
    upstream: Option<Duration>,
}

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

/// The agent went quiet in the middle of its request body.
#[derive(Debug, thiserror::Error)]
#[error("the agent sent no request body bytes for {} s", .0.as_secs_f64())]
pub struct BodyIdle(pub Duration);

/// Whether `e` (or what caused it) is a [`BodyIdle`].
pub fn is_body_idle(e: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(idle) = err.downcast_ref::<BodyIdle>() {
            return Some(idle.0);
        }
        cur = err.source();
    }
    None
}

/// Slow-body defence: fail the request body when the agent sends nothing for `idle`
/// (`OUTPOST_IDLE_TIMEOUT`), whether Outpost buffers it or streams it upstream. Slow
/// request heads are bounded by the server's header timeout instead.
struct AgentIdle;

impl crate::idle::OnIdle for AgentIdle {
    fn error(&self, idle: Duration) -> axum::Error {
        axum::Error::new(BodyIdle(idle))
    }
}

fn guard_request_body(body: Body, idle: Duration) -> Body {
    if http_body::Body::is_end_stream(&body) {
        return body;
    }
    Body::new(crate::idle::IdleGuard::new(body, idle, AgentIdle))
}

/// Run every phase for one request, then write its log line and metrics.
pub async fn handle(state: Arc<AppState>, peer: SocketAddr, req: Request<Body>) -> Response {
    // The id, the path and the total time are only for log lines: not made when they are
    // not written.
    let logged = tracing::enabled!(tracing::Level::INFO);
    let started = logged.then(Instant::now);
    let id = if logged { request_id() } else { String::new() };
    let method = req.method().clone();
    let path = if logged {
        req.uri().path().to_string()
    } else {
        String::new()
    };
    // The configuration generation this request runs on, start to finish (D23).
    let generation = state.current();
    let mut trace = Trace::default();
    let response = match run(&state, &generation, peer, req, &mut trace).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(request_id = %id, host = trace.host.unwrap_or("-"),
                provider = trace.provider.unwrap_or("-"), code = e.code(), "refused: {e}");
            state.metrics.refusal(e.code());
            e.into_response()
        }
    };
    let status = response.status().as_u16();
    // Only the pipeline sets this header, to one of these values.
    let cache = match response
        .headers()
        .get(headers::X_PROXY_CACHE)
        .map(http::HeaderValue::as_bytes)
    {
        Some(b"HIT") => "HIT",
        Some(b"MISS") => "MISS",
        Some(b"BYPASS") => "BYPASS",
        Some(b"IDEMPOTENT-HIT") => "IDEMPOTENT-HIT",
        _ => "-",
    };
    let upstream = trace.upstream;
    let provider = trace.provider.unwrap_or("-");
    if upstream.is_some() {
        state.metrics.request(provider, status, cache);
    }
    tracing::info!(
        request_id = %id,
        host = trace.host.unwrap_or("-"),
        provider,
        method = %method,
        path = %path,
        status,
        category = trace.category.unwrap_or("-"),
        cache,
        upstream_ms = upstream.map(|d| d.as_secs_f64() * 1000.0),
        total_ms = started.map(|s| s.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    response
}

async fn run<'g>(
    state: &AppState,
    generation: &'g crate::server::Generation,
    peer: SocketAddr,
    req: Request<Body>,
    trace: &mut Trace<'g>,
) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();
    let body = guard_request_body(body, state.settings.idle_timeout);
    let ip = client_ip::resolve(peer, &parts.headers, &state.settings.trusted_proxies)?;
    let policy = host_policy::admit(&generation.hosts, ip)?;
    trace.host = Some(&policy.id);
    psk::verify(policy, &parts.headers)?;
    let provider = provider::resolve(
        &generation.providers,
        &parts.headers,
        &state.settings.default_provider,
    )?;
    trace.provider = Some(&provider.def.name);
    let target = path::build(provider.def, &parts.uri)?;
    deny::check(provider.def, &target)?;
    let route = classify::classify(provider.def, &parts.method, &target)?;
    trace.category = Some(route.category);
    sensitive::gate(
        policy,
        &route,
        &provider.def.name,
        parts.method.as_str(),
        &target.canonical,
    )?;
    let name = provider.def.name.as_str();

    // Phase 9a: idempotency (buffers the body to fingerprint it).
    let mut body = body;
    let mut held: Option<Bytes> = None;
    let mut idempotency: Option<(String, String)> = None;
    let idem_header = parts
        .headers
        .get(headers::IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    if let (true, Some(k)) = (parts.method == http::Method::POST, idem_header) {
        let bytes = sign::buffer(body, state.settings.max_body_bytes).await?;
        let fp = replay::fingerprint(
            parts.method.as_str(),
            &target.canonical,
            &target.query,
            &bytes,
        );
        let key = replay::idempotency_key(name, &policy.id, k);
        match fail_open(
            state,
            replay::idempotency_claim(&state.state, &key, &fp).await,
        )? {
            Some(replay::Claim::Replay(e)) => {
                return Ok(replay::replay(&e, provider.def, "IDEMPOTENT-HIT"));
            }
            Some(replay::Claim::Owned) => idempotency = Some((key, fp)),
            None => {}
        }
        body = Body::from(bytes.clone());
        held = Some(bytes);
    }
    // Phase 9b: response cache.
    let mut cache_key = None;
    if parts.method == http::Method::GET && route.cache_ttl > 0 {
        let key = replay::cache_key(name, &target.canonical, &target.query);
        if let Some(Some(e)) = fail_open(state, replay::cache_lookup(&state.state, &key).await)? {
            return Ok(replay::replay(&e, provider.def, "HIT"));
        }
        cache_key = Some(key);
    }

    let outcome = upstream(state, &parts, &provider, &route, target, body, held)
        .await
        .map(|(response, latency)| {
            trace.upstream = Some(latency);
            response
        });

    // Persist, or release the idempotency claim.
    let cap = state.settings.max_body_bytes;
    let mut response = match outcome {
        Ok(r) => r,
        Err(e) => {
            if let Some((key, _)) = idempotency {
                replay::idempotency_finish(&state.state, &key, None).await;
            }
            return Err(e);
        }
    };
    if let Some(key) = cache_key {
        response.headers_mut().insert(
            headers::X_PROXY_CACHE,
            http::HeaderValue::from_static("MISS"),
        );
        if replay::storable(&response) {
            let (entry, r) = replay::capture(response, cap, None).await;
            response = r;
            if let Some(bytes) = entry.and_then(|e| serde_json::to_vec(&e).ok()) {
                let ttl = std::time::Duration::from_secs(route.cache_ttl);
                if let Err(e) = state.state.set(&key, bytes, Some(ttl)).await {
                    tracing::warn!(
                        provider = name,
                        "cannot store the response in the cache: {e}"
                    );
                }
            }
        }
    }
    if let Some((key, fp)) = idempotency {
        let entry = if response.status().is_success() {
            let (entry, r) = replay::capture(response, cap, Some(fp)).await;
            response = r;
            entry
        } else {
            None
        };
        replay::idempotency_finish(&state.state, &key, entry).await;
    }
    Ok(response)
}

/// With `OUTPOST_STATE_FAIL_OPEN`, a state-store outage skips the state phase (`None`)
/// instead of failing the request (D24).
fn fail_open<T>(state: &AppState, r: Result<T, ProxyError>) -> Result<Option<T>, ProxyError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ProxyError::StateUnavailable(reason)) if state.settings.state_fail_open => {
            tracing::warn!("state store unavailable, failing open as configured: {reason}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Largest request body held in memory so a request can be retried with a fresh
/// credential (D17).
const REPLAY_HOLD_BYTES: u64 = 64 * 1024;

/// Phases 10–12 (rate limit, headers, sign, forward), with one retry when the module
/// asks. Returns the response and the time the upstream took to its head.
async fn upstream(
    state: &AppState,
    parts: &http::request::Parts,
    provider: &provider::Selected<'_>,
    route: &crate::policy::route::Route<'_>,
    target: path::Target,
    body: Body,
    held: Option<Bytes>,
) -> Result<(Response, Duration), ProxyError> {
    fail_open(
        state,
        rate_limit::acquire(
            &state.state,
            provider.def,
            route.category,
            state.settings.rate_limit_queue_timeout,
        )
        .await,
    )?;
    let headers = headers::outbound(&parts.headers, &provider.def.default_headers);
    // A module that may ask for a retry (D17) can only get one if the body can be sent
    // again: hold small bodies of known length; larger ones stream and are not retried.
    let (body, held) = match held {
        None if provider.signer.info.response_hook != crate::runtime::ResponseHook::None
            && parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n > 0 && n <= REPLAY_HOLD_BYTES) =>
        {
            let bytes = sign::buffer(body, REPLAY_HOLD_BYTES as usize).await?;
            (Body::from(bytes.clone()), Some(bytes))
        }
        held => (body, held),
    };
    let empty_body = http_body::Body::is_end_stream(&body);
    let signed = sign::sign(state, provider, &parts.method, target, &headers, body).await?;
    // A body can be sent again only if we hold it (buffered) or there is none.
    let replay = held
        .or_else(|| signed.buffered.clone())
        .or_else(|| empty_body.then(Bytes::new));
    // Only a module that sees responses can ask for a retry: keep what it was given then.
    let retry = (provider.signer.info.response_hook != crate::runtime::ResponseHook::None)
        .then_some(signed.unsigned);
    let send =
        |request, body| forward::forward(state, provider, route.category, request, body, &headers);
    let (response, verdict, latency) = send(signed.request, signed.body).await?;
    match (verdict, replay, retry) {
        // D17: the module dropped a rejected credential and can mint a fresh one: retry once.
        (Verdict::Retry, Some(body), Some(unsigned)) => {
            tracing::info!(provider = %provider.def.name, "retrying once with a fresh credential");
            let signed = sign::sign_request(state, provider, unsigned, Body::from(body)).await?;
            let (response, _, latency) = send(signed.request, signed.body).await?;
            Ok((response, latency))
        }
        _ => Ok((response, latency)),
    }
}
