//! The `outpost` command: `serve` runs the proxy, `check` validates configuration
//! offline, `plugin new`/`plugin inspect` help plugin authors.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use outpost::config::env::{Env, Layered, ProcessEnv};
use outpost::config::settings::{LogFormat, Settings};
use outpost::server;

/// mimalloc's thread-local free lists instead of glibc's arenas: every request allocates
/// and frees its headers, futures and buffers on one serving thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "outpost",
    version,
    about = "Capability-based credential proxy for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(Flags),
    /// Validate providers, hosts, plugins and settings offline; exit non-zero on any problem.
    Check(Flags),
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a Rust plugin crate (SDK and WIT vendored) that builds with
    /// `cargo build --target wasm32-wasip2 --release` and has a passing test.
    New {
        /// Crate name: lower-case letters, digits, '_' and '-'.
        name: String,
        /// Where to create the crate's directory.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
    /// Print the WIT world and version a component implements, what it imports and its
    /// size; exit non-zero if Outpost would refuse it.
    Inspect {
        /// The component (`.wasm`).
        file: std::path::PathBuf,
    },
}

/// Every flag stands for an environment variable and wins over it.
#[derive(Args, Default)]
struct Flags {
    /// Provider YAML directory [env: PROVIDERS_DIR]
    #[arg(long)]
    providers_dir: Option<String>,
    /// Second provider directory, loaded after the first [env: EXTRA_PROVIDERS_DIR]
    #[arg(long)]
    extra_providers_dir: Option<String>,
    /// hosts.yaml path [env: HOSTS_CONFIG_PATH]
    #[arg(long)]
    hosts: Option<String>,
    /// Directory of plugin components (*.wasm) [env: PLUGINS_DIR]
    #[arg(long)]
    plugins_dir: Option<String>,
    /// Listen address [env: PROXY_HOST]
    #[arg(long)]
    host: Option<String>,
    /// Listen port; 0 picks a free one [env: PROXY_PORT]
    #[arg(long)]
    port: Option<String>,
    /// Redis URL; unset = embedded state [env: REDIS_URL]
    #[arg(long)]
    redis_url: Option<String>,
    /// Comma-separated CIDRs of trusted reverse proxies [env: TRUSTED_PROXIES]
    #[arg(long)]
    trusted_proxies: Option<String>,
    /// Provider for requests without X-Provider [env: DEFAULT_PROVIDER]
    #[arg(long)]
    default_provider: Option<String>,
    /// Seconds a request may wait for rate-limit tokens [env: RATE_LIMIT_QUEUE_TIMEOUT]
    #[arg(long)]
    rate_limit_queue_timeout: Option<String>,
    /// Upstream connect timeout, seconds [env: OUTPOST_CONNECT_TIMEOUT]
    #[arg(long)]
    connect_timeout: Option<String>,
    /// Time to the upstream's response head, seconds [env: OUTPOST_UPSTREAM_TIMEOUT]
    #[arg(long)]
    upstream_timeout: Option<String>,
    /// Idle gap allowed on streamed bodies, seconds [env: OUTPOST_IDLE_TIMEOUT]
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Cap on buffered bodies, bytes [env: OUTPOST_MAX_BODY_BYTES]
    #[arg(long)]
    max_body_bytes: Option<String>,
    /// Compiled-module cache directory; empty disables [env: OUTPOST_CACHE_DIR]
    #[arg(long)]
    cache_dir: Option<String>,
    /// CPU budget per module call, ms [env: OUTPOST_PLUGIN_CPU_MS]
    #[arg(long)]
    plugin_cpu_ms: Option<String>,
    /// Wall-clock budget per module call, ms [env: OUTPOST_PLUGIN_WALL_MS]
    #[arg(long)]
    plugin_wall_ms: Option<String>,
    /// Memory cap per module instance, MiB [env: OUTPOST_PLUGIN_MEMORY_MB]
    #[arg(long)]
    plugin_memory_mb: Option<String>,
    /// Module instances that may exist at once [env: OUTPOST_PLUGIN_MAX_INSTANCES]
    #[arg(long)]
    plugin_max_instances: Option<String>,
    /// Calls one instance of a stateless module may serve; 1 = fresh instance per call [env: OUTPOST_PLUGIN_REUSE]
    #[arg(long)]
    plugin_reuse: Option<String>,
    /// Consecutive traps/deadline overruns that disable a module; 0 never [env: OUTPOST_PLUGIN_TRAP_LIMIT]
    #[arg(long)]
    plugin_trap_limit: Option<String>,
    /// Seconds a disabled module stays disabled before one probe call [env: OUTPOST_PLUGIN_TRAP_COOLDOWN]
    #[arg(long)]
    plugin_trap_cooldown: Option<String>,
    /// Seconds a client has to send its request head [env: OUTPOST_HEADER_TIMEOUT]
    #[arg(long)]
    header_timeout: Option<String>,
    /// Client connections served at once; more get 503 [env: OUTPOST_MAX_CONNECTIONS]
    #[arg(long)]
    max_connections: Option<String>,
    /// Serving threads; default one per CPU [env: OUTPOST_WORKERS]
    #[arg(long)]
    workers: Option<String>,
    /// `text` or `json` [env: OUTPOST_LOG_FORMAT]
    #[arg(long)]
    log_format: Option<String>,
    /// Most cached responses/idempotency records kept in process [env: OUTPOST_STATE_MAX_ENTRIES]
    #[arg(long)]
    state_max_entries: Option<String>,
    /// Most bytes of cached responses/idempotency records kept in process [env: OUTPOST_STATE_MAX_BYTES]
    #[arg(long)]
    state_max_bytes: Option<String>,
    /// Skip rate limits, cache and idempotency while the state store is down, instead of 503 [env: OUTPOST_STATE_FAIL_OPEN]
    #[arg(long)]
    state_fail_open: Option<String>,
    /// Reload when a configuration file changes (`true`/`false`) [env: OUTPOST_WATCH]
    #[arg(long)]
    watch: Option<String>,
}

