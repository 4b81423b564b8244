//! Fuzz-target bodies. Each function runs one parser or policy function of the proxy on
//! arbitrary bytes and asserts the properties the code promises (its doc comments and
//! DECISIONS.md); a failed `assert!` is a crash to libFuzzer. The `cargo fuzz` crate in
//! `fuzz/` wraps each one in a three-line `fuzz_target!`, and the unit tests below replay
//! every committed corpus file (`fuzz/corpus/<target>/`), so every input the fuzzer found
//! interesting — including the reproducers of fixed crashes — stays a regression test.
//!
//! Inputs that carry several parts separate them with the byte `0xFF`, which never occurs
//! in UTF-8 text; text parts are decoded lossily so every byte string is exercised.
//! Not part of the proxy's API.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use secrecy::ExposeSecret;

use crate::config::ConfigError;
use crate::config::env::MapEnv;
use crate::config::hosts::{Hosts, canonical_ip};
use crate::config::provider::{self, Forwarding, Parsed};
use crate::config::settings::{Settings, parse_cidr};
use crate::error::ProxyError;
use crate::framing::{Scanner, Verdicts};
use crate::pipeline::{client_ip, headers};
use crate::policy::glob::Glob;
use crate::policy::path::{MAX_PATH, canonicalize, fully_decoded};
use crate::policy::route::RoutePolicy;

/// The separator of an input's parts.
const SEP: u8 = 0xFF;

fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// `data` up to the first [`SEP`], and the rest (empty when there is none).
fn split_sep(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == SEP) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decode every valid `%XX` escape; anything else is kept as it is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// path: canonicalisation (D7)
// ---------------------------------------------------------------------------------------

/// `policy::path::canonicalize` on arbitrary text. An accepted path is a fixed point,
/// starts with `/`, holds only RFC 3986 path characters with escapes in normal form
/// (upper-case hex, never an unreserved character, never a control character or `\`),
/// has no dot segment and no empty segment except one trailing slash, means the same
/// bytes as the raw path, and is forwarded unchanged by `http::Uri`. The ASCII case of
/// the input never decides whether it is accepted.
pub fn path(data: &[u8]) {
    let raw = text(data);
    let result = canonicalize(&raw);
    let upper = canonicalize(&raw.to_ascii_uppercase());
    assert_eq!(
        result.as_ref().err(),
        upper.as_ref().err(),
        "ASCII case changed the verdict on {raw:?}"
    );
    let Ok(c) = result else {
        return;
    };
    assert!(c.starts_with('/'), "{c:?}");
    assert!(c.len() <= MAX_PATH, "{} bytes", c.len());
    assert_eq!(
        canonicalize(&c).as_deref(),
        Ok(c.as_str()),
        "not a fixed point"
    );

    let b = c.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).copied();
            let lo = b.get(i + 2).copied();
            let upper_hex =
                |d: Option<u8>| d.is_some_and(|d| matches!(d, b'0'..=b'9' | b'A'..=b'F'));
            assert!(
                upper_hex(hi) && upper_hex(lo),
                "escape not in normal form in {c:?}"
            );
            let v = percent_decode(&b[i..i + 3]);
            let v = v.first().copied().unwrap_or(0);
            assert!(
                !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')),
                "unreserved character left encoded in {c:?}"
            );
            assert!(v >= 0x20 && v != 0x7f && v != b'\\', "{v:#x} in {c:?}");
            i += 3;
        } else {
            assert!(
                b[i].is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b[i]),
                "raw {:?} in {c:?}",
                char::from(b[i])
            );
            i += 1;
        }
    }
    let segments: Vec<&str> = c[1..].split('/').collect();
    for (k, s) in segments.iter().enumerate() {
        assert!(
            !s.is_empty() || k + 1 == segments.len(),
            "empty segment in {c:?}"
        );
        assert!(*s != "." && *s != "..", "dot segment in {c:?}");
    }
    assert_eq!(
        percent_decode(raw.as_bytes()),
        percent_decode(b),
        "{raw:?} and {c:?} mean different bytes"
    );
    let uri: Result<http::Uri, _> = format!("http://upstream{c}").parse();
    assert!(
        uri.as_ref().is_ok_and(|u| u.path() == c),
        "{c:?} is not forwarded as it is: {uri:?}"
    );
    let _ = fully_decoded(&c);
}

