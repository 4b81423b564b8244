//! The host side of the WIT imports, one small implementation per capability
//! (secrets, kv, http, log), each checking the module's [`Grants`] first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use secrecy::ExposeSecret;
use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, StoreLimits};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::outpost::auth::{http as whttp, kv, log, secrets, types};
use super::grants::Grants;
use crate::client::HttpClient;
use crate::state::StateStore;

/// What a module call may reach: shared by every call for one provider.
#[derive(Debug)]
pub struct CallEnv {
    /// Module name (for logs).
    pub module: String,
    /// The provider's grants.
    pub grants: Arc<Grants>,
    /// State backend for the `kv` import.
    pub state: Arc<StateStore>,
    /// Client for the `http` import.
    pub client: HttpClient,
    /// Cap on outbound response bodies.
    pub max_body_bytes: usize,
}

/// Per-call store data.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) env: Arc<CallEnv>,
    pub(super) stderr: MemoryOutputPipe,
    /// When the call started.
    pub(super) started: Instant,
    /// Time spent in host calls — our imports and WASI alike (not charged to the CPU
    /// budget). Measured by the store's call hook, which only modules that can wait in a
    /// host call get (see `LoadedModule::blocks_in_host`); zero for the others.
    pub(super) io_time: Duration,
    /// Since when host code has been running on the guest's behalf, if it is now.
    pub(super) in_host_since: Option<Instant>,
    /// Guest-to-host calls under way (host functions and libcalls; they nest when the
    /// host calls back into the guest, e.g. `cabi_realloc` for a result, and that code
    /// grows its memory).
    pub(super) host_depth: u32,
    /// The last state-store failure seen by a `kv` call, if any: a module failing after
    /// one is reported as "state unavailable" rather than as a module error (D24).
    pub(super) state_failure: Option<String>,
    /// When the whole call must end.
    pub(super) wall_deadline: Instant,
}

impl HostState {
    /// Time the guest has been running, excluding waits in host imports.
    pub(super) fn cpu_used(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.io_time)
    }

    /// Start a call in a kept instance: its budgets and failure record start afresh.
    pub(super) fn begin_call(&mut self, wall: Duration) {
        let now = Instant::now();
        self.started = now;
        self.io_time = Duration::ZERO;
        self.in_host_since = None;
        self.host_depth = 0;
        self.state_failure = None;
        self.wall_deadline = now + wall;
    }

    /// The store's call hook. Time is charged to the host from a guest-to-host call
    /// until it returns, except while the host has called back into the guest: that is
    /// guest code, and CPU. The host's own calls into the guest outside any host call
    /// (the export itself, `cabi_realloc` while passing its arguments, a dozen per
    /// request) read no clock at all.
    pub(super) fn on_call_hook(&mut self, hook: CallHook) {
        match hook {
            CallHook::CallingHost => {
                self.host_depth = self.host_depth.saturating_add(1);
                self.in_host_since = Some(Instant::now());
            }
            CallHook::ReturningFromHost => {
                self.host_depth = self.host_depth.saturating_sub(1);
                self.close_host_span();
            }
            CallHook::CallingWasm if self.host_depth > 0 => self.close_host_span(),
            CallHook::ReturningFromWasm if self.host_depth > 0 => {
                self.in_host_since = Some(Instant::now());
            }
            CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
        }
    }

    fn close_host_span(&mut self) {
        if let Some(since) = self.in_host_since.take() {
            self.io_time += since.elapsed();
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl secrets::Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        let value = self
            .env
            .grants
            .secret(&name)
            .map(|s| s.expose_secret().to_string());
        if value.is_none() {
            tracing::debug!(module = %self.env.module, provider = %self.env.grants.provider, secret = %name,
                "module asked for a secret that is not declared or not set");
        }
        value
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        self.check_key(&key)?;
        self.env
            .state
            .get(&key)
            .await
            .map_err(|e| self.note_state_failure(e))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), String> {
        self.check_key(&key)?;
        self.env
            .state
            .set(&key, value, ttl_ms.map(Duration::from_millis))
            .await
            .map_err(|e| self.note_state_failure(e))
    }

    async fn set_if_absent(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        self.check_key(&key)?;
        self.env
            .state
            .set_if_absent(&key, value, ttl_ms.map(Duration::from_millis))
            .await
            .map_err(|e| self.note_state_failure(e))
    }

    async fn delete(&mut self, key: String) -> Result<(), String> {
        self.check_key(&key)?;
        self.env
            .state
            .delete(&key)
            .await
            .map_err(|e| self.note_state_failure(e))
    }
}

impl HostState {
    fn note_state_failure(&mut self, e: crate::state::StateError) -> String {
        let msg = e.to_string();
        self.state_failure = Some(msg.clone());
        msg
    }

    fn check_key(&self, key: &str) -> Result<(), String> {
        if self.env.grants.kv_allowed(key) {
            Ok(())
        } else {
            tracing::warn!(module = %self.env.module, provider = %self.env.grants.provider, key = %key,
                "module refused access to a key its configuration does not name");
            Err(format!(
                "key '{key}' is not granted: use a key named in the config (redis_key) or one under '{}:'",
                self.env.grants.provider
            ))
        }
    }
}

impl whttp::Host for HostState {
    async fn send(
        &mut self,
        req: whttp::OutgoingRequest,
    ) -> Result<whttp::IncomingResponse, String> {
        if !self.env.grants.origin_allowed(&req.url) {
            tracing::warn!(module = %self.env.module, provider = %self.env.grants.provider,
                "module refused outbound request to an origin its configuration does not name");
            return Err(format!(
                "outbound request refused: origin of '{}' is not granted (granted: {})",
                req.url,
                self.env.grants.origins().join(", ")
            ));
        }
        let remaining = self.wall_deadline.saturating_duration_since(Instant::now());
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms)).min(remaining))
            .unwrap_or(remaining);
        let result = tokio::time::timeout(timeout, send_inner(self.env.clone(), req)).await;
        match result {
            Ok(r) => r,
            Err(_) => Err(format!(
                "outbound request timed out after {} ms",
                timeout.as_millis()
            )),
        }
    }
}

/// Takes the shared environment rather than `&HostState`, which is not `Sync`.
async fn send_inner(
    env: Arc<CallEnv>,
    req: whttp::OutgoingRequest,
) -> Result<whttp::IncomingResponse, String> {
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(req.url.as_str());
    for h in &req.headers {
        builder = builder.header(h.name.as_str(), h.value.as_slice());
    }
    let request = builder
        .body(req.body.map(Body::from).unwrap_or_else(Body::empty))
        .map_err(|e| format!("invalid outbound request: {e}"))?;
    let resp = env
        .client
        .request(request)
        .await
        .map_err(|e| format!("outbound request failed: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| types::Header {
            name: n.as_str().to_string(),
            value: v.as_bytes().to_vec(),
        })
        .collect();
    let body = Limited::new(resp.into_body(), env.max_body_bytes)
        .collect()
        .await
        .map_err(|e| format!("outbound response body: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(whttp::IncomingResponse {
        status,
        headers,
        body,
    })
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let message = self.env.grants.redact(&message);
        let (module, provider) = (&self.env.module, &self.env.grants.provider);
        match level {
            log::Level::Trace => tracing::trace!(%module, %provider, "{message}"),
            log::Level::Debug => tracing::debug!(%module, %provider, "{message}"),
            log::Level::Info => tracing::info!(%module, %provider, "{message}"),
            log::Level::Warn => tracing::warn!(%module, %provider, "{message}"),
            log::Level::Error => tracing::error!(%module, %provider, "{message}"),
        }
    }
}
