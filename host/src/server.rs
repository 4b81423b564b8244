//! The HTTP front: [`app`] builds the router (management endpoints + the proxy
//! fallback) so most tests need no socket; [`serve`] accepts connections, refuses those
//! past the connection limit, and hands the rest to the serving threads
//! ([`crate::worker`]), which serve them with hyper's own limits (header size and count
//! → 431, header read timeout). It shuts down gracefully, letting in-flight requests
//! finish on every thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tower::ServiceExt;

use crate::client::{self, HttpClient};
use crate::config::ConfigError;
use crate::config::env::Env;
use crate::config::hosts::Hosts;
use crate::config::settings::Settings;
use crate::providers::{self, LoadContext, Providers};
use crate::runtime::{Runtime, RuntimeError};
use crate::state::StateStore;

/// One loaded configuration: host policy and providers. Requests take the current
/// generation when they start and finish on it, whatever reloads happen meanwhile (D23).
#[derive(Debug)]
pub struct Generation {
    /// 1 at start-up, +1 per successful reload.
    pub id: u64,
    /// Host policy.
    pub hosts: Hosts,
    /// Providers.
    pub providers: Providers,
    /// The problems this configuration had when loaded (broken providers).
    pub problems: Vec<String>,
    /// The configuration files as they were just before loading (for `OUTPOST_WATCH`).
    pub files: Vec<FileStamp>,
}

/// A file's path, size and modification time.
pub type FileStamp = (std::path::PathBuf, u64, Option<std::time::SystemTime>);

/// Everything a request needs, built once at start-up.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub settings: Settings,
    /// The current configuration generation (swapped atomically on reload).
    pub config: arc_swap::ArcSwap<Generation>,
    /// Where settings and secrets come from (kept for reloads).
    pub env: Arc<dyn Env>,
    /// Module runtime.
    pub runtime: Arc<Runtime>,
    /// Upstream client.
    pub client: HttpClient,
    /// State store.
    pub state: Arc<StateStore>,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
}

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration that refuses start-up (hosts file, settings).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The wasm runtime.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Binding the listener.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Serving.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// Metrics registry.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Build the application state. Returns it with every provider problem found (those
/// providers answer 503); a bad hosts file refuses start-up.
pub async fn build(
    settings: Settings,
    env: Arc<dyn Env>,
) -> Result<(AppState, Vec<ConfigError>), StartError> {
    let runtime = Arc::new(Runtime::new(
        settings.module_limits.clone(),
        settings.cache_dir.clone(),
    )?);
    let client = client::build(settings.connect_timeout);
    let state = Arc::new(match &settings.redis_url {
        None => StateStore::Memory(crate::state::MemoryStore::new(settings.state_caps)),
        Some(url) => StateStore::Redis(
            crate::state::RedisStore::connect(url)
                .await
                .map_err(|e| ConfigError::new("environment", "REDIS_URL", e.to_string()))?,
        ),
    });
    let metrics = crate::metrics::Metrics::new()?;
    let app = AppState {
        settings,
        config: arc_swap::ArcSwap::from_pointee(Generation {
            id: 0,
            hosts: Hosts::default(),
            providers: Providers::default(),
            problems: Vec::new(),
            files: Vec::new(),
        }),
        env,
        runtime,
        client,
        state,
        metrics,
    };
    let (generation, problems) = app.load_generation(1).await?;
    app.config.store(Arc::new(generation));
    Ok((app, problems))
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The hosts file is invalid.
    #[error("{0}")]
    Hosts(#[from] ConfigError),
    /// The new set has problems the current one does not.
    #[error("{} new problem(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NewProblems(Vec<ConfigError>),
}

impl AppState {
    /// The current configuration generation.
    pub fn current(&self) -> Arc<Generation> {
        self.config.load_full()
    }

    async fn load_generation(
        &self,
        id: u64,
    ) -> Result<(Generation, Vec<ConfigError>), ConfigError> {
        // Stamped before reading, so a change made while loading triggers another reload.
        let files = fingerprint(&self.settings);
        let hosts = Hosts::load(&self.settings.hosts_path, &*self.env)?;
        if hosts.is_empty() {
            tracing::warn!(file = %self.settings.hosts_path.display(), "hosts file admits nobody: every request will be refused");
        }
        let outcome = providers::load(&LoadContext {
            settings: &self.settings,
            env: &*self.env,
            runtime: &self.runtime,
            state: self.state.clone(),
            client: self.client.clone(),
        })
        .await;
        let problems = outcome.problems.iter().map(ToString::to_string).collect();
        Ok((
            Generation {
                id,
                hosts,
                providers: outcome.providers,
                problems,
                files,
            },
            outcome.problems,
        ))
    }

    /// Reload hosts, providers and plugins (D23). The new set replaces the current one
    /// atomically, unless it is invalid or has problems the current one does not have:
    /// then it is refused and the current one keeps serving.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        let current = self.current();
        let (next, problems) = self.load_generation(current.id + 1).await?;
        let new: Vec<ConfigError> = problems
            .into_iter()
            .filter(|p| !current.problems.contains(&p.to_string()))
            .collect();
        if !new.is_empty() {
            return Err(ReloadError::NewProblems(new));
        }
        let id = next.id;
        self.config.store(Arc::new(next));
        Ok(id)
    }
}

