//! The WebAssembly runtime that runs auth modules (D20–D22).
//!
//! One [`wasmtime::Engine`] (component model, async, pooling allocator, epoch
//! interruption). Each module is compiled once — or loaded from the on-disk cache of
//! compiled artefacts keyed by the component's SHA-256 and the engine's configuration —
//! and pre-instantiated. Every call gets a fresh store and instance (no state leaks
//! between requests) — except calls of a module that declares itself stateless, which
//! may run in an instance kept from an earlier clean call of the same provider
//! ([`InstancePool`]) — a CPU deadline enforced by epoch interruption, a wall-clock
//! deadline, and a memory cap. Traps and deadlines become errors, never crashes.

pub mod breaker;
pub mod cache;
pub mod grants;
pub mod host;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
#[cfg(test)]
use wasmtime::CallHook;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::config::settings::ModuleLimits;
pub use host::CallEnv;
use host::HostState;

/// Generated host bindings for `wit/outpost.wit`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "module",
        imports: {
            "outpost:auth/kv": async,
            "outpost:auth/http": async,
        },
        exports: { default: async },
    });
}

pub use bindings::outpost::auth::types::{
    BodyAccess, Error as ModuleError, Header, ModuleInfo, Request, ResponseHook, ResponseInfo,
    Verdict,
};

/// Most core instances one module instance may contain.
const MAX_CORE_INSTANCES: u32 = 64;

/// Epoch ticks before a call's first CPU check (see [`Runtime::store`]).
const FIRST_DEADLINE: u64 = 2;

/// Bytes of each linear memory and table kept resident between instances.
const KEEP_RESIDENT: usize = 2 * 1024 * 1024;

/// How often the epoch ticks; the CPU deadline is checked at this granularity.
const TICK: Duration = Duration::from_millis(2);

/// Interfaces a module may import. Anything else (filesystem, sockets, wasi:http…) is
/// refused at load time with the offending import named (D21).
const ALLOWED_IMPORT_PREFIXES: &[&str] = &[
    "outpost:auth/",
    "wasi:cli/environment@",
    "wasi:cli/exit@",
    "wasi:cli/stdin@",
    "wasi:cli/stdout@",
    "wasi:cli/stderr@",
    "wasi:cli/terminal-",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
];

/// Whether Outpost provides `import` to auth modules.
pub fn import_allowed(import: &str) -> bool {
    ALLOWED_IMPORT_PREFIXES
        .iter()
        .any(|p| import.starts_with(p))
}

/// Imports whose calls can wait: the state store and outbound HTTP.
const BLOCKING_IMPORT_PREFIXES: &[&str] = &["outpost:auth/kv@", "outpost:auth/http@"];

/// The monotonic clock, whose `subscribe-*` functions make the only pollables besides
/// stdio's (which are always ready); `now` and `resolution` do not wait.
const MONOTONIC_CLOCK_PREFIX: &str = "wasi:clocks/monotonic-clock@";

/// Whether a module importing `import` (with the functions `functions` from it) can
/// block in a host call. A module importing nothing that can cannot spend more than
/// moments in host calls, so its calls skip the call hook that keeps host time out of
/// the CPU budget (two hook calls for every host↔guest transition, ~2 % of a simple
/// request's instructions): all of its wall-clock time counts as CPU, which errs on the
/// strict side.
fn can_block_in_host<'a>(import: &str, mut functions: impl Iterator<Item = &'a str>) -> bool {
    BLOCKING_IMPORT_PREFIXES
        .iter()
        .any(|p| import.starts_with(p))
        || (import.starts_with(MONOTONIC_CLOCK_PREFIX)
            && functions.any(|f| f.starts_with("subscribe")))
}

/// Whether `component` imports anything that can block in a host call.
fn blocks_in_host(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(import, item)| {
            match &item.ty {
                wasmtime::component::types::ComponentItem::ComponentInstance(instance) => {
                    can_block_in_host(import, instance.exports(engine).map(|(name, _)| name))
                }
                // Not an interface: count it as one that may wait.
                _ => true,
            }
        })
}

/// What `outpost plugin inspect` reports about a component.
#[derive(Debug)]
pub struct Inspection {
    /// Imported interfaces, e.g. `outpost:auth/secrets@0.1.0`.
    pub imports: Vec<String>,
    /// Exported names, e.g. `sign-request`.
    pub exports: Vec<String>,
    /// Whether it declares itself stateless (see [`LoadedModule::stateless`]).
    pub stateless: bool,
    /// `Ok` when Outpost would load it; otherwise why not.
    pub verdict: Result<(), RuntimeError>,
}

