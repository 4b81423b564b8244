//! Process-wide settings: the original's environment variables (D1) plus our own
//! `OUTPOST_*` ones. Each also has a CLI flag (see `main.rs`), layered over the
//! environment through [`super::env::Layered`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::env::Env;
use super::error::ConfigError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Limits applied to every auth-module call (D22).
#[derive(Debug, Clone)]
pub struct ModuleLimits {
    /// CPU time a module may use per call before it is interrupted.
    pub cpu: Duration,
    /// Wall-clock time a call may take, including outbound I/O.
    pub wall: Duration,
    /// Linear memory cap per instance, bytes.
    pub memory_bytes: usize,
    /// How many module instances may exist at once (pooling allocator slots).
    pub max_instances: u32,
    /// `OUTPOST_PLUGIN_REUSE`: calls one instance of a module that declares itself
    /// stateless may serve (for one provider) before it is replaced; 1 gives every call
    /// a fresh instance.
    pub reuse_calls: u32,
}

/// Every setting, parsed and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `PROVIDERS_DIR`.
    pub providers_dir: PathBuf,
    /// `EXTRA_PROVIDERS_DIR` (loaded after `providers_dir`; same names override).
    pub extra_providers_dir: Option<PathBuf>,
    /// `HOSTS_CONFIG_PATH`.
    pub hosts_path: PathBuf,
    /// `PLUGINS_DIR`: user auth modules (`*.wasm`).
    pub plugins_dir: PathBuf,
    /// `PROXY_HOST`.
    pub host: IpAddr,
    /// `PROXY_PORT` (0 picks a free port; the bound address is logged).
    pub port: u16,
    /// `REDIS_URL`; unset means embedded state (D24).
    pub redis_url: Option<String>,
    /// `TRUSTED_PROXIES`: peers allowed to set `X-Forwarded-For` (D4).
    pub trusted_proxies: Vec<IpNet>,
    /// `DEFAULT_PROVIDER`, lower-cased.
    pub default_provider: String,
    /// `RATE_LIMIT_QUEUE_TIMEOUT`.
    pub rate_limit_queue_timeout: Duration,
    /// `OUTPOST_CONNECT_TIMEOUT`.
    pub connect_timeout: Duration,
    /// `OUTPOST_UPSTREAM_TIMEOUT` (time to the upstream's response head).
    pub upstream_timeout: Duration,
    /// `OUTPOST_IDLE_TIMEOUT` (gap between body chunks on streams).
    pub idle_timeout: Duration,
    /// `OUTPOST_MAX_BODY_BYTES`: cap on any body Outpost buffers.
    pub max_body_bytes: usize,
    /// `OUTPOST_CACHE_DIR`: compiled-module cache; `None` when set to an empty string.
    pub cache_dir: Option<PathBuf>,
    /// `OUTPOST_PLUGIN_*`.
    pub module_limits: ModuleLimits,
    /// `OUTPOST_LOG_FORMAT` (`text` or `json`).
    pub log_format: LogFormat,
    /// `OUTPOST_STATE_MAX_ENTRIES` / `OUTPOST_STATE_MAX_BYTES`: caps on cached responses
    /// and idempotency records in the embedded store.
    pub state_caps: crate::state::Caps,
    /// `OUTPOST_STATE_FAIL_OPEN`: when the state store is unreachable, skip rate limits,
    /// cache and idempotency instead of answering 503 (D24; off by default).
    pub state_fail_open: bool,
    /// `OUTPOST_WATCH`: reload when a configuration file changes (D23).
    pub watch: bool,
    /// `OUTPOST_PLUGIN_TRAP_LIMIT` / `OUTPOST_PLUGIN_TRAP_COOLDOWN`: the circuit breaker
    /// that disables a module which keeps trapping.
    pub breaker: crate::runtime::breaker::BreakerConfig,
    /// `OUTPOST_HEADER_TIMEOUT`: time a client has to send its request head.
    pub header_timeout: Duration,
    /// `OUTPOST_MAX_CONNECTIONS`: client connections served at once; more are answered
    /// 503 and closed.
    pub max_connections: usize,
    /// `OUTPOST_WORKERS`: serving threads (default: one per CPU).
    pub workers: usize,
}