/// The router: management endpoints (GET only), then the proxy for everything else.
/// The management routes here and [`MANAGEMENT_PATHS`] (what the server sends to this
/// router instead of straight to the pipeline) list the same paths.
pub fn app(state: Arc<AppState>) -> Router {
    use crate::management as m;
    Router::new()
        .route("/healthz", get(m::healthz).fallback(proxy))
        .route("/readyz", get(m::readyz).fallback(proxy))
        .route("/providers", get(m::providers).fallback(proxy))
        .route("/openapi.json", get(m::openapi).fallback(proxy))
        .route("/docs", get(m::docs).fallback(proxy))
        .route("/metrics", get(m::metrics).fallback(proxy))
        .fallback(proxy)
        .with_state(state)
}

/// Paths [`app`] answers itself on `GET` (and `HEAD`); everything else is proxied.
const MANAGEMENT_PATHS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/providers",
    "/openapi.json",
    "/docs",
    "/metrics",
];

/// Whether [`app`] would answer `req` with a management endpoint rather than
/// its proxy fallback.
fn is_management<B>(req: &http::Request<B>) -> bool {
    (req.method() == http::Method::GET || req.method() == http::Method::HEAD)
        && MANAGEMENT_PATHS.contains(&req.uri().path())
}

async fn proxy(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    crate::pipeline::handle(state, peer, req).await
}

/// Largest request head (request line + headers) accepted; larger → 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most request headers accepted; more → 431.
pub const MAX_HEADERS: usize = 128;

/// A connection the acceptor hands to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    watcher: hyper_util::server::graceful::Watcher,
}

/// Bind and serve until SIGINT/SIGTERM. This task accepts; the connections are served on
/// [`crate::worker`] threads.
pub async fn serve(state: AppState) -> Result<(), StartError> {
    let addr = SocketAddr::new(state.settings.host, state.settings.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(StartError::Serve)?;
    let state = Arc::new(state);
    let mut workers = start_workers(&state).map_err(StartError::Serve)?;
    tracing::info!(addr = %bound, workers = workers.len(), providers = ?state.current().providers.usable(), "outpost listening on {bound}");
    spawn_reloaders(state.clone());
    let max_connections = state.settings.max_connections;
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Responses are written as head and body: without TCP_NODELAY, Nagle's algorithm
        // and the client's delayed ACK stall every keep-alive response by ~40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        // Connection flood: past the limit, answer 503 and close instead of queueing.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = max_connections, "connection limit reached: refusing a connection");
            state.metrics.refusal("PROXY_TOO_MANY_CONNECTIONS");
            tokio::spawn(refuse_connection(stream, max_connections));
            continue;
        };
        // Off this runtime's reactor, onto the worker's.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, "cannot hand the connection to a worker: {e}");
                continue;
            }
        };
        let accepted = Accepted {
            stream,
            peer,
            permit,
            watcher: graceful.watcher(),
        };
        if workers.dispatch(accepted).is_err() {
            tracing::error!("every serving thread has stopped; shutting down");
            break;
        }
    }
    drop(listener);
    workers.close();
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after 30 s; exiting");
    }
    workers.stop().await;
    Ok(())
}

