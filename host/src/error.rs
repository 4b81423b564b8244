//! Every error an agent can receive, and the one place that maps them to wire codes,
//! statuses, messages and headers (D2): the envelope
//! `{"status":"FAILURE","error":{"code":…,"message":…,"metadata":…}}`, compact JSON.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

/// A request refused or failed by the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No provider selected, or an unknown one.
    #[error("Unknown or unspecified provider '{name}'")]
    UnknownProvider {
        /// What the agent asked for (lower-cased).
        name: String,
        /// Usable provider names, sorted.
        available: Vec<String>,
    },
    /// The caller's address matches no host entry.
    #[error("Source IP {ip} not in host policy")]
    HostDenied {
        /// The resolved client address.
        ip: String,
    },
    /// The host entry requires a pre-shared key and none (or a wrong one) was sent.
    #[error("Authentication required for host '{host}'")]
    AuthRequired {
        /// Host entry id.
        host: String,
    },
    /// The request is malformed or ambiguous (e.g. both `Content-Length` and
    /// `Transfer-Encoding`); refused before anything reaches an upstream.
    #[error("{0}")]
    BadRequest(String),
    /// The request path is not acceptable (D7).
    #[error("{0}")]
    BadPath(String),
    /// No route for the request.
    #[error("{0}")]
    NoRoute(String),
    /// A deny rule matched (D7).
    #[error("Path {path} is denied for provider '{provider}'")]
    PathDenied {
        /// The canonical path.
        path: String,
        /// Provider name.
        provider: String,
    },
    /// A sensitive route and a host without `can_call_sensitive`.
    #[error("Host '{host}' is not permitted to call sensitive endpoints")]
    SensitiveDenied {
        /// Host entry id.
        host: String,
    },
    /// The provider exists but its configuration is broken (D3).
    #[error("Provider '{provider}' is not usable: {reason}")]
    ProviderConfig {
        /// Provider name.
        provider: String,
        /// Why (never a secret's value).
        reason: String,
    },
    /// The auth module failed; the request was not forwarded (D16).
    #[error("Auth module error: {0}")]
    Auth(String),
    /// The upstream could not be reached or broke the connection.
    #[error("Upstream error: {0}")]
    Upstream(String),
    /// The upstream did not answer in time (D12).
    #[error("Upstream did not respond within {} s", .0.as_secs_f64())]
    UpstreamTimeout(Duration),
    /// Local rate limit (or an active upstream cooldown) outlasted the queue timeout.
    #[error("Rate limit exceeded for category '{category}'")]
    RateLimited {
        /// Route category.
        category: String,
        /// Seconds until a retry may succeed.
        retry_after: f64,
    },
    /// The upstream answered 429 (§6); its body is carried in metadata.
    #[error("Upstream returned 429")]
    UpstreamRateLimited {
        /// The upstream's body (parsed JSON, or `{"raw": text}`).
        upstream_body: Value,
        /// The upstream's `Retry-After`, in seconds.
        retry_after: f64,
    },
    /// An `Idempotency-Key` reused for a different request (D13).
    #[error("Idempotency-Key was already used for a different request")]
    IdempotencyMismatch,
    /// A duplicate while the first request with that key is still running (D13).
    #[error("A request with this Idempotency-Key is still in progress")]
    IdempotencyInProgress,
    /// The state store (Redis) cannot be reached; requests that need it fail closed (D24).
    #[error("State store unavailable: {0}")]
    StateUnavailable(String),
    /// A body Outpost had to buffer was larger than allowed (D11).
    #[error("Request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The agent stopped sending its request body (a gap longer than the idle timeout).
    #[error("Request body not received: nothing arrived for {} s", .0.as_secs_f64())]
    RequestTimeout(Duration),
    /// The provider's auth module kept trapping or overrunning its deadlines and is
    /// disabled by the circuit breaker until `retry_after`.
    #[error(
        "Auth module of provider '{provider}' is disabled after {failures} consecutive failures (traps or deadline overruns)"
    )]
    ModuleDisabled {
        /// Provider name.
        provider: String,
        /// Consecutive failures that opened the breaker.
        failures: u32,
        /// Seconds until a probe call is let through.
        retry_after: f64,
    },
    /// More client connections than `OUTPOST_MAX_CONNECTIONS`; this one is closed.
    #[error("Too many connections (limit {0}); retry later")]
    TooManyConnections(usize),
}

