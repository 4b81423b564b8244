//! Where settings and secrets come from. Everything reads through [`Env`], so tests pass
//! a map instead of touching the process environment.

use std::collections::HashMap;

/// A source of environment variables.
pub trait Env: Send + Sync + std::fmt::Debug {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed map, for tests and for `outpost check --env-file`-style use.
#[derive(Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

/// Names only: values may be secrets.
impl std::fmt::Debug for MapEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl MapEnv {
    /// Build from pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Command-line flags layered over an environment: a flag wins over the variable of the
/// same setting.
pub struct Layered {
    /// Values given as flags, keyed by the environment variable they stand for.
    pub flags: HashMap<&'static str, String>,
    /// The environment underneath.
    pub env: std::sync::Arc<dyn Env>,
}

/// Names only: values may be secrets (a `REDIS_URL` can carry a password).
impl std::fmt::Debug for Layered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layered")
            .field("flags", &self.flags.keys().collect::<Vec<_>>())
            .field("env", &self.env)
            .finish()
    }
}

impl Env for Layered {
    fn var(&self, name: &str) -> Option<String> {
        self.flags.get(name).cloned().or_else(|| self.env.var(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_values() {
        let m = MapEnv::from_pairs([("REDIS_URL", "redis://:hunter2@host/0")]);
        let l = Layered {
            flags: HashMap::from([("REDIS_URL", "redis://:hunter3@h/0".to_string())]),
            env: std::sync::Arc::new(m),
        };
        let text = format!("{l:?}");
        assert!(
            text.contains("REDIS_URL") && !text.contains("hunter"),
            "{text}"
        );
        assert_eq!(
            l.var("REDIS_URL").as_deref(),
            Some("redis://:hunter3@h/0"),
            "a flag wins"
        );
    }
}
