//! Hardening (issue 5) through the real binary: hostile plugins while a healthy provider
//! keeps serving, the trap circuit breaker, and hostile agents (slow heads and bodies,
//! invalid methods, very long paths, connection floods).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::harness::*;

fn hostile_provider(name: &str, mode: &str, upstream: &str) -> String {
    format!(
        "name: {name}\nbase_url: {upstream}\nforwarding: {{mode: transparent, treat_writes_as_sensitive: false}}\n\
         auth: {{type: plugin, module: fixture_hostile.wasm, config: {{mode: {mode}}}}}\n"
    )
}

/// No rate limits: the test is about hostile plugins, and the limiter is not fair among
/// waiters, so with four unpaced tasks one can wait out `RATE_LIMIT_QUEUE_TIMEOUT` while
/// the others take every token, and fail with 429 (seen with the default limits and with
/// the per-second window alone).
fn healthy_provider(upstream: &str) -> String {
    format!(
        "name: ok\nbase_url: {upstream}\nauth: {{type: bearer_static, env: GH_TOKEN}}\n\
         forwarding: {{rate_limits: {{}}}}\n"
    )
}

/// Hammer the healthy provider from 4 tasks until `stop`; returns every latency, and
/// panics on any failure.
fn hammer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let c = client();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (c, url, stop) = (c.clone(), url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = c.get(&url).header("X-Provider", "ok").send().await.unwrap();
                    if r.status() != 200 {
                        // The refusal's envelope says why.
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        panic!("healthy provider failed during the attack: {status} {body}");
                    }
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        all
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_fail_closed_while_a_healthy_provider_keeps_serving() {
    let healthy_up = Upstream::start().await;
    let hostile_up = Upstream::start().await;
    // A generous CPU budget: "CPU" time is measured as time in guest code, which two
    // shared cores inflate; the hostile modes must fail for their own reason.
    let cfg = Config::new()
        .env("GH_TOKEN", "healthy-token-value")
        .env("OUTPOST_PLUGIN_CPU_MS", "1000");
    cfg.plugin("fixture_hostile")
        .plugin("fixture_loop")
        .plugin("fixture_escape");
    let modes = [
        ("memory", "trapped"),
        ("recurse", "trapped"),
        ("headers", "the limit is 256 headers"),
        ("body", "the limit is 10485760 bytes"),
        ("panic", "trapped"),
        ("retarget", "changed the request authority"),
        ("repath", "changed the request path"),
    ];
    for (mode, _) in modes {
        cfg.provider(
            &format!("{mode}.yaml"),
            &hostile_provider(mode, mode, &hostile_up.url()),
        );
    }
    cfg.provider(
        "loop.yaml",
        &format!(
            "name: loop\nbase_url: {}\nauth: {{type: plugin, module: fixture_loop.wasm}}\n",
            hostile_up.url()
        ),
    );
    cfg.provider(
        "escape.yaml",
        &format!(
            "name: escape\nbase_url: {}\nauth: {{type: plugin, module: fixture_escape.wasm}}\n",
            hostile_up.url()
        ),
    );
    cfg.provider("ok.yaml", &healthy_provider(&healthy_up.url()));
    let outpost = Outpost::start(&cfg);
    let c = client();

    // Baseline latency of the healthy provider.
    let stop = Arc::new(AtomicBool::new(false));
    let load = hammer(outpost.url("/v1/ok"), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let baseline = load.await.unwrap();

    // The attack, with the healthy provider under the same load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = hammer(outpost.url("/v1/ok"), stop.clone());
    let started = Instant::now();
    let mut attacks = Vec::new();
    for round in 0..2 {
        for (mode, expect) in modes.iter().copied().chain([("loop", "CPU deadline")]) {
            let c = c.clone();
            let url = outpost.url(&format!("/v1/{mode}/{round}"));
            attacks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = c
                    .post(url)
                    .header("X-Provider", mode)
                    .body("b")
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let (code, msg, _) = envelope(&r.text().await.unwrap());
                assert_eq!(
                    (status.as_u16(), code.as_str()),
                    (502, "PROXY_AUTH_ERROR"),
                    "{mode}: {msg}"
                );
                assert!(msg.contains(expect), "{mode}: {msg}");
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "{mode} took {:?}",
                    t.elapsed()
                );
            }));
        }
    }
    for a in attacks {
        a.await.unwrap();
    }
    let attack_time = started.elapsed();
    // A component importing WASI filesystem/sockets never loaded: its provider says why.
    let r = c
        .get(outpost.url("/x"))
        .header("X-Provider", "escape")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let (code, msg, _) = envelope(&r.text().await.unwrap());
    assert_eq!(code, "PROXY_PROVIDER_CONFIG_ERROR");
    assert!(msg.contains("imports 'wasi:filesystem/"), "{msg}");
    stop.store(true, Ordering::Relaxed);
    let during = load.await.unwrap();

    assert!(
        hostile_up.seen().is_empty(),
        "something hostile was forwarded: {:?}",
        hostile_up.seen()
    );
    let (b50, d50, d99) = (pct(&baseline, 0.5), pct(&during, 0.5), pct(&during, 0.99));
    eprintln!(
        "healthy provider: baseline p50 {b50:?} ({} requests); during a {attack_time:?} attack p50 {d50:?}, p99 {d99:?} ({} requests)",
        baseline.len(),
        during.len()
    );
    // Every healthy request succeeded (asserted in `hammer`); the median stays in the
    // same range (generous: two cores are shared with the attack itself).
    assert!(
        d50 < b50 * 10 + Duration::from_millis(20),
        "p50 {b50:?} -> {d50:?}"
    );
    let logs = outpost.stop();
    assert!(
        logs.contains("fixture_hostile was told to panic"),
        "the panic is logged"
    );
}