impl ProxyError {
    /// The wire code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownProvider { .. } => "PROXY_UNKNOWN_PROVIDER",
            Self::HostDenied { .. } => "PROXY_HOST_DENIED",
            Self::AuthRequired { .. } => "PROXY_AUTH_REQUIRED",
            Self::BadPath(_) => "PROXY_BAD_PATH",
            Self::BadRequest(_) => "PROXY_BAD_REQUEST",
            Self::NoRoute(_) => "PROXY_NO_ROUTE",
            Self::PathDenied { .. } => "PROXY_PATH_DENIED",
            Self::SensitiveDenied { .. } => "PROXY_SENSITIVE_DENIED",
            Self::ProviderConfig { .. } => "PROXY_PROVIDER_CONFIG_ERROR",
            Self::Auth(_) => "PROXY_AUTH_ERROR",
            Self::Upstream(_) => "PROXY_UPSTREAM_ERROR",
            Self::UpstreamTimeout(_) => "PROXY_UPSTREAM_TIMEOUT",
            Self::BodyTooLarge(_) => "PROXY_BODY_TOO_LARGE",
            Self::RateLimited { .. } => "PROXY_RATE_LIMITED",
            Self::UpstreamRateLimited { .. } => "PROXY_UPSTREAM_RATE_LIMITED",
            Self::StateUnavailable(_) => "PROXY_STATE_UNAVAILABLE",
            Self::IdempotencyMismatch => "PROXY_IDEMPOTENCY_MISMATCH",
            Self::IdempotencyInProgress => "PROXY_IDEMPOTENCY_IN_PROGRESS",
            Self::RequestTimeout(_) => "PROXY_REQUEST_TIMEOUT",
            Self::ModuleDisabled { .. } => "PROXY_AUTH_MODULE_DISABLED",
            Self::TooManyConnections(_) => "PROXY_TOO_MANY_CONNECTIONS",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownProvider { .. } | Self::BadPath(_) | Self::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::HostDenied { .. } | Self::PathDenied { .. } | Self::SensitiveDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::AuthRequired { .. } => StatusCode::UNAUTHORIZED,
            Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::ProviderConfig { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Auth(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } | Self::UpstreamRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::StateUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyInProgress => StatusCode::CONFLICT,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::ModuleDisabled { .. } | Self::TooManyConnections(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Seconds after which a retry may succeed (`Retry-After`), when there is such a time.
    fn retry_after(&self) -> Option<f64> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::UpstreamRateLimited { retry_after, .. }
            | Self::ModuleDisabled { retry_after, .. } => Some(*retry_after),
            Self::TooManyConnections(_) => Some(1.0),
            _ => None,
        }
    }

    /// Whether the connection must be closed after this answer: its framing cannot be
    /// trusted, or it should not have been served at all.
    fn closes(&self) -> bool {
        matches!(
            self,
            Self::BadRequest(_) | Self::RequestTimeout(_) | Self::TooManyConnections(_)
        )
    }