// ---------------------------------------------------------------------------------------
// glob: pattern matching (§3.1) and suspicious deny matching (D7)
// ---------------------------------------------------------------------------------------

/// One element of a glob, as the reference semantics describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// This character.
    Lit(char),
    /// `*` or `{name}`: one or more characters other than `/`.
    Seg,
    /// `**`: one or more characters.
    Any,
}

fn tokens(pattern: &str) -> Vec<Tok> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                out.push(Tok::Any);
                i += 2;
            }
            '*' => {
                out.push(Tok::Seg);
                i += 1;
            }
            '{' if chars[i..].contains(&'}') => {
                out.push(Tok::Seg);
                while chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            }
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    out
}

/// Reference matcher: the set of path positions reachable after each token, computed
/// left to right (no regex). `O(tokens × path)`.
fn reference_match(toks: &[Tok], path: &[char]) -> bool {
    let n = path.len();
    let mut cur = vec![false; n + 1];
    cur[0] = true;
    for t in toks {
        let mut next = vec![false; n + 1];
        for q in 1..=n {
            next[q] = match t {
                Tok::Lit(c) => cur[q - 1] && path[q - 1] == *c,
                Tok::Seg => path[q - 1] != '/' && (cur[q - 1] || next[q - 1]),
                Tok::Any => cur[q - 1] || next[q - 1],
            };
        }
        cur = next;
    }
    cur[n]
}

