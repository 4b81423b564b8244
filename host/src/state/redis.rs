//! The Redis backend (D24): every replica shares buckets, cooldowns, cache, idempotency
//! and tokens; buckets are atomic through Lua on the server's clock. Commands fail fast
//! while Redis is unreachable (the caller answers `503 PROXY_STATE_UNAVAILABLE`), and
//! the client reconnects on its own, so service resumes when Redis returns.

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};

use super::StateError;
use super::bucket::{LUA, Take};

/// A connected Redis client.
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    bucket: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

fn unavailable(e: fred::error::Error) -> StateError {
    StateError::Unavailable(e.to_string())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RedisStore {
    /// Connect to `url`. Fails when the URL is invalid; an unreachable server is not an
    /// error here (the client keeps reconnecting) so Outpost can start before Redis.
    pub async fn connect(url: &str) -> Result<Self, StateError> {
        let config =
            Config::from_url(url).map_err(|e| StateError::Config(format!("REDIS_URL: {e}")))?;
        let client = Builder::from_config(config)
            .with_config(|c| c.fail_fast = true)
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| StateError::Config(format!("REDIS_URL: {e}")))?;
        client
            .init()
            .await
            .map_err(|e| {
                tracing::warn!("Redis not reachable yet ({e}); will keep retrying");
                e
            })
            .ok();
        Ok(Self {
            client,
            bucket: Script::from_lua(LUA),
        })
    }

    /// Round trip to the server.
    pub async fn ping(&self) -> Result<(), StateError> {
        self.client.ping::<()>(None).await.map_err(unavailable)
    }

    /// GET.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.client
            .get::<Option<Vec<u8>>, _>(key)
            .await
            .map_err(unavailable)
    }

    /// SET (with PX), optionally NX; `true` when stored.
    pub async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        nx: bool,
    ) -> Result<bool, StateError> {
        let exp = ttl.map(|t| Expiration::PX(ms(t)));
        let opt = nx.then_some(SetOptions::NX);
        let r: Option<String> = self
            .client
            .set(key, value, exp, opt, false)
            .await
            .map_err(unavailable)?;
        Ok(r.is_some())
    }

    /// DEL.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.client
            .del::<i64, _>(key)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// PTTL; `None` when absent.
    pub async fn ttl_ms(&self, key: &str) -> Result<Option<u64>, StateError> {
        let t: i64 = self.client.pttl(key).await.map_err(unavailable)?;
        Ok(match t {
            -2 => None,
            -1 => Some(u64::MAX),
            t => Some(u64::try_from(t).unwrap_or(0)),
        })
    }

    /// One token from the bucket at `key` (Lua, atomic, server clock).
    pub async fn take(&self, key: &str, capacity: u64, window_ms: u64) -> Result<Take, StateError> {
        let (allowed, retry): (i64, i64) = self
            .bucket
            .evalsha_with_reload(
                &self.client,
                vec![key.to_string()],
                vec![capacity.to_string(), window_ms.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(Take {
            allowed: allowed == 1,
            retry_after_ms: u64::try_from(retry).unwrap_or(0),
        })
    }
}
