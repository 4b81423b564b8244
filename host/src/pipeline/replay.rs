//! Phases 9a–9b — answers from state instead of the upstream, checked after every policy
//! decision and before rate limiting (a replay costs no tokens and no credential):
//!
//! - **idempotency** (D13): a `POST` with `Idempotency-Key` is scoped by provider, host and
//!   key, and fingerprinted by method, path, query and body hash. A finished 2xx is
//!   replayed (`X-Proxy-Cache: IDEMPOTENT-HIT`); a different fingerprint is
//!   `422 PROXY_IDEMPOTENCY_MISMATCH`; a duplicate while the first is in flight is
//!   `409 PROXY_IDEMPOTENCY_IN_PROGRESS`. Records live 24 h.
//! - **response cache** (§7, D14): `GET` on routes with `cache_ttl > 0`, keyed by provider,
//!   canonical path and a hash of the sorted query; only 2xx responses without
//!   `Set-Cookie` or `Cache-Control: private|no-store` are stored; replays carry the stored
//!   content type and encoding (`X-Proxy-Cache: HIT`).
//!
//! Entries use the original Python runtime's fields (`status_code`, `body_b64`,
//! `content_type`) plus optional ones of ours (`content_encoding`, `fingerprint`, `state`).

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::config::provider::ProviderDef;
use crate::error::ProxyError;
use crate::state::{StateError, StateStore};

/// How long an idempotency record lives.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(86_400);
/// How long an in-flight marker lives if its request never finishes.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(300);

/// A stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// HTTP status.
    pub status_code: u16,
    /// Body, standard base64.
    pub body_b64: String,
    /// Content type (`application/octet-stream` when the upstream sent none).
    pub content_type: String,
    /// Content encoding, if any (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// Request fingerprint (ours; idempotency only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `in_flight` while the first request runs (ours; idempotency only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

fn state_err(e: StateError) -> ProxyError {
    ProxyError::StateUnavailable(e.to_string())
}

/// `cache:{provider}:GET:{path}:{qh}` (§7).
pub fn cache_key(provider: &str, path: &str, query: &str) -> String {
    format!("cache:{provider}:GET:{path}:{}", query_hash(query))
}

/// `_` for an empty query; else the first 16 hex of SHA-1 of its `&`-pieces sorted.
pub fn query_hash(query: &str) -> String {
    if query.is_empty() {
        return "_".into();
    }
    let mut pieces: Vec<&str> = query.split('&').collect();
    pieces.sort_unstable();
    let digest = Sha1::digest(pieces.join("&").as_bytes());
    hex::encode(digest)[..16].to_string()
}

/// `idem:{provider}:{host}:{key}` (D13: scoped by provider, host and key).
pub fn idempotency_key(provider: &str, host: &str, key: &str) -> String {
    format!("idem:{provider}:{host}:{key}")
}

/// Method, path, query and body hash.
pub fn fingerprint(method: &str, path: &str, query: &str, body: &[u8]) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    hex::encode(Sha256::digest(
        format!("{method}\n{path}\n{query}\n{body_hash}").as_bytes(),
    ))
}

/// The response for a stored entry.
pub fn replay(entry: &Entry, provider: &ProviderDef, tag: &'static str) -> Response {
    let body = base64::engine::general_purpose::STANDARD
        .decode(&entry.body_b64)
        .unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(entry.status_code).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&entry.content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    if let Some(v) = entry
        .content_encoding
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        h.insert(http::header::CONTENT_ENCODING, v);
    }
    super::headers::tag_response(h, provider.name_header.as_ref(), tag);
    resp
}

/// Decode a stored entry; a corrupt one is treated as absent (and logged).
fn decode(key: &str, raw: Option<Vec<u8>>) -> Option<Entry> {
    let raw = raw?;
    match serde_json::from_slice(&raw) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(key, "ignoring unreadable state entry: {e}");
            None
        }
    }
}

/// Look up the response cache.
pub async fn cache_lookup(state: &StateStore, key: &str) -> Result<Option<Entry>, ProxyError> {
    Ok(decode(key, state.get(key).await.map_err(state_err)?))
}

/// What an idempotent request found.
#[derive(Debug)]
pub enum Claim {
    /// We own the key now; forward, then [`idempotency_finish`].
    Owned,
    /// A finished response to replay.
    Replay(Entry),
}

