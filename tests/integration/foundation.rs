//! One request end to end through the built-in `bearer_static` component, and the
//! error envelope for the basic failures.

use crate::harness::*;

fn github(upstream: &Upstream) -> String {
    format!(
        "name: GitHub\nbase_url: {}/api\nauth:\n  type: bearer_static\n  env: GH_TOKEN\ndefault_headers:\n  Accept: application/vnd.github+json\n",
        upstream.url()
    )
}

const TOKEN: &str = "ghp_integration_secret_value_123";

#[tokio::test(flavor = "multi_thread")]
async fn bearer_static_signs_and_forwards() {
    let up = Upstream::start().await;
    let cfg = Config::new().env("GH_TOKEN", TOKEN);
    cfg.provider("github.yaml", &github(&up));
    let outpost = Outpost::start(&cfg);

    let resp = client()
        .post(outpost.url("/repos/o/r/issues?per_page=2&q=a%20b"))
        .header("X-Provider", "GitHub")
        .header("Authorization", "Bearer agent-supplied")
        .header("X-Outpost-Auth", "not-needed")
        .header("Accept", "text/plain")
        .header("X-Custom", "kept")
        .body("{\"title\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-proxy-provider"], "github");
    assert_eq!(resp.text().await.unwrap(), "upstream-ok");

    let seen = up.one();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/repos/o/r/issues?per_page=2&q=a%20b");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        seen.header("accept"),
        Some("application/vnd.github+json"),
        "default header replaces the agent's"
    );
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("x-outpost-auth"), None);
    assert_eq!(seen.header("x-provider"), None);
    assert_eq!(seen.header("content-length"), Some("13"));
    assert_eq!(&seen.body[..], b"{\"title\":\"x\"}");

    let logs = outpost.stop();
    assert!(logs.contains("request"), "{logs}");
    assert!(
        !logs.contains(TOKEN),
        "the secret reached the logs:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_provider_host_denied_and_upstream_down() {
    let up = Upstream::start().await;
    let cfg = Config::new().env("GH_TOKEN", TOKEN);
    cfg.provider("github.yaml", &github(&up));
    // A provider whose upstream refuses connections.
    cfg.provider(
        "down.yaml",
        "name: down\nbase_url: http://127.0.0.1:9\nauth: {type: none}\n",
    );
    let outpost = Outpost::start(&cfg);
    let c = client();

    let r = c
        .get(outpost.url("/x"))
        .header("X-Provider", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().get("x-proxy-provider").is_none());
    let (code, msg, meta) = envelope(&r.text().await.unwrap());
    assert_eq!(code, "PROXY_UNKNOWN_PROVIDER");
    assert_eq!(msg, "Unknown or unspecified provider 'nope'");
    assert_eq!(meta, serde_json::json!({"available": ["down", "github"]}));

    let r = c.get(outpost.url("/x")).send().await.unwrap();
    assert_eq!(
        envelope(&r.text().await.unwrap()).0,
        "PROXY_UNKNOWN_PROVIDER"
    );

    let r = c
        .get(outpost.url("/x"))
        .header("X-Provider", "down")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert_eq!(envelope(&body).0, "PROXY_UPSTREAM_ERROR");

    let r = c
        .get(outpost.url("/"))
        .header("X-Provider", "github")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(envelope(&r.text().await.unwrap()).1, "Empty path");

    let r = c.get(outpost.url("/healthz")).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status": "ok", "providers": ["down", "github"]})
    );
    assert!(
        up.seen().is_empty(),
        "nothing may reach the upstream on refusals"
    );
    drop(outpost);

    // Nobody admitted: 403 before the provider is even looked at (no provider list leaks).
    cfg.hosts("hosts:\n  - id: elsewhere\n    cidrs: [10.0.0.0/8]\n");
    let outpost = Outpost::start(&cfg);
    let r = c
        .get(outpost.url("/x"))
        .header("X-Provider", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (code, msg, meta) = envelope(&r.text().await.unwrap());
    assert_eq!(code, "PROXY_HOST_DENIED");
    assert_eq!(msg, "Source IP 127.0.0.1 not in host policy");
    assert!(meta.is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn psk_is_required_when_configured() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("GH_TOKEN", TOKEN)
        .env("LOCAL_PSK", "psk-value-xyz");
    cfg.hosts("hosts:\n  - id: local\n    cidrs: [127.0.0.1]\n    auth_token_env: LOCAL_PSK\n");
    cfg.provider("github.yaml", &github(&up));
    let outpost = Outpost::start(&cfg);
    let c = client();
    let r = c
        .get(outpost.url("/user"))
        .header("X-Provider", "github")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"X-Outpost-Auth realm="outpost""#
    );
    assert_eq!(envelope(&r.text().await.unwrap()).0, "PROXY_AUTH_REQUIRED");
    let r = c
        .get(outpost.url("/user"))
        .header("X-Provider", "github")
        .header("X-Outpost-Auth", "psk-value-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.one().header("x-outpost-auth"), None);
    let logs = outpost.stop();
    assert!(!logs.contains("psk-value-xyz"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_secret_breaks_only_its_provider() {
    let up = Upstream::start().await;
    let cfg = Config::new().env("GH_TOKEN", TOKEN);
    cfg.provider("github.yaml", &github(&up));
    cfg.provider(
        "stripe.yaml",
        &format!(
            "name: stripe\nbase_url: {}\nauth: {{type: bearer_static, env: STRIPE_KEY}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let r = c
        .get(outpost.url("/v1/charges"))
        .header("X-Provider", "stripe")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let (code, msg, meta) = envelope(&r.text().await.unwrap());
    assert_eq!(code, "PROXY_PROVIDER_CONFIG_ERROR");
    assert!(
        msg.contains("STRIPE_KEY") && msg.contains("not set"),
        "{msg}"
    );
    assert_eq!(meta["provider"], "stripe");
    let r = c
        .get(outpost.url("/user"))
        .header("X-Provider", "github")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = c
        .get(outpost.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["providers"], serde_json::json!(["github"]));
    let logs = outpost.stop();
    assert!(
        logs.contains("STRIPE_KEY"),
        "start-up log names the problem:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_any_log_line_or_error_body() {
    let up = Upstream::with(|seen| {
        let status = if seen.target.starts_with("/unauthorized") {
            401
        } else {
            200
        };
        axum::response::Response::builder()
            .status(status)
            .body(axum::body::Body::from("u"))
            .unwrap()
    })
    .await;
    let secrets = [
        ("GH_TOKEN", "ghp_suite_secret_aaaaaaaa"),
        ("FIXTURE_SECRET", "fixture_suite_secret_bbbb"),
        ("LOCAL_PSK", "psk_suite_secret_cccccccc"),
    ];
    let mut cfg = Config::new().env("OUTPOST_LOG", "debug");
    for (k, v) in secrets {
        cfg = cfg.env(k, v);
    }
    cfg.hosts("hosts:\n  - id: local\n    cidrs: [127.0.0.1/32]\n    can_call_sensitive: true\n    auth_token_env: LOCAL_PSK\n");
    cfg.plugin("fixture_header");
    cfg.plugin("fixture_hostile");
    cfg.provider("gh.yaml", &github(&up));
    cfg.provider("fix.yaml", &format!("name: fix\nbase_url: {}\nauth: {{type: plugin, module: fixture_header.wasm, config: {{env: FIXTURE_SECRET, probe: GH_TOKEN}}}}\n", up.url()));
    cfg.provider("panic.yaml", &format!("name: panic\nbase_url: {}\nauth: {{type: plugin, module: fixture_hostile.wasm, config: {{mode: panic}}}}\n", up.url()));
    cfg.provider(
        "down.yaml",
        "name: down\nbase_url: http://127.0.0.1:9\nauth: {type: bearer_static, env: GH_TOKEN}\n",
    );
    cfg.provider(
        "broken.yaml",
        &format!(
            "name: broken\nbase_url: {}\nauth: {{type: bearer_static, env: GH_TOKEN, prefx: x}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let mut bodies = Vec::new();
    for (provider, path, psk) in [
        ("github", "/ok", Some("psk_suite_secret_cccccccc")),
        ("github", "/unauthorized", Some("psk_suite_secret_cccccccc")),
        ("github", "/ok", Some("wrong")),
        ("github", "/ok", None),
        ("fix", "/ok", Some("psk_suite_secret_cccccccc")),
        ("panic", "/ok", Some("psk_suite_secret_cccccccc")),
        ("down", "/ok", Some("psk_suite_secret_cccccccc")),
        ("broken", "/ok", Some("psk_suite_secret_cccccccc")),
        ("nope", "/ok", Some("psk_suite_secret_cccccccc")),
        ("github", "/a/%2e%2e/b", Some("psk_suite_secret_cccccccc")),
    ] {
        let mut req = c
            .post(outpost.url(path))
            .header("X-Provider", provider)
            .body("b");
        if let Some(p) = psk {
            req = req.header("X-Outpost-Auth", p);
        }
        let r = req.send().await.unwrap();
        let headers = format!("{:?}", r.headers());
        bodies.push(format!(
            "{provider}{path}: {} {headers} {}",
            r.status(),
            r.text().await.unwrap()
        ));
    }
    for path in [
        "/healthz",
        "/readyz",
        "/providers",
        "/openapi.json",
        "/docs",
        "/metrics",
    ] {
        let r = c
            .get(outpost.url(path))
            .header("X-Outpost-Auth", "psk_suite_secret_cccccccc")
            .send()
            .await
            .unwrap();
        bodies.push(format!("{path}: {}", r.text().await.unwrap()));
    }
    let all = bodies.join("\n");
    for (_, v) in secrets {
        assert!(
            !all.contains(v),
            "secret {v} reached an agent-facing response:\n{all}"
        );
    }
    assert!(
        all.contains("PROXY_AUTH_ERROR")
            && all.contains("PROXY_UPSTREAM_ERROR")
            && all.contains("PROXY_PROVIDER_CONFIG_ERROR")
    );
    // The logs are checked for every secret when `outpost` is dropped (harness).
    let logs = outpost.logs();
    assert!(logs.contains("DEBUG"), "debug logging was on");
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_selection_and_directory_overrides() {
    let up = Upstream::start().await;
    let other = Upstream::start().await;
    let cfg = Config::new().env("DEFAULT_PROVIDER", "Alpha");
    cfg.provider(
        "alpha.yaml",
        &format!(
            "name: alpha\nbase_url: {}\nauth: {{type: none}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "beta.yaml",
        &format!("name: beta\nbase_url: {}\nauth: {{type: none}}\n", up.url()),
    );
    cfg.provider(
        "gamma.yml",
        &format!(
            "name: gamma\nbase_url: {}\nauth: {{type: none}}\n",
            up.url()
        ),
    );
    let extra = cfg.path("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("beta.yaml"),
        format!(
            "name: beta\nbase_url: {}\nauth: {{type: none}}\n",
            other.url()
        ),
    )
    .unwrap();
    std::fs::write(
        extra.join("gamma.yaml"),
        "name: gamma\nenabled: false\nbase_url: http://x\nauth: {type: none}\n",
    )
    .unwrap();
    let cfg = cfg.env("EXTRA_PROVIDERS_DIR", extra.to_str().unwrap());
    let outpost = Outpost::start(&cfg);
    let c = client();
    assert_eq!(
        c.get(outpost.url("/d")).send().await.unwrap().status(),
        200,
        "DEFAULT_PROVIDER"
    );
    assert_eq!(up.one().target, "/d");
    assert_eq!(
        c.get(outpost.url("/b"))
            .header("X-Broker", "BETA")
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "X-Broker"
    );
    assert_eq!(other.one().target, "/b", "the extra directory overrides");
    let r = c
        .get(outpost.url("/g"))
        .header("X-Provider", "gamma")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "a later disabled file removes the provider"
    );
    let (_, _, meta) = envelope(&r.text().await.unwrap());
    assert_eq!(meta["available"], serde_json::json!(["alpha", "beta"]));
    let r = c
        .get(outpost.url("/x"))
        .header("X-Provider", "alpha")
        .header("X-Broker", "beta")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().len(), 2, "X-Provider wins over X-Broker");
}