/// Most serving threads `OUTPOST_WORKERS` may ask for.
pub const MAX_WORKERS: usize = 256;

/// The variables [`Settings::from_env`] reads, for `--help` and docs.
pub const VARIABLES: &[&str] = &[
    "PROVIDERS_DIR",
    "EXTRA_PROVIDERS_DIR",
    "HOSTS_CONFIG_PATH",
    "PLUGINS_DIR",
    "PROXY_HOST",
    "PROXY_PORT",
    "REDIS_URL",
    "TRUSTED_PROXIES",
    "DEFAULT_PROVIDER",
    "RATE_LIMIT_QUEUE_TIMEOUT",
    "OUTPOST_CONNECT_TIMEOUT",
    "OUTPOST_UPSTREAM_TIMEOUT",
    "OUTPOST_IDLE_TIMEOUT",
    "OUTPOST_MAX_BODY_BYTES",
    "OUTPOST_CACHE_DIR",
    "OUTPOST_PLUGIN_CPU_MS",
    "OUTPOST_PLUGIN_WALL_MS",
    "OUTPOST_PLUGIN_MEMORY_MB",
    "OUTPOST_PLUGIN_MAX_INSTANCES",
    "OUTPOST_PLUGIN_REUSE",
    "OUTPOST_LOG_FORMAT",
    "OUTPOST_STATE_MAX_ENTRIES",
    "OUTPOST_STATE_MAX_BYTES",
    "OUTPOST_STATE_FAIL_OPEN",
    "OUTPOST_WATCH",
    "OUTPOST_PLUGIN_TRAP_LIMIT",
    "OUTPOST_PLUGIN_TRAP_COOLDOWN",
    "OUTPOST_HEADER_TIMEOUT",
    "OUTPOST_MAX_CONNECTIONS",
    "OUTPOST_WORKERS",
];

struct Reader<'a> {
    env: &'a dyn Env,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        self.env.var(name).map(|v| v.trim().to_string())
    }

    fn fail(&mut self, name: &str, value: &str, reason: impl std::fmt::Display) {
        self.errors.push(ConfigError::new(
            "environment",
            name,
            format!("invalid value {value:?}: {reason}"),
        ));
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.raw(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    fn parse<T: std::str::FromStr>(&mut self, name: &str, default: T, what: &str) -> T {
        match self.raw(name).filter(|v| !v.is_empty()) {
            None => default,
            Some(v) => match v.parse() {
                Ok(x) => x,
                Err(_) => {
                    self.fail(name, &v, format_args!("expected {what}"));
                    default
                }
            },
        }
    }

    fn seconds(&mut self, name: &str, default: f64) -> Duration {
        let secs: f64 = self.parse(name, default, "a number of seconds");
        if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
            self.fail(
                name,
                &secs.to_string(),
                "expected seconds between 0 and 86400",
            );
            return Duration::from_secs_f64(default);
        }
        Duration::from_secs_f64(secs)
    }

    fn positive(&mut self, name: &str, default: u64) -> u64 {
        let v: u64 = self.parse(name, default, "a positive integer");
        if v == 0 {
            self.fail(name, "0", "must be greater than 0");
            return default;
        }
        v
    }

    /// `OUTPOST_WORKERS`: 1 to [`MAX_WORKERS`], by default one per CPU.
    fn workers(&mut self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
        let v = self.positive("OUTPOST_WORKERS", cpus as u64);
        match usize::try_from(v) {
            Ok(n) if n <= MAX_WORKERS => n,
            _ => {
                self.fail(
                    "OUTPOST_WORKERS",
                    &v.to_string(),
                    format!("at most {MAX_WORKERS}"),
                );
                cpus
            }
        }
    }
}