/// The serving threads, each with its own upstream client, serving what the acceptor
/// hands them.
fn start_workers(state: &Arc<AppState>) -> std::io::Result<crate::worker::Workers<Accepted>> {
    let router = app(state.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.settings.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let connect_timeout = state.settings.connect_timeout;
    let (state, store) = (state.clone(), state.state.clone());
    crate::worker::Workers::start(
        state.settings.workers,
        move || {
            let store = store.clone();
            async move {
                client::install_for_this_thread(connect_timeout);
                if let StateStore::Redis(redis) = &*store
                    && let Err(e) = redis.connect_for_this_thread().await
                {
                    tracing::warn!("a serving thread uses the shared Redis client: {e}");
                }
            }
        },
        move |accepted| serve_connection(accepted, state.clone(), router.clone(), builder.clone()),
    )
}

/// Serve one client connection, on a worker, until it closes or shutdown ends it.
async fn serve_connection(
    accepted: Accepted,
    state: Arc<AppState>,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
) {
    let Accepted {
        stream,
        peer,
        permit,
        watcher,
    } = accepted;
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, "cannot serve the connection: {e}");
            return;
        }
    };
    let verdicts = crate::framing::Verdicts::default();
    let io = crate::framing::Watched::new(stream, verdicts.clone());
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let ambiguous = req.version() < http::Version::HTTP_2 && verdicts.next_is_ambiguous();
        let mut req = req.map(Body::new);
        // Proxied requests skip the router: it would only send them to its
        // fallback, after a clone, a route lookup and two extractors.
        let route = if is_management(&req) {
            Ok(router.clone())
        } else {
            Err(state.clone())
        };
        async move {
            if ambiguous {
                tracing::warn!(%peer, "refused a request with both Content-Length and Transfer-Encoding");
                let e = crate::error::ProxyError::BadRequest(
                    "Content-Length together with Transfer-Encoding is ambiguous".into(),
                );
                return Ok(axum::response::IntoResponse::into_response(e));
            }
            match route {
                Ok(router) => {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    router.oneshot(req).await
                }
                // Boxed: hyper moves the service's future twice per request.
                Err(state) => Ok(Box::pin(crate::pipeline::handle(state, peer, req)).await),
            }
        }
    });
    // Without upgrades: the pipeline drops `Upgrade` from every request, so no
    // connection is ever upgraded, and hyper's upgrade wrapper would only cost time.
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, "connection ended: {e}");
    }
    drop(permit);
}

