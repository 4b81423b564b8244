//! Shared state, on both backends: token buckets with queueing, upstream-429 cooldowns,
//! replicas sharing one Redis, and failing closed while Redis is down.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;

use crate::both;
use crate::harness::*;

async fn case_queue_then_429(backend: Backend) {
    let up = Upstream::start().await;
    let (cfg, _redis) = backend.apply(Config::new().env("RATE_LIMIT_QUEUE_TIMEOUT", "0.5"));
    cfg.provider(
        "p.yaml",
        &format!("name: p\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  rate_limits:\n    default: [{{capacity: 3, window_ms: 1000}}]\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (c, url) = (c.clone(), outpost.url("/x"));
            tokio::spawn(async move {
                let r = c.get(url).header("X-Provider", "p").send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (status, retry, r.text().await.unwrap(), started.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let (status, retry, body, _took) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                let (code, msg, meta) = envelope(&body);
                assert_eq!(code, "PROXY_RATE_LIMITED");
                assert_eq!(msg, "Rate limit exceeded for category 'default'");
                let ra = meta["retry_after"].as_f64().unwrap();
                assert!(ra > 0.0 && ra <= 0.34, "{ra}");
            }
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert!(
        (4..=5).contains(&ok),
        "3 at once + refills within the queue timeout, got {ok}"
    );
    assert_eq!(ok + limited, 8);
    assert_eq!(
        up.seen().len(),
        ok,
        "refused requests never reach the upstream"
    );
}
both!(queue_then_429 => super::case_queue_then_429);

async fn case_upstream_429_cools_down_even_without_windows(backend: Backend) {
    let up = Upstream::with(|_| {
        Response::builder()
            .status(429)
            .header("retry-after", "3")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"error":"slow down"}"#))
            .unwrap()
    })
    .await;
    let (cfg, _redis) = backend.apply(Config::new().env("RATE_LIMIT_QUEUE_TIMEOUT", "0.5"));
    cfg.provider(
        "p.yaml",
        &format!(
            "name: p\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  rate_limits: {{}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let r = c
        .get(outpost.url("/x"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    let (code, msg, meta) = envelope(&r.text().await.unwrap());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("PROXY_UPSTREAM_RATE_LIMITED", "Upstream returned 429")
    );
    assert_eq!(
        meta,
        serde_json::json!({"upstream_body": {"error": "slow down"}, "retry_after": 3.0})
    );

    let r = c
        .get(outpost.url("/y"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let (code, _, meta) = envelope(&r.text().await.unwrap());
    assert_eq!(code, "PROXY_RATE_LIMITED", "the cooldown refuses locally");
    let ra = meta["retry_after"].as_f64().unwrap();
    assert!(ra > 2.0 && ra <= 3.0, "{ra}");
    assert_eq!(
        up.seen().len(),
        1,
        "the cooldown kept the second request off the upstream"
    );
}
both!(upstream_429_cools_down_even_without_windows => super::case_upstream_429_cools_down_even_without_windows);

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_one_rate_limit() {
    let up = Upstream::start().await;
    let (cfg, _redis) = Backend::Redis.apply(Config::new().env("RATE_LIMIT_QUEUE_TIMEOUT", "0"));
    cfg.provider(
        "p.yaml",
        &format!("name: p\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  rate_limits:\n    default: [{{capacity: 4, window_ms: 60000}}]\n", up.url()),
    );
    let a = Outpost::start(&cfg);
    let b = Outpost::start(&cfg);
    let c = client();
    let mut ok = 0;
    for i in 0..6 {
        let o = if i % 2 == 0 { &a } else { &b };
        let r = c
            .get(o.url("/x"))
            .header("X-Provider", "p")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok += 1;
        } else {
            assert_eq!(envelope(&r.text().await.unwrap()).0, "PROXY_RATE_LIMITED");
        }
    }
    assert_eq!(ok, 4, "capacity 4 across both replicas");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_fails_closed_and_recovers() {
    let up = Upstream::start().await;
    let (cfg, redis) = Backend::Redis.apply(Config::new());
    let mut redis = redis.unwrap();
    cfg.provider(
        "p.yaml",
        &format!("name: p\nbase_url: {}\nauth: {{type: none}}\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    assert_eq!(
        c.get(outpost.url("/x"))
            .header("X-Provider", "p")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    redis.kill();
    let r = c
        .get(outpost.url("/x"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let (code, msg, _) = envelope(&r.text().await.unwrap());
    assert_eq!(code, "PROXY_STATE_UNAVAILABLE", "{msg}");
    let r = c.get(outpost.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let ready: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ready["state"]["reachable"], false);
    assert_eq!(
        up.seen().len(),
        1,
        "nothing forwarded while state is unavailable"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c
            .get(outpost.url("/x"))
            .header("X-Provider", "p")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover: {}",
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        c.get(outpost.url("/readyz")).send().await.unwrap().status(),
        200
    );
    // Every serving thread's own connection comes back too (each reconnects on its own,
    // backing off up to 2 s): new connections are handed to the threads in turn.
    loop {
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(get_on_new_connection(outpost.url("/x"), "p").await);
        }
        if answers.iter().all(|(status, _)| *status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every serving thread recovered: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each serving thread talks to Redis on a connection of its own (plus the shared one
/// the control runtime uses), so a state command never waits for another thread.
#[tokio::test(flavor = "multi_thread")]
async fn every_serving_thread_has_its_own_redis_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let (cfg, redis) = Backend::Redis.apply(Config::new().env("OUTPOST_WORKERS", "3"));
    let redis = redis.unwrap();
    cfg.provider(
        "p.yaml",
        &format!("name: p\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  rate_limits:\n    default: [{{capacity: 100, window_ms: 60000}}]\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    // One request per connection, so every thread has served one.
    for _ in 0..3 {
        let (status, body) = get_on_new_connection(outpost.url("/x"), "p").await;
        assert_eq!(status, 200, "{body}");
    }
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .unwrap();
    s.write_all(b"CLIENT LIST\r\n").await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // A bulk string: `$<len>\r\n<len bytes>\r\n`.
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "Redis closed the connection");
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n"))
            && rest.len() >= len.parse::<usize>().unwrap()
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply);
    let clients = text.lines().filter(|l| l.contains(" addr=")).count();
    // Outpost's shared client, one per serving thread, and this one.
    assert_eq!(clients, 1 + 3 + 1, "{text}");
}

async fn case_response_cache(backend: Backend) {
    let up = Upstream::with(|seen| {
        let b = Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "identity");
        match seen.target.split('?').next().unwrap_or("") {
            "/cookie" => b.header("set-cookie", "s=1").body(Body::from("c")).unwrap(),
            "/nostore" => b
                .header("cache-control", "no-store")
                .body(Body::from("n"))
                .unwrap(),
            "/private" => b
                .header("cache-control", "Private, max-age=60")
                .body(Body::from("p"))
                .unwrap(),
            "/missing" => b.status(404).body(Body::from("404")).unwrap(),
            _ => b
                .body(Body::from(format!("{{\"n\":{}}}", seen.target.len())))
                .unwrap(),
        }
    })
    .await;
    let (cfg, _redis) = backend.apply(Config::new());
    cfg.provider(
        "c.yaml",
        &format!("name: c\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  default_cache_ttl: 60\n  treat_writes_as_sensitive: false\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let get = |path: &'static str| {
        let (c, url) = (c.clone(), outpost.url(path));
        async move {
            let r = c.get(url).header("X-Provider", "c").send().await.unwrap();
            let cache = r.headers()["x-proxy-cache"].to_str().unwrap().to_string();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            let ce = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), cache, ct, ce, r.text().await.unwrap())
        }
    };
    let first = get("/v1/x?b=2&a=1").await;
    assert_eq!(first.1, "MISS");
    let second = get("/v1/x?a=1&b=2").await;
    assert_eq!(second.1, "HIT", "query order does not matter");
    assert_eq!(
        (second.0, &second.2, &second.3, &second.4),
        (200, &first.2, &first.3, &first.4)
    );
    assert_eq!(second.2.as_deref(), Some("application/json"));
    assert_eq!(
        second.3.as_deref(),
        Some("identity"),
        "replays carry the stored encoding"
    );
    assert_eq!(up.seen().len(), 1);
    for path in ["/cookie", "/nostore", "/private", "/missing"] {
        let a = get(path).await;
        let b = get(path).await;
        assert_eq!(
            (a.1.as_str(), b.1.as_str()),
            ("MISS", "MISS"),
            "{path} must not be cached"
        );
    }
    let r = c
        .post(outpost.url("/v1/x?a=1&b=2"))
        .header("X-Provider", "c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-proxy-cache"], "BYPASS");
    assert_eq!(up.seen().len(), 10);
}
both!(response_cache => super::case_response_cache);

async fn case_idempotency(backend: Backend) {
    let up = Upstream::with(|seen| {
        if seen.target.starts_with("/slow") {
            let stream = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"slow-done"))
            });
            return Response::builder()
                .status(201)
                .body(Body::from_stream(stream))
                .unwrap();
        }
        if seen.target.starts_with("/fail") {
            return Response::builder()
                .status(500)
                .body(Body::from("boom"))
                .unwrap();
        }
        Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .body(Body::from(format!("{{\"charge\":{}}}", seen.body.len())))
            .unwrap()
    })
    .await;
    let (cfg, _redis) = backend.apply(Config::new());
    cfg.provider(
        "s.yaml",
        &format!("name: s\nbase_url: {}\nauth: {{type: none}}\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let post = |path: &'static str, key: &'static str, body: &'static str| {
        let (c, url) = (c.clone(), outpost.url(path));
        async move {
            let r = c
                .post(url)
                .header("X-Provider", "s")
                .header("Idempotency-Key", key)
                .body(body)
                .send()
                .await
                .unwrap();
            let cache = r
                .headers()
                .get("x-proxy-cache")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (r.status().as_u16(), cache, r.text().await.unwrap())
        }
    };
    let a = post("/v1/charges?x=1", "k1", "amount=5").await;
    assert_eq!((a.0, a.1.as_str()), (201, "BYPASS"));
    assert_eq!(
        up.seen().last().unwrap().header("idempotency-key"),
        Some("k1"),
        "the key is forwarded"
    );
    let b = post("/v1/charges?x=1", "k1", "amount=5").await;
    assert_eq!(
        (b.0, b.1.as_str(), b.2.as_str()),
        (201, "IDEMPOTENT-HIT", a.2.as_str())
    );
    assert_eq!(up.seen().len(), 1);
    for (path, body) in [
        ("/v1/charges?x=1", "amount=6"),
        ("/v1/refunds?x=1", "amount=5"),
        ("/v1/charges?x=2", "amount=5"),
    ] {
        let r = c
            .post(outpost.url(path))
            .header("X-Provider", "s")
            .header("Idempotency-Key", "k1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{path} {body}");
        assert_eq!(
            envelope(&r.text().await.unwrap()).0,
            "PROXY_IDEMPOTENCY_MISMATCH"
        );
    }
    // A duplicate while the first is in flight.
    let first = tokio::spawn(post("/slow", "k2", "x"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = c
        .post(outpost.url("/slow"))
        .header("X-Provider", "s")
        .header("Idempotency-Key", "k2")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        envelope(&r.text().await.unwrap()).0,
        "PROXY_IDEMPOTENCY_IN_PROGRESS"
    );
    assert_eq!(first.await.unwrap().0, 201);
    assert_eq!(post("/slow", "k2", "x").await.1, "IDEMPOTENT-HIT");
    // Failures are not stored: a retry goes upstream again.
    assert_eq!(post("/fail", "k3", "x").await.0, 500);
    assert_eq!(post("/fail", "k3", "x").await.0, 500);
    assert_eq!(up.seen().iter().filter(|s| s.target == "/fail").count(), 2);
}
both!(idempotency => super::case_idempotency);

#[tokio::test(flavor = "multi_thread")]
async fn embedded_store_stays_within_its_caps() {
    let up = Upstream::with(|_| Response::new(Body::from(vec![b'x'; 2000]))).await;
    let cfg = Config::new()
        .env("OUTPOST_STATE_MAX_ENTRIES", "25")
        .env("OUTPOST_STATE_MAX_BYTES", "30000");
    cfg.provider("c.yaml", &format!("name: c\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  default_cache_ttl: 600\n  rate_limits: {{}}\n", up.url()));
    let outpost = Outpost::start(&cfg);
    let c = client();
    for i in 0..300 {
        let r = c
            .get(outpost.url(&format!("/v?i={i}")))
            .header("X-Provider", "c")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if i % 50 == 0 {
            let ready: serde_json::Value = c
                .get(outpost.url("/readyz"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let (n, b) = (
                ready["state"]["cache_entries"].as_u64().unwrap(),
                ready["state"]["cache_bytes"].as_u64().unwrap(),
            );
            assert!(n <= 25 && b <= 30000, "{n} entries, {b} bytes");
        }
    }
    let ready: serde_json::Value = c
        .get(outpost.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["state"]["cache_entries"].as_u64().unwrap() >= 10,
        "the cache is in use: {ready}"
    );
    let r = c
        .get(outpost.url("/v?i=299"))
        .header("X-Provider", "c")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-proxy-cache"],
        "HIT",
        "recent entries survive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_idempotency_and_one_oauth2_token() {
    let (up, minted) = crate::modules::oauth_upstream(false).await;
    let (cfg, _redis) = Backend::Redis.apply(
        Config::new()
            .env("OAUTH_CID", "cid-replicas")
            .env("OAUTH_SECRET", "csecret-replicas"),
    );
    // No redis_key: the default `oauth2:<md5(token_url)>` key is used (and granted).
    cfg.provider(
        "acme.yaml",
        &format!(
            "name: acme\nbase_url: {0}\nauth:\n  type: oauth2_client_credentials\n  client_id_env: OAUTH_CID\n  client_secret_env: OAUTH_SECRET\n  token_url: {0}/oauth/token\nforwarding:\n  treat_writes_as_sensitive: false\n",
            up.url()
        ),
    );
    let a = Outpost::start(&cfg);
    let b = Outpost::start(&cfg);
    let c = client();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url("/v1/data")
            } else {
                b.url("/v1/data")
            };
            let c = c.clone();
            tokio::spawn(async move {
                c.get(url)
                    .header("X-Provider", "acme")
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "api-ok Bearer tok-1");
    }
    assert_eq!(
        minted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one mint across both replicas"
    );

    let first = c
        .post(a.url("/v1/pay"))
        .header("X-Provider", "acme")
        .header("Idempotency-Key", "shared")
        .body("p")
        .send()
        .await
        .unwrap();
    assert_eq!(first.headers()["x-proxy-cache"], "BYPASS");
    let again = c
        .post(b.url("/v1/pay"))
        .header("X-Provider", "acme")
        .header("Idempotency-Key", "shared")
        .body("p")
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.headers()["x-proxy-cache"],
        "IDEMPOTENT-HIT",
        "the other replica replays it"
    );
    assert_eq!(
        up.seen().iter().filter(|s| s.target == "/v1/pay").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_with_fail_open_keeps_serving() {
    let up = Upstream::start().await;
    let (cfg, redis) = Backend::Redis.apply(Config::new().env("OUTPOST_STATE_FAIL_OPEN", "true"));
    let mut redis = redis.unwrap();
    cfg.provider(
        "p.yaml",
        &format!(
            "name: p\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  default_cache_ttl: 30\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    redis.kill();
    let c = client();
    let r = c
        .get(outpost.url("/open"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the operator opted into failing open");
    assert_eq!(up.seen().len(), 1);
    assert!(outpost.logs().contains("failing open"));
}

/// The store's one-round-trip rate-limit check, directly on each backend: the cooldown
/// comes first and takes nothing; buckets are taken in order and the first empty one
/// stops the check, so buckets after it keep their tokens.
async fn case_admit_checks_cooldown_then_each_window_in_order(backend: Backend) {
    use outpost::state::{Admit, Limit, StateStore};
    let (_cfg, redis) = backend.apply(Config::new());
    let store = match &redis {
        None => StateStore::memory(),
        Some(r) => StateStore::Redis(outpost::state::RedisStore::connect(&r.url()).await.unwrap()),
    };
    let (fast, slow, cooldown) = (
        "rl:p:default:1000",
        "rl:p:default:60000",
        "rl:cooldown:p:default",
    );
    let both = [
        Limit {
            key: fast,
            capacity: 2,
            window_ms: 1000,
        },
        Limit {
            key: slow,
            capacity: 1,
            window_ms: 60_000,
        },
    ];
    assert_eq!(store.admit(cooldown, &both).await.unwrap(), Admit::Taken);
    // The slow window is empty now: denied for about a minute, after a token of the
    // fast window was taken.
    match store.admit(cooldown, &both).await.unwrap() {
        Admit::Denied(ms) => assert!((59_000..=60_000).contains(&ms), "{ms}"),
        other => panic!("{other:?}"),
    }
    // Both fast tokens are gone: the fast window denies first (well under a second),
    // and the slow one was not touched again.
    match store.admit(cooldown, &both).await.unwrap() {
        Admit::Denied(ms) => assert!((1..=1000).contains(&ms), "{ms}"),
        other => panic!("{other:?}"),
    }
    // A cooldown answers before any bucket, with its time left, and takes nothing.
    let other = [Limit {
        key: "rl:q:default:1000",
        capacity: 1,
        window_ms: 1000,
    }];
    store
        .set(cooldown, b"1".to_vec(), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    match store.admit(cooldown, &other).await.unwrap() {
        Admit::Cooldown(ms) => assert!((4_000..=5_000).contains(&ms), "{ms}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.admit("rl:cooldown:q:default", &other).await.unwrap(),
        Admit::Taken,
        "the bucket still had its token"
    );
    // Without an expiry, a cooldown reports no end; no windows at all only check it.
    store.set(cooldown, b"1".to_vec(), None).await.unwrap();
    assert_eq!(
        store.admit(cooldown, &[]).await.unwrap(),
        Admit::Cooldown(u64::MAX)
    );
    store.delete(cooldown).await.unwrap();
    assert_eq!(store.admit(cooldown, &[]).await.unwrap(), Admit::Taken);
}
both!(admit_in_one_check => super::case_admit_checks_cooldown_then_each_window_in_order);
