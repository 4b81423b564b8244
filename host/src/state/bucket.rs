//! The continuous-refill token bucket of reference §5.1: a fresh bucket is full; tokens
//! refill at `capacity` per `window_ms`, proportionally to elapsed time; a take needs one
//! whole token, else it reports how long until one is available. The same algorithm runs
//! in process ([`take`]) and in Redis ([`ADMIT_LUA`], with the Redis server's clock, D15).

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

/// One token bucket of a request's rate-limit check.
#[derive(Debug, Clone, Copy)]
pub struct Limit<'a> {
    /// `rl:{provider}:{category}:{window_ms}`.
    pub key: &'a str,
    /// Tokens per window.
    pub capacity: u64,
    /// The window.
    pub window_ms: u64,
}

/// Outcome of a whole rate-limit check ([`ADMIT_LUA`], and the embedded equivalent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    /// The category is cooling down after an upstream 429: this many ms left
    /// (`u64::MAX` without expiry). No token was taken.
    Cooldown(u64),
    /// A token was taken from every bucket.
    Taken,
    /// A bucket was empty: a token is there in this many ms. Tokens were taken from the
    /// buckets before it, none from it or those after (as one take per bucket in order).
    Denied(u64),
}

/// The whole check in one round trip, atomically, on the Redis server's clock (shared by
/// every replica, D15). ARGV[1] = `1` to check the cooldown at KEYS[1] first (`0`
/// without); the remaining KEYS are the buckets in order, and ARGV[2..] their capacity
/// and window_ms. Buckets keep the original's hash fields (`tokens`, `ts`) and expiry
/// (2 × window). Returns `{0, pttl}` (cooldown; -1 without expiry), `{1, 0}` (taken)
/// or `{2, retry_ms}` (denied).
pub const ADMIT_LUA: &str = r#"
local first = 1
if ARGV[1] == '1' then
  local cd = redis.call('PTTL', KEYS[1])
  if cd ~= -2 then
    return {0, cd}
  end
  first = 2
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = first, #KEYS do
  local j = i - first
  local capacity = tonumber(ARGV[2 + 2 * j])
  local window = tonumber(ARGV[3 + 2 * j])
  local data = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
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
  local retry = 0
  if tokens >= 1 then
    tokens = tokens - 1
  else
    retry = math.max(1, math.ceil((1 - tokens) * window / capacity))
  end
  redis.call('HSET', KEYS[i], 'tokens', tokens, 'ts', ts)
  redis.call('PEXPIRE', KEYS[i], 2 * window)
  if retry > 0 then
    return {2, retry}
  end
end
return {1, 0}
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
