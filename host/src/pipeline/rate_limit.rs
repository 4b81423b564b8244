//! Phase 9 — local rate limits and upstream cooldowns (§5, §6, D15). All windows of the
//! route's category must grant a token; a request waits up to `RATE_LIMIT_QUEUE_TIMEOUT`
//! for them (or for an active cooldown to end), then gets `429 PROXY_RATE_LIMITED`. It
//! runs after every policy check (a refused request costs no tokens) and before signing
//! (a rate-limited request costs no credential and no upstream call). Cooldowns apply
//! even to categories without windows.

use std::time::{Duration, Instant};

use crate::config::provider::{ProviderDef, Window};
use crate::error::ProxyError;
use crate::state::{Admit, Limit, StateError, StateStore};

/// The windows for `category`: its own list (an explicit `[]` means unlimited), else the
/// `default` list, else none.
pub fn windows_for<'a>(def: &'a ProviderDef, category: &str) -> &'a [Window] {
    let limits = &def.forwarding.rate_limits;
    limits
        .get(category)
        .or_else(|| limits.get("default"))
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The cooldown key of §6.
pub fn cooldown_key(provider: &str, category: &str) -> String {
    ["rl:cooldown:", provider, ":", category].concat()
}

fn state_err(e: StateError) -> ProxyError {
    ProxyError::StateUnavailable(e.to_string())
}

/// Wait for the cooldown and a token from every window, or fail.
pub async fn acquire(
    state: &StateStore,
    def: &ProviderDef,
    category: &str,
    queue_timeout: Duration,
) -> Result<(), ProxyError> {
    let deadline = Instant::now() + queue_timeout;
    let limited = |retry: Duration| ProxyError::RateLimited {
        category: category.to_string(),
        retry_after: retry.as_secs_f64().max(0.1),
    };
    let cooldown = cooldown_key(&def.name, category);
    let windows = windows_for(def, category);
    let keys: Vec<String> = windows
        .iter()
        .map(|w| format!("rl:{}:{}:{}", def.name, category, w.window_ms))
        .collect();
    let limits: Vec<Limit<'_>> = windows
        .iter()
        .zip(&keys)
        .map(|(w, key)| Limit {
            key,
            capacity: w.capacity,
            window_ms: w.window_ms,
        })
        .collect();
    // The cooldown and every window in one atomic check (one round trip on Redis);
    // after a wait, the whole check again.
    loop {
        let wait = match state.admit(&cooldown, &limits).await.map_err(state_err)? {
            Admit::Taken => return Ok(()),
            Admit::Cooldown(ms) => Duration::from_millis(ms.min(600_000)),
            Admit::Denied(ms) => Duration::from_millis(ms),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || wait > left {
            return Err(limited(wait));
        }
        tokio::time::sleep(wait).await;
    }
}

/// Parse an upstream `Retry-After`: seconds (decimals allowed) or an HTTP date. Missing,
/// unparsable, non-finite or negative values count as 1 second (D15).
pub fn parse_retry_after(value: Option<&str>) -> f64 {
    let Some(v) = value.map(str::trim) else {
        return 1.0;
    };
    if let Ok(secs) = v.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            secs
        } else {
            1.0
        };
    }
    match httpdate::parse_http_date(v) {
        Ok(at) => at
            .duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        Err(_) => 1.0,
    }
}

/// Start the cooldown after an upstream 429: clamp to [0.1, 600] s (D15).
pub async fn start_cooldown(
    state: &StateStore,
    provider: &str,
    category: &str,
    retry_after: f64,
) -> Result<(), ProxyError> {
    let secs = retry_after.clamp(0.1, 600.0);
    state
        .set(
            &cooldown_key(provider, category),
            b"1".to_vec(),
            Some(Duration::from_secs_f64(secs)),
        )
        .await
        .map_err(state_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(None), 1.0);
        assert_eq!(parse_retry_after(Some("7.9")), 7.9);
        assert_eq!(parse_retry_after(Some("nan")), 1.0);
        assert_eq!(parse_retry_after(Some("inf")), 1.0);
        assert_eq!(parse_retry_after(Some("-5")), 1.0);
        assert_eq!(parse_retry_after(Some("soon")), 1.0);
        let in_30 = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(Some(&in_30));
        assert!((28.0..=30.0).contains(&d), "{d}");
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            0.0
        );
    }
}
