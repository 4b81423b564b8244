//! Micro-benchmarks (issue 8). Benchmarks report numbers; they never gate CI.
//!
//! - `sign/<module>/fresh`: a fresh instance per call + `sign-request` — what the proxy
//!   does for every request;
//! - `sign/<module>/kept`: `sign-request` in a kept instance, as the proxy runs
//!   modules that declare themselves stateless (`OUTPOST_PLUGIN_REUSE`);
//! - `route/50-rules`: path canonicalisation + classification against 50 allow rules;
//! - `rate_limit/{embedded,redis}`: one token-bucket acquire (Redis: a real
//!   `redis-server` on a free port, skipped with a note when it is not installed).
//!
//! After criterion's groups it prints `SIGNER_P99 {json}`: per-call p50/p99 of fresh
//! instance + `sign-request` over 20,000 calls, the figure the budgets are stated in
//! (criterion reports means), each beside `spin_p99_us`: the p99 of a pure-CPU loop with
//! the same median, timed the same way, which is what the machine alone does to the tail
//! of work that long. Then `MACHINE_JITTER {json}`: how often a running thread loses its
//! CPU, and for how long. `benches/load.py` reads both lines.
//!
//! `OUTPOST_BENCH_AB=a.wasm,b.wasm` instead compares two (or more) builds of a module,
//! fresh instances (kept ones with `OUTPOST_BENCH_AB_KEPT=1`), in interleaved blocks (see
//! `compare`).
//!
//! Run: `cargo bench -p outpost --bench micro` (add `-- --quick` for a shorter run).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use outpost::config::env::{Env, MapEnv};
use outpost::config::settings::Settings;
use outpost::runtime::Request;
use outpost::server::AppState;

/// The allocator `outpost` uses, so calls are measured as the proxy makes them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Providers whose modules sign without the network.
const PROVIDERS: &[(&str, &str)] = &[
    ("none", "auth: {type: none}"),
    (
        "bearer_static",
        "auth: {type: bearer_static, env: BENCH_TOKEN}",
    ),
    (
        "api_key_header",
        "auth: {type: api_key_header, env: BENCH_TOKEN, header: X-Api-Key}",
    ),
    (
        "api_key_query",
        "auth: {type: api_key_query, env: BENCH_TOKEN, param: api_key}",
    ),
    (
        "basic_auth",
        "auth: {type: basic_auth, username_env: BENCH_USER, password_env: BENCH_TOKEN}",
    ),
    (
        "custom_headers",
        "auth: {type: custom_headers, headers: {X-A: {env: BENCH_TOKEN}, X-B: {value: b}}}",
    ),
    (
        "hmac_signed",
        "auth: {type: hmac_signed, key_env: BENCH_USER, secret_env: BENCH_TOKEN}",
    ),
    (
        "aws_sigv4",
        "auth: {type: aws_sigv4, service: s3, region: eu-west-1, access_key_id_env: BENCH_USER, secret_access_key_env: BENCH_TOKEN}",
    ),
    (
        "totp",
        "auth: {type: totp, secret_env: BENCH_TOTP, header: X-Otp}",
    ),
];