/// `policy::glob::Glob` on an arbitrary pattern and path (`pattern 0xFF path`): every
/// pattern of reasonable length compiles; matching agrees with a regex-free reference
/// matcher (case-sensitive, and case-insensitive on ASCII); case-insensitive matching
/// accepts everything case-sensitive matching does. As a deny rule, the pattern denies
/// every path it matches — canonical or fully decoded — and never depends on ASCII case.
pub fn glob(data: &[u8]) {
    let (pattern, path) = split_sep(data);
    let (pattern, path) = (text(pattern), text(path));
    let exact = Glob::new(&pattern, false);
    let folded = Glob::new(&pattern, true);
    if pattern.len() <= 1024 {
        assert!(
            exact.is_ok() && folded.is_ok(),
            "{pattern:?}: {:?} {:?}",
            exact.err(),
            folded.err()
        );
    }
    let (Ok(exact), Ok(folded)) = (exact, folded) else {
        return;
    };
    let path_chars: Vec<char> = path.chars().collect();
    let toks = tokens(&pattern);
    if toks.len().saturating_mul(path_chars.len()) <= 1 << 22 {
        assert_eq!(
            exact.matches(&path),
            reference_match(&toks, &path_chars),
            "{pattern:?} on {path:?}"
        );
        if pattern.is_ascii() && path.is_ascii() {
            let lower: Vec<char> = path.to_ascii_lowercase().chars().collect();
            assert_eq!(
                folded.matches(&path),
                reference_match(&tokens(&pattern.to_ascii_lowercase()), &lower),
                "case-insensitive {pattern:?} on {path:?}"
            );
        }
    }
    if exact.matches(&path) {
        assert!(folded.matches(&path), "{pattern:?} on {path:?}");
    }
    if !pattern.contains(['*', '{']) {
        assert!(
            exact.matches(&pattern),
            "literal {pattern:?} does not match itself"
        );
    }

    let Ok(c) = canonicalize(&path) else {
        return;
    };
    let fwd = Forwarding {
        deny: vec![pattern.to_string()],
        ..Forwarding::default()
    };
    let policy = RoutePolicy::compile(&fwd, &[]);
    assert!(
        policy.is_ok(),
        "{pattern:?} compiled alone but not as a deny rule"
    );
    let Ok(policy) = policy else {
        return;
    };
    let denied = policy.denied_by(&c).is_some();
    if folded.matches(&c) || folded.matches(&fully_decoded(&c)) {
        assert!(denied, "{pattern:?} matches {c:?} but does not deny it");
    }
    for variant in [path.to_ascii_uppercase(), path.to_ascii_lowercase()] {
        let v = canonicalize(&variant);
        assert!(v.is_ok(), "{variant:?}: {v:?}");
        if let Ok(v) = v {
            assert_eq!(
                policy.denied_by(&v).is_some(),
                denied,
                "deny {pattern:?}: {c:?} vs {v:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// provider / hosts: configuration parsing (§1.2, §1.4, D3)
// ---------------------------------------------------------------------------------------

/// A configuration error names its file, a key that exists in the schema (or `.`, the
/// whole file) and a reason.
fn assert_useful(e: &ConfigError, file: &Path, top_keys: &[&str]) {
    assert_eq!(e.file, file, "{e}");
    assert!(!e.reason.trim().is_empty(), "no reason: {e:?}");
    let first = e.key.split(['.', '[']).next().unwrap_or_default();
    assert!(
        e.key == "." || top_keys.contains(&first),
        "key {:?} is not a place in the file: {e}",
        e.key
    );
    assert!(
        e.to_string().starts_with(&file.display().to_string()),
        "{e}"
    );
}

const PROVIDER_KEYS: &[&str] = &[
    "name",
    "base_url",
    "description",
    "docs_url",
    "enabled",
    "default_headers",
    "strip_response_headers",
    "auth",
    "forwarding",
];

/// `config::provider::parse` on arbitrary text: it never panics; an error names the file
/// and a real key; an accepted provider has a valid lower-case name, an `http(s)` origin
/// that round-trips through `split_base_url`, a base path without a trailing slash,
/// methods that are `*` or upper-case tokens, patterns that compile, and non-zero
/// rate-limit windows.
pub fn provider(data: &[u8]) {
    let text = text(data);
    let file = Path::new("providers/fuzz.yaml");
    let _ = provider::salvage_name(&text);
    let def = match provider::parse(file, &text) {
        Err(e) => return assert_useful(&e, file, PROVIDER_KEYS),
        Ok(Parsed::Disabled(_)) => return,
        Ok(Parsed::Enabled(def)) => def,
    };
    assert!(
        !def.name.is_empty()
            && def
                .name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_'),
        "{:?}",
        def.name
    );
    assert!(def.scheme == "http" || def.scheme == "https", "{def:?}");
    assert_eq!(def.origin, format!("{}://{}", def.scheme, def.authority));
    assert!(!def.authority.contains('@'), "{:?}", def.authority);
    assert!(!def.base_path.ends_with('/'), "{:?}", def.base_path);
    let again = provider::split_base_url(&format!("{}{}", def.origin, def.base_path));
    assert_eq!(
        again,
        Ok((
            def.scheme.clone(),
            def.authority.clone(),
            def.base_path.clone()
        )),
        "base_url {:?} does not round-trip",
        def.base_url
    );
    for rule in &def.allow {
        assert!(
            rule.method == "*"
                || (!rule.method.is_empty()
                    && rule.method == rule.method.to_ascii_uppercase()
                    && !rule.method.contains(|c: char| c.is_whitespace())),
            "{:?}",
            rule.method
        );
        assert!(
            Glob::new(&rule.pattern, false).is_ok(),
            "{:?}",
            rule.pattern
        );
    }
    for windows in def.forwarding.rate_limits.values() {
        assert!(windows.iter().all(|w| w.capacity > 0 && w.window_ms > 0));
    }
    for h in &def.strip_response_headers {
        assert_eq!(*h, h.to_ascii_lowercase());
    }
}

/// Addresses to look up in a parsed hosts file: fixed ones, every address written in
/// the text, and two made of the input's last bytes.
fn probe_ips(data: &[u8], text: &str) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![
        Ipv4Addr::LOCALHOST.into(),
        Ipv6Addr::LOCALHOST.into(),
        Ipv4Addr::new(10, 0, 1, 7).into(),
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv4Addr::BROADCAST.into(),
    ];
    ips.extend(
        text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
            .filter_map(|t| t.parse::<IpAddr>().ok())
            .take(16),
    );
    if let Some(b) = data.last_chunk::<4>() {
        ips.push(Ipv4Addr::from(*b).into());
    }
    if let Some(b) = data.last_chunk::<16>() {
        ips.push(Ipv6Addr::from(*b).into());
    }
    ips
}

/// `config::hosts::Hosts::parse` on arbitrary text (PSKs from a fixed environment): it
/// never panics; an error names the file and a real key; lookups never panic, find an
/// entry with a non-empty id and, if it has a PSK, a non-empty one, and treat an
/// IPv4-mapped IPv6 address exactly like the IPv4 address (D4).
pub fn hosts(data: &[u8]) {
    let text = text(data);
    let file = Path::new("hosts.yaml");
    let env = MapEnv::from_pairs([("A_PSK", "s3cret"), ("B_PSK", "other"), ("EMPTY_PSK", "")]);
    let hosts = match Hosts::parse(file, &text, &env) {
        Err(e) => return assert_useful(&e, file, &["hosts"]),
        Ok(h) => h,
    };
    for ip in probe_ips(data, &text) {
        let found = hosts.lookup(ip);
        if let Some(p) = found {
            assert!(!p.id.trim().is_empty());
            assert!(p.psk.as_ref().is_none_or(|s| !s.expose_secret().is_empty()));
        }
        let (v4, mapped) = match canonical_ip(ip) {
            IpAddr::V4(v4) => (v4, IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => continue,
        };
        assert_eq!(
            hosts.lookup(v4.into()).map(|p| &p.id),
            hosts.lookup(mapped).map(|p| &p.id),
            "{v4} and {mapped} are looked up differently"
        );
    }
}

// ---------------------------------------------------------------------------------------
// client_ip: X-Forwarded-For and trusted proxies (D4)
// ---------------------------------------------------------------------------------------

const PEERS: [&str; 8] = [
    "10.0.0.2",
    "203.0.113.9",
    "::ffff:10.0.0.2",
    "127.0.0.1",
    "::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "192.168.1.1",
];

const TRUSTED: [&str; 8] = [
    "10.0.0.0/8",
    "127.0.0.1/32",
    "::1/128",
    "2001:db8::/32",
    "192.168.0.0/16",
    "0.0.0.0/0",
    "::ffff:0:0/96",
    "::/0",
];

/// One `X-Forwarded-For` hop as the reference reads it: an address, `v4:port` or
/// `[v6]:port`, IPv4-mapped addresses as IPv4.
fn reference_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(canonical_ip(ip))
}

/// `TRUSTED_PROXIES` read by the real settings code: every non-empty item is a network
/// with its host bits cleared that prints and parses back to itself, or the settings are
/// refused with an error naming the variable.
fn trusted_proxies(list: &str) -> Option<Vec<IpNet>> {
    let env = MapEnv::from_pairs([("TRUSTED_PROXIES", list)]);
    let settings = match Settings::from_env(&env) {
        Ok(s) => s,
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert_eq!(e.key, "TRUSTED_PROXIES", "{e}");
            }
            return None;
        }
    };
    let items = list.split(',').filter(|i| !i.trim().is_empty()).count();
    assert_eq!(settings.trusted_proxies.len(), items, "{list:?}");
    for net in &settings.trusted_proxies {
        assert_eq!(*net, net.trunc(), "host bits left in {net}");
        assert_eq!(
            parse_cidr(&net.to_string()),
            Ok(*net),
            "{net} does not round-trip"
        );
    }
    Some(settings.trusted_proxies)
}

/// `pipeline::client_ip::resolve` with input `[trusted-mask, peer-index]` followed by
/// XFF lines, or by `TRUSTED_PROXIES 0xFF XFF lines`: trusted proxies parse as
/// [`trusted_proxies`] says; an untrusted peer is the client whatever the headers say;
/// otherwise the client is the right-most hop that is not a trusted proxy (or the
/// left-most hop when all are trusted), and an unreadable hop on the way is refused with
/// a short, printable message. The result is never an IPv4-mapped IPv6 address.
pub fn client_ip(data: &[u8]) {
    let [mask, peer_idx, rest @ ..] = data else {
        return;
    };
    let (list, xff) = match rest.iter().position(|&b| b == SEP) {
        Some(i) => (text(&rest[..i]), &rest[i + 1..]),
        None => (Cow::Borrowed(""), rest),
    };
    let Some(mut trusted) = trusted_proxies(&list) else {
        return;
    };
    trusted.extend(
        TRUSTED
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .filter_map(|(_, n)| n.parse::<IpNet>().ok()),
    );
    let Ok(peer_ip) = PEERS[usize::from(*peer_idx) % PEERS.len()].parse::<IpAddr>() else {
        return;
    };
    let peer = SocketAddr::new(peer_ip, 40000);
    let mut headers = HeaderMap::new();
    for line in xff.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", v);
        }
    }
    let got = client_ip::resolve(peer, &headers, &trusted);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));

    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let b = v.as_bytes();
        if b.iter().all(|&c| c == b'\t' || (0x20..0x7f).contains(&c)) {
            let s = String::from_utf8_lossy(b);
            hops.extend(s.split(',').map(|h| reference_hop(h.trim())));
        } else {
            hops.push(None); // not text: unreadable as a whole
        }
    }
    let peer_ip = canonical_ip(peer_ip);
    let mut expected = Some(peer_ip);
    if is_trusted(&peer_ip) {
        for hop in hops.iter().rev() {
            expected = *hop;
            match hop {
                Some(ip) if is_trusted(ip) => continue,
                _ => break,
            }
        }
    }
    match &got {
        Ok(ip) => {
            assert_eq!(Some(*ip), expected, "peer {peer_ip}, hops {hops:?}");
            assert_eq!(canonical_ip(*ip), *ip, "{ip} is not canonical");
        }
        Err(e) => {
            assert_eq!(expected, None, "refused: peer {peer_ip}, hops {hops:?}");
            assert!(matches!(e, ProxyError::HostDenied { .. }), "{e:?}");
            if let ProxyError::HostDenied { ip } = e {
                assert!(ip.len() <= 64 && ip.chars().all(|c| c.is_ascii_graphic()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// headers: what the upstream may see (D9)
// ---------------------------------------------------------------------------------------

/// Headers an agent can never get forwarded (D9), written out independently of
/// `pipeline::headers`.
fn never_forwarded(name: &str, connection_listed: &HashSet<String>) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "host"
            | "authorization"
            | "x-provider"
            | "x-broker"
            | "x-outpost-auth"
            | "forwarded"
            | "x-real-ip"
            | "cf-connecting-ip"
            // Also dropped, beyond D9's list: the length (the body is re-framed by the
            // client) and one more client-address header.
            | "content-length"
            | "true-client-ip"
    ) || name.starts_with("x-forwarded-")
        || connection_listed.contains(name)
}

/// `Name: value` lines; lines that are not a valid header are skipped.
fn header_lines(bytes: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let value = line[colon + 1..].trim_ascii();
            Some((
                HeaderName::from_bytes(&line[..colon]).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            ))
        })
        .collect()
}

/// `pipeline::headers::outbound` with input `agent-lines 0xFF default-lines`: nothing the
/// agent sent that D9 forbids (hop-by-hop, anything named in `Connection`, `Host`,
/// routing and forwarding headers, the PSK, `Authorization`) is forwarded; each default
/// header appears exactly once, with the last value given for it; every other agent
/// header is forwarded unchanged and in order.
pub fn headers(data: &[u8]) {
    let (agent_part, default_part) = split_sep(data);
    let mut agent = HeaderMap::new();
    for (n, v) in header_lines(agent_part) {
        agent.append(n, v);
    }
    let defaults = header_lines(default_part);
    let out = headers::outbound(&agent, &defaults);

    let listed: HashSet<String> = agent
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let default_names: HashSet<&HeaderName> = defaults.iter().map(|(n, _)| n).collect();
    for name in &default_names {
        let last = defaults
            .iter()
            .rev()
            .find(|(n, _)| n == *name)
            .map(|(_, v)| v);
        let sent: Vec<&HeaderValue> = out
            .iter()
            .filter(|(n, _)| n == *name)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(sent, last.into_iter().collect::<Vec<_>>(), "default {name}");
    }
    let expected: Vec<(&HeaderName, &HeaderValue)> = agent
        .iter()
        .filter(|(n, _)| !default_names.contains(n) && !never_forwarded(n.as_str(), &listed))
        .collect();
    let forwarded: Vec<(&HeaderName, &HeaderValue)> = out
        .iter()
        .filter(|(n, _)| !default_names.contains(n))
        .map(|(n, v)| (n, v))
        .collect();
    assert_eq!(forwarded, expected, "agent headers forwarded");
}

// ---------------------------------------------------------------------------------------
// framing: the Content-Length + Transfer-Encoding guard
// ---------------------------------------------------------------------------------------

/// The verdicts a scanner records for `chunks`, without trailing `false`s (an empty queue
/// reads as `false`).
fn verdicts(chunks: &[&[u8]], total: usize) -> Vec<bool> {
    let v = Verdicts::default();
    let mut s = Scanner::new(v.clone());
    for c in chunks {
        s.feed(c);
    }
    let mut out: Vec<bool> = (0..total / 4 + 2).map(|_| v.next_is_ambiguous()).collect();
    while out.last() == Some(&false) {
        out.pop();
    }
    out
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the first request head in `stream` (leading empty lines skipped) has both a
/// `Content-Length` and a `Transfer-Encoding` header line — read independently of the
/// scanner.
fn first_head_is_ambiguous(stream: &[u8]) -> bool {
    let start = stream
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(stream.len());
    let stream = &stream[start..];
    let Some(end) = stream.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&stream[..end]);
    let names: Vec<String> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim().to_ascii_lowercase())
        .collect();
    names.iter().any(|n| n == "content-length") && names.iter().any(|n| n == "transfer-encoding")
}

