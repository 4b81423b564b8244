//! `aws_sigv4`: AWS Signature Version 4 (D25), e.g. for S3 or any AWS JSON/query API.
//!
//! Keys: `service` and `region` (required, e.g. `s3` / `eu-west-1`), `access_key_id_env`
//! and `secret_access_key_env` (required secrets), `session_token_env` (optional secret:
//! temporary credentials; sent as `x-amz-security-token` and signed), `unsigned_payload`
//! (default `false`; `true` sends and signs `x-amz-content-sha256: UNSIGNED-PAYLOAD`, so
//! bodies stream past the module — `body-access: none`; otherwise the module reads the
//! body, `body-access: read`, and sends and signs its SHA-256), `invalidate_on`
//! (`[401]`; static credentials, so a rejection is only reported).
//!
//! What is signed (pure functions below, checked against the `aws-sigv4` crate as an
//! independent oracle in the tests):
//! * the method; the path exactly as forwarded — as is for S3 (`s3`, `s3-object-lambda`,
//!   `s3-outposts`, `s3express`: S3 does not re-encode), percent-encoded once more
//!   (everything but unreserved characters and `/`) for every other service, as the AWS
//!   SDKs do; the query exactly as forwarded, canonicalised (each `name=value` decoded,
//!   `+` as a space, re-encoded with only unreserved characters left, sorted);
//! * the headers `host` (the forwarded authority without a default port, as the HTTP
//!   client sends it), `x-amz-content-sha256`, `x-amz-date`, `x-amz-security-token` (with
//!   a session token) and any other `x-amz-*` header the agent sent (S3 refuses requests
//!   with unsigned `x-amz-*` headers), values trimmed with inner runs of spaces collapsed;
//! * `Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/<service>/aws4_request,
//!   SignedHeaders=<names>, Signature=<hex>`.
//!
//! Agent-supplied `x-amz-date`, `x-amz-content-sha256` and `x-amz-security-token` are
//! removed (and replaced by the module's own where it has them), never signed or
//! forwarded on the agent's behalf.

// Shared with `api_key_query`: one source file, compiled into each module that needs it.
// This module only decodes query pieces; the editing helpers go unused here.
#[allow(dead_code)]
#[path = "../../api_key_query/src/query.rs"]
mod query;
use hmac::{Hmac, Mac};
use outpost_plugin_sdk::{
    BodyAccess, Config, Error, Guest, Header, Memo, ModuleInfo, Request, ResponseHook,
    ResponseInfo, Verdict, export_module, report_rejection, secret, set_header,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const WHO: &str = "AwsSigV4Auth";
const KEYS: &[&str] = &[
    "service",
    "region",
    "access_key_id_env",
    "secret_access_key_env",
    "session_token_env",
    "unsigned_payload",
    "invalidate_on",
];
const INVALIDATE_ON: &[u16] = &[401];
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Services whose canonical path is the path as sent (no second encoding).
const SINGLE_ENCODED: &[&str] = &["s3", "s3-object-lambda", "s3-outposts", "s3express"];

/// The validated configuration (secrets excluded).
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    service: String,
    region: String,
    session_token_env: Option<String>,
    unsigned_payload: bool,
}

/// The credentials.
#[derive(Clone)]
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

fn scope_part(cfg: &Config, key: &str) -> Result<String, Error> {
    let v = cfg.required_str(key)?;
    if !v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(cfg.error(format_args!(
            "'{key}' must be lower-case letters, digits and '-' (e.g. 's3', 'us-east-1')."
        )));
    }
    Ok(v.to_string())
}

fn settings(cfg: &Config) -> Result<Settings, Error> {
    cfg.allow_only(KEYS)?;
    cfg.invalidate_on(INVALIDATE_ON)?;
    cfg.required_str("access_key_id_env")?;
    cfg.required_str("secret_access_key_env")?;
    let unsigned_payload = match cfg.get("unsigned_payload") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(cfg.error("'unsigned_payload' must be true or false.")),
    };
    Ok(Settings {
        service: scope_part(cfg, "service")?,
        region: scope_part(cfg, "region")?,
        session_token_env: cfg
            .str_opt("session_token_env")?
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        unsigned_payload,
    })
}

fn credentials(cfg: &Config, s: &Settings) -> Result<Credentials, Error> {
    Ok(Credentials {
        access_key_id: cfg.required_secret("access_key_id_env")?,
        secret_access_key: cfg.required_secret("secret_access_key_env")?,
        session_token: match &s.session_token_env {
            None => None,
            Some(name) => {
                Some(secret(name).ok_or_else(|| {
                    cfg.error(format_args!("env var '{name}' is not set or empty."))
                })?)
            }
        },
    })
}

/// Percent-encode every byte except unreserved characters (and `/` when `keep_slash`).
fn aws_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI of the path as sent.
fn canonical_uri(service: &str, path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    if SINGLE_ENCODED.contains(&service) {
        path.to_string()
    } else {
        aws_encode(path.as_bytes(), true)
    }
}