/// The custom section by which a module declares that it keeps nothing between calls
/// (the plugin SDK's `declare_stateless!`). Its contents are not read.
pub const STATELESS_SECTION: &str = "outpost:stateless";

/// Whether any core module inside the component carries [`STATELESS_SECTION`].
fn declares_stateless(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .map_while(Result::ok)
        .any(|payload| {
            matches!(payload, wasmparser::Payload::CustomSection(c) if c.name() == STATELESS_SECTION)
        })
}

/// Loading or calling a module failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be configured.
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    /// The bytes are not a valid component.
    #[error("module '{module}' is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// Module name.
        module: String,
        /// Why.
        reason: String,
    },
    /// The component imports a capability Outpost does not grant.
    #[error(
        "module '{module}' imports '{import}', which Outpost does not provide to auth modules (no filesystem, sockets or environment)"
    )]
    ForbiddenImport {
        /// Module name.
        module: String,
        /// The import's name.
        import: String,
    },
    /// The component does not implement the `outpost:auth/module` world.
    #[error("module '{module}' does not implement the outpost:auth/module world: {reason}")]
    WrongWorld {
        /// Module name.
        module: String,
        /// Why.
        reason: String,
    },
}

/// A module call failed. Every variant fails closed (D16).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The module returned an error.
    #[error("{}", module_error_text(.0))]
    Module(ModuleError),
    /// The module used up its CPU budget.
    #[error("module exceeded its CPU deadline of {0:?}")]
    CpuDeadline(Duration),
    /// The call took longer than its wall-clock deadline.
    #[error("module exceeded its wall-clock deadline of {0:?}")]
    WallDeadline(Duration),
    /// The module trapped (panic, out-of-bounds, memory limit…).
    #[error("module trapped: {0}")]
    Trap(String),
    /// The host refused the module's result.
    #[error("{0}")]
    Refused(String),
    /// The module failed after the state store did (D24).
    #[error("{0}")]
    StateUnavailable(String),
}

fn module_error_text(e: &ModuleError) -> &str {
    match e {
        ModuleError::Config(m) | ModuleError::Unavailable(m) | ModuleError::Internal(m) => m,
    }
}

#[derive(Debug)]
struct CpuDeadlineHit;

impl std::fmt::Display for CpuDeadlineHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CPU deadline exceeded")
    }
}

impl std::error::Error for CpuDeadlineHit {}

/// Where a module's bytes came from.
#[derive(Debug, Clone)]
pub enum ModuleSource {
    /// Embedded in the binary.
    Builtin,
    /// A `.wasm` file.
    File(PathBuf),
}

/// How a module was loaded (for logs and the cache test).
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    /// Loaded from the compiled-artefact cache instead of compiled.
    pub from_cache: bool,
    /// Time to compile or deserialize.
    pub elapsed: Duration,
}

/// A compiled, pre-instantiated module.
pub struct LoadedModule {
    /// Module name (`bearer_static`, `my_plugin`…).
    pub name: String,
    /// Where it came from.
    pub source: ModuleSource,
    /// SHA-256 of the component bytes, hex.
    pub digest: String,
    /// How it was loaded.
    pub report: LoadReport,
    /// The module declared itself stateless (custom section [`STATELESS_SECTION`]):
    /// one of its instances may serve many requests of the same provider.
    pub stateless: bool,
    /// The module imports something that can block (see [`can_block_in_host`]): its
    /// calls measure the time spent in host calls, to keep it out of the CPU budget.
    pub blocks_in_host: bool,
    pre: bindings::ModulePre<HostState>,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish()
    }
}

/// Ticks without a module call after which the epoch thread naps instead of ticking.
const NAP_AFTER_TICKS: u32 = 5;

/// One nap. A call that starts during a nap does not wake the thread (that would cost
/// the call a wake-up), so its first CPU check comes up to this much later than it
/// would while ticking.
const NAP: Duration = Duration::from_millis(20);

/// Naps without a module call after which the epoch thread parks until a call wakes it.
const PARK_AFTER_NAPS: u32 = 50;

