//! Plugins in any language (issue 6): the `token_mint` example scheme written in Rust,
//! Python (componentize-py) and JavaScript (componentize-js) is built from source by this
//! suite, loaded into the real binary, and must sign requests identically; a restart
//! loads each from the compile cache in under 100 ms. Also `outpost plugin new` and
//! `outpost plugin inspect`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::response::{IntoResponse, Response};

use crate::harness::*;

/// The three implementations: (provider name, file name in the plugins directory, built
/// component).
fn implementations() -> Vec<(&'static str, &'static str, std::path::PathBuf)> {
    vec![
        ("rs", "token_mint_rs.wasm", fixture("token_mint")),
        ("py", "token_mint_py.wasm", python_example()),
        ("js", "token_mint_js.wasm", js_example()),
    ]
}

/// A token endpoint: `/mint/<provider>` answers `tok-<n>` where n counts that
/// provider's mints; it records the API key and body it received.
struct Mint {
    up: Upstream,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Mint {
    async fn start() -> Self {
        let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let c = counts.clone();
        let up = Upstream::with(move |seen| {
            let who = seen.target.trim_start_matches("/mint/").to_string();
            let mut counts = c.lock().unwrap();
            let n = counts.entry(who).or_insert(0);
            *n += 1;
            axum::Json(serde_json::json!({"token": format!("tok-{n}"), "expires_in": 3600}))
                .into_response()
        })
        .await;
        Mint { up, counts }
    }

    fn count(&self, who: &str) -> u32 {
        self.counts.lock().unwrap().get(who).copied().unwrap_or(0)
    }
}

/// The upstream answers 401 to `/rotate` signed with the first token, 200 otherwise.
async fn api() -> Upstream {
    Upstream::with(|seen| {
        if seen.target.starts_with("/rotate")
            && seen.header("authorization") == Some("Bearer tok-1")
        {
            (axum::http::StatusCode::UNAUTHORIZED, "expired").into_response()
        } else {
            Response::new("ok".into())
        }
    })
    .await
}

fn provider_yaml(name: &str, file: &str, api: &Upstream, mint: &Mint, extra: &str) -> String {
    format!(
        "name: {name}\nbase_url: {}\nforwarding: {{mode: transparent, treat_writes_as_sensitive: false}}\n\
         auth:\n  type: plugin\n  module: {file}\n  config:\n    mint_url: {}/mint/{name}\n    \
         api_key_env: MINT_API_KEY\n    redis_key: '{name}:token'\n    ttl_seconds: 60\n{extra}",
        api.url(),
        mint.up.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn token_mint_signs_identically_in_rust_python_and_javascript() {
    let impls = implementations();
    let mint = Mint::start().await;
    let api = api().await;
    let cfg = Config::new()
        .env("MINT_API_KEY", "mint-api-key-value")
        .env("OUTPOST_LOG_FORMAT", "json");
    for (name, file, wasm) in &impls {
        std::fs::copy(wasm, cfg.path("plugins").join(file)).unwrap();
        cfg.provider(
            &format!("{name}.yaml"),
            &provider_yaml(name, file, &api, &mint, ""),
        );
    }
    let outpost = Outpost::start(&cfg);
    let c = client();
    for (name, _, _) in &impls {
        for path in [
            "/v1/items?limit=2",
            "/v1/items?limit=2",
            "/rotate",
            "/v1/after",
        ] {
            let r = c
                .post(outpost.url(path))
                .header("X-Provider", *name)
                .header("Authorization", "Bearer forged-by-agent")
                .header("X-Trace", "abc")
                .body("payload")
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert_eq!(status, 200, "{name} {path}: {}", r.text().await.unwrap());
        }
        // One mint for the first two requests (cached in key-value state), a second
        // after the 401 on /rotate (dropped, re-minted, retried once).
        assert_eq!(mint.count(name), 2, "{name}: mints");
    }
    // The mint saw the same request from every implementation.
    let mints = mint.up.seen();
    assert_eq!(mints.len(), 2 * impls.len());
    for m in &mints {
        assert_eq!(m.method, "POST");
        assert_eq!(m.header("x-api-key"), Some("mint-api-key-value"));
        assert_eq!(m.header("content-type"), Some("application/json"));
        assert_eq!(&m.body[..], br#"{"scope":"outpost"}"#);
    }
    // The upstream saw byte-identical requests from every implementation.
    let seen = api.seen();
    assert_eq!(seen.len(), 5 * impls.len(), "{seen:#?}");
    let per_impl: Vec<&[Seen]> = seen.chunks(5).collect();
    let tokens: Vec<_> = per_impl[0]
        .iter()
        .map(|s| s.header("authorization"))
        .collect();
    assert_eq!(
        tokens,
        [
            Some("Bearer tok-1"),
            Some("Bearer tok-1"),
            Some("Bearer tok-1"),
            Some("Bearer tok-2"),
            Some("Bearer tok-2")
        ]
    );
    for (i, requests) in per_impl.iter().enumerate().skip(1) {
        for (a, b) in per_impl[0].iter().zip(requests.iter()) {
            let (name, _, _) = &impls[i];
            assert_eq!(
                (&a.method, &a.target, &a.headers, &a.body),
                (&b.method, &b.target, &b.headers, &b.body),
                "{name} signed differently from rust"
            );
        }
    }
    let logs = outpost.stop();

    // A restart loads every implementation from the compile cache, each in under 100 ms.
    let outpost = Outpost::start(&cfg);
    let logs2 = outpost.stop();
    for (_, file, _) in &impls {
        let module = file.trim_end_matches(".wasm");
        let first = load_ms(&logs, module, false);
        let second = load_ms(&logs2, module, true);
        eprintln!(
            "{module}: first load (compile) {first:.1} ms, second start (cache) {second:.1} ms"
        );
        assert!(second < 100.0, "{module} took {second} ms from the cache");
    }
}

/// `elapsed_ms` of the JSON log line reporting `module`'s load.
fn load_ms(logs: &str, module: &str, from_cache: bool) -> f64 {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["module"] == module && v["from_cache"] == from_cache)
        .and_then(|v| v["elapsed_ms"].as_f64())
        .unwrap_or_else(|| panic!("no load line for {module} (from_cache={from_cache}):\n{logs}"))
}

#[test]
fn token_mint_reports_config_errors_identically_in_every_language() {
    let impls = implementations();
    let cases = [
        (
            "    heder: X\n",
            "token_mint: unknown config key 'heder' (did you mean 'header'?); expected one of: mint_url, api_key_env, redis_key, header, ttl_seconds.",
        ),
        (
            "    ttl_seconds: 0\n",
            "token_mint: 'ttl_seconds' must be an integer >= 1.",
        ),
        ("    header: 7\n", "token_mint: 'header' must be a string."),
    ];
    let cache = tempfile::tempdir().unwrap();
    for (name, file, wasm) in &impls {
        let cfg = Config::new().env("OUTPOST_CACHE_DIR", &cache.path().to_string_lossy());
        std::fs::copy(wasm, cfg.path("plugins").join(file)).unwrap();
        let check = |cfg: &Config| {
            let out = cfg.command("check").output().unwrap();
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        let yaml = |extra: &str| {
            format!(
                "name: {name}\nbase_url: http://127.0.0.1:9\nauth:\n  type: plugin\n  module: {file}\n  config:\n    mint_url: http://127.0.0.1:9/mint\n    api_key_env: MINT_API_KEY\n    redis_key: '{name}:token'\n{extra}"
            )
        };
        // The secret is checked last: unset, it is the error once the rest is right.
        cfg.provider("p.yaml", &yaml(""));
        let err = check(&cfg);
        assert!(
            err.contains("token_mint: env var 'MINT_API_KEY' is not set or empty."),
            "{name}\n{err}"
        );
        let cfg = cfg.env("MINT_API_KEY", "mint-api-key-value");
        for (extra, message) in cases {
            cfg.provider("p.yaml", &yaml(extra));
            let err = check(&cfg);
            assert!(err.contains(message), "{name}: {extra:?}\n{err}");
        }
    }
}

#[test]
fn plugin_inspect_reports_world_imports_and_refuses_foreign_components() {
    let run = |file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["plugin", "inspect"])
            .arg(file)
            .env_clear()
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (_, _, wasm) in implementations() {
        let (ok, out, err) = run(&wasm);
        assert!(ok, "{out}{err}");
        assert!(out.contains("world:    outpost:auth/module@0.1.0"), "{out}");
        // componentize-py adds an `exports` interface of its own; the world's three follow.
        assert!(
            out.contains("validate-config, sign-request, on-response\n"),
            "{out}"
        );
        for cap in [
            "outpost:auth/secrets@0.1.0",
            "outpost:auth/kv@0.1.0",
            "outpost:auth/http@0.1.0",
        ] {
            assert!(out.contains(cap), "{cap} missing:\n{out}");
        }
        let size = std::fs::metadata(&wasm).unwrap().len();
        assert!(out.contains(&format!("size:     {size} bytes")), "{out}");
    }
    // The token-minting examples keep nothing between calls but do not say so; the
    // stateless fixture declares it.
    let (_, out, _) = run(&implementations()[0].2);
    assert!(
        out.contains("reuse:    fresh instance per request"),
        "{out}"
    );
    let (ok, out, err) = run(&fixture("fixture_stateless"));
    assert!(ok, "{out}{err}");
    assert!(out.contains("reuse:    declares itself stateless"), "{out}");
    let tmp = tempfile::tempdir().unwrap();
    // A component that exports nothing of ours.
    let empty = tmp.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\x00\x01\x00").unwrap();
    let (ok, out, _) = run(&empty);
    assert!(!ok);
    assert!(
        out.contains("REFUSED") && out.contains("does not implement the outpost:auth/module world"),
        "{out}"
    );
    // A core module is not a component at all.
    let core = tmp.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\x00\x00\x00").unwrap();
    let (ok, _, err) = run(&core);
    assert!(!ok);
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
    // A component importing the filesystem is refused, naming the import.
    let (ok, out, _) = run(&fixture("fixture_escape"));
    assert!(!ok);
    assert!(out.contains("wasi:filesystem/"), "{out}");
    assert!(
        out.contains("REFUSED: module 'fixture_escape' imports 'wasi:"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_new_scaffolds_a_crate_that_builds_tests_and_signs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["plugin", "new", "acme-auth", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("acme-auth");
    // Dependencies are shared with this workspace's target directory to save time; the
    // crate itself is standalone (its own [workspace]).
    let target = root().join("target").join("scaffold");
    let cargo = |args: &[&str]| {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .arg("--target-dir")
            .arg(&target)
            .current_dir(&dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cargo {args:?} failed in the scaffolded crate"
        );
    };
    cargo(&["test"]);
    cargo(&["build", "--target", "wasm32-wasip2", "--release"]);
    let wasm = target.join("wasm32-wasip2/release/acme_auth.wasm");

    let up = Upstream::start().await;
    let cfg = Config::new().env("ACME_TOKEN", "acme-token-value");
    std::fs::copy(&wasm, cfg.path("plugins").join("acme_auth.wasm")).unwrap();
    cfg.provider(
        "acme.yaml",
        &format!(
            "name: acme\nbase_url: {}\nauth:\n  type: plugin\n  module: acme_auth.wasm\n  config: {{token_env: ACME_TOKEN}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let r = client()
        .get(outpost.url("/v1/x"))
        .header("X-Provider", "acme")
        .header("X-Api-Token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.one().header("x-api-token"), Some("acme-token-value"));
}
