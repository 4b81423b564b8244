//! Building the provider set: read every provider file (§1.3 order and override rules),
//! resolve each one's auth module (built-in, or a plugin `.wasm`; D20), and validate
//! the module's configuration at load (D3). A provider that fails is kept as *broken*,
//! so requests for it get `503 PROXY_PROVIDER_CONFIG_ERROR` with the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;

use crate::builtin::BUILTIN_MODULES;
use crate::client::HttpClient;
use crate::config::ConfigError;
use crate::config::env::Env;
use crate::config::provider::{self, Parsed, ProviderDef};
use crate::config::settings::Settings;
use crate::metrics::Metrics;
use crate::runtime::breaker::Breaker;
use crate::runtime::grants::Grants;
use crate::runtime::{
    CallEnv, CallError, InstancePool, LoadedModule, ModuleInfo, ModuleSource, Runtime,
};
use crate::state::StateStore;

/// The original's plugin names (`module:` / `module_ts:` in `groww.yaml`) and the
/// WebAssembly module that implements each (D1).
const LEGACY_PLUGINS: &[(&str, &str)] = &[
    (
        "app.python.plugins.groww_approval_mint:GrowwApprovalMintAuth",
        "groww_approval_mint",
    ),
    (
        "plugins/groww_approval_mint.ts:GrowwApprovalMintAuth",
        "groww_approval_mint",
    ),
    (
        "app.python.plugins.groww_totp_mint:GrowwTotpMintAuth",
        "groww_totp_mint",
    ),
    (
        "plugins/groww_totp_mint.ts:GrowwTotpMintAuth",
        "groww_totp_mint",
    ),
];

/// A provider whose module is loaded and whose configuration validated.
#[derive(Debug)]
pub struct Signer {
    /// The module.
    pub module: Arc<LoadedModule>,
    /// The configuration JSON handed to every call.
    pub config: String,
    /// What the module declared at validation.
    pub info: ModuleInfo,
    /// What its calls may reach.
    pub env: Arc<CallEnv>,
    /// Disables the module while it keeps trapping.
    pub breaker: Breaker,
    /// Kept instances, when the module declared itself stateless and reuse is on
    /// (`OUTPOST_PLUGIN_REUSE` > 1).
    pub pool: Option<InstancePool>,
    /// This provider's latency histograms, looked up on its first request.
    pub metrics: std::sync::OnceLock<crate::metrics::ProviderMetrics>,
}

impl Signer {
    /// Run the module's `sign-request` (see [`Runtime::sign`]): in a kept instance from
    /// `pool` when one is idle, else in a fresh one.
    pub async fn sign(
        &self,
        runtime: &Runtime,
        request: &crate::runtime::Request,
        pool: Option<&InstancePool>,
    ) -> Result<crate::runtime::Request, CallError> {
        runtime
            .sign(
                &self.module,
                self.env.clone(),
                &self.config,
                &self.info,
                request,
                pool,
            )
            .await
    }

    /// The provider's latency histograms in `metrics`.
    pub fn metrics(&self, provider: &str, metrics: &Metrics) -> &crate::metrics::ProviderMetrics {
        self.metrics.get_or_init(|| metrics.provider(provider))
    }

    /// Let a module call go ahead, unless the circuit breaker has disabled the module.
    pub fn admit(&self, provider: &str) -> Result<(), crate::error::ProxyError> {
        self.breaker
            .admit(std::time::Instant::now)
            .map_err(|retry_in| crate::error::ProxyError::ModuleDisabled {
                provider: provider.to_string(),
                failures: self
                    .breaker
                    .open(std::time::Instant::now())
                    .map_or(0, |o| o.failures),
                retry_after: retry_in.as_secs_f64(),
            })
    }

    /// Count a call's outcome in the breaker. Only the module's own failures — traps,
    /// CPU and wall-clock overruns — count; an answer (even an error) closes it; a state
    /// store failure says nothing about the module.
    pub fn record<T>(&self, provider: &str, outcome: &Result<T, CallError>, metrics: &Metrics) {
        match outcome {
            Err(CallError::Trap(_) | CallError::CpuDeadline(_) | CallError::WallDeadline(_)) => {
                metrics.module_failure(provider);
                if self.breaker.failure(std::time::Instant::now()) {
                    tracing::error!(
                        provider,
                        module = %self.module.name,
                        "auth module disabled by the circuit breaker after repeated traps or deadline overruns"
                    );
                }
            }
            Err(CallError::StateUnavailable(_)) => {}
            _ => self.breaker.success(),
        }
    }
}

