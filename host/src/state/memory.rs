//! The embedded backend (D24 default): everything in this process, with TTLs. Cached
//! responses and idempotency records (`cache:`, `idem:`) live in a bounded class, evicted
//! oldest-first beyond its entry and byte caps, so cache pressure can never evict
//! rate-limit state or credentials (§13 #30).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use super::bucket::{self, Admit, Bucket, Limit, Take};

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

/// Caps on the bounded (cache) class.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Most entries.
    pub entries: usize,
    /// Most bytes (keys + values).
    pub bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            entries: 10_000,
            bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    durable: HashMap<String, Entry>,
    bounded: IndexMap<String, Entry>,
    bounded_bytes: usize,
    buckets: HashMap<String, (Bucket, Instant)>,
}

impl Inner {
    fn ttl_ms(&self, key: &str, now: Instant) -> Option<u64> {
        let e = self.durable.get(key).filter(|e| e.live(now))?;
        Some(
            e.expires
                .map(|x| (x - now).as_millis() as u64)
                .unwrap_or(u64::MAX),
        )
    }

    fn take(
        &mut self,
        key: &str,
        capacity: u64,
        window_ms: u64,
        now: Instant,
        now_ms: u64,
    ) -> Take {
        let expires = now + Duration::from_millis(2 * window_ms);
        match self.buckets.get_mut(key) {
            Some((b, exp)) => {
                let prev = (*exp > now).then_some(*b);
                let (nb, t) = bucket::take(prev, capacity, window_ms, now_ms);
                (*b, *exp) = (nb, expires);
                t
            }
            None => {
                let (b, t) = bucket::take(None, capacity, window_ms, now_ms);
                self.buckets.insert(key.to_string(), (b, expires));
                // Expired buckets are swept as the map grows (not on every take of a
                // steady set of keys).
                if self.buckets.len().is_multiple_of(1024) {
                    self.buckets.retain(|_, (_, exp)| *exp > now);
                }
                t
            }
        }
    }
}

/// In-process state.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    caps: Caps,
    epoch: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Caps::default())
    }
}

fn is_bounded(key: &str) -> bool {
    key.starts_with("cache:") || key.starts_with("idem:")
}

impl MemoryStore {
    /// A store with `caps` on its bounded class.
    pub fn new(caps: Caps) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            caps,
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update of plain maps,
        // which stay consistent; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value at `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        if is_bounded(key) {
            match inner.bounded.get(key) {
                Some(e) if e.live(now) => Some(e.value.clone()),
                Some(_) => {
                    if let Some(e) = inner.bounded.shift_remove(key) {
                        inner.bounded_bytes -= key.len() + e.value.len();
                    }
                    None
                }
                None => None,
            }
        } else {
            match inner.durable.get(key) {
                Some(e) if e.live(now) => Some(e.value.clone()),
                Some(_) => {
                    inner.durable.remove(key);
                    None
                }
                None => None,
            }
        }
    }

    /// Store; with `only_if_absent`, only when no live value is there. `true` when stored.
    pub fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> bool {
        let now = Instant::now();
        let entry = Entry {
            value,
            expires: ttl.map(|t| now + t),
        };
        let mut g = self.lock();
        let inner = &mut *g;
        if !is_bounded(key) {
            if only_if_absent && inner.durable.get(key).is_some_and(|e| e.live(now)) {
                return false;
            }
            inner.durable.insert(key.to_string(), entry);
            if inner.durable.len().is_multiple_of(1024) {
                inner.durable.retain(|_, e| e.live(now));
            }
            return true;
        }
        if only_if_absent && inner.bounded.get(key).is_some_and(|e| e.live(now)) {
            return false;
        }
        let size = key.len() + entry.value.len();
        if size > self.caps.bytes {
            return false;
        }
        if let Some(old) = inner.bounded.shift_remove(key) {
            inner.bounded_bytes -= key.len() + old.value.len();
        }
        if inner.bounded.len() >= self.caps.entries || inner.bounded_bytes + size > self.caps.bytes
        {
            // Expired entries first, then the oldest.
            let mut freed = 0;
            inner.bounded.retain(|k, e| {
                let keep = e.live(now);
                if !keep {
                    freed += k.len() + e.value.len();
                }
                keep
            });
            inner.bounded_bytes -= freed;
            while inner.bounded.len() >= self.caps.entries
                || inner.bounded_bytes + size > self.caps.bytes
            {
                match inner.bounded.shift_remove_index(0) {
                    Some((k, e)) => inner.bounded_bytes -= k.len() + e.value.len(),
                    None => break,
                }
            }
        }
        inner.bounded_bytes += size;
        inner.bounded.insert(key.to_string(), entry);
        true
    }

    /// Remove `key`.
    pub fn delete(&self, key: &str) {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(e) = inner.bounded.shift_remove(key) {
            inner.bounded_bytes -= key.len() + e.value.len();
        }
        inner.durable.remove(key);
    }

    /// Milliseconds until `key` expires; `None` when absent.
    pub fn ttl_ms(&self, key: &str) -> Option<u64> {
        self.lock().ttl_ms(key, Instant::now())
    }

    /// A request's whole rate-limit check under one lock: the cooldown at `cooldown`,
    /// then a token from each bucket in order, stopping at the first empty one.
    pub fn admit(&self, cooldown: &str, limits: &[Limit<'_>]) -> Admit {
        let now = Instant::now();
        let now_ms = now.duration_since(self.epoch).as_millis() as u64;
        let mut g = self.lock();
        if let Some(ms) = g.ttl_ms(cooldown, now) {
            return Admit::Cooldown(ms);
        }
        for l in limits {
            let t = g.take(l.key, l.capacity, l.window_ms, now, now_ms);
            if !t.allowed {
                return Admit::Denied(t.retry_after_ms);
            }
        }
        Admit::Taken
    }

    /// (entries, bytes) in the bounded class.
    pub fn bounded_usage(&self) -> (usize, usize) {
        let g = self.lock();
        (g.bounded.len(), g.bounded_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_class_respects_caps_and_spares_durable_keys() {
        let s = MemoryStore::new(Caps {
            entries: 10,
            bytes: 1000,
        });
        s.set("oauth2:token", b"tok".to_vec(), None, false);
        for i in 0..1000 {
            s.set(
                &format!("cache:k{i}"),
                vec![0; 50],
                Some(Duration::from_secs(60)),
                false,
            );
            let (n, b) = s.bounded_usage();
            assert!(n <= 10 && b <= 1000, "{n} entries, {b} bytes");
        }
        assert_eq!(s.get("oauth2:token").as_deref(), Some(&b"tok"[..]));
        assert!(s.get("cache:k999").is_some());
        assert!(s.get("cache:k0").is_none());
    }

    #[test]
    fn ttl_and_set_if_absent() {
        let s = MemoryStore::default();
        assert!(s.set("k", b"1".to_vec(), Some(Duration::from_millis(30)), true));
        assert!(!s.set("k", b"2".to_vec(), None, true));
        assert!(s.ttl_ms("k").is_some_and(|t| t <= 30));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.get("k"), None);
        assert!(s.set("k", b"3".to_vec(), None, true));
        s.delete("k");
        assert_eq!(s.get("k"), None);
    }
}
