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
}
