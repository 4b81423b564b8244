//! What the two Groww mint modules share (reference §8.11, §8.12): the token slot, the
//! mint URL and request, the mint response and its TTL rules, and the `sign-request` /
//! `on-response` behaviour. One source file, compiled into both `groww_approval_mint`
//! and `groww_totp_mint` (`#[path]`), since each module is an independent component.

use serde_json::Value;

use outpost_plugin_sdk::{Config, Error, Header, Request, Verdict, http, kv, set_header};

use crate::mint::{HostKv, Minted, Slot};

/// The token slot, shared by both Groww modules and by a `bearer_redis` alternative
/// (`redis_key: groww:token`). The host grants it as the provider-private prefix of a
/// provider named `groww`.
pub const TOKEN_KEY: &str = "groww:token";
/// The mint lock.
pub const LOCK_KEY: &str = "groww:token:lock";
/// The default mint endpoint path.
pub const DEFAULT_MINT_PATH: &str = "/v1/token/api/access";
/// TTL when the response has no usable `expiry` (18 h).
pub const FALLBACK_TTL: u64 = 64_800;

/// The mint path as configured, with a leading `/` added if missing (as the TypeScript
/// runtime did). An absolute URL is refused: the mint endpoint is on the provider's own
/// origin, the only one the host grants for a `mint_path` (D21).
pub fn normalise_mint_path(path: &str) -> Result<String, &'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || path.starts_with("//") {
        return Err(
            "'mint_path' must be a path on the provider's base URL (e.g. /v1/token/api/access), not a URL.",
        );
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'#')
    {
        return Err("'mint_path' must be a URL path without spaces or '#'.");
    }
    Ok(if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    })
}

/// The mint URL: the request's `scheme://authority` + `mint_path` (the original's Python
/// runtime used `base_url` + `mint_path`; a path prefix in `base_url` is not repeated).
pub fn mint_url(scheme: &str, authority: &str, mint_path: &str) -> String {
    format!("{scheme}://{authority}{mint_path}")
}