/// One provider: usable, or broken with a reason.
#[derive(Debug)]
pub struct Provider {
    /// The definition (absent when the file did not even parse).
    pub def: Option<Arc<ProviderDef>>,
    /// Ready to sign, or why not.
    pub signer: Result<Signer, String>,
}

/// Every provider, by lower-cased name, in load order.
#[derive(Debug, Default)]
pub struct Providers {
    /// By name.
    pub by_name: IndexMap<String, Provider>,
}

impl Providers {
    /// Names of usable providers, sorted.
    pub fn usable(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, p)| p.signer.is_ok())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }
}

/// What loading produced: the providers, and every problem found (for `outpost check`
/// and the start-up log).
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// The provider set.
    pub providers: Providers,
    /// Problems, each naming file, key and reason.
    pub problems: Vec<ConfigError>,
}

/// Everything provider loading needs.
pub struct LoadContext<'a> {
    /// Settings (directories).
    pub settings: &'a Settings,
    /// Secrets source.
    pub env: &'a dyn Env,
    /// The module runtime.
    pub runtime: &'a Runtime,
    /// State for modules' `kv`.
    pub state: Arc<StateStore>,
    /// Client for modules' `http`.
    pub client: HttpClient,
}

/// The provider files to read, in order: for each directory, sorted `*.yaml` then
/// sorted `*.yml` (the original Python runtime's order).
fn provider_files(dir: &Path, problems: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(ConfigError::new(
                dir,
                ".",
                format!("cannot read providers directory: {e}"),
            ));
            return Vec::new();
        }
    };
    let mut yaml = Vec::new();
    let mut yml = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") if path.is_file() => yaml.push(path),
            Some("yml") if path.is_file() => yml.push(path),
            _ => {}
        }
    }
    yaml.sort();
    yml.sort();
    yaml.extend(yml);
    yaml
}

/// Load every provider.
pub async fn load(ctx: &LoadContext<'_>) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let mut defs: IndexMap<String, Result<Arc<ProviderDef>, ConfigError>> = IndexMap::new();
    let dirs = std::iter::once(&ctx.settings.providers_dir)
        .chain(ctx.settings.extra_providers_dir.as_ref());
    for dir in dirs {
        for file in provider_files(dir, &mut out.problems) {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    out.problems
                        .push(ConfigError::new(&file, ".", format!("cannot read: {e}")));
                    continue;
                }
            };
            match provider::parse(&file, &text) {
                Ok(Parsed::Enabled(def)) => {
                    if let Some(prev) = defs.get(&def.name) {
                        let from = prev
                            .as_ref()
                            .map(|d| d.file.display().to_string())
                            .unwrap_or_default();
                        tracing::info!(provider = %def.name, file = %file.display(), "provider overrides the one from {from}");
                    }
                    defs.insert(def.name.clone(), Ok(Arc::new(*def)));
                }
                Ok(Parsed::Disabled(name)) => {
                    if defs.shift_remove(&name).is_some() {
                        tracing::info!(provider = %name, file = %file.display(), "provider disabled by a later file");
                    }
                }
                Err(e) => {
                    out.problems.push(e.clone());
                    if let Some(name) = provider::salvage_name(&text) {
                        defs.insert(name, Err(e));
                    }
                }
            }
        }
    }

    let mut modules: HashMap<String, Result<Arc<LoadedModule>, String>> = HashMap::new();
    for (name, def) in defs {
        let provider = match def {
            Err(e) => Provider {
                def: None,
                signer: Err(e.to_string()),
            },
            Ok(def) => {
                let signer = build_signer(ctx, &def, &mut modules).await;
                if let Err(reason) = &signer {
                    out.problems
                        .push(ConfigError::new(&def.file, "auth", reason.clone()));
                }
                Provider {
                    def: Some(def),
                    signer,
                }
            }
        };
        out.providers.by_name.insert(name, provider);
    }
    out
}

