//! Phase 1 — who is calling (D4). The TCP peer, unless the peer is one of
//! `TRUSTED_PROXIES`: then `X-Forwarded-For` is read right to left and the first hop
//! that is not a trusted proxy is the client. `cf-connecting-ip`, `X-Real-IP` and
//! friends are never trusted. IPv4-mapped IPv6 addresses are treated as IPv4.
//! It comes first because every later decision is about this address.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::hosts::canonical_ip;
use crate::error::ProxyError;

/// The client's address.
pub fn resolve(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<IpAddr, ProxyError> {
    let peer = canonical_ip(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let ip = parse_hop(hop).ok_or_else(|| ProxyError::HostDenied { ip: sanitize(hop) })?;
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Ok(client)
}

/// One hop: an address, possibly `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|s| canonical_ip(s.ip()))
}

/// Keep a bad hop printable and short in the error message.
fn sanitize(hop: &str) -> String {
    hop.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in xff {
            m.append("x-forwarded-for", v.parse().unwrap());
        }
        m
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 1234)
    }

    #[test]
    fn untrusted_peer_cannot_choose_its_address() {
        let ip = resolve(
            peer("203.0.113.9"),
            &h(&["127.0.0.1"]),
            &nets(&["10.0.0.0/8"]),
        )
        .unwrap();
        assert_eq!(ip.to_string(), "203.0.113.9");
        let ip = resolve(peer("203.0.113.9"), &h(&["127.0.0.1"]), &[]).unwrap();
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn trusted_chain_resolves_to_rightmost_untrusted_hop() {
        let t = nets(&["10.0.0.0/8"]);
        // client-supplied garbage on the left is ignored
        let ip = resolve(
            peer("10.0.0.2"),
            &h(&["127.0.0.1, 198.51.100.7, 10.0.0.5"]),
            &t,
        )
        .unwrap();
        assert_eq!(ip.to_string(), "198.51.100.7");
        let ip = resolve(peer("10.0.0.2"), &h(&["127.0.0.1", "198.51.100.7"]), &t).unwrap();
        assert_eq!(ip.to_string(), "198.51.100.7");
        // no header: the proxy itself
        let ip = resolve(peer("10.0.0.2"), &HeaderMap::new(), &t).unwrap();
        assert_eq!(ip.to_string(), "10.0.0.2");
        // unparsable nearest hop: refused
        assert!(resolve(peer("10.0.0.2"), &h(&["nonsense"]), &t).is_err());
    }

    #[test]
    fn mapped_v6_peer_is_v4() {
        let ip = resolve(peer("::ffff:127.0.0.1"), &HeaderMap::new(), &[]).unwrap();
        assert_eq!(ip.to_string(), "127.0.0.1");
    }
}
