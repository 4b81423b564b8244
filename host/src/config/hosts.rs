//! `hosts.yaml` (reference §1.4): which source networks may use Outpost, whether they
//! may call sensitive routes, and which pre-shared key they must present.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::Deserialize;

use super::env::Env;
use super::error::ConfigError;
use super::settings::parse_cidr;
use super::yaml;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    #[serde(default)]
    hosts: Vec<HostEntryRaw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntryRaw {
    id: String,
    cidrs: Vec<String>,
    can_call_sensitive: Option<bool>,
    can_trade: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    auth_token_env: Option<String>,
}

/// One admitted host (or network of hosts).
#[derive(Debug)]
pub struct HostPolicy {
    /// The entry's id (logged, and named in errors).
    pub id: String,
    /// May call routes marked sensitive.
    pub can_call_sensitive: bool,
    /// Pre-shared key the host must send as `X-Outpost-Auth`, if any.
    pub psk: Option<SecretString>,
}

/// All host entries, ready for longest-prefix lookup.
#[derive(Debug, Default)]
pub struct Hosts {
    /// (network, index into `policies`), longest prefix first.
    nets: Vec<(IpNet, usize)>,
    policies: Vec<HostPolicy>,
}

impl Hosts {
    /// Load and validate `path`, reading PSKs from `env`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, ".", format!("cannot read hosts file: {e}")))?;
        Self::parse(path, &text, env)
    }

    /// Parse `text` as the content of `path`.
    pub fn parse(path: &Path, text: &str, env: &dyn Env) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError::new(
                path,
                ".",
                "hosts file is empty; expected a 'hosts:' list",
            ));
        }
        let raw: HostsFile = yaml::parse(path, text)?;
        let mut hosts = Hosts::default();
        for (i, h) in raw.hosts.into_iter().enumerate() {
            let key = format!("hosts[{i}]");
            if h.id.trim().is_empty() {
                return Err(ConfigError::new(
                    path,
                    format!("{key}.id"),
                    "must not be empty",
                ));
            }
            if hosts.policies.iter().any(|p| p.id == h.id) {
                return Err(ConfigError::new(
                    path,
                    format!("{key}.id"),
                    format!("duplicate host id '{}'", h.id),
                ));
            }
            let psk = match &h.auth_token_env {
                None => None,
                Some(var) => match env.var(var).filter(|v| !v.is_empty()) {
                    Some(v) => Some(SecretString::from(v)),
                    None => {
                        return Err(ConfigError::new(
                            path,
                            format!("{key}.auth_token_env"),
                            format!(
                                "host '{}' requires PSK via env var '{var}' but it is unset or empty. \
                                 Set it (or remove auth_token_env to disable PSK for this host).",
                                h.id
                            ),
                        ));
                    }
                },
            };
            let idx = hosts.policies.len();
            for (j, cidr) in h.cidrs.iter().enumerate() {
                let net = parse_cidr(cidr)
                    .map_err(|r| ConfigError::new(path, format!("{key}.cidrs[{j}]"), r))?;
                hosts.nets.push((net, idx));
            }
            hosts.policies.push(HostPolicy {
                id: h.id,
                can_call_sensitive: h.can_call_sensitive.or(h.can_trade).unwrap_or(false),
                psk,
            });
        }
        // Longest prefix first; equal lengths keep file order (stable sort).
        hosts
            .nets
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Ok(hosts)
    }

    /// The policy for `ip`: longest matching prefix wins. IPv4-mapped IPv6 addresses are
    /// looked up as IPv4 (D4).
    pub fn lookup(&self, ip: IpAddr) -> Option<&HostPolicy> {
        let ip = canonical_ip(ip);
        self.nets
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .and_then(|(_, i)| self.policies.get(*i))
    }

    /// Number of host entries.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// No entries at all (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; everything else unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::MapEnv;
    use secrecy::ExposeSecret;

    const SHIPPED: &str = "hosts:\n  - id: research-agent\n    cidrs: [10.0.1.0/24]\n    can_call_sensitive: false\n  - id: execution-agent\n    cidrs: [10.0.3.10/32]\n    can_call_sensitive: true\n  - id: localhost-dev\n    cidrs: [127.0.0.1/32, \"::1/128\"]\n    can_trade: true\n  - id: wide\n    cidrs: [10.0.0.0/8]\n";

    fn hosts(text: &str, env: &MapEnv) -> Result<Hosts, ConfigError> {
        Hosts::parse(Path::new("hosts.yaml"), text, env)
    }

    #[test]
    fn longest_prefix_wins_and_mapped_v4_matches() {
        let h = hosts(SHIPPED, &MapEnv::default()).unwrap();
        assert_eq!(
            h.lookup("10.0.1.7".parse().unwrap()).unwrap().id,
            "research-agent"
        );
        assert_eq!(h.lookup("10.9.9.9".parse().unwrap()).unwrap().id, "wide");
        assert_eq!(
            h.lookup("::ffff:10.0.3.10".parse().unwrap()).unwrap().id,
            "execution-agent"
        );
        let local = h.lookup("127.0.0.1".parse().unwrap()).unwrap();
        assert!(local.can_call_sensitive, "can_trade alias");
        assert!(h.lookup("192.168.1.1".parse().unwrap()).is_none());
        assert!(h.lookup("::2".parse().unwrap()).is_none());
    }

    #[test]
    fn psk_comes_from_env_and_must_be_set() {
        let text = "hosts:\n  - id: a\n    cidrs: [127.0.0.1]\n    auth_token_env: A_PSK\n";
        let e = hosts(text, &MapEnv::default()).unwrap_err();
        assert_eq!(e.key, "hosts[0].auth_token_env");
        assert!(e.reason.contains("A_PSK"));
        let h = hosts(text, &MapEnv::from_pairs([("A_PSK", "s3cret")])).unwrap();
        let p = h.lookup("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(p.psk.as_ref().unwrap().expose_secret(), "s3cret");
    }

    #[test]
    fn invalid_cidr_and_unknown_keys_refuse_to_load() {
        let e = hosts(
            "hosts:\n  - id: a\n    cidrs: [10.0.0.0/33]\n",
            &MapEnv::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "hosts[0].cidrs[0]");
        let e = hosts(
            "hosts:\n  - id: a\n    cidrs: []\n    can_cal_sensitive: true\n",
            &MapEnv::default(),
        )
        .unwrap_err();
        assert!(
            e.reason.contains("did you mean 'can_call_sensitive'"),
            "{e}"
        );
        assert!(hosts("", &MapEnv::default()).is_err());
    }
}
