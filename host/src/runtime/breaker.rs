//! The trap circuit breaker (issue 5): a module that traps or overruns its deadlines
//! `limit` times in a row is disabled for `cooldown`; its provider answers 503 without
//! instantiating it. After the cooldown one call is let through (half-open): success
//! closes the breaker, another failure opens it again for a full cooldown.
//!
//! Only failures of the module itself count (traps, CPU and wall deadlines); an
//! `error::unavailable` from a module whose token endpoint is down is a legitimate answer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker settings (`OUTPOST_PLUGIN_TRAP_LIMIT`, `OUTPOST_PLUGIN_TRAP_COOLDOWN`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker; 0 never opens it.
    pub limit: u32,
    /// How long it stays open.
    pub cooldown: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    consecutive: u32,
    open_until: Option<Instant>,
    /// A half-open probe is running.
    probing: bool,
    total_failures: u64,
}

/// One breaker per provider's module.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// What `/readyz` reports about an open breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    /// Consecutive failures that opened it.
    pub failures: u32,
    /// Time left before a probe call is let through.
    pub retry_in: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while counting; the counts
        // are still meaningful.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call go ahead? `Err(retry_in)` while open, or while another call probes.
    /// `now` is asked only while the breaker is open: a closed one needs no clock.
    pub fn admit(&self, now: impl FnOnce() -> Instant) -> Result<(), Duration> {
        let mut s = self.lock();
        let Some(until) = s.open_until else {
            return Ok(());
        };
        let now = now();
        if now < until {
            Err(until - now)
        } else if s.probing {
            Err(Duration::from_secs(1))
        } else {
            s.probing = true;
            Ok(())
        }
    }

    /// The call succeeded (or failed for a reason that is not the module's fault).
    pub fn success(&self) {
        let mut s = self.lock();
        s.consecutive = 0;
        s.open_until = None;
        s.probing = false;
    }

    /// The module trapped or overran a deadline. Returns `true` when this opened the
    /// breaker.
    pub fn failure(&self, now: Instant) -> bool {
        let mut s = self.lock();
        s.consecutive = s.consecutive.saturating_add(1);
        s.total_failures = s.total_failures.saturating_add(1);
        let was_probe = std::mem::take(&mut s.probing);
        if self.config.limit > 0 && (was_probe || s.consecutive >= self.config.limit) {
            s.open_until = Some(now + self.config.cooldown);
            return true;
        }
        false
    }

    /// `Some` while open.
    pub fn open(&self, now: Instant) -> Option<Open> {
        let s = self.lock();
        s.open_until.map(|until| Open {
            failures: s.consecutive,
            retry_in: until.saturating_duration_since(now),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(limit: u32) -> Breaker {
        Breaker::new(BreakerConfig {
            limit,
            cooldown: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let b = breaker(3);
        let t = Instant::now();
        assert!(!b.failure(t));
        b.success(); // a success in between resets the count
        assert!(!b.failure(t));
        assert!(!b.failure(t));
        assert!(b.admit(|| t).is_ok());
        assert!(b.failure(t), "third consecutive failure opens it");
        assert_eq!(
            b.admit(|| t + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        assert_eq!(b.open(t).map(|o| o.failures), Some(3));
        // Half-open: one probe at a time.
        let later = t + Duration::from_secs(11);
        assert!(b.admit(|| later).is_ok());
        assert!(b.admit(|| later).is_err());
        // The probe fails: open again for a full cooldown.
        assert!(b.failure(later));
        assert!(b.admit(|| later + Duration::from_secs(9)).is_err());
        // The next probe succeeds: closed.
        let much_later = later + Duration::from_secs(11);
        assert!(b.admit(|| much_later).is_ok());
        b.success();
        assert!(b.open(much_later).is_none());
        assert!(b.admit(|| much_later).is_ok());
    }

    #[test]
    fn a_zero_limit_never_opens() {
        let b = breaker(0);
        let t = Instant::now();
        for _ in 0..100 {
            assert!(!b.failure(t));
        }
        assert!(b.admit(|| t).is_ok());
    }

    #[test]
    fn a_closed_breaker_reads_no_clock() {
        let b = breaker(3);
        assert!(
            b.admit(|| unreachable!("read the clock while closed"))
                .is_ok()
        );
        let t = Instant::now();
        b.failure(t);
        b.failure(t);
        assert!(
            b.admit(|| unreachable!("read the clock while closed"))
                .is_ok()
        );
        assert!(b.failure(t));
        assert!(b.admit(|| t).is_err(), "open: the clock decides");
    }
}
