//! The request pipeline through the real binary: path canonicalisation and deny/allow
//! bypasses, X-Forwarded-For spoofing, the sensitive gate, forwarding fidelity,
//! streaming, timeouts, malformed requests and the management endpoints.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn path_bypass_table() {
    let up = Upstream::start().await;
    let cfg = Config::new();
    cfg.provider(
        "open.yaml",
        &format!(
            "name: open\nbase_url: {}/base\nauth: {{type: none}}\nforwarding:\n  deny: [/user/keys, /admin/**]\n  treat_writes_as_sensitive: false\n",
            up.url()
        ),
    );
    cfg.provider(
        "strict.yaml",
        &format!(
            "name: strict\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  mode: allowlist\n  allow:\n    - {{method: GET, pattern: /v1/repos/*}}\n    - {{method: GET, pattern: /projects/*/issues}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    // (provider, raw path, expected status, expected upstream target if forwarded)
    let table: &[(&str, &str, u16, Option<&str>)] = &[
        ("open", "/user/keys", 403, None),
        ("open", "/USER/keys", 403, None),
        ("open", "/user/KEYS/", 403, None),
        ("open", "/user%2Fkeys", 403, None),
        ("open", "/user%2fkeys", 403, None),
        ("open", "/%75ser/keys", 403, None),
        ("open", "/admin/x", 403, None),
        ("open", "/Admin/x/y", 403, None),
        ("open", "/%61dmin/x", 403, None),
        ("open", "/ok/../admin/x", 400, None),
        ("open", "/ok/%2e%2e/admin/x", 400, None),
        ("open", "/ok/%2E%2E/admin/x", 400, None),
        ("open", "/ok/.%2e/admin/x", 400, None),
        ("open", "/./admin/x", 400, None),
        ("open", "//admin/x", 400, None),
        ("open", "/ok//admin", 400, None),
        ("open", "/admin%5cx", 400, None),
        ("open", "/user%00/keys", 400, None),
        ("open", "/a%0d%0aX-Injected:%201", 400, None),
        ("open", "/a%zz", 400, None),
        ("open", "/user/keys2", 200, Some("/base/user/keys2")),
        (
            "open",
            "/%61pi/%7Euser?x=1",
            200,
            Some("/base/api/~user?x=1"),
        ),
        ("open", "/a%3fb%23c", 200, Some("/base/a%3Fb%23c")),
        ("open", "/trailing/", 200, Some("/base/trailing/")),
        ("strict", "/v1/repos/abc", 200, Some("/v1/repos/abc")),
        ("strict", "/v1/repos/abc/", 404, None),
        ("strict", "/V1/repos/abc", 404, None),
        ("strict", "/v1/repos/a/b", 404, None),
        ("strict", "/v1/repos/%2e%2e", 400, None),
        ("strict", "/v1/repos/a%2Fb", 200, Some("/v1/repos/a%2Fb")),
        (
            "strict",
            "/projects/group%2fproject/issues",
            200,
            Some("/projects/group%2Fproject/issues"),
        ),
        ("strict", "/projects/group/project/issues", 404, None),
    ];
    let c = client();
    for (provider, path, status, target) in table {
        let before = up.seen().len();
        let resp = raw(
            &outpost,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Provider: {provider}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), *status, "{provider} {path}: {resp}");
        let seen = up.seen();
        match target {
            Some(t) => {
                assert_eq!(seen.len(), before + 1, "{provider} {path} not forwarded");
                assert_eq!(seen.last().unwrap().target, *t, "{provider} {path}");
            }
            None => assert_eq!(
                seen.len(),
                before,
                "{provider} {path} reached the upstream: {:?}",
                seen.last()
            ),
        }
    }
    let r = c
        .get(outpost.url("/v1/other"))
        .header("X-Provider", "strict")
        .send()
        .await
        .unwrap();
    let (code, msg, _) = envelope(&r.text().await.unwrap());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("PROXY_NO_ROUTE", "No matching route for GET /v1/other")
    );
    let r = c
        .get(outpost.url("/USER/keys"))
        .header("X-Provider", "open")
        .send()
        .await
        .unwrap();
    let (code, msg, _) = envelope(&r.text().await.unwrap());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "PROXY_PATH_DENIED",
            "Path /USER/keys is denied for provider 'open'"
        )
    );
    // (reqwest resolves `..` itself, so the raw socket carries the dot segment.)
    let resp = raw(
        &outpost,
        b"GET /a/../b HTTP/1.1\r\nHost: x\r\nX-Provider: open\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let (code, msg, _) = envelope(body);
    assert_eq!(code, "PROXY_BAD_PATH");
    assert_eq!(
        msg,
        "Bad request path: dot segments ('.' and '..') are not allowed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_cannot_be_spoofed() {
    let up = Upstream::start().await;
    let cfg = Config::new();
    let hosts = "hosts:\n  - id: local\n    cidrs: [127.0.0.1/32]\n  - id: remote-agent\n    cidrs: [198.51.100.7/32]\n    can_call_sensitive: true\n";
    cfg.hosts(hosts);
    cfg.provider(
        "open.yaml",
        &format!("name: open\nbase_url: {}\nauth: {{type: none}}\n", up.url()),
    );
    let c = client();

    // No trusted proxies: the TCP peer (127.0.0.1) is the client, whatever XFF says.
    let outpost = Outpost::start(&cfg);
    let r = c
        .post(outpost.url("/w"))
        .header("X-Provider", "open")
        .header("X-Forwarded-For", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "write needs the sensitive host, spoofing must not grant it"
    );
    assert_eq!(
        envelope(&r.text().await.unwrap()).0,
        "PROXY_SENSITIVE_DENIED"
    );
    for h in ["cf-connecting-ip", "x-real-ip", "true-client-ip"] {
        let r = c
            .post(outpost.url("/w"))
            .header("X-Provider", "open")
            .header(h, "198.51.100.7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{h}");
    }
    assert!(up.seen().is_empty());
    drop(outpost);

    // The peer is a trusted proxy: the right-most untrusted hop is the client.
    let cfg = cfg.env("TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8");
    let outpost = Outpost::start(&cfg);
    let send = |xff: &'static str| {
        let (c, url) = (c.clone(), outpost.url("/w"));
        async move {
            c.post(url)
                .header("X-Provider", "open")
                .header("X-Forwarded-For", xff)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send("198.51.100.7").await, 200);
    assert_eq!(
        send("198.51.100.7, 10.1.2.3").await,
        200,
        "trusted hops are skipped"
    );
    assert_eq!(
        send("127.0.0.1, 198.51.100.7").await,
        200,
        "left-most (client-chosen) entries are ignored"
    );
    assert_eq!(
        send("198.51.100.7, 203.0.113.5").await,
        403,
        "right-most untrusted hop is 203.0.113.5"
    );
    let r = c
        .post(outpost.url("/w"))
        .header("X-Provider", "open")
        .header("X-Forwarded-For", "203.0.113.5")
        .send()
        .await
        .unwrap();
    assert_eq!(
        envelope(&r.text().await.unwrap()).1,
        "Source IP 203.0.113.5 not in host policy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sensitive_gate() {
    let up = Upstream::start().await;
    let cfg = Config::new();
    cfg.hosts("hosts:\n  - id: reader\n    cidrs: [127.0.0.1/32]\n    can_call_sensitive: false\n");
    cfg.provider(
        "t.yaml",
        &format!("name: t\nbase_url: {}\nauth: {{type: none}}\n", up.url()),
    );
    cfg.provider(
        "a.yaml",
        &format!("name: a\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  mode: allowlist\n  allow:\n    - {{method: '*', pattern: /orders, sensitive: true}}\n    - {{method: GET, pattern: /quotes}}\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    for m in ["POST", "PUT", "PATCH", "DELETE", "PURGE"] {
        let r = c
            .request(m.parse().unwrap(), outpost.url("/x"))
            .header("X-Provider", "t")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{m}");
        let (code, msg, _) = envelope(&r.text().await.unwrap());
        assert_eq!(code, "PROXY_SENSITIVE_DENIED");
        assert_eq!(
            msg,
            "Host 'reader' is not permitted to call sensitive endpoints"
        );
    }
    for m in ["GET", "OPTIONS"] {
        let r = c
            .request(m.parse().unwrap(), outpost.url("/x"))
            .header("X-Provider", "t")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{m}");
    }
    assert_eq!(
        c.get(outpost.url("/orders"))
            .header("X-Provider", "a")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        c.get(outpost.url("/quotes"))
            .header("X-Provider", "a")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(up.seen().len(), 3);
    assert!(outpost.logs().contains("attempted sensitive op"));
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_is_byte_transparent() {
    let up = Upstream::with(|seen| {
        let b = Response::builder();
        match seen.target.as_str() {
            "/redirect" => b
                .status(302)
                .header("location", "https://elsewhere.example/x")
                .body(Body::empty())
                .unwrap(),
            "/cookies" => b
                .header("set-cookie", "a=1; Path=/")
                .header("set-cookie", "b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT")
                .body(Body::from("c"))
                .unwrap(),
            "/gzip" => b
                .header("content-encoding", "gzip")
                .header("content-type", "text/plain")
                .body(Body::from(vec![0x1f, 0x8b, 8, 0, 1, 2]))
                .unwrap(),
            "/none" => b.status(204).body(Body::empty()).unwrap(),
            "/notype" => b.body(Body::from("raw")).unwrap(),
            "/strip" => b
                .header("x-internal", "1")
                .header("x-kept", "2")
                .header("connection", "keep-alive, X-Up-Hop")
                .header("x-up-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .body(Body::from("s"))
                .unwrap(),
            _ => b.body(Body::from("ok")).unwrap(),
        }
    })
    .await;
    let cfg = Config::new();
    cfg.provider(
        "p.yaml",
        &format!("name: p\nbase_url: {}\nauth: {{type: none}}\nstrip_response_headers: [X-Internal]\nforwarding:\n  treat_writes_as_sensitive: false\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let r = c
        .get(outpost.url("/redirect"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://elsewhere.example/x");
    assert_eq!(up.seen().len(), 1, "redirect not followed");

    let r = c
        .get(outpost.url("/cookies"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cookies,
        ["a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT"]
    );

    let r = c
        .get(outpost.url("/gzip"))
        .header("X-Provider", "p")
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(&r.bytes().await.unwrap()[..], &[0x1f, 0x8b, 8, 0, 1, 2]);
    assert_eq!(
        up.seen().last().unwrap().header("accept-encoding"),
        Some("gzip")
    );

    let r = c
        .get(outpost.url("/none"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(outpost.url("/notype"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("content-type").is_none(),
        "no content type invented"
    );
    let r = c
        .head(outpost.url("/x"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().last().unwrap().method, "HEAD");
    let r = c
        .get(outpost.url("/strip"))
        .header("X-Provider", "p")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-internal").is_none());
    assert_eq!(r.headers()["x-kept"], "2");
    // Hop-by-hop response headers, and those the upstream's `Connection` lists, stay
    // between Outpost and the upstream.
    for hop in ["x-up-hop", "keep-alive", "proxy-connection"] {
        assert!(r.headers().get(hop).is_none(), "{hop} passed back");
    }
    assert_eq!(r.headers()["x-proxy-cache"], "BYPASS");

    // Hop-by-hop and Connection-listed headers never reach the upstream.
    let resp = raw(
        &outpost,
        b"POST /hop HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eA==\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = up.seen().last().unwrap().clone();
    assert_eq!(seen.target, "/hop");
    for h in [
        "x-hop",
        "keep-alive",
        "te",
        "forwarded",
        "x-real-ip",
        "upgrade",
        "proxy-authorization",
        "x-provider",
    ] {
        assert!(seen.header(h).is_none(), "{h} forwarded");
    }
    assert_eq!(&seen.body[..], b"hi");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_stream_one_by_one() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let up = Upstream::with(move |_| {
        let rx = rx.lock().unwrap().take();
        let stream = async_stream(rx);
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap()
    })
    .await;
    let cfg = Config::new();
    cfg.provider(
        "s.yaml",
        &format!("name: s\nbase_url: {}\nauth: {{type: none}}\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let mut r = client()
        .get(outpost.url("/events"))
        .header("X-Provider", "s")
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("first event in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        &first[..],
        b"data: one\n\n",
        "first event arrives before the upstream sends the second"
    );
    tx.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(&rest[..], b"data: two\n\n");
}

fn async_stream(
    rx: Option<tokio::sync::oneshot::Receiver<()>>,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    futures_util::stream::unfold((0, rx), |(i, rx)| async move {
        match i {
            0 => Some((
                Ok(axum::body::Bytes::from_static(b"data: one\n\n")),
                (1, rx),
            )),
            1 => {
                if let Some(rx) = rx {
                    let _ = rx.await;
                }
                Some((
                    Ok(axum::body::Bytes::from_static(b"data: two\n\n")),
                    (2, None),
                ))
            }
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_timeout_is_504() {
    // An upstream that accepts connections but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let cfg = Config::new().env("OUTPOST_UPSTREAM_TIMEOUT", "0.3");
    cfg.provider(
        "slow.yaml",
        &format!("name: slow\nbase_url: http://{addr}\nauth: {{type: none}}\n"),
    );
    let outpost = Outpost::start(&cfg);
    let t = Instant::now();
    let r = client()
        .get(outpost.url("/x"))
        .header("X-Provider", "slow")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        envelope(&r.text().await.unwrap()).0,
        "PROXY_UPSTREAM_TIMEOUT"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_stream_is_cut_off() {
    let up = Upstream::with(|_| {
        let stream = futures_util::stream::unfold(0, |i| async move {
            match i {
                0 => Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"first")),
                    1,
                )),
                1 => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Some((Ok(axum::body::Bytes::from_static(b"late")), 2))
                }
                _ => None,
            }
        });
        Response::new(Body::from_stream(stream))
    })
    .await;
    let cfg = Config::new().env("OUTPOST_IDLE_TIMEOUT", "0.4");
    cfg.provider(
        "s.yaml",
        &format!("name: s\nbase_url: {}\nauth: {{type: none}}\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let t = Instant::now();
    let mut r = client()
        .get(outpost.url("/x"))
        .header("X-Provider", "s")
        .send()
        .await
        .unwrap();
    assert_eq!(&r.chunk().await.unwrap().unwrap()[..], b"first");
    let rest = r.chunk().await;
    assert!(
        rest.is_err(),
        "the stalled stream must be aborted, got {rest:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(outpost.stop().contains("idle"), "the abort is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let cfg = Config::new();
    cfg.provider("p.yaml", &format!("name: p\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  treat_writes_as_sensitive: false\n", up.url()));
    let outpost = Outpost::start(&cfg);
    let smuggle = raw(
        &outpost,
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&smuggle), 400, "{smuggle}");
    assert!(smuggle.contains("PROXY_BAD_REQUEST"), "{smuggle}");
    let ctl = raw(
        &outpost,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\nX-Bad: a\x01b\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&ctl), 400, "{ctl}");
    let big = format!(
        "GET /a HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let big = raw(&outpost, big.as_bytes()).await;
    assert_eq!(status_of(&big), 431, "{}", &big[..big.len().min(200)]);
    let mut many = String::from("GET /a HTTP/1.1\r\nHost: x\r\nX-Provider: p\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let many = raw(&outpost, many.as_bytes()).await;
    assert_eq!(status_of(&many), 431, "{}", &many[..many.len().min(200)]);
    let absolute = raw(&outpost, b"GET http://evil.example/a HTTP/1.1\r\nHost: evil.example\r\nX-Provider: p\r\nConnection: close\r\n\r\n").await;
    assert!(
        up.seen().iter().all(|s| s.target != "/smuggled"),
        "smuggled request reached the upstream"
    );
    if status_of(&absolute) == 200 {
        assert_eq!(
            up.seen().last().unwrap().target,
            "/a",
            "absolute-form targets go to the provider, not the named host"
        );
    }
    // The proxy is still healthy.
    assert_eq!(
        client()
            .get(outpost.url("/ok"))
            .header("X-Provider", "p")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn management_endpoints_pass_policy() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("MGMT_PSK", "mgmt-psk-secret")
        .env("TOKEN", "tok-mgmt-secret");
    cfg.hosts("hosts:\n  - id: local\n    cidrs: [127.0.0.1/32]\n    can_call_sensitive: true\n    auth_token_env: MGMT_PSK\n");
    cfg.provider(
        "b.yaml",
        &format!(
            "name: b\nbase_url: {}\nauth: {{type: bearer_static, env: TOKEN}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "broken.yaml",
        &format!(
            "name: broken\nbase_url: {}\nauth: {{type: bearer_static, env: NOPE}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let r = c.get(outpost.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "healthz is open");
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["providers"],
        serde_json::json!(["b"])
    );
    for path in [
        "/readyz",
        "/providers",
        "/openapi.json",
        "/docs",
        "/metrics",
    ] {
        let r = c.get(outpost.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without PSK");
        let r = c
            .get(outpost.url(path))
            .header("X-Outpost-Auth", "mgmt-psk-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with PSK");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("tok-mgmt-secret") && !body.contains("mgmt-psk-secret"),
            "{path} leaks a secret"
        );
    }
    let get = |p: &'static str| {
        let (c, url) = (c.clone(), outpost.url(p));
        async move {
            c.get(url)
                .header("X-Outpost-Auth", "mgmt-psk-secret")
                .send()
                .await
                .unwrap()
        }
    };
    let api: serde_json::Value = get("/openapi.json").await.json().await.unwrap();
    assert_eq!(api["openapi"], "3.1.0");
    assert_eq!(
        api["components"]["parameters"]["XProvider"]["schema"]["enum"],
        serde_json::json!(["b"])
    );
    let providers: serde_json::Value = get("/providers").await.json().await.unwrap();
    assert_eq!(providers["providers"][0]["name"], "b");
    assert_eq!(providers["providers"][1]["status"], "error");
    let ready: serde_json::Value = get("/readyz").await.json().await.unwrap();
    assert!(
        ready["providers"]["broken"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("NOPE")
    );
    let docs = get("/docs").await.text().await.unwrap();
    assert!(docs.contains("<title>Outpost</title>"));
    assert!(
        !docs.contains("src=") && !docs.contains("<link"),
        "self-contained: no external scripts or styles"
    );

    let r = c
        .get(outpost.url("/v"))
        .header("X-Provider", "b")
        .header("X-Outpost-Auth", "mgmt-psk-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = c
        .get(outpost.url("/v"))
        .header("X-Provider", "zzz")
        .header("X-Outpost-Auth", "mgmt-psk-secret")
        .send()
        .await
        .unwrap();
    let metrics = get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"outpost_requests_total{cache="BYPASS",provider="b",status="200"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outpost_refusals_total{reason="PROXY_UNKNOWN_PROVIDER"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outpost_refusals_total{reason="PROXY_AUTH_REQUIRED"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("outpost_upstream_seconds_bucket")
            && metrics.contains("outpost_signer_seconds_bucket")
    );

    // POST /healthz is not a management call: it is proxied like any other path.
    let r = c
        .post(outpost.url("/healthz"))
        .header("X-Provider", "b")
        .header("X-Outpost-Auth", "mgmt-psk-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().last().unwrap().target, "/healthz");
    let logs = outpost.stop();
    assert!(
        !logs.contains("tok-mgmt-secret") && !logs.contains("mgmt-psk-secret"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_one_line_per_request() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("OUTPOST_LOG_FORMAT", "json")
        .env("TOKEN", "json-log-secret-value");
    cfg.provider(
        "b.yaml",
        &format!(
            "name: b\nbase_url: {}\nauth: {{type: bearer_static, env: TOKEN}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let r = client()
        .get(outpost.url("/v1/x?q=1"))
        .header("X-Provider", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = client()
        .get(outpost.url("/v1/x"))
        .header("X-Provider", "nope")
        .send()
        .await
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let logs = outpost.stop();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "JSON lines expected:\n{logs}");
    let req: Vec<_> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(req.len(), 2, "{logs}");
    let ok = req.iter().find(|l| l["status"] == 200).unwrap();
    for key in [
        "request_id",
        "host",
        "provider",
        "method",
        "path",
        "status",
        "category",
        "cache",
        "upstream_ms",
        "total_ms",
    ] {
        assert!(!ok[key].is_null(), "{key} missing in {ok}");
    }
    assert_eq!(ok["host"], "local");
    assert_eq!(ok["category"], "default");
    assert!(
        lines.iter().any(|l| l["code"] == "PROXY_UNKNOWN_PROVIDER"),
        "refusals are logged with their reason"
    );
    assert!(!logs.contains("json-log-secret-value"));
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_cap_is_413_only_when_buffered() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("OUTPOST_MAX_BODY_BYTES", "64")
        .env("HMAC_KEY", "key-value-413")
        .env("HMAC_SECRET", "secret-value-413");
    cfg.provider(
        "h.yaml",
        &format!("name: h\nbase_url: {}\nauth: {{type: hmac_signed, key_env: HMAC_KEY, secret_env: HMAC_SECRET, payload: body}}\nforwarding:\n  treat_writes_as_sensitive: false\n", up.url()),
    );
    cfg.provider("s.yaml", &format!("name: s\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  treat_writes_as_sensitive: false\n", up.url()));
    let outpost = Outpost::start(&cfg);
    let c = client();
    let big = "x".repeat(1000);
    let r = c
        .post(outpost.url("/sign"))
        .header("X-Provider", "h")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let (code, msg, _) = envelope(&r.text().await.unwrap());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "PROXY_BODY_TOO_LARGE",
            "Request body exceeds the limit of 64 bytes"
        )
    );
    assert!(up.seen().is_empty());
    let r = c
        .post(outpost.url("/sign"))
        .header("X-Provider", "h")
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(outpost.url("/stream"))
        .header("X-Provider", "s")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a streamed body is not capped");
    assert_eq!(up.seen().last().unwrap().body.len(), 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_style_rules_and_odd_psk_bytes() {
    let up = Upstream::start().await;
    let cfg = Config::new().env("ODD_PSK", "psk-odd-value");
    cfg.hosts("hosts:\n  - id: local\n    cidrs: [127.0.0.1]\n    can_trade: true\n    auth_token_env: ODD_PSK\n");
    // D1: the original README's rule shape, rejected by the original's code, accepted here.
    cfg.provider(
        "r.yaml",
        &format!("name: r\nbase_url: {}\nauth: {{type: none}}\nforwarding:\n  mode: allowlist\n  allow:\n    - {{path: /v1/items/*, methods: [GET, delete]}}\n", up.url()),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let send = |m: &'static str| {
        let (c, url) = (c.clone(), outpost.url("/v1/items/9"));
        async move {
            c.request(m.parse().unwrap(), url)
                .header("X-Provider", "r")
                .header("X-Outpost-Auth", "psk-odd-value")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send("GET").await, 200);
    assert_eq!(
        send("DELETE").await,
        200,
        "can_trade grants sensitive calls"
    );
    assert_eq!(send("POST").await, 404);
    // D6: any odd PSK header value is a 401, never a 500.
    for value in [
        &b"psk-odd-value\xff"[..],
        b"\xc3\x28",
        b"psk-odd-value psk-odd-value",
        b" ",
    ] {
        let mut req = b"GET /v1/items/9 HTTP/1.1\r\nHost: x\r\nX-Provider: r\r\nConnection: close\r\nX-Outpost-Auth: ".to_vec();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n\r\n");
        let resp = raw(&outpost, &req).await;
        assert_eq!(status_of(&resp), 401, "{value:?}: {resp}");
    }
}