/// `framing::Scanner` with input `[read-size, stream…]`: the verdicts do not depend on
/// how the stream is split into reads (whole vs reads of 1–256 bytes), and an HTTP/1
/// stream whose first head carries both `Content-Length` and `Transfer-Encoding` gets
/// `true` as its first verdict.
pub fn framing(data: &[u8]) {
    let Some((&k, stream)) = data.split_first() else {
        return;
    };
    let whole = verdicts(&[stream], stream.len());
    let pieces: Vec<&[u8]> = stream.chunks(usize::from(k) + 1).collect();
    let split = verdicts(&pieces, stream.len());
    assert_eq!(
        whole,
        split,
        "reads of {} bytes changed the verdicts",
        usize::from(k) + 1
    );
    if !stream.starts_with(H2_PREFACE) && first_head_is_ambiguous(stream) {
        assert_eq!(
            whole.first(),
            Some(&true),
            "an ambiguous head was not flagged"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Run every file of `fuzz/corpus/<target>` through `run`; a failure names the file.
    fn replay(target: &str, run: fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {} is empty", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("{target}: corpus file {} fails", file.display());
            }
        }
    }

    #[test]
    fn path_corpus() {
        replay("path", super::path);
    }

    #[test]
    fn glob_corpus() {
        replay("glob", super::glob);
    }

    #[test]
    fn provider_corpus() {
        replay("provider", super::provider);
    }

    #[test]
    fn hosts_corpus() {
        replay("hosts", super::hosts);
    }

    #[test]
    fn client_ip_corpus() {
        replay("client_ip", super::client_ip);
    }

    #[test]
    fn headers_corpus() {
        replay("headers", super::headers);
    }

    #[test]
    fn framing_corpus() {
        replay("framing", super::framing);
    }
}