impl Flags {
    fn into_map(self) -> HashMap<&'static str, String> {
        let pairs = [
            ("PROVIDERS_DIR", self.providers_dir),
            ("EXTRA_PROVIDERS_DIR", self.extra_providers_dir),
            ("HOSTS_CONFIG_PATH", self.hosts),
            ("PLUGINS_DIR", self.plugins_dir),
            ("PROXY_HOST", self.host),
            ("PROXY_PORT", self.port),
            ("REDIS_URL", self.redis_url),
            ("TRUSTED_PROXIES", self.trusted_proxies),
            ("DEFAULT_PROVIDER", self.default_provider),
            ("RATE_LIMIT_QUEUE_TIMEOUT", self.rate_limit_queue_timeout),
            ("OUTPOST_CONNECT_TIMEOUT", self.connect_timeout),
            ("OUTPOST_UPSTREAM_TIMEOUT", self.upstream_timeout),
            ("OUTPOST_IDLE_TIMEOUT", self.idle_timeout),
            ("OUTPOST_MAX_BODY_BYTES", self.max_body_bytes),
            ("OUTPOST_CACHE_DIR", self.cache_dir),
            ("OUTPOST_PLUGIN_CPU_MS", self.plugin_cpu_ms),
            ("OUTPOST_PLUGIN_WALL_MS", self.plugin_wall_ms),
            ("OUTPOST_PLUGIN_MEMORY_MB", self.plugin_memory_mb),
            ("OUTPOST_PLUGIN_MAX_INSTANCES", self.plugin_max_instances),
            ("OUTPOST_PLUGIN_REUSE", self.plugin_reuse),
            ("OUTPOST_PLUGIN_TRAP_LIMIT", self.plugin_trap_limit),
            ("OUTPOST_PLUGIN_TRAP_COOLDOWN", self.plugin_trap_cooldown),
            ("OUTPOST_HEADER_TIMEOUT", self.header_timeout),
            ("OUTPOST_MAX_CONNECTIONS", self.max_connections),
            ("OUTPOST_WORKERS", self.workers),
            ("OUTPOST_LOG_FORMAT", self.log_format),
            ("OUTPOST_STATE_MAX_ENTRIES", self.state_max_entries),
            ("OUTPOST_STATE_MAX_BYTES", self.state_max_bytes),
            ("OUTPOST_STATE_FAIL_OPEN", self.state_fail_open),
            ("OUTPOST_WATCH", self.watch),
        ];
        pairs
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn settings(env: &dyn Env) -> Result<Settings, ExitCode> {
    Settings::from_env(env).map_err(|errors| {
        for e in errors {
            eprintln!("error: {e}");
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve(flags) => serve(flags).await,
            Command::Check(flags) => check(flags).await,
            Command::Plugin(cmd) => plugin(cmd),
        }
    })
}

/// Read settings and build everything, as both `serve` and `check` do. Returns the state
/// and the provider problems found (those providers answer 503).
async fn load(
    flags: Flags,
    log_format: Option<LogFormat>,
) -> Result<(server::AppState, Vec<outpost::config::ConfigError>), ExitCode> {
    let env: Arc<dyn Env> = Arc::new(Layered {
        flags: flags.into_map(),
        env: Arc::new(ProcessEnv),
    });
    let settings = settings(&*env)?;
    let plain = log_format.is_some();
    init_logging(log_format.unwrap_or(settings.log_format));
    server::build(settings, env).await.map_err(|e| {
        if plain {
            eprintln!("error: {e}");
        } else {
            tracing::error!("cannot start: {e}");
        }
        ExitCode::FAILURE
    })
}

async fn serve(flags: Flags) -> ExitCode {
    let (state, problems) = match load(flags, None).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    for p in &problems {
        tracing::error!("configuration problem: {p}");
    }
    match server::serve(state).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn check(flags: Flags) -> ExitCode {
    let (state, problems) = match load(flags, Some(LogFormat::Text)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    for p in &problems {
        eprintln!("error: {p}");
    }
    let current = state.current();
    let usable = current.providers.usable();
    println!(
        "{} provider(s) usable{}{}; {} host entr{}",
        usable.len(),
        if usable.is_empty() { "" } else { ": " },
        usable.join(", "),
        current.hosts.len(),
        if current.hosts.len() == 1 { "y" } else { "ies" }
    );
    if problems.is_empty() {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        println!("{} problem(s) found", problems.len());
        ExitCode::FAILURE
    }
}

fn plugin(cmd: PluginCommand) -> ExitCode {
    use outpost::plugin;
    match cmd {
        PluginCommand::New { name, dir } => match plugin::scaffold(&dir, &name) {
            Ok((root, files)) => {
                for f in files {
                    println!("created {}", f.display());
                }
                println!(
                    "\nnext:\n  cd {}\n  cargo test\n  cargo build --target wasm32-wasip2 --release\n  \
                     outpost plugin inspect target/wasm32-wasip2/release/{}.wasm",
                    root.display(),
                    name.replace('-', "_")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        PluginCommand::Inspect { file } => {
            let env = ProcessEnv;
            let limits = match settings(&env) {
                Ok(s) => s.module_limits,
                Err(code) => return code,
            };
            match plugin::inspect(&file, &limits) {
                Ok((report, ok)) => {
                    print!("{report}");
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