impl Settings {
    /// Read every setting from `env`, reporting all problems at once.
    pub fn from_env(env: &dyn Env) -> Result<Self, Vec<ConfigError>> {
        let mut r = Reader {
            env,
            errors: Vec::new(),
        };
        let extra = r.string("EXTRA_PROVIDERS_DIR", "");
        let trusted = r.string("TRUSTED_PROXIES", "");
        let mut trusted_proxies = Vec::new();
        for item in trusted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match parse_cidr(item) {
                Ok(net) => trusted_proxies.push(net),
                Err(e) => r.fail("TRUSTED_PROXIES", item, e),
            }
        }
        let cache_dir = match r.env.var("OUTPOST_CACHE_DIR") {
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(PathBuf::from(v.trim())),
            None => Some(default_cache_dir(env)),
        };
        let log_format = match r
            .string("OUTPOST_LOG_FORMAT", "text")
            .to_ascii_lowercase()
            .as_str()
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                let other = other.to_string();
                r.fail("OUTPOST_LOG_FORMAT", &other, "expected `text` or `json`");
                LogFormat::Text
            }
        };
        let memory_mb = r.positive("OUTPOST_PLUGIN_MEMORY_MB", 64);
        let settings = Settings {
            providers_dir: PathBuf::from(r.string("PROVIDERS_DIR", "./builtin_providers")),
            extra_providers_dir: (!extra.is_empty()).then(|| PathBuf::from(extra)),
            hosts_path: PathBuf::from(r.string("HOSTS_CONFIG_PATH", "./hosts.yaml")),
            plugins_dir: PathBuf::from(r.string("PLUGINS_DIR", "./plugins")),
            host: r.parse("PROXY_HOST", IpAddr::from([0, 0, 0, 0]), "an IP address"),
            port: r.parse("PROXY_PORT", 8080, "a port number"),
            redis_url: r.raw("REDIS_URL").filter(|v| !v.is_empty()),
            trusted_proxies,
            default_provider: r.string("DEFAULT_PROVIDER", "").to_lowercase(),
            rate_limit_queue_timeout: r.seconds("RATE_LIMIT_QUEUE_TIMEOUT", 2.0),
            connect_timeout: r.seconds("OUTPOST_CONNECT_TIMEOUT", 5.0),
            upstream_timeout: r.seconds("OUTPOST_UPSTREAM_TIMEOUT", 30.0),
            idle_timeout: r.seconds("OUTPOST_IDLE_TIMEOUT", 60.0),
            max_body_bytes: r.parse(
                "OUTPOST_MAX_BODY_BYTES",
                10 * 1024 * 1024,
                "a number of bytes",
            ),
            cache_dir,
            module_limits: ModuleLimits {
                cpu: Duration::from_millis(r.positive("OUTPOST_PLUGIN_CPU_MS", 100)),
                wall: Duration::from_millis(r.positive("OUTPOST_PLUGIN_WALL_MS", 20_000)),
                memory_bytes: usize::try_from(memory_mb.saturating_mul(1024 * 1024))
                    .unwrap_or(usize::MAX),
                max_instances: u32::try_from(r.positive("OUTPOST_PLUGIN_MAX_INSTANCES", 256))
                    .unwrap_or(u32::MAX),
                reuse_calls: u32::try_from(r.positive("OUTPOST_PLUGIN_REUSE", 1000))
                    .unwrap_or(u32::MAX),
            },
            log_format,
            state_fail_open: r.parse("OUTPOST_STATE_FAIL_OPEN", false, "true or false"),
            watch: r.parse("OUTPOST_WATCH", false, "true or false"),
            breaker: crate::runtime::breaker::BreakerConfig {
                limit: r.parse(
                    "OUTPOST_PLUGIN_TRAP_LIMIT",
                    5,
                    "a number of consecutive failures (0 disables the breaker)",
                ),
                cooldown: r.seconds("OUTPOST_PLUGIN_TRAP_COOLDOWN", 30.0),
            },
            header_timeout: r.seconds("OUTPOST_HEADER_TIMEOUT", 10.0),
            max_connections: usize::try_from(r.positive("OUTPOST_MAX_CONNECTIONS", 1024))
                .unwrap_or(usize::MAX),
            workers: r.workers(),
            state_caps: crate::state::Caps {
                entries: usize::try_from(r.positive("OUTPOST_STATE_MAX_ENTRIES", 10_000))
                    .unwrap_or(usize::MAX),
                bytes: usize::try_from(r.positive("OUTPOST_STATE_MAX_BYTES", 64 * 1024 * 1024))
                    .unwrap_or(usize::MAX),
            },
        };
        if r.errors.is_empty() {
            Ok(settings)
        } else {
            Err(r.errors)
        }
    }
}

