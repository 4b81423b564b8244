//! The continuous-refill token bucket of reference §5.1: a fresh bucket is full; tokens
//! refill at `capacity` per `window_ms`, proportionally to elapsed time; a take needs one
//! whole token, else it reports how long until one is available. The same algorithm runs
//! in process ([`take`]) and in Redis ([`LUA`], with the Redis server's clock, D15).

/// Outcome of one take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Take {
    /// A token was taken.
    pub allowed: bool,
    /// When denied: milliseconds until a token is available.
    pub retry_after_ms: u64,
}

/// Bucket state: fractional tokens and the time of the last refill (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens left (fractional).
    pub tokens: f64,
    /// Last refill, ms on the store's clock.
    pub ts: u64,
}

/// Take one token from `bucket` (or a fresh one) at `now_ms`. Returns the new state.
pub fn take(bucket: Option<Bucket>, capacity: u64, window_ms: u64, now_ms: u64) -> (Bucket, Take) {
    let cap = capacity as f64;
    let mut b = bucket.unwrap_or(Bucket {
        tokens: cap,
        ts: now_ms,
    });
    if now_ms > b.ts {
        let elapsed = (now_ms - b.ts) as f64;
        b.tokens = cap.min(b.tokens + elapsed / window_ms as f64 * cap);
        b.ts = now_ms;
    }
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        (
            b,
            Take {
                allowed: true,
                retry_after_ms: 0,
            },
        )
    } else {
        let wait = ((1.0 - b.tokens) * window_ms as f64 / cap).ceil();
        (
            b,
            Take {
                allowed: false,
                retry_after_ms: wait.max(1.0) as u64,
            },
        )
    }
}

/// The Redis script: KEYS[1] = `rl:{provider}:{category}:{window_ms}`, ARGV = capacity,
/// window_ms. Same hash fields (`tokens`, `ts`) and expiry (2 × window) as the original,
/// but the clock is the Redis server's (`TIME`), shared by every replica.
pub const LUA: &str = r#"
local capacity = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local data = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(data[1])
local ts = tonumber(data[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
local elapsed = now - ts
if elapsed > 0 then
  tokens = math.min(capacity, tokens + elapsed / window * capacity)
  ts = now
end
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.max(1, math.ceil((1 - tokens) * window / capacity))
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', ts)
redis.call('PEXPIRE', KEYS[1], 2 * window)
return {allowed, retry}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let mut b = None;
        for _ in 0..3 {
            let (nb, t) = take(b, 3, 1000, 10_000);
            assert!(t.allowed);
            b = Some(nb);
        }
        let (nb, t) = take(b, 3, 1000, 10_000);
        assert!(!t.allowed);
        assert_eq!(t.retry_after_ms, 334);
        // A third of the window later, one token has refilled.
        let (_, t) = take(Some(nb), 3, 1000, 10_334);
        assert!(t.allowed);
    }

    #[test]
    fn clock_behind_refills_nothing() {
        let (b, _) = take(None, 1, 1000, 5000);
        let (b2, t) = take(Some(b), 1, 1000, 4000);
        assert!(!t.allowed);
        assert_eq!(b2.ts, 5000, "ts never moves back");
    }
}