/// Claim `key` for a request with `fp`, or find what is there.
pub async fn idempotency_claim(
    state: &StateStore,
    key: &str,
    fp: &str,
) -> Result<Claim, ProxyError> {
    let marker = Entry {
        status_code: 0,
        body_b64: String::new(),
        content_type: String::new(),
        content_encoding: None,
        fingerprint: Some(fp.to_string()),
        state: Some("in_flight".into()),
    };
    let bytes = serde_json::to_vec(&marker).unwrap_or_default();
    for _ in 0..3 {
        if state
            .set_if_absent(key, bytes.clone(), Some(IN_FLIGHT_TTL))
            .await
            .map_err(state_err)?
        {
            return Ok(Claim::Owned);
        }
        let Some(existing) = decode(key, state.get(key).await.map_err(state_err)?) else {
            continue; // expired (or unreadable) in between: try to claim again
        };
        if existing.fingerprint.as_deref() != Some(fp) {
            return Err(ProxyError::IdempotencyMismatch);
        }
        if existing.state.as_deref() == Some("in_flight") {
            return Err(ProxyError::IdempotencyInProgress);
        }
        return Ok(Claim::Replay(existing));
    }
    Err(ProxyError::IdempotencyInProgress)
}

/// Store the final response for an owned key (2xx), or release the key.
pub async fn idempotency_finish(state: &StateStore, key: &str, entry: Option<Entry>) {
    let r = match entry {
        Some(e) => match serde_json::to_vec(&e) {
            Ok(bytes) => state.set(key, bytes, Some(IDEMPOTENCY_TTL)).await,
            Err(_) => state.delete(key).await,
        },
        None => state.delete(key).await,
    };
    if let Err(e) = r {
        tracing::warn!(key, "cannot record the idempotency outcome: {e}");
    }
}

/// Whether a response may be stored (D14): 2xx, no `Set-Cookie`, not private/no-store.
pub fn storable(resp: &Response) -> bool {
    if !resp.status().is_success() || resp.headers().contains_key(http::header::SET_COOKIE) {
        return false;
    }
    !resp
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .any(|v| {
            v.to_str()
                .map(|s| s.to_ascii_lowercase())
                .is_ok_and(|s| s.contains("private") || s.contains("no-store"))
        })
}

/// Buffer a storable response up to `cap` bytes. Returns the entry (when it fit) and the
/// response to send, whose body is unchanged either way.
pub async fn capture(
    resp: Response,
    cap: usize,
    fingerprint: Option<String>,
) -> (Option<Entry>, Response) {
    let (parts, body) = resp.into_parts();
    let (bytes, body) = super::forward::peek(body, cap).await;
    let entry = bytes.map(|b: Bytes| Entry {
        status_code: parts.status.as_u16(),
        body_b64: base64::engine::general_purpose::STANDARD.encode(&b),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string(),
        content_encoding: parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        fingerprint,
        state: None,
    });
    (entry, Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_hash_vectors_from_the_reference() {
        assert_eq!(query_hash(""), "_");
        assert_eq!(query_hash("limit=10"), "b432ee16bd5c7b09");
        assert_eq!(query_hash("foo=1&bar=2"), "e95bdd1ab2bc3f3b");
        assert_eq!(query_hash("bar=2&foo=1"), "e95bdd1ab2bc3f3b");
        assert_eq!(query_hash("a=1"), "86eda770a6060824");
        assert_eq!(query_hash("foo=1"), "5bddd8336e5f711b");
        assert_eq!(query_hash("foo=2"), "eea5a3e3ac4c4efd");
    }

    #[test]
    fn entries_use_the_python_field_names() {
        let e = Entry {
            status_code: 200,
            body_b64: "aGk=".into(),
            content_type: "text/plain".into(),
            content_encoding: None,
            fingerprint: None,
            state: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"status_code":200,"body_b64":"aGk=","content_type":"text/plain"}"#
        );
        let py: Entry = serde_json::from_str(
            r#"{"status_code": 201, "body_b64": "", "content_type": "application/json"}"#,
        )
        .unwrap();
        assert_eq!(py.status_code, 201);
    }

    #[test]
    fn fingerprint_covers_method_path_query_body() {
        let base = fingerprint("POST", "/a", "x=1", b"{}");
        assert_ne!(base, fingerprint("POST", "/b", "x=1", b"{}"));
        assert_ne!(base, fingerprint("POST", "/a", "x=2", b"{}"));
        assert_ne!(base, fingerprint("POST", "/a", "x=1", b"{ }"));
        assert_eq!(base, fingerprint("POST", "/a", "x=1", b"{}"));
    }
}