/// The epoch thread's shared state. The thread ticks every [`TICK`] while module calls
/// run; once none has run for a few ticks it wakes only every [`NAP`], and once none has
/// run for a second it parks. So a proxy under light load wakes it 50 times a second
/// rather than 500, and an idle one not at all.
#[derive(Default)]
struct TickerState {
    stop: AtomicBool,
    /// Module calls in flight.
    active: std::sync::atomic::AtomicUsize,
    /// The thread is parked (or about to): a starting call must unpark it.
    parked: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl TickerState {
    /// The epoch thread's loop.
    fn run(&self, engine: wasmtime::EngineWeak) {
        let (mut idle_ticks, mut idle_naps) = (0u32, 0u32);
        while !self.stop.load(Ordering::Relaxed) {
            if idle_ticks < NAP_AFTER_TICKS {
                std::thread::sleep(TICK);
            } else if idle_naps < PARK_AFTER_NAPS {
                std::thread::sleep(NAP);
                idle_naps += 1;
            } else {
                // Either a starting call sees `parked` and unparks us, or we see its
                // `active` increment here and do not park (both SeqCst).
                self.parked.store(true, Ordering::SeqCst);
                if self.active.load(Ordering::SeqCst) == 0 {
                    std::thread::park_timeout(Duration::from_secs(1));
                }
                self.parked.store(false, Ordering::SeqCst);
            }
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
            if self.active.load(Ordering::SeqCst) > 0 {
                (idle_ticks, idle_naps) = (0, 0);
            } else {
                idle_ticks = idle_ticks.saturating_add(1);
            }
        }
    }

    /// A module call starts: make sure the epoch ticks until it ends.
    fn busy(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Busy(self.clone())
    }
}

/// A module call in flight (see [`TickerState::busy`]).
struct Busy(Arc<TickerState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Ticker {
    state: Arc<TickerState>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.state.thread.get() {
            t.unpark();
        }
    }
}

/// The engine, linker and limits shared by every module.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: ModuleLimits,
    cache: Option<cache::CompileCache>,
    ticker: Ticker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Runtime {
    /// Configure the engine. `cache_dir` enables the compiled-artefact cache.
    pub fn new(limits: ModuleLimits, cache_dir: Option<PathBuf>) -> Result<Self, RuntimeError> {
        let engine_err = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let slots = limits.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // Components from other languages are built of many core modules: a
        // componentize-py plugin with its WASI imports stubbed out has 38 core instances,
        // so every slot can hold one that large.
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(MAX_CORE_INSTANCES))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(8))
            .max_core_instances_per_component(MAX_CORE_INSTANCES)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(limits.memory_bytes)
            // Resetting a slot for the next request: with the pagemap scan (Linux ≥ 6.7)
            // only the pages the last instance dirtied are restored, by copying, and
            // stay mapped, instead of `madvise` on the whole memory followed by a page
            // fault per page on the next request. Without the scan the first bytes
            // (the guest's stack and data) are reset with `memset`, the rest is
            // decommitted as before.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        bindings::Module::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(engine_err)?;

