//! The built-in auth modules of §8 and D25 through the real binary: the exact header
//! and query bytes the upstream receives, minting once for many concurrent requests,
//! re-minting and retrying after a 401, and a missing secret breaking only its provider.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::harness::*;

/// HMAC-SHA256 from its definition (RFC 2104), so the tests check signatures with code
/// independent of the modules'.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    hex::encode(hmac_sha256(key, msg))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn json(status: u16, body: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn get(outpost: &Outpost, provider: &str, target: &str) -> (u16, String) {
    let r = client()
        .get(outpost.url(target))
        .header("X-Provider", provider)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn query_of(target: &str) -> &str {
    target.split_once('?').map(|(_, q)| q).unwrap_or("")
}

#[test]
fn the_test_hmac_is_right() {
    // Binance's documented vector (reference §8.8).
    assert_eq!(
        hmac_hex(
            b"NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j",
            b"symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
        ),
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn static_key_modules_send_exact_bytes() {
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("ANTHROPIC_API_KEY", "sk-ant-secret-1")
        .env("QKEY", "q s/k+=")
        .env("JIRA_USER", "testuser")
        .env("JIRA_TOKEN", "testpass")
        .env("TENANT_KEY", "tenant-secret-2");
    cfg.provider(
        "anthropic.yaml",
        &format!(
            "name: anthropic\nbase_url: {}\ndefault_headers:\n  anthropic-version: \"2023-06-01\"\nauth:\n  type: api_key_header\n  env: ANTHROPIC_API_KEY\n  header: x-api-key\n",
            up.url()
        ),
    );
    cfg.provider(
        "q.yaml",
        &format!(
            "name: q\nbase_url: {}/api\nauth: {{type: api_key_query, env: QKEY, param: api_key}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "jira.yaml",
        &format!(
            "name: jira\nbase_url: {}\nauth: {{type: basic_auth, user_env: JIRA_USER, pass_env: JIRA_TOKEN}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "custom.yaml",
        &format!(
            "name: custom\nbase_url: {}\nauth:\n  type: custom_headers\n  headers:\n    X-Tenant: {{value: acme}}\n    X-Tenant-Key: {{env: TENANT_KEY}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();

    let r = c
        .post(outpost.url("/v1/messages"))
        .header("X-Provider", "anthropic")
        .header("X-API-KEY", "agent-smuggled")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(outpost.url("/v1/items?b=2&api_key=evil&a=%20x+y&api%5Fkey=evil2&flag"))
        .header("X-Provider", "q")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&outpost, "jira", "/rest/api/3/myself").await.0, 200);
    let r = c
        .get(outpost.url("/x"))
        .header("X-Provider", "custom")
        .header("x-tenant", "agent")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let seen = up.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].header("x-api-key"), Some("sk-ant-secret-1"));
    assert_eq!(seen[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        seen[1].target, "/api/v1/items?b=2&a=%20x+y&flag&api_key=q%20s%2Fk%2B%3D",
        "agent copies dropped, other pieces byte for byte, key appended encoded"
    );
    assert_eq!(
        seen[2].header("authorization"),
        Some("Basic dGVzdHVzZXI6dGVzdHBhc3M=")
    );
    assert_eq!(seen[3].header("x-tenant"), Some("acme"));
    assert_eq!(seen[3].header("x-tenant-key"), Some("tenant-secret-2"));

    let logs = outpost.stop();
    for secret in ["sk-ant-secret-1", "tenant-secret-2", "testpass"] {
        assert!(!logs.contains(secret), "{secret} reached the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_signed_signs_exactly_the_forwarded_bytes() {
    const SECRET: &str = "hmac-secret-value";
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("BN_KEY", "bn-api-key")
        .env("BN_SECRET", SECRET);
    cfg.provider(
        "binance.yaml",
        &format!(
            "name: binance\nbase_url: {}\nauth: {{type: hmac_signed, key_env: BN_KEY, secret_env: BN_SECRET}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "bodysig.yaml",
        &format!(
            "name: bodysig\nbase_url: {}\nauth:\n  type: hmac_signed\n  key_env: BN_KEY\n  secret_env: BN_SECRET\n  key_header: X-Key\n  payload: query+body\n  digest: sha256\n  signature_header: X-Signature\n  timestamp_header: X-Timestamp\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let before = now_secs() * 1000;
    let agent_query = "symbol=LTCBTC&timestamp=1&b=a%20b+c&b=2&signature=forged&x=~";
    let (status, _) = get(&outpost, "binance", &format!("/api/v3/order?{agent_query}")).await;
    assert_eq!(status, 200);
    let r = client()
        .post(outpost.url("/orders?a=1&timestamp=9"))
        .header("X-Provider", "bodysig")
        .body("{\"side\":\"BUY\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = (now_secs() + 1) * 1000;

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    // Query mode: the agent's timestamp/signature dropped, everything else untouched.
    let q = query_of(&seen[0].target);
    let (signed, sig) = q.rsplit_once("&signature=").unwrap();
    let (rest, ts) = signed.rsplit_once("&timestamp=").unwrap();
    assert_eq!(rest, "symbol=LTCBTC&b=a%20b+c&b=2&x=~");
    let ts: u64 = ts.parse().unwrap();
    assert!(
        (before..=after).contains(&ts),
        "{ts} not in {before}..{after}"
    );
    assert_eq!(sig, hmac_hex(SECRET.as_bytes(), signed.as_bytes()));
    assert_eq!(seen[0].header("x-mbx-apikey"), Some("bn-api-key"));

    // query+body with headers: the agent's query is sent as is and signed with the body.
    let s = &seen[1];
    assert_eq!(s.target, "/orders?a=1&timestamp=9");
    let ts = s.header("x-timestamp").unwrap();
    assert!((before..=after).contains(&ts.parse::<u64>().unwrap()));
    let mut canonical = b"a=1&timestamp=9\n".to_vec();
    canonical.extend_from_slice(&s.body);
    assert_eq!(&s.body[..], b"{\"side\":\"BUY\"}");
    assert_eq!(
        s.header("x-signature"),
        Some(hmac_hex(SECRET.as_bytes(), &canonical).as_str())
    );
    assert_eq!(s.header("x-key"), Some("bn-api-key"));
    let logs = outpost.stop();
    assert!(!logs.contains(SECRET), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_signed_bad_digest_is_a_config_error() {
    let up = Upstream::start().await;
    let cfg = Config::new().env("K", "k").env("S", "s");
    cfg.provider(
        "h.yaml",
        &format!(
            "name: h\nbase_url: {}\nauth: {{type: hmac_signed, key_env: K, secret_env: S, digest: sha384}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let (status, body) = get(&outpost, "h", "/x").await;
    assert_eq!(status, 503);
    let (code, msg, _) = envelope(&body);
    assert_eq!(code, "PROXY_PROVIDER_CONFIG_ERROR");
    assert!(
        msg.contains("HmacSignedAuth: unsupported digest 'sha384'. Use: sha256, sha512."),
        "{msg}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_redis_seeds_invalidates_on_body_code_and_does_not_reseed() {
    let up = Upstream::with(|seen| {
        if seen.target == "/v2/bad" {
            json(
                200,
                r#"{"status":"error","errors":[{"errorCode":"UDAPI100050","message":"Invalid token"}]}"#,
            )
        } else {
            json(200, r#"{"status":"success"}"#)
        }
    })
    .await;
    let cfg = Config::new().env("UPSTOX_ACCESS_TOKEN", "seed-token-1");
    cfg.provider(
        "upstox.yaml",
        &format!(
            "name: upstox\nbase_url: {}\nauth:\n  type: bearer_redis\n  redis_key: upstox:token\n  env_seed: UPSTOX_ACCESS_TOKEN\n  header: Authorization\n  prefix: \"Bearer \"\n  invalidate_on: [401]\n  invalidate_on_body_codes:\n    json_path: \"errors[].errorCode\"\n    codes: [\"UDAPI100050\"]\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    assert_eq!(get(&outpost, "upstox", "/v2/ok").await.0, 200);
    let (status, body) = get(&outpost, "upstox", "/v2/bad").await;
    assert_eq!(status, 200, "the response goes back unchanged");
    assert!(body.contains("UDAPI100050"));
    let (status, body) = get(&outpost, "upstox", "/v2/ok").await;
    assert_eq!(status, 502);
    let (code, msg, _) = envelope(&body);
    assert_eq!(code, "PROXY_AUTH_ERROR");
    assert!(
        msg.contains("Token not configured at redis_key='upstox:token'"),
        "{msg}"
    );
    assert!(!msg.contains("seed-token-1"));
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "the stale seed is not sent again");
    for s in &seen {
        assert_eq!(s.header("authorization"), Some("Bearer seed-token-1"));
    }
}

/// An upstream that is both an OAuth2 token endpoint (`/oauth/token`, minting `tok-1`,
/// `tok-2`… slowly) and an API that rejects `tok-1` when `reject_first` is set.
pub async fn oauth_upstream(reject_first: bool) -> (Upstream, Arc<AtomicUsize>) {
    let minted = Arc::new(AtomicUsize::new(0));
    let m = minted.clone();
    let up = Upstream::with(move |seen| {
        if seen.target == "/oauth/token" {
            std::thread::sleep(Duration::from_millis(200));
            let n = m.fetch_add(1, Ordering::SeqCst) + 1;
            return json(
                200,
                &format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":3600}}"#),
            );
        }
        if reject_first && seen.header("authorization") == Some("Bearer tok-1") {
            return json(401, r#"{"error":"expired"}"#);
        }
        Response::new(Body::from(format!(
            "api-ok {}",
            seen.header("authorization").unwrap_or("-")
        )))
    })
    .await;
    (up, minted)
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_twenty_concurrent_first_requests_mint_once() {
    let (up, _) = oauth_upstream(false).await;
    let cfg = Config::new()
        .env("OAUTH_CID", "client id")
        .env("OAUTH_SECRET", "s&c=r+t");
    cfg.provider(
        "acme.yaml",
        &format!(
            "name: acme\nbase_url: {}\nauth:\n  type: oauth2_client_credentials\n  client_id_env: OAUTH_CID\n  client_secret_env: OAUTH_SECRET\n  token_url: /oauth/token\n  scope: read write\n  redis_key: acme:oauth\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (c, url) = (c.clone(), outpost.url(&format!("/v1/things/{i}")));
            tokio::spawn(async move {
                let r = c
                    .get(url)
                    .header("X-Provider", "acme")
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "api-ok Bearer tok-1"));
    }
    let seen = up.seen();
    let token_requests: Vec<_> = seen
        .iter()
        .filter(|s| s.target.starts_with("/oauth/token"))
        .collect();
    assert_eq!(token_requests.len(), 1, "exactly one token request");
    let t = token_requests[0];
    assert_eq!(t.method, "POST");
    assert_eq!(
        t.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        t.header("authorization"),
        None,
        "credentials go in the body"
    );
    assert_eq!(
        std::str::from_utf8(&t.body).unwrap(),
        "grant_type=client_credentials&client_id=client%20id&client_secret=s%26c%3Dr%2Bt&scope=read%20write"
    );
    assert_eq!(seen.len(), 21);
    let logs = outpost.stop();
    assert!(!logs.contains("s&c=r+t"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_rejection_remints_once_and_retries() {
    let (up, minted) = oauth_upstream(true).await;
    let cfg = Config::new()
        .env("OAUTH_CID", "cid")
        .env("OAUTH_SECRET", "csecret");
    cfg.provider(
        "acme.yaml",
        &format!(
            "name: acme\nbase_url: {0}\nauth:\n  type: oauth2_client_credentials\n  client_id_env: OAUTH_CID\n  client_secret_env: OAUTH_SECRET\n  token_url: {0}/oauth/token\n  redis_key: acme:oauth\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let (status, body) = get(&outpost, "acme", "/v1/me?x=1").await;
    assert_eq!((status, body.as_str()), (200, "api-ok Bearer tok-2"));
    assert_eq!(minted.load(Ordering::SeqCst), 2, "one mint, one re-mint");
    let api: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| !s.target.starts_with("/oauth/token"))
        .collect();
    assert_eq!(api.len(), 2, "the request, and exactly one retry");
    assert_eq!(api[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(api[1].header("authorization"), Some("Bearer tok-2"));
    assert_eq!(api[1].target, "/v1/me?x=1");
    // The fresh token is cached: no further mint.
    assert_eq!(
        get(&outpost, "acme", "/v1/me").await.1,
        "api-ok Bearer tok-2"
    );
    assert_eq!(minted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_secret_breaks_only_its_provider() {
    let (up, minted) = oauth_upstream(false).await;
    let cfg = Config::new()
        .env("OAUTH_CID", "cid")
        .env("ANTHROPIC_API_KEY", "key-1");
    cfg.provider(
        "acme.yaml",
        &format!(
            "name: acme\nbase_url: {}\nauth: {{type: oauth2_client_credentials, client_id_env: OAUTH_CID, client_secret_env: OAUTH_SECRET_UNSET, token_url: /oauth/token, redis_key: acme:oauth}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "anthropic.yaml",
        &format!(
            "name: anthropic\nbase_url: {}\nauth: {{type: api_key_header, env: ANTHROPIC_API_KEY, header: x-api-key}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let (status, body) = get(&outpost, "acme", "/v1/me").await;
    assert_eq!(status, 503);
    let (code, msg, _) = envelope(&body);
    assert_eq!(code, "PROXY_PROVIDER_CONFIG_ERROR");
    assert!(
        msg.contains(
            "OAuth2ClientCredentialsAuth: env var 'OAUTH_SECRET_UNSET' is not set or empty."
        ),
        "{msg}"
    );
    let (status, _) = get(&outpost, "anthropic", "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(minted.load(Ordering::SeqCst), 0);
    assert_eq!(up.one().header("x-api-key"), Some("key-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn groww_approval_plugin_mints_with_checksum_and_remints_on_401() {
    const SECRET: &str = "groww-api-secret";
    let minted = Arc::new(AtomicUsize::new(0));
    let m = minted.clone();
    let up = Upstream::with(move |seen| {
        if seen.target == "/v1/token/api/access" {
            let n = m.fetch_add(1, Ordering::SeqCst) + 1;
            return json(
                200,
                &format!(r#"{{"token":"g-tok-{n}","expiry":"2099-01-01T00:00:00"}}"#),
            );
        }
        if seen.header("authorization") == Some("Bearer g-tok-1") {
            return json(401, r#"{"error":"expired"}"#);
        }
        Response::new(Body::from("holdings"))
    })
    .await;
    let cfg = Config::new()
        .env("GROWW_API_KEY", "groww-api-key")
        .env("GROWW_API_SECRET", SECRET);
    // The shipped groww.yaml's auth block, verbatim.
    cfg.provider(
        "groww.yaml",
        &format!(
            "name: groww\nbase_url: {}\ndefault_headers:\n  X-API-VERSION: \"1.0\"\nauth:\n  type: plugin\n  module: app.python.plugins.groww_approval_mint:GrowwApprovalMintAuth\n  module_ts: plugins/groww_approval_mint.ts:GrowwApprovalMintAuth\n  config:\n    api_key_env: GROWW_API_KEY\n    api_secret_env: GROWW_API_SECRET\n    mint_path: /v1/token/api/access\n    invalidate_on: [401]\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let before = now_secs();
    let (status, body) = get(&outpost, "groww", "/v1/holdings/user").await;
    let after = now_secs();
    assert_eq!((status, body.as_str()), (200, "holdings"));
    assert_eq!(minted.load(Ordering::SeqCst), 2);
    let seen = up.seen();
    assert_eq!(seen.len(), 4, "mint, 401, re-mint, retry: {seen:#?}");
    let mint = &seen[0];
    assert_eq!(mint.method, "POST");
    assert_eq!(mint.header("authorization"), Some("Bearer groww-api-key"));
    assert_eq!(mint.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&mint.body).unwrap();
    let text = std::str::from_utf8(&mint.body).unwrap();
    assert!(
        text.starts_with(r#"{"key_type": "approval", "checksum": ""#),
        "{text}"
    );
    let ts = body["timestamp"].as_str().unwrap();
    assert!((before..=after).contains(&ts.parse::<u64>().unwrap()));
    assert_eq!(
        body["checksum"].as_str().unwrap(),
        hex::encode(Sha256::digest(format!("{SECRET}{ts}")))
    );
    assert_eq!(seen[1].header("authorization"), Some("Bearer g-tok-1"));
    assert_eq!(seen[1].header("x-api-version"), Some("1.0"));
    assert_eq!(seen[2].target, "/v1/token/api/access");
    assert_eq!(seen[3].header("authorization"), Some("Bearer g-tok-2"));
    assert_eq!(seen[3].target, "/v1/holdings/user");
}

#[tokio::test(flavor = "multi_thread")]
async fn groww_totp_plugin_mints_with_a_code() {
    let up = Upstream::with(|seen| {
        if seen.target == "/v1/token/api/access" {
            return json(200, r#"{"token":"totp-tok"}"#);
        }
        Response::new(Body::from("ok"))
    })
    .await;
    let cfg = Config::new()
        .env("GROWW_API_KEY", "groww-api-key")
        .env("GROWW_TOTP_SEED", "gezd gnbv gy3t qojq gezd gnbv gy3t qojq");
    cfg.provider(
        "groww.yaml",
        &format!(
            "name: groww\nbase_url: {}\nauth:\n  type: plugin\n  module: app.python.plugins.groww_totp_mint:GrowwTotpMintAuth\n  config:\n    api_key_env: GROWW_API_KEY\n    totp_seed_env: GROWW_TOTP_SEED\n    mint_path: /v1/token/api/access\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    assert_eq!(
        get(&outpost, "groww", "/v1/margins").await,
        (200, "ok".into())
    );
    assert_eq!(
        get(&outpost, "groww", "/v1/margins").await,
        (200, "ok".into())
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 3, "one mint, then the cached token: {seen:#?}");
    let text = std::str::from_utf8(&seen[0].body).unwrap();
    let code = text
        .strip_prefix(r#"{"key_type": "totp", "totp": ""#)
        .and_then(|r| r.strip_suffix(r#""}"#))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );
    assert_eq!(seen[1].header("authorization"), Some("Bearer totp-tok"));
    assert_eq!(seen[2].header("authorization"), Some("Bearer totp-tok"));
}

/// RFC 6238 TOTP with HMAC-SHA256, written from the RFC for this test.
fn totp_sha256(key: &[u8], t: u64, digits: u32) -> String {
    let mac = hmac_sha256(key, &(t / 30).to_be_bytes());
    let off = usize::from(mac[31] & 0x0f);
    let v = u32::from_be_bytes(mac[off..off + 4].try_into().unwrap()) & 0x7fff_ffff;
    format!(
        "{:0w$}",
        u64::from(v) % 10u64.pow(digits),
        w = digits as usize
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_code_goes_in_the_configured_param_and_header() {
    // RFC 6238's SHA-256 seed, "12345678901234567890123456789012", in base32.
    let seed = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZA";
    let key = b"12345678901234567890123456789012";
    assert_eq!(totp_sha256(key, 59, 8), "46119246");
    let up = Upstream::start().await;
    let cfg = Config::new().env("OTP_SEED", seed);
    cfg.provider(
        "p.yaml",
        &format!(
            "name: p\nbase_url: {}\nauth: {{type: totp, secret_env: OTP_SEED, param: otp, digits: 8, algorithm: sha256}}\n",
            up.url()
        ),
    );
    cfg.provider(
        "h.yaml",
        &format!(
            "name: h\nbase_url: {}\nauth: {{type: totp, secret_env: OTP_SEED, header: X-OTP, prefix: \"otp \", algorithm: sha256}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let before = now_secs();
    assert_eq!(get(&outpost, "p", "/v1/x?otp=000&a=%20").await.0, 200);
    assert_eq!(get(&outpost, "h", "/v1/y").await.0, 200);
    let after = now_secs();
    let seen = up.seen();
    let valid = |digits: u32| -> Vec<String> {
        (before / 30..=after / 30)
            .map(|c| totp_sha256(key, c * 30, digits))
            .collect()
    };
    let (rest, code) = seen[0].target.rsplit_once("&otp=").unwrap();
    assert_eq!(rest, "/v1/x?a=%20");
    assert!(valid(8).contains(&code.to_string()), "{code}");
    let h = seen[1].header("x-otp").unwrap();
    let code = h.strip_prefix("otp ").unwrap();
    assert!(valid(6).contains(&code.to_string()), "{h}");
}

/// A SigV4 verifier for simple requests (S3 canonical URI = path as received; query
/// without characters needing re-encoding), written from the AWS documentation: the
/// upstream recomputes the signature from what it received, as AWS does.
fn verify_sigv4(s: &Seen, secret: &str, region: &str, service: &str) -> Result<(), String> {
    let auth = s.header("authorization").ok_or("no authorization")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .ok_or("algorithm")?;
    let (credential, rest) = rest.split_once(", SignedHeaders=").ok_or("shape")?;
    let (signed_headers, signature) = rest.split_once(", Signature=").ok_or("shape")?;
    let date_time = s.header("x-amz-date").ok_or("no x-amz-date")?;
    let scope = format!("{}/{region}/{service}/aws4_request", &date_time[..8]);
    if !credential.ends_with(&format!("/{scope}")) {
        return Err(format!("credential scope {credential}"));
    }
    let (path, query) = s.target.split_once('?').unwrap_or((s.target.as_str(), ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.contains('=') {
                p.to_string()
            } else {
                format!("{p}=")
            }
        })
        .collect();
    pairs.sort();
    let mut headers = String::new();
    for name in signed_headers.split(';') {
        let v = s
            .header(name)
            .ok_or(format!("signed header {name} missing"))?;
        headers.push_str(&format!("{name}:{}\n", v.trim()));
    }
    let payload = s.header("x-amz-content-sha256").ok_or("no payload hash")?;
    let canonical = format!(
        "{}\n{path}\n{}\n{headers}\n{signed_headers}\n{payload}",
        s.method,
        pairs.join("&")
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut k = hmac_sha256(
        format!("AWS4{secret}").as_bytes(),
        &date_time.as_bytes()[..8],
    );
    for part in [region, service, "aws4_request"] {
        k = hmac_sha256(&k, part.as_bytes());
    }
    let want = hmac_hex(&k, to_sign.as_bytes());
    if want == signature {
        Ok(())
    } else {
        Err(format!(
            "signature mismatch for canonical request:\n{canonical}"
        ))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_sigv4_signature_verifies_at_the_upstream() {
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let up = Upstream::start().await;
    let cfg = Config::new()
        .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", "session-token-value");
    cfg.provider(
        "s3.yaml",
        &format!(
            "name: s3\nbase_url: {}\nauth:\n  type: aws_sigv4\n  service: s3\n  region: eu-west-1\n  access_key_id_env: AWS_ACCESS_KEY_ID\n  secret_access_key_env: AWS_SECRET_ACCESS_KEY\n  session_token_env: AWS_SESSION_TOKEN\n",
            up.url()
        ),
    );
    cfg.provider(
        "s3u.yaml",
        &format!(
            "name: s3u\nbase_url: {}\nauth: {{type: aws_sigv4, service: s3, region: us-east-1, access_key_id_env: AWS_ACCESS_KEY_ID, secret_access_key_env: AWS_SECRET_ACCESS_KEY, unsigned_payload: true}}\n",
            up.url()
        ),
    );
    let outpost = Outpost::start(&cfg);
    let c = client();
    let r = c
        .put(outpost.url("/bucket/key.txt?x-id=PutObject"))
        .header("X-Provider", "s3")
        .header("x-amz-meta-owner", "agent")
        .header("x-amz-security-token", "agent-token")
        .body("hello s3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get(&outpost, "s3u", "/bucket?list-type=2&prefix=logs")
            .await
            .0,
        200
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    let put = &seen[0];
    assert_eq!(put.target, "/bucket/key.txt?x-id=PutObject");
    assert_eq!(&put.body[..], b"hello s3");
    assert_eq!(
        put.header("x-amz-content-sha256"),
        Some(hex::encode(Sha256::digest(b"hello s3")).as_str())
    );
    assert_eq!(
        put.header("x-amz-security-token"),
        Some("session-token-value")
    );
    assert!(
        put.header("authorization").unwrap().contains(
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-meta-owner;x-amz-security-token,"
        ),
        "{:?}",
        put.header("authorization")
    );
    verify_sigv4(put, SECRET, "eu-west-1", "s3").unwrap();
    let list = &seen[1];
    assert_eq!(
        list.header("x-amz-content-sha256"),
        Some("UNSIGNED-PAYLOAD")
    );
    assert_eq!(list.header("x-amz-security-token"), None);
    verify_sigv4(list, SECRET, "us-east-1", "s3").unwrap();
    // A tampered request would not verify.
    let mut tampered = list.clone();
    tampered.target = "/bucket?list-type=2&prefix=other".into();
    assert!(verify_sigv4(&tampered, SECRET, "us-east-1", "s3").is_err());
    let logs = outpost.stop();
    assert!(!logs.contains(SECRET), "{logs}");
}
