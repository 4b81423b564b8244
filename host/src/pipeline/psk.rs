//! Phase 3 — the host's pre-shared key (D6). Compared in constant time over SHA-256
//! digests, so neither content nor length leaks; any header value, even non-UTF-8, is
//! simply wrong (401), never an error. Runs right after admission, before a provider
//! is named. The header itself is stripped before signing and forwarding (phase 6).

use http::HeaderMap;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::hosts::HostPolicy;
use crate::error::ProxyError;

/// The header agents send the key in.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-outpost-auth");

/// `Ok` when the host needs no key or sent the right one.
pub fn verify(policy: &HostPolicy, headers: &HeaderMap) -> Result<(), ProxyError> {
    let Some(expected) = &policy.psk else {
        return Ok(());
    };
    let denied = || {
        tracing::warn!(host = %policy.id, "PSK auth failed");
        ProxyError::AuthRequired {
            host: policy.id.clone(),
        }
    };
    let mut values = headers.get_all(&HEADER).iter();
    let (Some(given), None) = (values.next(), values.next()) else {
        return Err(denied());
    };
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.expose_secret().as_bytes());
    if given.is_empty() || !bool::from(a.ct_eq(&b)) {
        return Err(denied());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn policy(psk: Option<&str>) -> HostPolicy {
        HostPolicy {
            id: "h".into(),
            can_call_sensitive: false,
            psk: psk.map(|p| SecretString::from(p.to_string())),
        }
    }

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(HEADER, http::HeaderValue::from_bytes(v).unwrap());
        }
        m
    }

    #[test]
    fn psk_checks() {
        assert!(verify(&policy(None), &HeaderMap::new()).is_ok());
        let p = policy(Some("s3cret"));
        assert!(verify(&p, &with(&[b"s3cret"])).is_ok());
        assert!(verify(&p, &HeaderMap::new()).is_err());
        assert!(verify(&p, &with(&[b""])).is_err());
        assert!(verify(&p, &with(&[b"s3cre"])).is_err());
        assert!(
            verify(&p, &with(&[b"s3cret\xff"])).is_err(),
            "non-UTF-8 is just wrong"
        );
        assert!(
            verify(&p, &with(&[b"s3cret", b"s3cret"])).is_err(),
            "exactly one header"
        );
    }
}