async fn get_json(outpost: &Outpost, path: &str) -> serde_json::Value {
    client()
        .get(outpost.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn metric(outpost: &Outpost, line_prefix: &str) -> Option<f64> {
    let text = client()
        .get(outpost.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_keeps_trapping_is_disabled_by_the_circuit_breaker() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("GH_TOKEN", "healthy-token-value")
        .env("OUTPOST_PLUGIN_TRAP_LIMIT", "3")
        .env("OUTPOST_PLUGIN_TRAP_COOLDOWN", "2");
    cfg.plugin("fixture_hostile");
    cfg.provider(
        "flaky.yaml",
        &hostile_provider("flaky", "trap_on_path", &up.url()),
    );
    cfg.provider("ok.yaml", &healthy_provider(&up.url()));
    let outpost = Outpost::start(&cfg);
    let c = client();
    let call = |path: &str, provider: &str| {
        c.get(outpost.url(path))
            .header("X-Provider", provider)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(call("/trap", "flaky").await.unwrap().status(), 502);
    }
    // Open: even a request that would sign fine is refused without running the module.
    let r = call("/fine", "flaky").await.unwrap();
    assert_eq!(r.status(), 503);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let (code, msg, meta) = envelope(&r.text().await.unwrap());
    assert_eq!(code, "PROXY_AUTH_MODULE_DISABLED");
    assert!(msg.contains("3 consecutive failures"), "{msg}");
    assert_eq!(meta["provider"], "flaky");
    assert_eq!(
        call("/fine", "ok").await.unwrap().status(),
        200,
        "others keep serving"
    );

    let ready = get_json(&outpost, "/readyz").await;
    let disabled = &ready["providers"]["disabled"];
    assert_eq!(disabled[0]["name"], "flaky", "{ready}");
    assert_eq!(disabled[0]["consecutive_failures"], 3, "{ready}");
    assert_eq!(
        metric(&outpost, "outpost_module_disabled{provider=\"flaky\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &outpost,
            "outpost_module_failures_total{provider=\"flaky\"}"
        )
        .await,
        Some(3.0)
    );
    assert_eq!(
        metric(&outpost, "outpost_module_disabled{provider=\"ok\"}").await,
        Some(0.0)
    );

    // After the cooldown one probe goes through; it succeeds, so the breaker closes.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call("/fine", "flaky").await.unwrap().status(), 200);
    let ready = get_json(&outpost, "/readyz").await;
    assert_eq!(
        ready["providers"]["disabled"],
        serde_json::json!([]),
        "{ready}"
    );
    assert_eq!(
        metric(&outpost, "outpost_module_disabled{provider=\"flaky\"}").await,
        Some(0.0)
    );
    assert_eq!(up.seen().iter().filter(|s| s.target == "/trap").count(), 0);
    let logs = outpost.stop();
    assert!(logs.contains("disabled by the circuit breaker"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_agents_are_refused_cleanly() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("HMAC_KEY", "hmac-key-value")
        .env("HMAC_SECRET", "hmac-secret-value")
        .env("OUTPOST_HEADER_TIMEOUT", "1")
        .env("OUTPOST_IDLE_TIMEOUT", "1")
        .env("OUTPOST_MAX_CONNECTIONS", "6");
    cfg.provider(
        "p.yaml",
        &format!("name: p\nbase_url: {}\nauth: {{type: none}}\nforwarding: {{treat_writes_as_sensitive: false}}\n", up.url()),
    );
    // hmac_signed with `payload: body` buffers the body to sign it.
    cfg.provider(
        "signed.yaml",
        &format!(
            "name: signed\nbase_url: {}\nforwarding: {{treat_writes_as_sensitive: false}}\n\
             auth: {{type: hmac_signed, key_env: HMAC_KEY, secret_env: HMAC_SECRET, payload: body}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);

    // Slow head: a request line and one header, then nothing. Closed after ~1 s (`raw`
    // would give up only after 5 s).
    let t = Instant::now();
    let resp = raw(&outpost, b"GET /slow-head HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "a slow head must be cut off: {resp}"
    );

    // Slow body, buffered for signing (408, nothing forwarded), then streamed (408, the
    // upstream request aborted).
    for (path, provider) in [("/slow-body", "signed"), ("/slow-stream", "p")] {
        let t = Instant::now();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-Provider: {provider}\r\nContent-Length: 100\r\n\r\n0123456789"
        );
        let resp = raw(&outpost, request.as_bytes()).await;
        assert_eq!(status_of(&resp), 408, "{path}: {resp}");
        assert!(resp.contains("PROXY_REQUEST_TIMEOUT"), "{resp}");
        assert!(t.elapsed() < Duration::from_secs(4), "{path}");
    }

    // Invalid method tokens are a 400 from the HTTP parser; unknown but valid ones
    // never reach the upstream through the write gate.
    let bad = raw(
        &outpost,
        b"G(T /x HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&bad), 400, "{bad}");

    // Very long paths: over the 8 KiB canonical-path cap → 400; over the head cap → 431.
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\nConnection: close\r\n\r\n",
        "a/".repeat(5000)
    );
    let resp = raw(&outpost, long.as_bytes()).await;
    assert_eq!(status_of(&resp), 400, "{}", &resp[..resp.len().min(300)]);
    assert!(
        resp.contains("PROXY_BAD_PATH"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    let huge = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let resp = raw(&outpost, huge.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{}", &resp[..resp.len().min(300)]);

    // Connection flood: 6 idle connections fill the limit; the 7th is answered 503 and
    // closed at once. The server gives a connection's slot back just after closing its
    // socket, so the raw requests above may still hold theirs for a moment after the
    // client saw them close; on a loaded machine one of the 6 was then refused instead
    // and the 7th got the freed slot (seen once in a full-suite run). Let them go first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(tokio::net::TcpStream::connect(outpost.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(outpost.addr).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buf)).await;
    let resp = String::from_utf8_lossy(&buf);
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert!(resp.contains("PROXY_TOO_MANY_CONNECTIONS"), "{resp}");
    drop(idle);
    // Once they are gone, service resumes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client()
            .get(outpost.url("/after"))
            .header("X-Provider", "p")
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    for never in ["/slow-head", "/slow-body", "/x"] {
        assert!(
            !targets.iter().any(|t| t == never),
            "{never} was forwarded: {targets:?}"
        );
    }
    assert!(
        !targets.iter().any(|t| t.len() > 8192),
        "a very long path was forwarded"
    );
}

/// SIGTERM while requests are in flight on several serving threads: new connections are
/// refused at once, the requests in flight get their whole responses, then the process
/// exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish_on_every_worker() {
    use tokio::io::AsyncWriteExt;
    // An upstream that answers each request after 1.5 s.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = arrived.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nslow-done")
                    .await;
            });
        }
    });
    let cfg = Config::new().env("OUTPOST_WORKERS", "3");
    cfg.provider(
        "slow.yaml",
        &format!("name: slow\nbase_url: http://{upstream}\nauth: {{type: none}}\n"),
    );
    let mut outpost = Outpost::start(&cfg);
    // The port opens just before the start-up line is logged: give the line a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !outpost.logs().contains("workers=3") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(outpost.logs().contains("workers=3"), "{}", outpost.logs());

    // Six requests on six connections: two per worker.
    let mut in_flight = Vec::new();
    for i in 0..6 {
        let url = outpost.url(&format!("/r{i}"));
        in_flight.push(tokio::spawn(get_on_new_connection(url, "slow")));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived.load(Ordering::SeqCst) < 6 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &outpost.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(outpost.addr).await.is_err(),
        "the listener must close on SIGTERM"
    );
    for r in in_flight {
        assert_eq!(r.await.unwrap(), (200, "slow-done".to_string()));
    }
    let status = outpost.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", outpost.logs());
    assert!(outpost.logs().contains("finishing in-flight requests"));
}
