//! Phase 2 — is this address admitted (hosts.yaml, longest prefix wins)? It runs before
//! anything names a provider, so an unadmitted caller learns nothing (D5).

use std::net::IpAddr;

use crate::config::hosts::{HostPolicy, Hosts};
use crate::error::ProxyError;

/// The policy for `ip`, or `403 PROXY_HOST_DENIED`.
pub fn admit(hosts: &Hosts, ip: IpAddr) -> Result<&HostPolicy, ProxyError> {
    hosts
        .lookup(ip)
        .ok_or_else(|| ProxyError::HostDenied { ip: ip.to_string() })
}
