//! Phase 10 — what the upstream may see of the agent's headers (D9). Hop-by-hop headers
//! (and any named in `Connection`), `Host`, routing and forwarding headers, the PSK and
//! the agent's own `Authorization` are dropped; then the provider's `default_headers`
//! replace same-named agent headers case-insensitively. It runs before signing so the
//! module sees — and can replace — exactly what will be sent.

use http::{HeaderMap, HeaderName, HeaderValue};

// Header names the pipeline reads or sets on every request, parsed once at compile time
// (a `&str` name is parsed again on every lookup).
/// Names the provider an agent calls.
pub const X_PROVIDER: HeaderName = HeaderName::from_static("x-provider");
/// The original's name for `X-Provider`, still honoured.
pub const X_BROKER: HeaderName = HeaderName::from_static("x-broker");
/// Makes a `POST` idempotent (D13).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// On every response: the provider that answered.
pub const X_PROXY_PROVIDER: HeaderName = HeaderName::from_static("x-proxy-provider");
/// On every response: `HIT`, `MISS`, `BYPASS` or `IDEMPOTENT-HIT`.
pub const X_PROXY_CACHE: HeaderName = HeaderName::from_static("x-proxy-cache");

/// Tag a response for the agent: the provider that answered (left out if its name is not
/// a valid header value; the value is made once, at load) and the cache state.
pub fn tag_response(headers: &mut HeaderMap, provider: Option<&HeaderValue>, cache: &'static str) {
    if let Some(v) = provider {
        headers.insert(X_PROXY_PROVIDER, v.clone());
    }
    headers.insert(X_PROXY_CACHE, HeaderValue::from_static(cache));
}

/// Request headers never forwarded.
const DROP_REQUEST: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "authorization",
    "x-provider",
    "x-broker",
    "x-outpost-auth",
    "forwarded",
    "x-real-ip",
    "cf-connecting-ip",
    "true-client-ip",
];

/// Response headers never passed back (hop-by-hop).
pub const DROP_RESPONSE: [HeaderName; 7] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Header names listed in `Connection` (they are hop-by-hop too), lower-cased. Names
/// that `dropped_anyway` (given the name as listed, in any case) says are dropped in any
/// event are left out, so the usual `Connection: keep-alive` allocates nothing.
pub fn connection_listed(
    headers: &HeaderMap,
    dropped_anyway: impl Fn(&str) -> bool,
) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !dropped_anyway(t))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Whether a request header named `name` (in any case) is never forwarded, whatever
/// `Connection` lists.
fn always_dropped_request(name: &str) -> bool {
    DROP_REQUEST.iter().any(|d| d.eq_ignore_ascii_case(name))
        || name
            .get(..X_FORWARDED.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(X_FORWARDED))
}

/// Whether a response header named `name` (in any case) is never passed back.
pub fn always_dropped_response(name: &str) -> bool {
    DROP_RESPONSE
        .iter()
        .any(|d| d.as_str().eq_ignore_ascii_case(name))
}

/// Prefix of the forwarding headers, never forwarded.
const X_FORWARDED: &str = "x-forwarded-";

/// The agent's headers as they may be forwarded, in their original order, followed or
/// replaced by the provider's default headers.
pub fn outbound(
    agent: &HeaderMap,
    defaults: &[(HeaderName, HeaderValue)],
) -> Vec<(HeaderName, HeaderValue)> {
    let listed = connection_listed(agent, always_dropped_request);
    let mut out: Vec<(HeaderName, HeaderValue)> = agent
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            !DROP_REQUEST.contains(&n)
                && !n.starts_with(X_FORWARDED)
                && !listed.iter().any(|l| l == n)
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    for (name, value) in defaults {
        match out.iter().position(|(n, _)| n == name) {
            Some(first) => {
                out[first].1 = value.clone();
                let mut i = 0;
                out.retain(|(n, _)| {
                    i += 1;
                    i - 1 == first || n != name
                });
            }
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_dangerous_headers_and_applies_defaults() {
        let mut agent = HeaderMap::new();
        for (n, v) in [
            ("accept", "*/*"),
            ("authorization", "Bearer agent"),
            ("x-outpost-auth", "psk"),
            ("x-forwarded-host", "evil"),
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("cookie", "a=b"),
            ("x-provider", "github"),
            ("cf-connecting-ip", "127.0.0.1"),
        ] {
            agent.append(n, v.parse().unwrap());
        }
        let defaults = vec![(
            HeaderName::from_static("accept"),
            HeaderValue::from_static("application/json"),
        )];
        let out = outbound(&agent, &defaults);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["accept", "cookie"]);
        assert_eq!(out[0].1, "application/json");
    }
}