        let ticker = Arc::new(TickerState::default());
        let (e, t) = (engine.weak(), ticker.clone());
        let thread = std::thread::Builder::new()
            .name("outpost-epoch".into())
            .spawn(move || t.run(e))
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?;
        let _ = ticker.thread.set(thread.thread().clone());
        let cache =
            cache_dir.map(|dir| cache::CompileCache::new(dir, &engine, limits.memory_bytes));
        Ok(Self {
            engine,
            linker,
            limits,
            cache,
            ticker: Ticker { state: ticker },
        })
    }

    /// The module limits in force.
    pub fn limits(&self) -> &ModuleLimits {
        &self.limits
    }

    /// Compile (or load from cache) and pre-instantiate a component. Built-ins and
    /// plugin files take exactly this path (D20). Blocking: call from a blocking context.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        source: ModuleSource,
    ) -> Result<LoadedModule, RuntimeError> {
        let invalid = |reason: String| RuntimeError::Invalid {
            module: name.to_string(),
            reason,
        };
        let digest = hex::encode(Sha256::digest(bytes));
        let started = Instant::now();
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.engine, &digest));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(c) => c,
            None => {
                let c =
                    Component::new(&self.engine, bytes).map_err(|e| invalid(format!("{e:#}")))?;
                if let Some(cache) = &self.cache {
                    cache.store(&c, &digest);
                }
                c
            }
        };
        let report = LoadReport {
            from_cache,
            elapsed: started.elapsed(),
        };

        let pre = self.vet(name, &component)?;
        let blocks_in_host = blocks_in_host(&self.engine, &component);
        tracing::info!(
            module = name,
            from_cache,
            elapsed_ms = report.elapsed.as_secs_f64() * 1000.0,
            "auth module {}",
            if from_cache {
                "loaded from compile cache"
            } else {
                "compiled"
            }
        );
        Ok(LoadedModule {
            name: name.to_string(),
            source,
            digest,
            report,
            stateless: declares_stateless(bytes),
            blocks_in_host,
            pre,
        })
    }

    /// Refuse a component that imports a capability Outpost does not grant, or that
    /// does not implement the `outpost:auth/module` world; pre-instantiate it otherwise.
    fn vet(
        &self,
        name: &str,
        component: &Component,
    ) -> Result<bindings::ModulePre<HostState>, RuntimeError> {
        let ty = component.component_type();
        for (import, _) in ty.imports(&self.engine) {
            if !import_allowed(import) {
                return Err(RuntimeError::ForbiddenImport {
                    module: name.to_string(),
                    import: import.to_string(),
                });
            }
        }
        let wrong = |e: wasmtime::Error| RuntimeError::WrongWorld {
            module: name.to_string(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(component).map_err(wrong)?;
        bindings::ModulePre::new(instance_pre).map_err(wrong)
    }

    /// Describe a component for `outpost plugin inspect`: what it imports and exports,
    /// and whether Outpost would load it (the same checks as [`Runtime::load`]).
    /// Compiles without the cache. Blocking.
    pub fn inspect(&self, name: &str, bytes: &[u8]) -> Result<Inspection, RuntimeError> {
        let component = Component::new(&self.engine, bytes).map_err(|e| RuntimeError::Invalid {
            module: name.to_string(),
            reason: format!("{e:#}"),
        })?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        Ok(Inspection {
            imports,
            exports,
            stateless: declares_stateless(bytes),
            verdict: self.vet(name, &component).map(|_| ()),
        })
    }

    fn store(&self, env: Arc<CallEnv>, host_time: bool) -> Store<HostState> {
        let stderr = MemoryOutputPipe::new(4096);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let now = Instant::now();
        let data = HostState {
            wasi,
            table: Default::default(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            env,
            stderr,
            started: now,
            io_time: Duration::ZERO,
            in_host_since: None,
            host_depth: 0,
            state_failure: None,
            wall_deadline: now + self.limits.wall,
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|s| &mut s.limits);
        // Time blocked in host calls (outbound HTTP, state, WASI sleeps) is not CPU time.
        if host_time {
            store.call_hook(|mut ctx, hook| {
                ctx.data_mut().on_call_hook(hook);
                Ok(())
            });
        }
        let cpu = self.limits.cpu;
        // Past the first full tick, every tick checks the CPU budget and yields to the
        // executor, so a long-running module cannot hold a worker thread. A deadline of
        // one tick would instead interrupt (and yield) the 1 % of ordinary, 20 µs calls
        // that happen to straddle a tick.
        store.epoch_deadline_callback(move |ctx| {
            if ctx.data().cpu_used() > cpu {
                Err(wasmtime::Error::new(CpuDeadlineHit))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(FIRST_DEADLINE);
        store
    }

    fn trap(
        &self,
        module: &LoadedModule,
        store: &Store<HostState>,
        e: wasmtime::Error,
    ) -> CallError {
        if e.is::<CpuDeadlineHit>() {
            tracing::warn!(module = %module.name, "auth module interrupted at its CPU deadline");
            return CallError::CpuDeadline(self.limits.cpu);
        }
        // What the module printed (a panic message…) goes to the log, redacted; the agent
        // only learns the kind of trap, since module output could carry derived secrets.
        let stderr = String::from_utf8_lossy(&store.data().stderr.contents())
            .trim()
            .to_string();
        let stderr = store.data().env.grants.redact(&stderr);
        tracing::warn!(module = %module.name, stderr = %stderr, "auth module trapped: {e:#}");
        let kind = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => e.root_cause().to_string(),
        };
        CallError::Trap(kind)
    }

    /// Run `validate-config`.
    pub async fn validate(
        &self,
        m: &LoadedModule,
        env: Arc<CallEnv>,
        config: &str,
    ) -> Result<ModuleInfo, CallError> {
        let _busy = self.ticker.state.busy();
        let mut store = self.store(env, m.blocks_in_host);
        let wall = self.limits.wall;
        let outcome = within(
            wall,
            std::pin::pin!(async {
                let inst = m.pre.instantiate_async(&mut store).await?;
                inst.call_validate_config(&mut store, config).await
            }),
        )
        .await;
        self.settle(m, &store, outcome)
    }

    /// Run `sign-request`, then check the module changed nothing it may not (D21).
    /// With `pool` (a stateless module's kept instances, see [`InstancePool`]) the call
    /// runs in a kept instance when one is idle, and its instance is kept afterwards
    /// if the call succeeded; otherwise it gets a fresh instance, as every call of a
    /// module that did not declare itself stateless does.
    pub async fn sign(
        &self,
        m: &LoadedModule,
        env: Arc<CallEnv>,
        config: &str,
        info: &ModuleInfo,
        req: &Request,
        pool: Option<&InstancePool>,
    ) -> Result<Request, CallError> {
        let _busy = self.ticker.state.busy();
        let kept = pool
            .and_then(InstancePool::take)
            // A pool belongs to one provider: never hand its instance another's grants.
            .filter(|k| Arc::ptr_eq(&k.store.data().env, &env));
        let (mut store, kept_module, calls) = match kept {
            Some(k) => {
                let mut store = k.store;
                store.data_mut().begin_call(self.limits.wall);
                store.set_epoch_deadline(FIRST_DEADLINE);
                (store, Some(k.module), k.calls)
            }
            None => (self.store(env, m.blocks_in_host), None, 0),
        };
        let wall = self.limits.wall;
        let call = within(
            wall,
            std::pin::pin!(async {
                let module = match kept_module {
                    Some(module) => module,
                    None => m.pre.instantiate_async(&mut store).await?,
                };
                let result = module.call_sign_request(&mut store, config, req).await?;
                Ok::<_, wasmtime::Error>((result, module))
            }),
        )
        .await;
        let (outcome, module) = match call {
            Ok(Ok((result, module))) => (Ok(Ok(result)), Some(module)),
            Ok(Err(e)) => (Ok(Err(e)), None),
            Err(elapsed) => (Err(elapsed), None),
        };
        let signed = self.settle(m, &store, outcome)?;
        check_signed(req, &signed, info, store.data().env.max_body_bytes)?;
        if let (Some(pool), Some(module)) = (pool, module) {
            // Kept only after a clean call: no error, nothing printed, calls left.
            if calls + 1 < pool.max_calls && store.data().stderr.contents().is_empty() {
                pool.put(Kept {
                    store,
                    module,
                    calls: calls + 1,
                });
            }
        }
        Ok(signed)
    }

    /// Run `on-response`.
    pub async fn on_response(
        &self,
        m: &LoadedModule,
        env: Arc<CallEnv>,
        config: &str,
        resp: &ResponseInfo,
    ) -> Result<Verdict, CallError> {
        let _busy = self.ticker.state.busy();
        let mut store = self.store(env, m.blocks_in_host);
        let wall = self.limits.wall;
        let outcome = within(
            wall,
            std::pin::pin!(async {
                let inst = m.pre.instantiate_async(&mut store).await?;
                inst.call_on_response(&mut store, config, resp).await
            }),
        )
        .await;
        self.settle(m, &store, outcome)
    }

    /// Turn a call's outcome — wall-clock expiry, trap, module error or success — into
    /// a result.
    fn settle<T>(
        &self,
        m: &LoadedModule,
        store: &Store<HostState>,
        outcome: Result<wasmtime::Result<Result<T, ModuleError>>, tokio::time::error::Elapsed>,
    ) -> Result<T, CallError> {
        let result = match outcome {
            Err(_) => Err(CallError::WallDeadline(self.limits.wall)),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(CallError::Module(e)),
            Ok(Err(e)) => Err(self.trap(m, store, e)),
        };
        match (result, &store.data().state_failure) {
            (Err(_), Some(state)) => Err(CallError::StateUnavailable(state.clone())),
            (r, _) => r,
        }
    }
}

/// `tokio::time::timeout(wall, fut)`, without arming a timer when `fut` completes on
/// its first poll, as a kept instance's synchronous call does. The deadline is taken
/// before that poll, so it is the same deadline either way. `fut` is pinned by the
/// caller: an owned future moved in here would be stored twice in this one's state
/// (once as the argument, once pinned), ~1.4 KB more in every request's future.
async fn within<F: Future>(
    wall: Duration,
    mut fut: Pin<&mut F>,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let deadline = tokio::time::Instant::now() + wall;
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => tokio::time::timeout_at(deadline, fut).await,
    }
}

/// Instances of one provider's stateless module, kept between its signing calls.
///
/// Instantiating a component and resetting its memory afterwards cost about 12 µs,
/// most of what signing costs a simple module. A module that declares itself stateless
/// (nothing it keeps in memory between calls matters to the next one) may therefore
/// serve up to `max_calls` requests of the same provider from one instance
/// (`OUTPOST_PLUGIN_REUSE`). An instance is kept only after a clean call — no module
/// error, trap or deadline, nothing written to stderr — so a request never runs in an
/// instance whose previous call went wrong; every other module gets a fresh instance
/// per call (D22).
pub struct InstancePool {
    idle: std::sync::Mutex<Vec<Kept>>,
    max_calls: u32,
}

struct Kept {
    store: Store<HostState>,
    module: bindings::Module,
    calls: u32,
}

/// Most idle instances kept per provider (each holds a pooling-allocator slot).
const MAX_IDLE: usize = 8;

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("idle", &self.idle())
            .field("max_calls", &self.max_calls)
            .finish()
    }
}

impl InstancePool {
    /// A pool whose instances serve at most `max_calls` calls each.
    pub fn new(max_calls: u32) -> Self {
        Self {
            idle: std::sync::Mutex::new(Vec::new()),
            max_calls,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        // A panic while holding the lock cannot leave the list half-changed.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Option<Kept> {
        self.lock().pop()
    }

    fn put(&self, kept: Kept) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(kept);
        }
    }

    /// Instances waiting for a call.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// A module may change headers, query and (with `read-write` body access) the body;
/// never the method, scheme, authority or path (D21). Header names and values must be
/// valid HTTP, and the query must be valid in a URI.
fn check_signed(
    before: &Request,
    after: &Request,
    info: &ModuleInfo,
    max_body: usize,
) -> Result<(), CallError> {
    let refuse = |what: &str| {
        Err(CallError::Refused(format!(
            "module changed the request {what}, which is not allowed"
        )))
    };
    if after.method != before.method {
        return refuse("method");
    }
    if after.scheme != before.scheme {
        return refuse("scheme");
    }
    if after.authority != before.authority {
        return refuse("authority");
    }
    if after.path != before.path {
        return refuse("path");
    }
    if after.body.is_some() && !matches!(info.body_access, BodyAccess::ReadWrite) {
        return refuse("body (it did not declare body-access read-write)");
    }
    // A module cannot make Outpost send (or hold) more than an agent could.
    let header_bytes: usize = after
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    if after.headers.len() > MAX_SIGNED_HEADERS || header_bytes > MAX_SIGNED_HEADER_BYTES {
        return Err(CallError::Refused(format!(
            "module returned {} headers ({header_bytes} bytes); the limit is {MAX_SIGNED_HEADERS} headers and {MAX_SIGNED_HEADER_BYTES} bytes",
            after.headers.len()
        )));
    }
    if after.query.len() > MAX_SIGNED_QUERY_BYTES {
        return Err(CallError::Refused(format!(
            "module returned a {}-byte query; the limit is {MAX_SIGNED_QUERY_BYTES} bytes",
            after.query.len()
        )));
    }
    if let Some(body) = &after.body
        && body.len() > max_body
    {
        return Err(CallError::Refused(format!(
            "module returned a {}-byte body; the limit is {max_body} bytes (OUTPOST_MAX_BODY_BYTES)",
            body.len()
        )));
    }
    for h in &after.headers {
        if !is_header_name(h.name.as_bytes()) || !is_header_value(&h.value) {
            return Err(CallError::Refused(format!(
                "module returned an invalid header '{}'",
                h.name.escape_debug()
            )));
        }
    }
    if after.query != before.query && after.query.bytes().any(|b| !is_query_byte(b)) {
        return Err(CallError::Refused(
            "module returned a query with characters that must be percent-encoded".into(),
        ));
    }
    Ok(())
}

/// Most headers a signed request may carry (an agent may send 128).
const MAX_SIGNED_HEADERS: usize = 256;
/// Most bytes of header names and values a signed request may carry.
const MAX_SIGNED_HEADER_BYTES: usize = 256 * 1024;
/// Longest query a module may return.
const MAX_SIGNED_QUERY_BYTES: usize = 64 * 1024;

/// Whether `http` accepts `name` as a header name (an RFC 9110 token, any case), checked
/// without building one: building a name that is not a standard one allocates.
fn is_header_name(name: &[u8]) -> bool {
    const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~";
    !name.is_empty()
        && name.len() <= MAX_HEADER_NAME
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || TCHAR.contains(&b))
}