/// `$XDG_CACHE_HOME/outpost`, else `$HOME/.cache/outpost`, else `./.outpost-cache`.
fn default_cache_dir(env: &dyn Env) -> PathBuf {
    if let Some(x) = env.var("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("outpost");
    }
    if let Some(h) = env.var("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("outpost");
    }
    PathBuf::from(".outpost-cache")
}

/// A CIDR, or a bare address meaning a single host (`/32`, `/128`). Host bits are
/// allowed and cleared, as the original's `ip_network(strict=False)` does.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{text}' is not a CIDR (like 10.0.0.0/24) or an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::MapEnv;

    #[test]
    fn defaults_without_any_variable() {
        let s = Settings::from_env(&MapEnv::default()).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.providers_dir, PathBuf::from("./builtin_providers"));
        assert!(s.redis_url.is_none());
        assert_eq!(s.rate_limit_queue_timeout, Duration::from_secs(2));
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        assert_eq!(s.max_body_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn every_bad_value_is_reported_with_its_name() {
        let env = MapEnv::from_pairs([
            ("PROXY_PORT", "eighty"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, nonsense"),
            ("OUTPOST_UPSTREAM_TIMEOUT", "-1"),
        ]);
        let errs = Settings::from_env(&env).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["TRUSTED_PROXIES", "PROXY_PORT", "OUTPOST_UPSTREAM_TIMEOUT"]
        );
        assert!(errs[0].reason.contains("nonsense"));
    }

    #[test]
    fn decimals_and_cidrs() {
        let env = MapEnv::from_pairs([
            ("OUTPOST_CONNECT_TIMEOUT", "0.25"),
            ("TRUSTED_PROXIES", "10.1.2.3/8,::1"),
            ("DEFAULT_PROVIDER", "GitHub"),
            ("OUTPOST_CACHE_DIR", ""),
        ]);
        let s = Settings::from_env(&env).unwrap();
        assert_eq!(s.connect_timeout, Duration::from_millis(250));
        assert_eq!(s.trusted_proxies[0].to_string(), "10.0.0.0/8");
        assert_eq!(s.trusted_proxies[1].to_string(), "::1/128");
        assert_eq!(s.default_provider, "github");
        assert!(s.cache_dir.is_none());
    }

    #[test]
    fn workers_default_to_one_per_cpu_and_are_bounded() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            Settings::from_env(&MapEnv::default()).unwrap().workers,
            cpus
        );
        let one = MapEnv::from_pairs([("OUTPOST_WORKERS", "1")]);
        assert_eq!(Settings::from_env(&one).unwrap().workers, 1);
        for bad in ["0", "257", "many"] {
            let env = MapEnv::from_pairs([("OUTPOST_WORKERS", bad)]);
            let errs = Settings::from_env(&env).unwrap_err();
            assert_eq!(errs.len(), 1, "{bad}");
            assert_eq!(errs[0].key, "OUTPOST_WORKERS");
            assert!(errs[0].reason.contains(bad), "{bad}: {}", errs[0].reason);
        }
    }
}