/// Resolve the module named by an `auth:` block and the configuration it receives.
fn resolve_module(
    def: &ProviderDef,
    plugins_dir: &Path,
) -> Result<(String, ModuleLocation, Value), String> {
    let auth = &def.auth;
    if auth.kind == "plugin" {
        let spec = ["module", "module_ts"]
            .iter()
            .find_map(|k| auth.rest.get(*k).and_then(Value::as_str))
            .ok_or("plugin: 'module' is required (a .wasm file in the plugins directory)")?;
        for key in auth.rest.keys() {
            if !["module", "module_ts", "config", "invalidate_on"].contains(&key.as_str()) {
                let hint =
                    crate::config::error::did_you_mean(key, ["module", "module_ts", "config"])
                        .map(|k| format!(" (did you mean '{k}'?)"))
                        .unwrap_or_default();
                return Err(format!(
                    "plugin: unknown key '{key}'{hint}; plugin settings go under 'config:'"
                ));
            }
        }
        let config = match auth.rest.get("config") {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err("plugin: 'config' must be a map".into()),
        };
        let name = if let Some(file) = spec.strip_suffix(".wasm") {
            if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
                return Err(format!(
                    "plugin: module '{spec}' must be a file name inside the plugins directory"
                ));
            }
            return Ok((
                file.to_string(),
                ModuleLocation::File(plugins_dir.join(spec)),
                config,
            ));
        } else if let Some((_, m)) = LEGACY_PLUGINS.iter().find(|(legacy, _)| *legacy == spec) {
            (*m).to_string()
        } else {
            return Err(format!(
                "plugin: unknown module '{spec}'. Name a .wasm file in the plugins directory ({})",
                plugins_dir.display()
            ));
        };
        let location = locate(&name, plugins_dir)
            .ok_or_else(|| format!("plugin: module '{name}' is not available"))?;
        return Ok((name, location, config));
    }
    let location = locate(&auth.kind, plugins_dir).ok_or_else(|| {
        let builtins: Vec<&str> = BUILTIN_MODULES.iter().map(|(n, _)| *n).collect();
        format!(
            "Unknown auth type '{}'. Built-ins: [{}], or 'plugin'",
            auth.kind,
            builtins.join(", ")
        )
    })?;
    Ok((
        auth.kind.clone(),
        location,
        Value::Object(auth.rest.clone()),
    ))
}

enum ModuleLocation {
    Builtin(&'static [u8]),
    File(PathBuf),
}

/// A `.wasm` in the plugins directory overrides the built-in of the same name (D20).
fn locate(name: &str, plugins_dir: &Path) -> Option<ModuleLocation> {
    let file = plugins_dir.join(format!("{name}.wasm"));
    if file.is_file() {
        return Some(ModuleLocation::File(file));
    }
    BUILTIN_MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| ModuleLocation::Builtin(bytes))
}

async fn build_signer(
    ctx: &LoadContext<'_>,
    def: &ProviderDef,
    modules: &mut HashMap<String, Result<Arc<LoadedModule>, String>>,
) -> Result<Signer, String> {
    let (name, location, config) = resolve_module(def, &ctx.settings.plugins_dir)?;
    let key = match &location {
        ModuleLocation::Builtin(_) => format!("builtin:{name}"),
        ModuleLocation::File(p) => format!("file:{}", p.display()),
    };
    let module = match modules.get(&key) {
        Some(m) => m.clone(),
        None => {
            let loaded = load_module(ctx.runtime, &name, location).map(Arc::new);
            modules.insert(key, loaded.clone());
            loaded
        }
    }?;
    let grants = Arc::new(Grants::derive(&def.name, &def.origin, &config, ctx.env));
    let env = Arc::new(CallEnv {
        module: name.clone(),
        grants: grants.clone(),
        state: ctx.state.clone(),
        client: ctx.client.clone(),
        max_body_bytes: ctx.settings.max_body_bytes,
    });
    let config = config.to_string();
    let info = ctx
        .runtime
        .validate(&module, env.clone(), &config)
        .await
        .map_err(|e| grants.redact(&e.to_string()))?;
    tracing::info!(provider = %def.name, module = %name, "provider ready");
    let reuse = ctx.settings.module_limits.reuse_calls;
    let pool = (module.stateless && reuse > 1).then(|| InstancePool::new(reuse));
    Ok(Signer {
        module,
        config,
        info,
        env,
        breaker: Breaker::new(ctx.settings.breaker),
        pool,
        metrics: std::sync::OnceLock::new(),
    })
}

fn load_module(
    runtime: &Runtime,
    name: &str,
    location: ModuleLocation,
) -> Result<LoadedModule, String> {
    let (bytes, source) = match location {
        ModuleLocation::Builtin(b) => (std::borrow::Cow::Borrowed(b), ModuleSource::Builtin),
        ModuleLocation::File(path) => match std::fs::read(&path) {
            Ok(b) => (std::borrow::Cow::Owned(b), ModuleSource::File(path)),
            Err(e) => return Err(format!("cannot read plugin {}: {e}", path.display())),
        },
    };
    let load = || runtime.load(name, &bytes, source);
    // Compiling blocks: on the multi-threaded control runtime, let its other tasks move
    // to another thread meanwhile (block_in_place is not available on a single-threaded
    // runtime, where there is no other thread to move them to).
    let loaded = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(load),
        _ => load(),
    };
    loaded.map_err(|e| e.to_string())
}