/// Longest header name `http` accepts.
const MAX_HEADER_NAME: usize = (1 << 16) - 1;

/// Whether `http` accepts `value` as a header value (visible ASCII, obs-text, space and
/// tab), checked without copying it into one.
fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// RFC 3986 `query` characters (plus `%` for escapes).
fn is_query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_env() -> Arc<CallEnv> {
        let env = crate::config::env::MapEnv::default();
        Arc::new(CallEnv {
            module: "test".into(),
            grants: Arc::new(grants::Grants::derive(
                "p",
                "https://api.example.com",
                &serde_json::json!({}),
                &env,
            )),
            state: Arc::new(crate::state::StateStore::memory()),
            client: crate::client::build(Duration::from_secs(1)),
            max_body_bytes: 1024,
        })
    }

    fn test_limits() -> ModuleLimits {
        ModuleLimits {
            cpu: Duration::from_millis(100),
            wall: Duration::from_secs(1),
            memory_bytes: 1 << 20,
            max_instances: 4,
            reuse_calls: 1,
        }
    }

    #[tokio::test]
    async fn the_wall_deadline_counts_from_before_the_first_poll() {
        let wall = Duration::from_millis(200);
        assert_eq!(
            within(wall, std::pin::pin!(async { 7 })).await.ok(),
            Some(7)
        );
        // A call that runs 150 ms in its first poll, then waits for ever: it still ends
        // at 200 ms from the start, not 200 ms after that poll.
        let started = Instant::now();
        let mut first = true;
        let stalls = std::future::poll_fn(|_| {
            if std::mem::take(&mut first) {
                std::thread::sleep(Duration::from_millis(150));
            }
            Poll::<()>::Pending
        });
        assert!(within(wall, std::pin::pin!(stalls)).await.is_err());
        let took = started.elapsed();
        assert!(took >= wall, "ended after {took:?}");
        assert!(took < Duration::from_millis(330), "ended after {took:?}");
    }

    #[tokio::test]
    async fn time_blocked_in_host_calls_is_not_cpu_even_when_the_host_calls_back() {
        let runtime = Runtime::new(test_limits(), None).unwrap();
        let mut store = runtime.store(call_env(), true);
        let nap = Duration::from_millis(30);
        let hook = |store: &mut Store<HostState>, h| store.data_mut().on_call_hook(h);
        // The export runs (its argument reallocs are host → guest calls at depth 0).
        hook(&mut store, CallHook::CallingWasm);
        hook(&mut store, CallHook::ReturningFromWasm);
        hook(&mut store, CallHook::CallingWasm);
        // The guest calls the host, which waits, calls back into the guest
        // (`cabi_realloc` for the result), which grows its memory (a libcall), and
        // waits again before returning.
        hook(&mut store, CallHook::CallingHost);
        std::thread::sleep(nap);
        hook(&mut store, CallHook::CallingWasm);
        hook(&mut store, CallHook::CallingHost);
        hook(&mut store, CallHook::ReturningFromHost);
        hook(&mut store, CallHook::ReturningFromWasm);
        std::thread::sleep(nap);
        hook(&mut store, CallHook::ReturningFromHost);
        let cpu = store.data().cpu_used();
        assert!(cpu < Duration::from_millis(20), "{cpu:?} charged as CPU");
        // Guest code running inside a host call is CPU.
        hook(&mut store, CallHook::CallingHost);
        hook(&mut store, CallHook::CallingWasm);
        std::thread::sleep(nap);
        hook(&mut store, CallHook::ReturningFromWasm);
        hook(&mut store, CallHook::ReturningFromHost);
        hook(&mut store, CallHook::ReturningFromWasm);
        let cpu = store.data().cpu_used();
        assert!(
            cpu >= nap,
            "{cpu:?}: guest time inside a host call was not charged"
        );
    }

    /// Poll `cond` every millisecond for up to `secs` seconds.
    fn eventually(secs: u64, cond: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        cond()
    }

    #[test]
    fn only_modules_that_can_block_in_a_host_call_measure_host_time() {
        let runtime = Runtime::new(test_limits(), None).unwrap();
        let load = |name: &str| {
            let (_, bytes) = crate::builtin::BUILTIN_MODULES
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap();
            runtime.load(name, bytes, ModuleSource::Builtin).unwrap()
        };
        // Secrets and stdio only, and the clocks' `now`: nothing to wait for.
        assert!(!load("bearer_static").blocks_in_host);
        assert!(!load("hmac_signed").blocks_in_host);
        // Tokens in the state store; tokens minted over HTTP.
        assert!(load("bearer_redis").blocks_in_host);
        assert!(load("oauth2_client_credentials").blocks_in_host);
        let clock = "wasi:clocks/monotonic-clock@0.2.6";
        assert!(can_block_in_host(
            clock,
            ["now", "subscribe-duration"].into_iter()
        ));
        assert!(!can_block_in_host(clock, ["now", "resolution"].into_iter()));
        assert!(!can_block_in_host(
            "wasi:clocks/wall-clock@0.2.6",
            std::iter::empty()
        ));
        assert!(!can_block_in_host(
            "wasi:io/poll@0.2.6",
            ["poll"].into_iter()
        ));
    }

    #[test]
    fn the_epoch_thread_parks_while_idle_and_ticks_again_for_a_call() {
        let runtime = Runtime::new(test_limits(), None).unwrap();
        let state = runtime.ticker.state.clone();
        let parked = || state.parked.load(Ordering::SeqCst);
        assert!(
            eventually(5, parked),
            "an idle runtime's epoch thread parks"
        );
        let call = state.busy();
        assert!(eventually(1, || !parked()), "a starting call unparks it");
        // It keeps ticking for as long as the call runs: longer than it takes to park.
        std::thread::sleep(TICK * NAP_AFTER_TICKS + NAP * (PARK_AFTER_NAPS + 10));
        assert!(!parked(), "parked during a call");
        drop(call);
        assert!(eventually(5, parked), "parks again once the call ended");
    }

    fn req() -> Request {
        Request {
            method: "GET".into(),
            scheme: "https".into(),
            authority: "api.example.com".into(),
            path: "/v1/x".into(),
            query: "a=1".into(),
            headers: vec![],
            body: None,
        }
    }

    #[test]
    fn signed_request_size_is_bounded() {
        let rw = ModuleInfo {
            body_access: BodyAccess::ReadWrite,
            response_hook: ResponseHook::None,
        };
        let header = |i: usize| Header {
            name: format!("x-h{i}"),
            value: b"v".to_vec(),
        };
        let many = Request {
            headers: (0..MAX_SIGNED_HEADERS + 1).map(header).collect(),
            ..req()
        };
        let huge_value = Request {
            headers: vec![Header {
                name: "x".into(),
                value: vec![b'a'; MAX_SIGNED_HEADER_BYTES],
            }],
            ..req()
        };
        let long_query = Request {
            query: "a".repeat(MAX_SIGNED_QUERY_BYTES + 1),
            ..req()
        };
        let big_body = Request {
            body: Some(vec![0; 1025]),
            ..req()
        };
        for bad in [many, huge_value, long_query, big_body] {
            let e = check_signed(&req(), &bad, &rw, 1024).unwrap_err();
            assert!(e.to_string().contains("the limit is"), "{e}");
        }
        let fits = Request {
            headers: (0..MAX_SIGNED_HEADERS).map(header).collect(),
            body: Some(vec![0; 1024]),
            ..req()
        };
        assert!(check_signed(&req(), &fits, &rw, 1024).is_ok());
    }

    #[test]
    fn header_checks_agree_with_http() {
        let mut names: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        names.extend(
            [
                &b"Authorization"[..],
                b"x-api-key",
                b"X_Weird!Name",
                b"a b",
                b"",
                b"a:b",
                b"\xc3\xa9",
            ]
            .iter()
            .map(|n| n.to_vec()),
        );
        names.push(vec![b'a'; MAX_HEADER_NAME]);
        names.push(vec![b'a'; MAX_HEADER_NAME + 1]);
        for n in &names {
            assert_eq!(
                is_header_name(n),
                http::HeaderName::from_bytes(n).is_ok(),
                "name of {} bytes starting {:?}",
                n.len(),
                &n[..n.len().min(16)]
            );
            assert_eq!(
                is_header_value(n),
                http::HeaderValue::from_bytes(n).is_ok(),
                "value of {} bytes starting {:?}",
                n.len(),
                &n[..n.len().min(16)]
            );
        }
    }

    #[test]
    fn signed_request_may_not_change_its_target() {
        let info = ModuleInfo {
            body_access: BodyAccess::None,
            response_hook: ResponseHook::None,
        };
        let ok = Request {
            query: "a=1&sig=ab%20".into(),
            ..req()
        };
        assert!(check_signed(&req(), &ok, &info, 1024).is_ok());
        for bad in [
            Request {
                method: "POST".into(),
                ..req()
            },
            Request {
                authority: "evil.example.com".into(),
                ..req()
            },
            Request {
                path: "/admin".into(),
                ..req()
            },
            Request {
                scheme: "http".into(),
                ..req()
            },
            Request {
                body: Some(b"x".to_vec()),
                ..req()
            },
            Request {
                query: "a=1 2".into(),
                ..req()
            },
            Request {
                headers: vec![Header {
                    name: "Bad Name".into(),
                    value: vec![],
                }],
                ..req()
            },
            Request {
                headers: vec![Header {
                    name: "X".into(),
                    value: b"a\nb".to_vec(),
                }],
                ..req()
            },
        ] {
            assert!(check_signed(&req(), &bad, &info, 1024).is_err(), "{bad:?}");
        }
        let rw = ModuleInfo {
            body_access: BodyAccess::ReadWrite,
            response_hook: ResponseHook::None,
        };
        assert!(
            check_signed(
                &req(),
                &Request {
                    body: Some(b"x".to_vec()),
                    ..req()
                },
                &rw,
                1024
            )
            .is_ok()
        );
    }
}
