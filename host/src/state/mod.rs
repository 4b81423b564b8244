//! State shared by requests (D24): module key-value state (tokens, locks), rate-limit
//! buckets and cooldowns — and, next, the response cache and idempotency records.
//! Embedded by default; with `REDIS_URL`, in Redis, shared by every replica.

pub mod bucket;
pub mod memory;
pub mod redis;

use std::time::Duration;

pub use bucket::{Admit, Limit, Take};
pub use memory::{Caps, MemoryStore};
pub use redis::RedisStore;

/// Why a state operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The backend cannot be reached.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The backend is misconfigured.
    #[error("{0}")]
    Config(String),
}

/// The state store. An enum rather than a trait object: backends are a closed set and
/// calls stay cheap and `Send` without boxing futures.
#[derive(Debug)]
pub enum StateStore {
    /// In-process.
    Memory(MemoryStore),
    /// Redis.
    Redis(RedisStore),
}

// Every Redis call is boxed: its future (fred's, ~5 KB) would otherwise be part of
// every future that may call the store, the embedded store's included, and so of every
// request's future, which hyper moves twice per request.
impl StateStore {
    /// A fresh in-process store.
    pub fn memory() -> Self {
        Self::Memory(MemoryStore::default())
    }

    /// `"embedded"` or `"redis"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "embedded",
            Self::Redis(_) => "redis",
        }
    }

    /// Whether the backend answers.
    pub async fn ping(&self) -> Result<(), StateError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => Box::pin(r.ping()).await,
        }
    }

    /// The value at `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Self::Memory(m) => Ok(m.get(key)),
            Self::Redis(r) => Box::pin(r.get(key)).await,
        }
    }

    /// Store `value` at `key`, expiring after `ttl`.
    pub async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        match self {
            Self::Memory(m) => {
                m.set(key, value, ttl, false);
                Ok(())
            }
            Self::Redis(r) => Box::pin(r.set(key, value, ttl, false)).await.map(|_| ()),
        }
    }

    /// Store only if absent; `true` when stored.
    pub async fn set_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StateError> {
        match self {
            Self::Memory(m) => Ok(m.set(key, value, ttl, true)),
            Self::Redis(r) => Box::pin(r.set(key, value, ttl, true)).await,
        }
    }

    /// Remove `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        match self {
            Self::Memory(m) => {
                m.delete(key);
                Ok(())
            }
            Self::Redis(r) => Box::pin(r.delete(key)).await,
        }
    }

    /// Milliseconds until `key` expires (`u64::MAX` for no expiry); `None` when absent.
    pub async fn ttl_ms(&self, key: &str) -> Result<Option<u64>, StateError> {
        match self {
            Self::Memory(m) => Ok(m.ttl_ms(key)),
            Self::Redis(r) => Box::pin(r.ttl_ms(key)).await,
        }
    }

    /// A request's whole rate-limit check, atomically and (on one Redis server) in one
    /// round trip: the cooldown at `cooldown`, then a token from each bucket in order,
    /// stopping at the first empty one.
    pub async fn admit(&self, cooldown: &str, limits: &[Limit<'_>]) -> Result<Admit, StateError> {
        match self {
            Self::Memory(m) => Ok(m.admit(cooldown, limits)),
            Self::Redis(r) => Box::pin(r.admit(cooldown, limits)).await,
        }
    }
}
