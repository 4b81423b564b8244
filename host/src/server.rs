//! The HTTP front: [`app`] builds the router (management endpoints + the proxy
//! fallback) so most tests need no socket; [`serve`] accepts connections with hyper's
//! own limits (header size and count → 431, header read timeout) and shuts down
//! gracefully, letting in-flight requests finish.

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

/// Everything a request needs, built once at start-up.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub settings: Settings,
    /// Host policy.
    pub hosts: Hosts,
    /// Providers.
    pub providers: Providers,
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
    env: &dyn Env,
) -> Result<(AppState, Vec<ConfigError>), StartError> {
    let hosts = Hosts::load(&settings.hosts_path, env)?;
    if hosts.is_empty() {
        tracing::warn!(file = %settings.hosts_path.display(), "hosts file admits nobody: every request will be refused");
    }
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
    let outcome = providers::load(&LoadContext {
        settings: &settings,
        env,
        runtime: &runtime,
        state: state.clone(),
        client: client.clone(),
    })
    .await;
    let metrics = crate::metrics::Metrics::new()?;
    Ok((
        AppState {
            settings,
            hosts,
            providers: outcome.providers,
            runtime,
            client,
            state,
            metrics,
        },
        outcome.problems,
    ))
}

/// The router: management endpoints (GET only), then the proxy for everything else.
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
/// Time a client has to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind and serve until SIGINT/SIGTERM.
pub async fn serve(state: AppState) -> Result<(), StartError> {
    let addr = SocketAddr::new(state.settings.host, state.settings.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(addr = %bound, providers = ?state.providers.usable(), "outpost listening on {bound}");
    let router = app(Arc::new(state));

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
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
        let router = router.clone();
        let verdicts = crate::framing::Verdicts::default();
        let io = crate::framing::Watched::new(stream, verdicts.clone());
        let service = hyper::service::service_fn(
            move |req: http::Request<hyper::body::Incoming>| {
                let ambiguous =
                    req.version() < http::Version::HTTP_2 && verdicts.next_is_ambiguous();
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    if ambiguous {
                        tracing::warn!(%peer, "refused a request with both Content-Length and Transfer-Encoding");
                        let e = crate::error::ProxyError::BadRequest(
                            "Content-Length together with Transfer-Encoding is ambiguous".into(),
                        );
                        return Ok(axum::response::IntoResponse::into_response(e));
                    }
                    router.oneshot(req).await
                }
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after 30 s; exiting");
    }
    Ok(())
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