    /// The whole HTTP/1.1 response, for answering before hyper owns the connection
    /// (the connection limit).
    pub fn raw_http1(&self) -> Vec<u8> {
        let body = envelope(self);
        let status = self.status();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(secs) = self.retry_after()
            && let Ok(v) = retry_after_header(secs).to_str()
        {
            head.push_str(&format!("retry-after: {v}\r\n"));
        }
        if self.closes() {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        head.push_str(&body);
        head.into_bytes()
    }

    /// The `metadata` member.
    pub fn metadata(&self) -> Value {
        match self {
            Self::UnknownProvider { available, .. } => json!({ "available": available }),
            Self::ProviderConfig { provider, .. } => json!({ "provider": provider }),
            Self::RateLimited { retry_after, .. } => json!({ "retry_after": round3(*retry_after) }),
            Self::UpstreamRateLimited {
                upstream_body,
                retry_after,
            } => {
                json!({ "upstream_body": upstream_body, "retry_after": round3(*retry_after) })
            }
            Self::ModuleDisabled {
                provider,
                retry_after,
                ..
            } => json!({ "provider": provider, "retry_after": round3(*retry_after) }),
            _ => Value::Null,
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `Retry-After` header value: whole seconds, at least 1.
fn retry_after_header(seconds: f64) -> HeaderValue {
    let s = if seconds.is_finite() {
        seconds.floor().max(1.0)
    } else {
        1.0
    };
    HeaderValue::from_str(&format!("{s:.0}")).unwrap_or(HeaderValue::from_static("1"))
}

#[derive(Serialize)]
struct Envelope<'a> {
    status: &'static str,
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'static str,
    message: &'a str,
    metadata: Value,
}

/// The compact JSON envelope for `err`.
pub fn envelope(err: &ProxyError) -> String {
    let message = err.to_string();
    let env = Envelope {
        status: "FAILURE",
        error: Body {
            code: err.code(),
            message: &message,
            metadata: err.metadata(),
        },
    };
    serde_json::to_string(&env).unwrap_or_else(|_| {
        format!(
            r#"{{"status":"FAILURE","error":{{"code":"{}","message":"","metadata":null}}}}"#,
            err.code()
        )
    })
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), envelope(&self)).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.closes() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, retry_after_header(secs));
        }
        if matches!(self, Self::AuthRequired { .. }) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"X-Outpost-Auth realm="outpost""#),
            );
        }
        resp.extensions_mut().insert(RefusalCode(self.code()));
        resp
    }
}

/// Marks a response produced by the proxy itself (for the request log line).
#[derive(Debug, Clone, Copy)]
pub struct RefusalCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_compact_and_ordered() {
        let e = ProxyError::UnknownProvider {
            name: "x".into(),
            available: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            envelope(&e),
            r#"{"status":"FAILURE","error":{"code":"PROXY_UNKNOWN_PROVIDER","message":"Unknown or unspecified provider 'x'","metadata":{"available":["a","b"]}}}"#
        );
        let e = ProxyError::HostDenied {
            ip: "1.2.3.4".into(),
        };
        assert_eq!(
            envelope(&e),
            r#"{"status":"FAILURE","error":{"code":"PROXY_HOST_DENIED","message":"Source IP 1.2.3.4 not in host policy","metadata":null}}"#
        );
    }

    #[test]
    fn statuses_match_the_catalogue() {
        assert_eq!(ProxyError::Auth("x".into()).status(), 502);
        assert_eq!(ProxyError::AuthRequired { host: "h".into() }.status(), 401);
        assert_eq!(
            ProxyError::UpstreamTimeout(Duration::from_secs(1)).status(),
            504
        );
        assert_eq!(
            ProxyError::ProviderConfig {
                provider: "p".into(),
                reason: "r".into()
            }
            .status(),
            503
        );
        let r = ProxyError::AuthRequired { host: "h".into() }.into_response();
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"X-Outpost-Auth realm="outpost""#
        );
        assert_eq!(r.headers()["content-type"], "application/json");
    }

    #[test]
    fn raw_responses_match_the_envelope() {
        let e = ProxyError::TooManyConnections(2);
        let raw = String::from_utf8(e.raw_http1()).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close") && head.contains("retry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(body, envelope(&e));
        let d = ProxyError::ModuleDisabled {
            provider: "p".into(),
            failures: 3,
            retry_after: 12.5,
        };
        let r = d.into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "12");
    }
}
