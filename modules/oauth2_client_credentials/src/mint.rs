//! Mint a credential once for the whole fleet: the token lives in the shared key-value
//! store; whoever finds it missing takes a lock (`set-if-absent` with a 30 s TTL, atomic
//! on Redis and in process alike — not the TypeScript runtime's racy check-then-set,
//! §13 #34), checks again, mints, stores the token with its TTL and releases the lock,
//! also when minting failed. Everyone else polls the token key every 250 ms, 20 times.
//!
//! The store and the clock are parameters so the protocol is unit-tested natively.
//!
//! (The same file is used by every minting module; modules are independent components,
//! so each carries its own copy.)

use std::time::Duration;

use outpost_plugin_sdk::{Error, kv};

/// How long the mint lock lives if its holder dies.
pub const LOCK_TTL_MS: u64 = 30_000;
/// Poll interval while a peer mints.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Polls before giving up.
pub const POLL_ATTEMPTS: u32 = 20;

/// The key-value operations the protocol needs.
pub trait Store {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String>;
    fn set_if_absent(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<bool, String>;
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// The host's `kv` import.
pub struct HostKv;

impl Store for HostKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        kv::get(key)
    }
    fn set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        kv::set(key, value, ttl_ms)
    }
    fn set_if_absent(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<bool, String> {
        kv::set_if_absent(key, value, ttl_ms)
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        kv::delete(key)
    }
}

/// A freshly minted token and how long to keep it (seconds; 0 = use it once, do not
/// store it).
#[derive(Debug, Clone, PartialEq)]
pub struct Minted {
    pub token: String,
    pub ttl_secs: u64,
}

/// Where the token and its lock live, and the texts of the errors.
pub struct Slot<'a> {
    pub who: &'a str,
    pub key: &'a str,
    pub lock: &'a str,
    /// The error when a peer's mint did not show up in time.
    pub timeout_message: String,
}

