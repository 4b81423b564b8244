//! Key-value state behind the modules' `kv` import (tokens, locks) — and, as the state
//! issue lands, rate-limit buckets, cooldowns, cache and idempotency (D24).
//!
//! Embedded by default: everything lives in this process, with TTLs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The backend cannot be reached.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

/// The state store. An enum rather than a trait object: backends are a closed set and
/// calls stay cheap and `Send` without boxing futures.
#[derive(Debug)]
pub enum StateStore {
    /// In-process.
    Memory(MemoryStore),
}

impl StateStore {
    /// A fresh in-process store.
    pub fn memory() -> Self {
        Self::Memory(MemoryStore::default())
    }

    /// The value at `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Self::Memory(m) => Ok(m.get(key)),
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
        }
    }

    /// Remove `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        match self {
            Self::Memory(m) => {
                m.delete(key);
                Ok(())
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// In-process key-value map with TTLs.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, Entry>>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock only means another thread panicked mid-update of a plain map;
        // the map itself is still consistent, so keep serving.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get(key) {
            Some(e) if e.live(now) => Some(e.value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>, only_if_absent: bool) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        if only_if_absent && map.get(key).is_some_and(|e| e.live(now)) {
            return false;
        }
        map.insert(
            key.to_string(),
            Entry {
                value,
                expires: ttl.map(|t| now + t),
            },
        );
        true
    }

    fn delete(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ttl_and_set_if_absent() {
        let s = StateStore::memory();
        assert!(
            s.set_if_absent("k", b"1".to_vec(), Some(Duration::from_millis(30)))
                .await
                .unwrap()
        );
        assert!(!s.set_if_absent("k", b"2".to_vec(), None).await.unwrap());
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(s.get("k").await.unwrap(), None);
        assert!(s.set_if_absent("k", b"3".to_vec(), None).await.unwrap());
        s.delete("k").await.unwrap();
        assert_eq!(s.get("k").await.unwrap(), None);
    }
}