fn config_dir(redis_url: Option<&str>) -> (tempfile::TempDir, MapEnv) {
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers");
    std::fs::create_dir_all(&providers).unwrap();
    for (name, auth) in PROVIDERS {
        std::fs::write(
            providers.join(format!("{name}.yaml")),
            format!("name: {name}\nbase_url: https://api.example.com\n{auth}\n"),
        )
        .unwrap();
    }
    let mut rules = String::from(
        "name: allow50\nbase_url: https://api.example.com\nauth: {type: none}\nforwarding:\n  mode: allowlist\n  allow:\n",
    );
    for i in 0..50 {
        rules.push_str(&format!(
            "    - {{method: GET, pattern: '/v{i}/orgs/*/repos/**/items/{{id}}', category: c{i}}}\n"
        ));
    }
    rules.push_str("  rate_limits:\n    default: [{capacity: 1000000000, window_ms: 1000}]\n");
    std::fs::write(providers.join("allow50.yaml"), rules).unwrap();
    // A/B comparison (`compare`): each file becomes a plugin provider named after it;
    // those whose name starts with `none` get no settings, `hmac…` the two secrets
    // `hmac_signed` needs, `aws…` `aws_sigv4`'s settings, the others `env: BENCH_TOKEN`.
    if let Ok(files) = std::env::var("OUTPOST_BENCH_AB") {
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for file in files.split(',') {
            let name = stem(file);
            std::fs::copy(file, plugins.join(format!("{name}.wasm"))).unwrap();
            let config = if name.starts_with("none") {
                "{}"
            } else if name.starts_with("hmac") {
                "{key_env: BENCH_USER, secret_env: BENCH_TOKEN}"
            } else if name.starts_with("aws") {
                "{service: s3, region: eu-west-1, access_key_id_env: BENCH_USER, \
                  secret_access_key_env: BENCH_TOKEN}"
            } else {
                "{env: BENCH_TOKEN}"
            };
            std::fs::write(
                providers.join(format!("{name}.yaml")),
                format!(
                    "name: {name}\nbase_url: https://api.example.com\n\
                     auth: {{type: plugin, module: {name}.wasm, config: {config}}}\n"
                ),
            )
            .unwrap();
        }
    }
    std::fs::write(
        dir.path().join("hosts.yaml"),
        "hosts:\n  - id: local\n    cidrs: [127.0.0.1/32]\n",
    )
    .unwrap();
    let mut vars: HashMap<String, String> = [
        (
            "PROVIDERS_DIR",
            dir.path().join("providers").display().to_string(),
        ),
        (
            "HOSTS_CONFIG_PATH",
            dir.path().join("hosts.yaml").display().to_string(),
        ),
        (
            "PLUGINS_DIR",
            dir.path().join("plugins").display().to_string(),
        ),
        (
            "OUTPOST_CACHE_DIR",
            dir.path().join("cache").display().to_string(),
        ),
        ("BENCH_TOKEN", "bench-token-value".to_string()),
        ("BENCH_USER", "bench-user".to_string()),
        ("BENCH_TOTP", "JBSWY3DPEHPK3PXP".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(url) = redis_url {
        vars.insert("REDIS_URL".into(), url.into());
    }
    // Under valgrind, which cannot reserve the pooling allocator's default address
    // space: `OUTPOST_PLUGIN_MAX_INSTANCES=2 valgrind --tool=callgrind …`.
    if let Ok(n) = std::env::var("OUTPOST_PLUGIN_MAX_INSTANCES") {
        vars.insert("OUTPOST_PLUGIN_MAX_INSTANCES".into(), n);
    }
    (dir, MapEnv(vars))
}

async fn app(redis_url: Option<&str>) -> (tempfile::TempDir, AppState) {
    let (dir, env) = config_dir(redis_url);
    let settings = Settings::from_env(&env).unwrap();
    let env: Arc<dyn Env> = Arc::new(env);
    let (state, problems) = outpost::server::build(settings, env).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    (dir, state)
}

fn request() -> Request {
    Request {
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.example.com".into(),
        path: "/v1/orgs/acme/repos".into(),
        query: "per_page=50&page=2".into(),
        headers: vec![
            outpost::runtime::Header {
                name: "accept".into(),
                value: b"application/json".to_vec(),
            },
            outpost::runtime::Header {
                name: "user-agent".into(),
                value: b"agent/1.0".to_vec(),
            },
        ],
        body: None,
    }
}

fn sign_benches(c: &mut Criterion, rt: &tokio::runtime::Runtime, state: &AppState) {
    let generation = state.current();
    let mut group = c.benchmark_group("sign");
    for (name, _) in PROVIDERS {
        let signer = generation.providers.by_name[*name].signer.as_ref().unwrap();
        group.bench_function(format!("{name}/fresh"), |b| {
            b.to_async(rt)
                .iter(|| async { signer.sign(&state.runtime, &request(), None).await.unwrap() })
        });
        // The proxy's path for a module that declares itself stateless: a kept
        // instance (OUTPOST_PLUGIN_REUSE), fresh only when none is idle.
        let pool = outpost::runtime::InstancePool::new(u32::MAX);
        group.bench_function(format!("{name}/kept"), |b| {
            b.to_async(rt).iter(|| async {
                signer
                    .sign(&state.runtime, &request(), Some(&pool))
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn route_bench(c: &mut Criterion, state: &AppState) {
    let generation = state.current();
    let def = generation.providers.by_name["allow50"].def.clone().unwrap();
    // Matches the last of the 50 rules: the worst case.
    let uri: http::Uri = "/v49/orgs/acme/repos/a/b/%63/items/42?x=1".parse().unwrap();
    c.bench_function("route/50-rules", |b| {
        b.iter(|| {
            let target = outpost::pipeline::path::build(&def, &uri).unwrap();
            outpost::pipeline::classify::classify(&def, &http::Method::GET, &target).unwrap()
        })
    });
}

fn rate_limit_bench(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    label: &str,
    state: &AppState,
) {
    let generation = state.current();
    let def = generation.providers.by_name["allow50"].def.clone().unwrap();
    c.bench_function(&format!("rate_limit/{label}"), |b| {
        b.to_async(rt).iter(|| async {
            outpost::pipeline::rate_limit::acquire(&state.state, &def, "c1", Duration::from_secs(1))
                .await
                .unwrap()
        })
    });
}

/// A `redis-server` on a free port, or `None` when it is not installed.
struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis(child, port))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Per-call percentiles of fresh instance + `sign-request` (`p99_us`…), and of
/// `sign-request` in a kept instance (`kept_p99_us`…), in microseconds.
fn signer_p99(rt: &tokio::runtime::Runtime, state: &AppState) {
    let generation = state.current();
    let mut report = serde_json::Map::new();
    // `OUTPOST_BENCH_MODULES=none,hmac_signed` narrows the list (e.g. for profiling).
    let only = std::env::var("OUTPOST_BENCH_MODULES").unwrap_or_default();
    let names = ["none", "bearer_static", "hmac_signed", "aws_sigv4"];
    // `OUTPOST_BENCH_CALLS`: measured calls per module (default 20,000).
    let calls: usize = std::env::var("OUTPOST_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    for name in names
        .into_iter()
        .filter(|n| only.is_empty() || only.split(',').any(|o| o == *n))
    {
        let signer = generation.providers.by_name[name].signer.as_ref().unwrap();
        // Fresh instance per call (the budget), then kept instances (stateless reuse).
        let pool = outpost::runtime::InstancePool::new(u32::MAX);
        let mut entry = serde_json::Map::new();
        for (label, pool) in [("", None), ("kept_", Some(&pool))] {
            let mut samples: Vec<Duration> = rt.block_on(async {
                let mut out = Vec::with_capacity(calls);
                for i in 0..calls + 1000 {
                    let t = Instant::now();
                    signer.sign(&state.runtime, &request(), pool).await.unwrap();
                    if i >= 1000 {
                        out.push(t.elapsed());
                    }
                }
                out
            });
            if let Ok(dir) = std::env::var("OUTPOST_BENCH_DUMP") {
                // Per-call durations in call order (ns), to look for periodic outliers.
                let text: String = samples
                    .iter()
                    .map(|d| format!("{}\n", d.as_nanos()))
                    .collect();
                std::fs::write(format!("{dir}/{label}{name}.txt"), text).unwrap();
            }
            samples.sort();
            for (key, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
                entry.insert(
                    format!("{label}{key}_us"),
                    percentile_us(&samples, p).into(),
                );
            }
            if label.is_empty() {
                // The machine's own tail for work of this length: a loop of pure CPU
                // (no memory, no syscalls) with the same median, timed the same way.
                let spin = spin_reference(samples[samples.len() / 2], calls);
                for (key, v) in spin {
                    entry.insert(format!("spin_{key}_us"), v.into());
                }
            }
        }
        entry.insert("calls".into(), calls.into());
        report.insert(name.into(), entry.into());
    }
    println!("SIGNER_P99 {}", serde_json::Value::Object(report));
    println!("MACHINE_JITTER {}", machine_jitter(Duration::from_secs(1)));
}

/// Iterations of a dependent multiply-add: pure CPU, nothing the allocator, the cache or
/// the kernel takes part in.
fn spin(iterations: u64) -> u64 {
    let mut x = std::hint::black_box(1u64);
    for _ in 0..iterations {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    std::hint::black_box(x)
}

/// `calls` timed runs of [`spin`] sized to take `median` each: p50 and p99 in µs. On a
/// machine whose CPUs are never taken away, its p99 is its p50; here it shows what the
/// machine adds to any task of that length.
fn spin_reference(median: Duration, calls: usize) -> Vec<(&'static str, f64)> {
    let per_iteration = (0..5)
        .map(|_| {
            let t = Instant::now();
            spin(1_000_000);
            t.elapsed().as_secs_f64() / 1e6
        })
        .fold(f64::INFINITY, f64::min);
    let iterations = (median.as_secs_f64() / per_iteration) as u64;
    let mut samples: Vec<Duration> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            spin(iterations);
            t.elapsed()
        })
        .collect();
    samples.sort();
    vec![
        ("p50", percentile_us(&samples, 0.5)),
        ("p99", percentile_us(&samples, 0.99)),
    ]
}

/// How often, and for how long, this thread loses its CPU while it never yields it: a
/// loop reading the clock for `span`, counting gaps over 5 µs between two reads (a
/// read takes well under 1 µs). Interruptions per second, and their median and p90 in µs.
fn machine_jitter(span: Duration) -> serde_json::Value {
    let start = Instant::now();
    let mut last = start;
    let mut gaps = Vec::new();
    loop {
        let now = Instant::now();
        let gap = now - last;
        if gap > Duration::from_micros(5) {
            gaps.push(gap);
        }
        last = now;
        if now - start >= span {
            break;
        }
    }
    gaps.sort();
    serde_json::json!({
        "per_second": gaps.len() as f64 / span.as_secs_f64(),
        "median_us": percentile_us(&gaps, 0.5),
        "p90_us": percentile_us(&gaps, 0.9),
    })
}

/// `OUTPOST_BENCH_AB=a.wasm,b.wasm`: fresh instance + `sign-request` for each file (loaded
/// as a plugin; kept instances with `OUTPOST_BENCH_AB_KEPT=1`), in alternating blocks of
/// 500 calls so that the machine's slow and fast stretches hit every file alike. Prints
/// `AB <stem>: p50 … p99.9` in microseconds. For comparing two builds of one module.
fn compare(rt: &tokio::runtime::Runtime, state: &AppState, files: &str) {
    let generation = state.current();
    let names: Vec<&str> = files.split(',').map(stem).collect();
    for (i, name) in names.iter().enumerate() {
        assert!(
            !names[..i].contains(name),
            "two A/B files are named {name}.wasm"
        );
    }
    // `OUTPOST_BENCH_AB_KEPT=1`: kept instances (a pool per file) instead of fresh ones;
    // the files must declare themselves stateless.
    let kept = std::env::var_os("OUTPOST_BENCH_AB_KEPT").is_some();
    let pools: Vec<_> = names
        .iter()
        .map(|_| outpost::runtime::InstancePool::new(u32::MAX))
        .collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    rt.block_on(async {
        // 42 blocks each; the first two warm up and are discarded.
        for block in 0..42 {
            for (i, name) in names.iter().enumerate() {
                let signer = generation.providers.by_name[*name].signer.as_ref().unwrap();
                for _ in 0..500 {
                    let t = Instant::now();
                    let pool = kept.then_some(&pools[i]);
                    signer.sign(&state.runtime, &request(), pool).await.unwrap();
                    if block >= 2 {
                        samples[i].push(t.elapsed());
                    }
                }
            }
        }
    });
    for (name, mut s) in names.iter().zip(samples) {
        s.sort();
        let us = |p| percentile_us(&s, p);
        println!(
            "AB {name}: p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1}",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999)
        );
    }
}

/// The `p` quantile (0–1) of `sorted`, in µs; 0 when there are no samples.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let i = (sorted.len().saturating_sub(1) as f64 * p) as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// A file's name without directory and extension: the A/B provider's name.
fn stem(file: &str) -> &str {
    let name = file.rsplit('/').next().unwrap_or(file);
    name.strip_suffix(".wasm").unwrap_or(name)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_dir, embedded) = rt.block_on(app(None));
    if let Ok(files) = std::env::var("OUTPOST_BENCH_AB") {
        compare(&rt, &embedded, &files);
        return;
    }
    if std::env::var_os("OUTPOST_BENCH_P99_ONLY").is_some() {
        signer_p99(&rt, &embedded);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    sign_benches(&mut c, &rt, &embedded);
    route_bench(&mut c, &embedded);
    rate_limit_bench(&mut c, &rt, "embedded", &embedded);
    match Redis::start() {
        Some(redis) => {
            let url = format!("redis://127.0.0.1:{}/0", redis.1);
            let (_dir2, on_redis) = rt.block_on(app(Some(&url)));
            rate_limit_bench(&mut c, &rt, "redis", &on_redis);
        }
        None => eprintln!("redis-server not installed: skipping rate_limit/redis"),
    }
    c.final_summary();
    signer_p99(&rt, &embedded);
}
