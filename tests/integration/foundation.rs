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