impl Slot<'_> {
    fn store_err(&self, e: String) -> Error {
        Error::Unavailable(format!("{}: state store: {e}", self.who))
    }

    fn read(&self, store: &impl Store) -> Result<Option<String>, Error> {
        match store.get(self.key).map_err(|e| self.store_err(e))? {
            Some(v) if !v.is_empty() => String::from_utf8(v).map(Some).map_err(|_| {
                Error::Unavailable(format!(
                    "{}: the value at '{}' is not UTF-8.",
                    self.who, self.key
                ))
            }),
            _ => Ok(None),
        }
    }

    /// The stored token, or a fresh one from `mint` (called at most once, under the lock).
    pub fn get_or_mint(
        &self,
        store: &impl Store,
        sleep: impl Fn(Duration),
        mint: impl FnOnce() -> Result<Minted, Error>,
    ) -> Result<String, Error> {
        if let Some(t) = self.read(store)? {
            return Ok(t);
        }
        let locked = store
            .set_if_absent(self.lock, b"1", Some(LOCK_TTL_MS))
            .map_err(|e| self.store_err(e))?;
        if locked {
            let result = self.mint_locked(store, mint);
            // Release the lock whatever happened; if that fails it expires by itself.
            let _ = store.delete(self.lock);
            return result;
        }
        for _ in 0..POLL_ATTEMPTS {
            sleep(POLL_INTERVAL);
            if let Some(t) = self.read(store)? {
                return Ok(t);
            }
        }
        Err(Error::Unavailable(self.timeout_message.clone()))
    }

    fn mint_locked(
        &self,
        store: &impl Store,
        mint: impl FnOnce() -> Result<Minted, Error>,
    ) -> Result<String, Error> {
        // A peer may have stored a token between our first look and taking the lock.
        if let Some(t) = self.read(store)? {
            return Ok(t);
        }
        let minted = mint()?;
        if minted.ttl_secs > 0 {
            store
                .set(
                    self.key,
                    minted.token.as_bytes(),
                    Some(minted.ttl_secs.saturating_mul(1000)),
                )
                .map_err(|e| self.store_err(e))?;
        }
        Ok(minted.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// A stored value and its TTL in milliseconds.
    type Entry = (Vec<u8>, Option<u64>);

    /// An in-memory store; `fail_set` makes every `set` fail.
    #[derive(Default)]
    struct Fake {
        map: RefCell<HashMap<String, Entry>>,
        fail_set: bool,
    }

    impl Store for Fake {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.map.borrow().get(key).map(|(v, _)| v.clone()))
        }
        fn set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
            if self.fail_set {
                return Err("down".into());
            }
            self.map
                .borrow_mut()
                .insert(key.into(), (value.to_vec(), ttl_ms));
            Ok(())
        }
        fn set_if_absent(
            &self,
            key: &str,
            value: &[u8],
            ttl_ms: Option<u64>,
        ) -> Result<bool, String> {
            let mut m = self.map.borrow_mut();
            if m.contains_key(key) {
                return Ok(false);
            }
            m.insert(key.into(), (value.to_vec(), ttl_ms));
            Ok(true)
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            self.map.borrow_mut().remove(key);
            Ok(())
        }
    }

    fn slot() -> Slot<'static> {
        Slot {
            who: "T",
            key: "p:token",
            lock: "p:token:lock",
            timeout_message: "timed out".into(),
        }
    }

    fn minted(t: &str, ttl: u64) -> Result<Minted, Error> {
        Ok(Minted {
            token: t.into(),
            ttl_secs: ttl,
        })
    }

    #[test]
    fn stored_token_is_used_without_minting() {
        let store = Fake::default();
        store.set("p:token", b"have", None).unwrap();
        let got = slot()
            .get_or_mint(&store, |_| panic!("no wait"), || panic!("no mint"))
            .unwrap();
        assert_eq!(got, "have");
    }

    #[test]
    fn mints_under_the_lock_stores_with_ttl_and_releases() {
        let store = Fake::default();
        let got = slot()
            .get_or_mint(
                &store,
                |_| panic!("no wait"),
                || {
                    assert!(
                        store.map.borrow().contains_key("p:token:lock"),
                        "lock held while minting"
                    );
                    assert_eq!(store.map.borrow()["p:token:lock"].1, Some(30_000));
                    minted("fresh", 3540)
                },
            )
            .unwrap();
        assert_eq!(got, "fresh");
        let map = store.map.borrow();
        assert_eq!(map["p:token"], (b"fresh".to_vec(), Some(3_540_000)));
        assert!(!map.contains_key("p:token:lock"), "lock released");
    }

    #[test]
    fn lock_is_released_when_minting_fails() {
        let store = Fake::default();
        let err = slot()
            .get_or_mint(
                &store,
                |_| {},
                || Err(Error::Unavailable("endpoint down".into())),
            )
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(m) if m == "endpoint down"));
        assert!(store.map.borrow().is_empty(), "no token, no lock left");
        let store = Fake {
            fail_set: true,
            ..Default::default()
        };
        assert!(
            slot()
                .get_or_mint(&store, |_| {}, || minted("t", 60))
                .is_err()
        );
        assert!(store.map.borrow().is_empty());
    }

    #[test]
    fn zero_ttl_is_used_but_not_stored() {
        let store = Fake::default();
        assert_eq!(
            slot()
                .get_or_mint(&store, |_| {}, || minted("once", 0))
                .unwrap(),
            "once"
        );
        assert!(store.map.borrow().is_empty());
    }

    #[test]
    fn a_peer_holding_the_lock_is_awaited() {
        let store = Fake::default();
        store.set("p:token:lock", b"1", Some(30_000)).unwrap();
        let polls = Cell::new(0);
        let got = slot()
            .get_or_mint(
                &store,
                |d| {
                    assert_eq!(d, Duration::from_millis(250));
                    polls.set(polls.get() + 1);
                    if polls.get() == 3 {
                        store.set("p:token", b"peer", None).unwrap();
                    }
                },
                || panic!("must not mint while a peer holds the lock"),
            )
            .unwrap();
        assert_eq!(got, "peer");
        assert_eq!(polls.get(), 3);
    }

    #[test]
    fn waiting_gives_up_after_twenty_polls() {
        let store = Fake::default();
        store.set("p:token:lock", b"1", Some(30_000)).unwrap();
        let polls = Cell::new(0);
        let err = slot()
            .get_or_mint(&store, |_| polls.set(polls.get() + 1), || panic!("no mint"))
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(m) if m == "timed out"));
        assert_eq!(polls.get(), 20);
    }

    #[test]
    fn token_stored_by_a_peer_just_before_the_lock_is_not_minted_again() {
        // The peer stored the token and released the lock between our first read and
        // our set-if-absent: we get the lock, but must re-read instead of minting.
        struct Racy(Fake, Cell<bool>);
        impl Store for Racy {
            fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
                if !self.1.replace(true) {
                    let r = self.0.get(key);
                    self.0.set("p:token", b"peer", None)?;
                    return r;
                }
                self.0.get(key)
            }
            fn set(&self, k: &str, v: &[u8], t: Option<u64>) -> Result<(), String> {
                self.0.set(k, v, t)
            }
            fn set_if_absent(&self, k: &str, v: &[u8], t: Option<u64>) -> Result<bool, String> {
                self.0.set_if_absent(k, v, t)
            }
            fn delete(&self, k: &str) -> Result<(), String> {
                self.0.delete(k)
            }
        }
        let store = Racy(Fake::default(), Cell::new(false));
        let got = slot()
            .get_or_mint(&store, |_| {}, || panic!("double mint"))
            .unwrap();
        assert_eq!(got, "peer");
        assert!(!store.0.map.borrow().contains_key("p:token:lock"));
    }
}
