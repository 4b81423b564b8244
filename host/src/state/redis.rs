//! The Redis backend (D24): every replica shares buckets, cooldowns, cache, idempotency
//! and tokens; buckets are atomic through Lua on the server's clock. Commands fail fast
//! while Redis is unreachable (the caller answers `503 PROXY_STATE_UNAVAILABLE`), and
//! the client reconnects on its own, so service resumes when Redis returns.

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};

use super::StateError;
use super::bucket::{ADMIT_LUA, Admit, Limit};

/// A connected Redis client.
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    /// What `client` was built from, for the serving threads' own clients.
    config: Config,
    /// Tells this store's clients apart in [`THREAD_CLIENTS`].
    id: usize,
    admit: Script,
}

thread_local! {
    /// Clients of this thread's own (see [`RedisStore::connect_for_this_thread`]), by store.
    static THREAD_CLIENTS: std::cell::RefCell<Vec<(usize, Client)>> =
        const { std::cell::RefCell::new(Vec::new()) };
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

/// Build a client and start connecting it. An unreachable server is not an error (the
/// client keeps reconnecting), so Outpost can start before Redis.
async fn start(config: Config) -> Result<Client, StateError> {
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
    Ok(client)
}

impl RedisStore {
    /// Connect to `url`. Fails when the URL is invalid; an unreachable server is not an
    /// error here (the client keeps reconnecting) so Outpost can start before Redis.
    pub async fn connect(url: &str) -> Result<Self, StateError> {
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let config =
            Config::from_url(url).map_err(|e| StateError::Config(format!("REDIS_URL: {e}")))?;
        let client = start(config.clone()).await?;
        Ok(Self {
            client,
            config,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            admit: Script::from_lua(ADMIT_LUA),
        })
    }

    /// Give the calling thread a connection of its own, driven by the thread's runtime:
    /// a serving thread's commands then never wait for another thread (see
    /// [`crate::worker`]). Other threads keep using the shared client.
    pub async fn connect_for_this_thread(&self) -> Result<(), StateError> {
        let client = start(self.config.clone()).await?;
        THREAD_CLIENTS.with(|c| c.borrow_mut().push((self.id, client)));
        Ok(())
    }

    /// This thread's own client, else the shared one.
    fn client(&self) -> Client {
        THREAD_CLIENTS
            .with(|c| {
                c.borrow()
                    .iter()
                    .find(|(id, _)| *id == self.id)
                    .map(|(_, client)| client.clone())
            })
            .unwrap_or_else(|| self.client.clone())
    }

    /// Round trip to the server.
    pub async fn ping(&self) -> Result<(), StateError> {
        self.client().ping::<()>(None).await.map_err(unavailable)
    }

    /// GET.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.client()
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
            .client()
            .set(key, value, exp, opt, false)
            .await
            .map_err(unavailable)?;
        Ok(r.is_some())
    }

    /// DEL.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.client()
            .del::<i64, _>(key)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// PTTL; `None` when absent.
    pub async fn ttl_ms(&self, key: &str) -> Result<Option<u64>, StateError> {
        let t: i64 = self.client().pttl(key).await.map_err(unavailable)?;
        Ok(match t {
            -2 => None,
            -1 => Some(u64::MAX),
            t => Some(u64::try_from(t).unwrap_or(0)),
        })
    }

    /// A request's whole rate-limit check in one round trip ([`ADMIT_LUA`]). On a
    /// cluster, where the keys live on different nodes, one command per key instead.
    pub async fn admit(&self, cooldown: &str, limits: &[Limit<'_>]) -> Result<Admit, StateError> {
        // A property of the configuration, the same for every client built from it.
        if !self.config.server.is_clustered() {
            return self.run_admit(Some(cooldown), limits).await;
        }
        if let Some(ms) = self.ttl_ms(cooldown).await? {
            return Ok(Admit::Cooldown(ms));
        }
        for l in limits {
            match self.run_admit(None, std::slice::from_ref(l)).await? {
                Admit::Taken => {}
                other => return Ok(other),
            }
        }
        Ok(Admit::Taken)
    }

    async fn run_admit(
        &self,
        cooldown: Option<&str>,
        limits: &[Limit<'_>],
    ) -> Result<Admit, StateError> {
        let keys: Vec<String> = cooldown
            .into_iter()
            .chain(limits.iter().map(|l| l.key))
            .map(str::to_string)
            .collect();
        let flag = if cooldown.is_some() { "1" } else { "0" };
        let args: Vec<String> = std::iter::once(flag.to_string())
            .chain(
                limits
                    .iter()
                    .flat_map(|l| [l.capacity.to_string(), l.window_ms.to_string()]),
            )
            .collect();
        let (kind, value): (i64, i64) = self
            .admit
            .evalsha_with_reload(&self.client(), keys, args)
            .await
            .map_err(unavailable)?;
        let value = u64::try_from(value);
        match kind {
            // PTTL -1: a cooldown without expiry.
            0 => Ok(Admit::Cooldown(value.unwrap_or(u64::MAX))),
            1 => Ok(Admit::Taken),
            2 => Ok(Admit::Denied(value.unwrap_or(1))),
            k => Err(StateError::Unavailable(format!(
                "the rate-limit script answered an unknown outcome {k}"
            ))),
        }
    }
}