/// The canonical query string of the query as sent.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                aws_encode(&query::pct_decode(k), false),
                aws_encode(&query::pct_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Trim and collapse runs of spaces, as SigV4 canonical header values require.
fn trim_all(v: &str) -> String {
    v.split(' ')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `Host` header the HTTP client sends: the authority without a default port.
fn host_of(scheme: &str, authority: &str) -> String {
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    match authority.strip_suffix(default) {
        Some(host) if !default.is_empty() && !host.is_empty() => host.to_string(),
        _ => authority.to_string(),
    }
}

/// `YYYYMMDD'T'HHMMSS'Z'` of a Unix time.
fn amz_date(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(0);
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|_| Error::Internal(format!("{WHO}: cannot key the HMAC.")))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// Headers only the signer may set: the agent's copies are removed before signing, so
/// none is ever signed or forwarded on the agent's behalf (an agent session token
/// included, when the configuration has none).
const RESERVED: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
];

/// Drop the agent's copies of the headers the signer owns.
fn drop_reserved(headers: &mut Vec<Header>) {
    headers.retain(|h| !RESERVED.iter().any(|r| h.name.eq_ignore_ascii_case(r)));
}

/// Everything signing needs, all plain data.
struct Input<'a> {
    method: &'a str,
    scheme: &'a str,
    authority: &'a str,
    path: &'a str,
    query: &'a str,
    /// The request's headers (only `x-amz-*` ones are considered).
    headers: &'a [Header],
    /// Hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    payload_hash: &'a str,
    unix_secs: u64,
    service: &'a str,
    region: &'a str,
}

/// The headers to set on the request, in order.
#[derive(Debug, PartialEq)]
struct Signed {
    headers: Vec<(String, String)>,
    canonical_request: String,
    signature: String,
}

/// Sign: pure, checked natively against the `aws-sigv4` crate.
fn sign(input: &Input<'_>, creds: &Credentials) -> Result<Signed, Error> {
    let date_time = amz_date(input.unix_secs);
    let date = &date_time[..8];
    // Our headers first; agent x-amz-* headers other than ours are signed as sent.
    let mut ours: Vec<(String, String)> = vec![
        ("x-amz-date".into(), date_time.clone()),
        (
            "x-amz-content-sha256".into(),
            input.payload_hash.to_string(),
        ),
    ];
    if let Some(token) = &creds.session_token {
        ours.push(("x-amz-security-token".into(), token.clone()));
    }
    let mut canonical: Vec<(String, String)> = ours.clone();
    canonical.push(("host".into(), host_of(input.scheme, input.authority)));
    for h in input.headers {
        let name = h.name.to_ascii_lowercase();
        if !name.starts_with("x-amz-") || RESERVED.contains(&name.as_str()) {
            continue;
        }
        let value = trim_all(&String::from_utf8_lossy(&h.value));
        match canonical.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => canonical.push((name, value)),
        }
    }
    for (_, v) in canonical.iter_mut() {
        *v = trim_all(v);
    }
    canonical.sort_by(|a, b| a.0.cmp(&b.0));
    let signed_headers = canonical
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let header_block: String = canonical
        .iter()
        .map(|(n, v)| format!("{n}:{v}\n"))
        .collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method,
        canonical_uri(input.service, input.path),
        canonical_query(input.query),
        header_block,
        signed_headers,
        input.payload_hash
    );
    let scope = format!("{date}/{}/{}/aws4_request", input.region, input.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{date_time}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        date.as_bytes(),
    )?;
    let k_region = hmac(&k_date, input.region.as_bytes())?;
    let k_service = hmac(&k_region, input.service.as_bytes())?;
    let k_signing = hmac(&k_service, b"aws4_request")?;
    let signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes())?);
    let mut headers = ours;
    headers.push((
        "authorization".into(),
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    Ok(Signed {
        headers,
        canonical_request,
        signature,
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What signing needs from the configuration: the settings and the credentials.
struct Signing {
    settings: Settings,
    credentials: Credentials,
}

fn signing(config: &str) -> Result<Signing, Error> {
    let cfg = Config::parse(config, WHO)?;
    let settings = settings(&cfg)?;
    let credentials = credentials(&cfg, &settings)?;
    Ok(Signing {
        settings,
        credentials,
    })
}

// Derived once per instance and configuration (see `Memo`), not on every request.
thread_local! { static SIGNING: Memo<Signing> = const { Memo::new() }; }

struct AwsSigV4;

impl Guest for AwsSigV4 {
    fn validate_config(config: String) -> Result<ModuleInfo, Error> {
        let cfg = Config::parse(&config, WHO)?;
        let s = settings(&cfg)?;
        credentials(&cfg, &s)?;
        Ok(ModuleInfo {
            body_access: if s.unsigned_payload {
                BodyAccess::None
            } else {
                BodyAccess::Read
            },
            response_hook: ResponseHook::Errors,
        })
    }

    fn sign_request(config: String, mut req: Request) -> Result<Request, Error> {
        let signing = SIGNING.with(|m| m.get(&config, signing))?;
        let (s, creds) = (&signing.settings, &signing.credentials);
        // `body-access: read`: the body is shown, never replaced (`None` = unchanged).
        let body = req.body.take();
        let payload_hash = if s.unsigned_payload {
            UNSIGNED_PAYLOAD.to_string()
        } else {
            hex::encode(Sha256::digest(body.as_deref().unwrap_or_default()))
        };
        drop_reserved(&mut req.headers);
        let signed = sign(
            &Input {
                method: &req.method,
                scheme: &req.scheme,
                authority: &req.authority,
                path: &req.path,
                query: &req.query,
                headers: &req.headers,
                payload_hash: &payload_hash,
                unix_secs: now_secs(),
                service: &s.service,
                region: &s.region,
            },
            creds,
        )?;
        for (name, value) in &signed.headers {
            set_header(&mut req.headers, name, value.as_bytes());
        }
        Ok(req)
    }

    fn on_response(config: String, resp: ResponseInfo) -> Result<Verdict, Error> {
        report_rejection(&config, WHO, INVALIDATE_ON, resp.status)
    }
}

export_module!(AwsSigV4);
// Each call's strings are small blocks: recycle them instead of asking dlmalloc.
outpost_plugin_sdk::small_block_allocator!();
// Signing depends only on the config, the request, secrets and the clock: one instance
// may serve many requests of its provider.
outpost_plugin_sdk::declare_stateless!();

#[cfg(test)]
mod tests;
