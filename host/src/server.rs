//! The HTTP front: [`app`] builds the router (management endpoints + the proxy
//! fallback) so most tests need no socket; [`serve`] binds and runs it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

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
    let state = Arc::new(StateStore::memory());
    let outcome = providers::load(&LoadContext {
        settings: &settings,
        env,
        runtime: &runtime,
        state: state.clone(),
        client: client.clone(),
    })
    .await;
    Ok((
        AppState {
            settings,
            hosts,
            providers: outcome.providers,
            runtime,
            client,
            state,
        },
        outcome.problems,
    ))
}

/// The router: management endpoints, then the proxy for everything else.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz).fallback(proxy))
        .fallback(proxy)
        .with_state(state)
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({ "status": "ok", "providers": state.providers.usable() })).into_response()
}

async fn proxy(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    crate::pipeline::handle(state, peer, req).await
}

/// Bind and serve until SIGINT/SIGTERM.
pub async fn serve(state: AppState) -> Result<(), StartError> {
    let addr = SocketAddr::new(state.settings.host, state.settings.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(addr = %bound, providers = ?state.providers.usable(), "outpost listening on {bound}");
    let app = app(Arc::new(state));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .map_err(StartError::Serve)
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
