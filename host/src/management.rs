//! Management endpoints (D19): `/healthz` (liveness, open to all), and `/readyz`,
//! `/providers`, `/openapi.json`, `/docs`, `/metrics`, which pass host policy and PSK
//! like any proxied request. Only `GET`; other methods fall through to the proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::provider::Mode;
use crate::error::ProxyError;
use crate::pipeline::{client_ip, host_policy, psk};
use crate::server::AppState;

/// Phases 1–3 of the pipeline, for management endpoints.
fn admit(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ProxyError> {
    let ip = client_ip::resolve(peer, headers, &state.settings.trusted_proxies)?;
    let generation = state.current();
    let policy = host_policy::admit(&generation.hosts, ip)?;
    psk::verify(policy, headers)
}

macro_rules! admitted {
    ($state:expr, $peer:expr, $headers:expr) => {
        if let Err(e) = admit(&$state, $peer, &$headers) {
            $state.metrics.refusal(e.code());
            return e.into_response();
        }
    };
}

/// `GET /healthz`: alive, and which providers are usable.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({ "status": "ok", "providers": state.current().providers.usable() }))
        .into_response()
}

/// `GET /readyz`: ready to serve — providers built, state store reachable.
pub async fn readyz(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    admitted!(state, peer, headers);
    // One generation for the whole answer, even if a reload lands meanwhile.
    let generation = state.current();
    let broken: Vec<Value> = generation
        .providers
        .by_name
        .iter()
        .filter_map(|(name, p)| {
            p.signer
                .as_ref()
                .err()
                .map(|reason| json!({"name": name, "reason": reason}))
        })
        .collect();
    let now = std::time::Instant::now();
    let disabled: Vec<Value> = generation
        .providers
        .by_name
        .iter()
        .filter_map(|(name, p)| {
            let signer = p.signer.as_ref().ok()?;
            let open = signer.breaker.open(now)?;
            Some(json!({
                "name": name,
                "module": signer.module.name,
                "reason": "circuit breaker open after repeated traps or deadline overruns",
                "consecutive_failures": open.failures,
                "retry_in_s": (open.retry_in.as_secs_f64() * 1000.0).round() / 1000.0,
            }))
        })
        .collect();
    let mut store = match state.state.ping().await {
        Ok(()) => json!({"backend": state.state.kind(), "reachable": true}),
        Err(e) => {
            json!({"backend": state.state.kind(), "reachable": false, "error": e.to_string()})
        }
    };
    if let crate::state::StateStore::Memory(m) = &*state.state {
        let (entries, bytes) = m.bounded_usage();
        store["cache_entries"] = json!(entries);
        store["cache_bytes"] = json!(bytes);
    }
    let ready = store["reachable"] == true;
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "generation": generation.id,
        "providers": {
            "usable": generation.providers.usable(),
            "broken": broken,
            "disabled": disabled,
        },
        "state": store,
    });
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /providers`: every provider in load order, with its base URL and status.
pub async fn providers(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    admitted!(state, peer, headers);
    let list: Vec<Value> = state
        .current()
        .providers
        .by_name
        .iter()
        .map(|(name, p)| {
            let mut v =
                json!({"name": name, "status": if p.signer.is_ok() { "ready" } else { "error" }});
            if let Some(def) = &p.def {
                v["base_url"] = json!(def.base_url);
                v["mode"] = json!(match def.forwarding.mode {
                    Mode::Transparent => "transparent",
                    Mode::Allowlist => "allowlist",
                });
                v["auth"] = json!(def.auth.kind);
            }
            v
        })
        .collect();
    axum::Json(json!({ "providers": list })).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    admitted!(state, peer, headers);
    // The breaker's state depends on the clock: sample it now.
    let now = std::time::Instant::now();
    for (name, p) in &state.current().providers.by_name {
        if let Ok(signer) = &p.signer {
            state
                .metrics
                .module_disabled(name, signer.breaker.open(now).is_some());
        }
    }
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// `GET /openapi.json`: OpenAPI 3.1, generated from the loaded providers.
pub async fn openapi(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    admitted!(state, peer, headers);
    axum::Json(openapi_document(&state)).into_response()
}

/// `GET /docs`: a self-contained page (no external assets).
pub async fn docs(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    admitted!(state, peer, headers);
    Html(docs_page(&state)).into_response()
}

/// The OpenAPI document.
pub fn openapi_document(state: &AppState) -> Value {
    let names = state.current().providers.usable();
    let mut provider_schema = json!({"type": "string"});
    if !names.is_empty() {
        provider_schema["enum"] = json!(names);
    }
    let error_ref = json!({"$ref": "#/components/responses/ProxyError"});
    let op = |method: &str| {
        let mut o = json!({
            "tags": ["proxy"],
            "summary": format!("{} an upstream path through the selected provider", method.to_uppercase()),
            "parameters": [
                {"name": "path", "in": "path", "required": true, "schema": {"type": "string"}},
                {"$ref": "#/components/parameters/XProvider"}
            ],
            "responses": {
                "200": {"description": "The upstream's response, streamed"},
                "400": error_ref, "401": error_ref, "403": error_ref, "404": error_ref,
                "429": {"$ref": "#/components/responses/RateLimited"},
                "502": error_ref, "503": error_ref, "504": error_ref
            }
        });
        if let Some(params) = o["parameters"].as_array_mut().filter(|_| method == "post") {
            params.push(json!({"$ref": "#/components/parameters/IdempotencyKey"}));
        }
        if matches!(method, "post" | "put" | "patch") {
            o["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        o
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Outpost — The edge sidecar for AI agents",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Send requests to `/<upstream path>` with `X-Provider: <name>`. Outpost checks the caller, injects the provider's credential and forwards the request."
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": "proxy"}, {"name": "management"}],
        "components": {
            "schemas": {
                "ProxyError": {
                    "type": "object",
                    "required": ["status", "error"],
                    "properties": {
                        "status": {"type": "string", "enum": ["FAILURE"]},
                        "error": {"type": "object", "required": ["code", "message", "metadata"], "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "metadata": {"type": ["object", "null"]}
                        }}
                    }
                },
                "HealthResponse": {"type": "object", "properties": {"status": {"type": "string"}, "providers": {"type": "array", "items": {"type": "string"}}}},
                "ProvidersResponse": {"type": "object", "properties": {"providers": {"type": "array", "items": {"type": "object"}}}}
            },
            "parameters": {
                "XProvider": {"name": "X-Provider", "in": "header", "required": false, "schema": provider_schema},
                "IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string"}}
            },
            "responses": {
                "ProxyError": {"description": "Refused or failed by Outpost", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProxyError"}}}},
                "RateLimited": {"description": "Rate limited", "headers": {"Retry-After": {"schema": {"type": "integer"}}}, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProxyError"}}}}
            }
        },
        "paths": {
            "/healthz": {"get": {"tags": ["management"], "summary": "Liveness", "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HealthResponse"}}}}}}},
            "/readyz": {"get": {"tags": ["management"], "summary": "Readiness", "responses": {"200": {"description": "Ready"}}}},
            "/providers": {"get": {"tags": ["management"], "summary": "Loaded providers", "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProvidersResponse"}}}}}}},
            "/openapi.json": {"get": {"tags": ["management"], "summary": "This document", "responses": {"200": {"description": "OK"}}}},
            "/docs": {"get": {"tags": ["management"], "summary": "Human-readable documentation", "responses": {"200": {"description": "OK"}}}},
            "/metrics": {"get": {"tags": ["management"], "summary": "Prometheus metrics", "responses": {"200": {"description": "OK"}}}},
            "/{path}": {"get": op("get"), "post": op("post"), "put": op("put"), "delete": op("delete"), "patch": op("patch")}
        }
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn docs_page(state: &AppState) -> String {
    let mut rows = String::new();
    for (name, p) in &state.current().providers.by_name {
        let (base, mode, rules) = match &p.def {
            Some(d) => {
                let mut rules = String::new();
                for r in &d.allow {
                    rules.push_str(&format!(
                        "<li><code>{} {}</code>{}</li>",
                        escape(&r.method),
                        escape(&r.pattern),
                        if r.sensitive { " (sensitive)" } else { "" }
                    ));
                }
                for g in &d.forwarding.deny {
                    rules.push_str(&format!("<li>deny <code>{}</code></li>", escape(g)));
                }
                let mode = match d.forwarding.mode {
                    Mode::Transparent => "transparent",
                    Mode::Allowlist => "allowlist",
                };
                (escape(&d.base_url), mode, rules)
            }
            None => (String::new(), "", String::new()),
        };
        let status = match &p.signer {
            Ok(_) => "ready".to_string(),
            Err(reason) => format!("error: {}", escape(reason)),
        };
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{base}</td><td>{mode}</td><td>{status}</td><td><ul>{rules}</ul></td></tr>",
            escape(name)
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Outpost</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}}code{{background:#f4f4f4}}</style>\
</head><body><h1>Outpost</h1><p>Send requests to <code>/&lt;upstream path&gt;</code> with <code>X-Provider: &lt;name&gt;</code>. \
Machine-readable: <a href=\"/openapi.json\">/openapi.json</a>.</p>\
<h2>Providers</h2><table><tr><th>X-Provider</th><th>Upstream</th><th>Mode</th><th>Status</th><th>Rules</th></tr>{rows}</table>\
<h2>Errors</h2><p>Refusals are JSON: <code>{{\"status\":\"FAILURE\",\"error\":{{\"code\":…,\"message\":…,\"metadata\":…}}}}</code>.</p></body></html>"
    )
}