/// A JSON object body with the Python runtime's separators (`", "`, `": "`), keys in
/// the given order.
pub fn json_body(pairs: &[(&str, &str)]) -> String {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {}", Value::from(*k), Value::from(*v)))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Seconds since the epoch of an ISO-8601 timestamp as the Python runtime read it
/// (`datetime.fromisoformat` after replacing `Z` by `+00:00`): `YYYY-MM-DD`, optionally
/// `T` or a space and `HH:MM[:SS[.fraction]]`, optionally `Z` or `±HH:MM[:SS]` /
/// `±HHMM`. Without an offset the time is UTC (the Python runtime's reading; the
/// TypeScript runtime used the process's local time, §13 #37).
pub fn parse_iso8601(s: &str) -> Option<f64> {
    let s = s.trim();
    let (date, rest) = if s.len() > 10 {
        s.split_at(10)
    } else {
        (s, "")
    };
    let mut d = date.split('-');
    let (y, mo, da) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || date.len() != 10 || !(1..=12).contains(&mo) || !(1..=31).contains(&da)
    {
        return None;
    }
    let mut secs = days_from_civil(y, mo, da) as f64 * 86_400.0;
    if rest.is_empty() {
        return Some(secs);
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (time, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (hms, frac) = match time.split_once(['.', ',']) {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let h = num(parts[0])?;
    let mi = num(parts[1])?;
    let se = parts.get(2).map(|p| num(p)).unwrap_or(Some(0))?;
    if h > 23 || mi > 59 || se > 59 {
        return None;
    }
    secs += (h * 3600 + mi * 60 + se) as f64;
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        secs += format!("0.{f}").parse::<f64>().ok()?;
    }
    match offset {
        "" | "Z" | "z" => {}
        o => {
            let sign = if o.starts_with('-') { -1.0 } else { 1.0 };
            let digits: String = o[1..].chars().filter(|c| *c != ':').collect();
            if ![2, 4, 6].contains(&digits.len()) {
                return None;
            }
            let oh = num(&digits[0..2])?;
            let om = if digits.len() >= 4 {
                num(&digits[2..4])?
            } else {
                0
            };
            let os = if digits.len() == 6 {
                num(&digits[4..6])?
            } else {
                0
            };
            if oh > 23 || om > 59 || os > 59 {
                return None;
            }
            secs -= sign * (oh * 3600 + om * 60 + os) as f64;
        }
    }
    Some(secs)
}

/// How long to keep a token: with a parsable `expiry` string,
/// `max(60, floor(expiry − now) − 120)` (refresh two minutes early, at least a minute);
/// otherwise 18 h.
pub fn token_ttl(expiry: Option<&Value>, now_secs: f64) -> u64 {
    let Some(at) = expiry.and_then(Value::as_str).and_then(parse_iso8601) else {
        return FALLBACK_TTL;
    };
    let left = (at - now_secs).floor() - 120.0;
    if left <= 60.0 {
        60
    } else if left >= 1e12 {
        FALLBACK_TTL
    } else {
        // Finite, whole and within u64 here.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = left as u64;
        n
    }
}

/// Interpret the mint endpoint's answer: 2xx with a JSON `token`.
pub fn parse_mint_response(
    who: &str,
    status: u16,
    body: &[u8],
    now_secs: f64,
) -> Result<Minted, String> {
    if !(200..300).contains(&status) {
        return Err(format!("{who}: mint endpoint returned {status}."));
    }
    let json: Value = serde_json::from_slice(body)
        .map_err(|_| format!("{who}: mint endpoint did not answer with JSON."))?;
    match json.get("token") {
        Some(Value::String(t)) if !t.is_empty() => Ok(Minted {
            token: t.clone(),
            ttl_secs: token_ttl(json.get("expiry"), now_secs),
        }),
        _ => Err(format!("{who}: mint endpoint response has no 'token'.")),
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Give up on the mint endpoint after this long.
pub const MINT_TIMEOUT_MS: u32 = 15_000;

/// Send a mint request — `POST <url>` with `Authorization: Bearer <api key>` and a JSON
/// `body` — and read the token from the answer.
pub fn send_mint(who: &str, url: String, api_key: &str, body: String) -> Result<Minted, Error> {
    let json = || b"application/json".to_vec();
    let outgoing = http::OutgoingRequest {
        method: "POST".into(),
        url,
        headers: vec![
            Header {
                name: "Authorization".into(),
                value: format!("Bearer {api_key}").into_bytes(),
            },
            Header {
                name: "Content-Type".into(),
                value: json(),
            },
            Header {
                name: "Accept".into(),
                value: json(),
            },
        ],
        body: Some(body.into_bytes()),
        timeout_ms: Some(MINT_TIMEOUT_MS),
    };
    let resp = http::send(&outgoing)
        .map_err(|e| Error::Unavailable(format!("{who}: mint request failed: {e}")))?;
    parse_mint_response(who, resp.status, &resp.body, now_secs()).map_err(Error::Unavailable)
}

/// `sign-request` for both modules: the token from the shared slot (one replica mints at
/// a time), sent as `Authorization: Bearer <token>`.
pub fn sign(
    who: &'static str,
    mut req: Request,
    mint: impl FnOnce(&Request) -> Result<Minted, Error>,
) -> Result<Request, Error> {
    let slot = Slot {
        who,
        key: TOKEN_KEY,
        lock: LOCK_KEY,
        timeout_message: "Timed out waiting for peer to mint Groww token".into(),
    };
    let token = slot.get_or_mint(&HostKv, std::thread::sleep, || mint(&req))?;
    set_header(
        &mut req.headers,
        "Authorization",
        format!("Bearer {token}").as_bytes(),
    );
    Ok(req)
}

/// `on-response` for both modules: a status in `invalidate_on` drops the token and asks
/// the host to retry once with a fresh one (D17).
pub fn on_response(
    who: &'static str,
    config: &str,
    status: u16,
    default_invalidate_on: &[u16],
) -> Result<Verdict, Error> {
    let cfg = Config::parse(config, who)?;
    if !cfg.invalidate_on(default_invalidate_on)?.contains(&status) {
        return Ok(Verdict::Accept);
    }
    kv::delete(TOKEN_KEY).map_err(|e| Error::Unavailable(format!("{who}: state store: {e}")))?;
    Ok(Verdict::Retry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iso8601_like_python() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_iso8601("2023-11-14T22:13:20Z"), Some(1_700_000_000.0));
        assert_eq!(
            parse_iso8601("2023-11-14T22:13:20"),
            Some(1_700_000_000.0),
            "naive = UTC"
        );
        assert_eq!(
            parse_iso8601("2023-11-15T03:43:20+05:30"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            parse_iso8601("2023-11-14T17:13:20-0500"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            parse_iso8601("2023-11-14 22:13:20.5+00:00"),
            Some(1_700_000_000.5)
        );
        assert_eq!(parse_iso8601("2023-11-14T22:13Z"), Some(1_699_999_980.0));
        assert_eq!(parse_iso8601("2023-11-14"), Some(1_699_920_000.0));
        assert_eq!(parse_iso8601("2000-02-29T00:00:00Z"), Some(951_782_400.0));
        for bad in [
            "",
            "tomorrow",
            "2023-13-01",
            "2023-11-14T25:00:00",
            "2023-11-14T22:13:20+5",
            "2023/11/14",
            "2023-11-14T2:13",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn ttl_rules() {
        let now = 1_700_000_000.0;
        assert_eq!(
            token_ttl(Some(&json!("2023-11-15T22:13:20Z")), now),
            86_400 - 120
        );
        assert_eq!(
            token_ttl(Some(&json!("2023-11-14T22:15:00Z")), now),
            60,
            "floor of a minute"
        );
        assert_eq!(
            token_ttl(Some(&json!("2020-01-01T00:00:00Z")), now),
            60,
            "already expired"
        );
        assert_eq!(token_ttl(Some(&json!("soon")), now), 64_800);
        assert_eq!(token_ttl(Some(&json!(12345)), now), 64_800);
        assert_eq!(token_ttl(None, now), 64_800);
    }

    #[test]
    fn mint_responses() {
        let now = 1_700_000_000.0;
        assert_eq!(
            parse_mint_response(
                "w",
                200,
                br#"{"token":"t1","expiry":"2023-11-15T22:13:20Z"}"#,
                now
            )
            .unwrap(),
            Minted {
                token: "t1".into(),
                ttl_secs: 86_280
            }
        );
        assert_eq!(
            parse_mint_response("w", 200, br#"{"token":"t1"}"#, now)
                .unwrap()
                .ttl_secs,
            64_800
        );
        assert_eq!(
            parse_mint_response("w", 403, b"{}", now).unwrap_err(),
            "w: mint endpoint returned 403."
        );
        assert!(parse_mint_response("w", 200, br#"{"access_token":"x"}"#, now).is_err());
        assert!(parse_mint_response("w", 200, b"nope", now).is_err());
    }

    #[test]
    fn paths_urls_and_bodies() {
        assert_eq!(
            normalise_mint_path("/v1/token/api/access").unwrap(),
            "/v1/token/api/access"
        );
        assert_eq!(normalise_mint_path("v1/token").unwrap(), "/v1/token");
        assert!(normalise_mint_path("https://api.groww.in/v1/token").is_err());
        assert!(normalise_mint_path("//evil.example/x").is_err());
        assert_eq!(
            mint_url("https", "api.groww.in", "/v1/x"),
            "https://api.groww.in/v1/x"
        );
        assert_eq!(
            json_body(&[
                ("key_type", "approval"),
                ("checksum", "ab"),
                ("timestamp", "1700000000")
            ]),
            r#"{"key_type": "approval", "checksum": "ab", "timestamp": "1700000000"}"#
        );
        assert_eq!(json_body(&[("q", "a\"b")]), r#"{"q": "a\"b"}"#);
    }
}