/// Answer a connection over the limit with `503 PROXY_TOO_MANY_CONNECTIONS` and close
/// it, without serving the request (bounded: 500 ms at most).
async fn refuse_connection(mut stream: tokio::net::TcpStream, limit: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let raw = crate::error::ProxyError::TooManyConnections(limit).raw_http1();
    let answer = async {
        stream.write_all(&raw).await?;
        stream.shutdown().await?;
        // Drain what the client already sent, so closing does not reset the connection
        // before it has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), answer).await;
}

/// SIGHUP always reloads; with `OUTPOST_WATCH`, a change to any configuration file does.
fn spawn_reloaders(state: Arc<AppState>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot listen for SIGHUP; reload by signal is unavailable");
                return;
            };
            while hup.recv().await.is_some() {
                let _ = tx.send("SIGHUP").await;
            }
        });
    }
    if state.settings.watch {
        tracing::info!("watching configuration files for changes");
        let watched = state.clone();
        tokio::spawn(async move {
            // Compare with what the current generation was loaded from (stamped before
            // loading, so no change can slip between loading and watching); remember a
            // refused state so a bad file is reported once, not every second.
            let mut refused: Option<Vec<FileStamp>> = None;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = fingerprint(&watched.settings);
                if now != watched.current().files && refused.as_ref() != Some(&now) {
                    refused = Some(now);
                    let _ = tx.send("file change").await;
                }
            }
        });
    }
    tokio::spawn(async move {
        while let Some(why) = rx.recv().await {
            match state.reload().await {
                Ok(id) => tracing::info!(generation = id, "configuration reloaded ({why})"),
                Err(e) => tracing::error!(
                    "configuration reload refused ({why}); the current one keeps serving: {e}"
                ),
            }
        }
    });
}

/// Names, sizes and modification times of every configuration file.
fn fingerprint(s: &Settings) -> Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    let mut add = |p: &std::path::Path| {
        if let Ok(m) = std::fs::metadata(p) {
            out.push((p.to_path_buf(), m.len(), m.modified().ok()));
        }
    };
    add(&s.hosts_path);
    let dirs = [
        Some(&s.providers_dir),
        s.extra_providers_dir.as_ref(),
        Some(&s.plugins_dir),
    ];
    for dir in dirs.into_iter().flatten() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            paths.iter().for_each(|p| add(p));
        }
    }
    out
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
    }

    /// Every path the server hands to the router is one the router answers itself, not
    /// with its proxy fallback (which, with no providers, answers an error envelope).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_router_answers_every_management_path_itself() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts.yaml");
        std::fs::write(&hosts, "hosts:\n  - id: local\n    cidrs: [127.0.0.1/32]\n").unwrap();
        let path = |p: &str| dir.path().join(p).display().to_string();
        let env = crate::config::env::MapEnv::from_pairs([
            ("HOSTS_CONFIG_PATH", hosts.display().to_string()),
            ("PROVIDERS_DIR", path("providers")),
            ("PLUGINS_DIR", path("plugins")),
            ("OUTPOST_CACHE_DIR", String::new()),
        ]);
        let settings = Settings::from_env(&env).unwrap();
        let (state, _) = build(settings, Arc::new(env)).await.unwrap();
        let router = app(Arc::new(state));
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let get = |uri: &str| {
            let mut req = http::Request::builder()
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let resp = router.oneshot(req).await.unwrap();
                let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                String::from_utf8_lossy(&body).into_owned()
            }
        };
        let proxied = |body: &str| body.starts_with(r#"{"status":"FAILURE""#);
        for p in MANAGEMENT_PATHS {
            let body = get(p).await;
            assert!(!proxied(&body), "{p} went to the proxy: {body}");
        }
        let body = get("/healthz/").await;
        assert!(proxied(&body), "{body}");
    }

    #[test]
    fn only_gets_of_the_management_paths_bypass_the_proxy() {
        for path in MANAGEMENT_PATHS {
            assert!(is_management(&req("GET", path)), "{path}");
            assert!(is_management(&req("HEAD", path)), "{path}");
            assert!(is_management(&req("GET", &format!("{path}?x=1"))), "{path}");
            assert!(!is_management(&req("POST", path)), "{path}");
            assert!(!is_management(&req("GET", &format!("{path}/"))), "{path}");
            assert!(!is_management(&req("GET", &format!("/v1{path}"))), "{path}");
        }
        assert!(!is_management(&req("GET", "/")));
        assert!(!is_management(&req("GET", "/repos/o/r")));
        assert!(!is_management(&req("GET", "/HEALTHZ")));
    }
}
