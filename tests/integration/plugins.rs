//! Third-party plugins: built from their own crates, dropped into the plugins directory,
//! named in YAML — no rebuild of Outpost. Least authority and deadlines.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn dropped_in_plugin_signs_requests_and_gets_only_declared_secrets() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("FIXTURE_SECRET", "fixture-secret-value")
        .env("UNDECLARED_SECRET", "must-not-leak-42");
    cfg.plugin("fixture_header");
    cfg.provider(
        "fix.yaml",
        &format!(
            "name: fix\nbase_url: {}\nauth:\n  type: plugin\n  module: fixture_header.wasm\n  config:\n    env: FIXTURE_SECRET\n    probe: UNDECLARED_SECRET\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let r = client()
        .get(outpost.url("/v1/thing"))
        .header("X-Provider", "fix")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let seen = up.one();
    assert_eq!(seen.header("x-fixture"), Some("fixture-secret-value"));
    assert_eq!(
        seen.header("x-probe"),
        Some("absent"),
        "an undeclared secret must resolve to nothing"
    );
    let logs = outpost.stop();
    assert!(
        !logs.contains("fixture-secret-value") && !logs.contains("must-not-leak-42"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_reach_only_granted_keys_and_origins() {
    let up = Upstream::start().await;
    let other = Upstream::start().await;
    let cfg = Config::new().env("FIXTURE_SECRET", "fixture-secret-value");
    cfg.plugin("fixture_header");
    let provider = |name: &str, key: &str, url: &str| {
        format!(
            "name: {name}\nbase_url: {}\nauth:\n  type: plugin\n  module: fixture_header.wasm\n  config:\n    env: FIXTURE_SECRET\n    probe_key: {key}\n    probe_http: {url}\n",
            up.url()
        )
    };
    // Granted: a key under the provider's own prefix; an origin named by a `*_url` key.
    cfg.provider(
        "mine.yaml",
        &format!(
            "name: mine\nbase_url: {}\nauth:\n  type: plugin\n  module: fixture_header.wasm\n  config:\n    env: FIXTURE_SECRET\n    probe_key: 'mine:token'\n    probe_http: {}/x\n    token_url: {}/token\n",
            up.url(),
            other.url(),
            other.url()
        ),
    );
    // Not granted: another provider's key, an origin nothing names, the upstream itself.
    cfg.provider(
        "nosy.yaml",
        &provider("nosy", "'mine:token'", &format!("{}/steal", other.url())),
    );
    cfg.provider(
        "upstream.yaml",
        &provider("upstream", "'upstox:token'", &format!("{}/self", up.url())),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    for (name, key, http) in [
        ("mine", "ok", "ok"),
        ("nosy", "refused", "refused"),
        ("upstream", "refused", "refused"),
    ] {
        let r = c
            .get(outpost.url("/v"))
            .header("X-Provider", name)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let seen = up.seen().into_iter().last().unwrap();
        assert_eq!(seen.header("x-probe-key"), Some(key), "{name}: kv");
        assert_eq!(seen.header("x-probe-http"), Some(http), "{name}: http");
    }
    assert_eq!(
        other.seen().len(),
        1,
        "only the granted outbound request left the sandbox"
    );
    assert!(outpost.logs().contains("refused access to a key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn looping_plugin_is_cut_off_while_others_keep_serving() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("GH_TOKEN", "tok")
        .env("OUTPOST_PLUGIN_CPU_MS", "200");
    cfg.plugin("fixture_loop");
    cfg.provider(
        "loop.yaml",
        &format!(
            "name: loop\nbase_url: {}\nauth: {{type: plugin, module: fixture_loop.wasm}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "ok.yaml",
        &format!(
            "name: ok\nbase_url: {}\nauth: {{type: bearer_static, env: GH_TOKEN}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    // Idle long enough for the epoch thread to park (no call for a second): the calls
    // below must wake it, or no CPU deadline would ever fire.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Several looping requests at once, and a steady stream of healthy ones meanwhile.
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), outpost.url("/spin"));
            tokio::spawn(async move {
                let t = Instant::now();
                let r = c
                    .get(url)
                    .header("X-Provider", "loop")
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap(), t.elapsed())
            })
        })
        .collect();
    let healthy = {
        let (c, url) = (c.clone(), outpost.url("/fine"));
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            for _ in 0..40 {
                let t = Instant::now();
                let r = c.get(&url).header("X-Provider", "ok").send().await.unwrap();
                assert_eq!(r.status(), 200);
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            worst
        })
    };
    for l in loops {
        let (status, body, took) = l.await.unwrap();
        assert_eq!(status, 502, "{body}");
        let (code, msg, _) = envelope(&body);
        assert_eq!(code, "PROXY_AUTH_ERROR");
        assert!(msg.contains("CPU deadline"), "{msg}");
        assert!(took < Duration::from_secs(3), "cut off too late: {took:?}");
    }
    let worst = healthy.await.unwrap();
    assert!(
        worst < Duration::from_secs(1),
        "healthy provider stalled for {worst:?}"
    );
    assert!(
        up.seen().iter().all(|s| s.target == "/fine"),
        "a looping request must never be forwarded"
    );
    let r = c
        .get(outpost.url("/after"))
        .header("X-Provider", "ok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the proxy keeps serving");

    // After a short quiet spell the epoch thread naps instead of ticking, and a call
    // that starts meanwhile does not wake it: its deadline still fires, at most one nap
    // (20 ms) later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = c
        .get(outpost.url("/spin-after-nap"))
        .header("X-Provider", "loop")
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("CPU deadline"));
    assert!(took < Duration::from_secs(2), "cut off too late: {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn second_start_uses_the_compile_cache() {
    let up = Upstream::start().await;
    let cfg = Config::new().env("FIXTURE_SECRET", "x-value");
    cfg.plugin("fixture_header");
    cfg.provider("fix.yaml", &format!("name: fix\nbase_url: {}\nauth: {{type: plugin, module: fixture_header.wasm, config: {{env: FIXTURE_SECRET}}}}\n", up.url()));
    cfg.provider(
        "none.yaml",
        &format!("name: open\nbase_url: {}\nauth: {{type: none}}\n", up.url()),
    );

    let first = Outpost::start(&cfg);
    let (cold, logs1) = (first.startup, first.stop());
    let compiled = logs1.matches("auth module compiled").count();
    assert_eq!(compiled, 2, "first start compiles both modules:\n{logs1}");
    let cached_files = std::fs::read_dir(cfg.path("cache")).unwrap().count();
    assert_eq!(cached_files, 2);

    let second = Outpost::start(&cfg);
    let warm = second.startup;
    let r = client()
        .get(second.url("/v"))
        .header("X-Provider", "fix")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let logs2 = second.stop();
    assert_eq!(
        logs2.matches("auth module compiled").count(),
        0,
        "no recompilation:\n{logs2}"
    );
    assert_eq!(
        logs2
            .matches("auth module loaded from compile cache")
            .count(),
        2,
        "{logs2}"
    );
    eprintln!("start-up: cold {cold:?}, warm {warm:?}");
}

fn hup(outpost: &Outpost) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &outpost.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

async fn generation(outpost: &Outpost) -> u64 {
    let ready: serde_json::Value = client()
        .get(outpost.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ready["generation"].as_u64().unwrap()
}

async fn wait_generation(outpost: &Outpost, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while generation(outpost).await != want {
        assert!(
            Instant::now() < deadline,
            "generation {want} never arrived:\n{}",
            outpost.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kept instances keep the settings they derived from their configuration (the SDK's
/// `Memo`): two providers of one module, called in turn many times, each keep signing
/// with their own settings and secret.
#[tokio::test(flavor = "multi_thread")]
async fn kept_instances_sign_with_their_own_providers_settings() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("TOKEN_A", "token-a-value")
        .env("TOKEN_B", "token-b-value");
    cfg.provider(
        "a.yaml",
        &format!(
            "name: a\nbase_url: {}\nauth: {{type: bearer_static, env: TOKEN_A}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "b.yaml",
        &format!(
            "name: b\nbase_url: {}\nauth: {{type: bearer_static, env: TOKEN_B, header: X-Key, prefix: 'K '}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    for i in 0..12 {
        let provider = if i % 2 == 0 { "a" } else { "b" };
        let r = c
            .get(outpost.url(&format!("/{provider}/{i}")))
            .header("X-Provider", provider)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 12);
    for s in &seen {
        let (authorization, key) = (s.header("authorization"), s.header("x-key"));
        if s.target.starts_with("/a/") {
            assert_eq!(authorization, Some("Bearer token-a-value"), "{}", s.target);
            assert_eq!(key, None, "{}", s.target);
        } else {
            assert_eq!(key, Some("K token-b-value"), "{}", s.target);
            assert_eq!(authorization, None, "{}", s.target);
        }
    }
    outpost.stop();
}

fn reloading_provider(up: &Upstream, env: &str, allowed: &str) -> String {
    format!(
        "name: r\nbase_url: {}\nauth: {{type: bearer_static, env: {env}}}\nforwarding:\n  mode: allowlist\n  allow:\n    - {{method: GET, pattern: {allowed}}}\n",
        up.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_atomically_and_refuses_a_bad_set() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("TOKEN_A", "token-a-value")
        .env("TOKEN_B", "token-b-value");
    cfg.provider("r.yaml", &reloading_provider(&up, "TOKEN_A", "/v1/old"));
    let outpost = Outpost::start(&cfg);
    let c = client();
    let get = |path: &'static str| {
        let (c, url) = (c.clone(), outpost.url(path));
        async move {
            c.get(url)
                .header("X-Provider", "r")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(generation(&outpost).await, 1);
    assert_eq!(get("/v1/old").await, 200);
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some("Bearer token-a-value")
    );

    // New credential and a new allow rule; SIGHUP; the next request uses both.
    cfg.provider("r.yaml", &reloading_provider(&up, "TOKEN_B", "/v1/new"));
    hup(&outpost);
    wait_generation(&outpost, 2).await;
    assert_eq!(get("/v1/new").await, 200);
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some("Bearer token-b-value")
    );
    assert_eq!(get("/v1/old").await, 404);

    // An invalid file: refused with a log line naming it; the old set keeps serving.
    cfg.provider(
        "r.yaml",
        "name: r\nbase_url: http://x\nauth: {type: none}\nforwarding:\n  denny: []\n",
    );
    hup(&outpost);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !outpost.logs().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            outpost.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = outpost.logs();
    assert!(
        logs.contains("r.yaml") && logs.contains("did you mean 'deny'"),
        "{logs}"
    );
    assert_eq!(generation(&outpost).await, 2);
    assert_eq!(get("/v1/new").await, 200);
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some("Bearer token-b-value")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reloads_on_file_change() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("TOKEN_A", "token-a-value")
        .env("OUTPOST_WATCH", "true");
    cfg.provider("r.yaml", &reloading_provider(&up, "TOKEN_A", "/v1/old"));
    let outpost = Outpost::start(&cfg);
    cfg.provider(
        "r2.yaml",
        &reloading_provider(&up, "TOKEN_A", "/v1/old").replace("name: r", "name: r2"),
    );
    wait_generation(&outpost, 2).await;
    let r = client()
        .get(outpost.url("/v1/old"))
        .header("X-Provider", "r2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The `X-Calls` counts the upstream saw, in order, after `paths` were requested one at
/// a time from provider `p`.
async fn call_counts(outpost: &Outpost, up: &Upstream, p: &str, paths: &[&str]) -> Vec<String> {
    let before = up.seen().len();
    let c = client();
    for path in paths {
        let r = c
            .get(outpost.url(path))
            .header("X-Provider", p)
            .send()
            .await
            .unwrap();
        let expect = if *path == "/fail" { 502 } else { 200 };
        assert_eq!(r.status(), expect, "{path}: {}", r.text().await.unwrap());
    }
    up.seen()[before..]
        .iter()
        .map(|s| s.header("x-calls").unwrap_or("-").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn stateless_modules_reuse_an_instance_only_after_clean_calls() {
    let up = Upstream::start().await;
    let yaml = |name: &str, module: &str| {
        format!(
            "name: {name}\nbase_url: {}\nauth: {{type: plugin, module: {module}, config: {{env: FIXTURE_SECRET}}}}\n",
            up.url()
        )
    };
    let cfg = Config::new()
        .env("FIXTURE_SECRET", "fixture-secret-value")
        .env("OUTPOST_PLUGIN_REUSE", "4");
    cfg.plugin("fixture_stateless");
    cfg.provider("a.yaml", &yaml("a", "fixture_stateless.wasm"));
    cfg.provider("b.yaml", &yaml("b", "fixture_stateless.wasm"));
    let outpost = Outpost::start(&cfg);

    // One kept instance serves four calls (OUTPOST_PLUGIN_REUSE=4), then a fresh one.
    assert_eq!(
        call_counts(&outpost, &up, "a", &["/1", "/2", "/3", "/4", "/5"]).await,
        ["1", "2", "3", "4", "1"]
    );
    // Another provider of the same module never gets provider a's instance.
    assert_eq!(
        call_counts(&outpost, &up, "b", &["/1", "/2"]).await,
        ["1", "2"]
    );
    // A call that fails (its second, not forwarded) or writes to stderr ends its
    // instance: the next call starts afresh.
    assert_eq!(
        call_counts(&outpost, &up, "a", &["/fail", "/y", "/print", "/z", "/w"]).await,
        ["1", "2", "1", "2"]
    );
    let logs = outpost.stop();
    assert!(logs.contains("told to fail on call 2"), "{logs}");

    // Reuse off: every call gets a fresh instance.
    let cfg = Config::new().env("OUTPOST_PLUGIN_REUSE", "1");
    cfg.plugin("fixture_stateless");
    cfg.provider("a.yaml", &yaml("a", "fixture_stateless.wasm"));
    let outpost = Outpost::start(&cfg);
    assert_eq!(
        call_counts(&outpost, &up, "a", &["/1", "/2", "/3"]).await,
        ["1", "1", "1"]
    );
    outpost.stop();
}
