//! RFC 4226 HOTP / RFC 6238 TOTP and RFC 4648 base32 seeds.
//!
//! (The same file is used by the `totp` and `groww_totp_mint` modules; modules are
//! independent components, so each carries its own copy.)

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha512};

/// The HMAC hash function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// Decode a base32 (RFC 4648) seed the way authenticator apps show it: case-insensitive,
/// whitespace ignored, `=` padding optional. Anything else outside the alphabet is an
/// error (as the Python runtime's strict decoding; the TypeScript runtime silently
/// skipped junk, §11 #40), and so is a length no base32 encoder produces. The error
/// never contains the seed.
pub fn base32_decode(seed: &str) -> Result<Vec<u8>, &'static str> {
    let cleaned: Vec<u8> = seed
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| b.to_ascii_uppercase())
        .collect();
    let data = match cleaned.iter().position(|&b| b == b'=') {
        Some(i) if cleaned[i..].iter().all(|&b| b == b'=') => &cleaned[..i],
        Some(_) => return Err("Non-base32 digit found"),
        None => &cleaned[..],
    };
    if data.is_empty() {
        return Err("empty seed");
    }
    if matches!(data.len() % 8, 1 | 3 | 6) {
        return Err("Incorrect padding");
    }
    let mut out = Vec::with_capacity(data.len() * 5 / 8);
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for &c in data {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return Err("Non-base32 digit found"),
        };
        acc = ((acc << 5) | u64::from(v)) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Ok(out)
}

fn mac(algorithm: Algorithm, key: &[u8], msg: &[u8]) -> Result<Vec<u8>, &'static str> {
    let bad = |_| "cannot key the HMAC";
    Ok(match algorithm {
        Algorithm::Sha1 => {
            let mut m = Hmac::<Sha1>::new_from_slice(key).map_err(bad)?;
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        Algorithm::Sha256 => {
            let mut m = Hmac::<Sha256>::new_from_slice(key).map_err(bad)?;
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        Algorithm::Sha512 => {
            let mut m = Hmac::<Sha512>::new_from_slice(key).map_err(bad)?;
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
    })
}

/// RFC 4226 HOTP: dynamic truncation of HMAC(key, counter), `digits` decimal digits
/// (1–10), zero-padded.
pub fn hotp(
    algorithm: Algorithm,
    key: &[u8],
    counter: u64,
    digits: u32,
) -> Result<String, &'static str> {
    let h = mac(algorithm, key, &counter.to_be_bytes())?;
    let offset = usize::from(h.last().copied().ok_or("empty MAC")? & 0x0f);
    let window: [u8; 4] = h
        .get(offset..offset + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or("short MAC")?;
    let value = u64::from(u32::from_be_bytes(window) & 0x7fff_ffff);
    let modulus = 10u64.checked_pow(digits).ok_or("too many digits")?;
    Ok(format!(
        "{:0width$}",
        value % modulus,
        width = usize::try_from(digits).map_err(|_| "too many digits")?
    ))
}

/// RFC 6238 TOTP at `unix_secs` with T0 = 0 and a step of `period` seconds.
pub fn totp(
    algorithm: Algorithm,
    key: &[u8],
    unix_secs: u64,
    period: u64,
    digits: u32,
) -> Result<String, &'static str> {
    if period == 0 {
        return Err("period must be positive");
    }
    hotp(algorithm, key, unix_secs / period, digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_SHA1: &[u8] = b"12345678901234567890";
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    #[test]
    fn rfc4226_hotp_vectors() {
        let want = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, want) in want.iter().enumerate() {
            assert_eq!(
                hotp(Algorithm::Sha1, SEED_SHA1, counter as u64, 6).unwrap(),
                *want
            );
        }
    }

    #[test]
    fn rfc6238_totp_vectors() {
        let table: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (t, sha1, sha256, sha512) in table {
            assert_eq!(
                totp(Algorithm::Sha1, SEED_SHA1, t, 30, 8).unwrap(),
                sha1,
                "sha1 @{t}"
            );
            assert_eq!(
                totp(Algorithm::Sha256, SEED_SHA256, t, 30, 8).unwrap(),
                sha256,
                "sha256 @{t}"
            );
            assert_eq!(
                totp(Algorithm::Sha512, SEED_SHA512, t, 30, 8).unwrap(),
                sha512,
                "sha512 @{t}"
            );
        }
    }

    #[test]
    fn reference_six_digit_vectors_from_a_base32_seed() {
        let key = base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(key, SEED_SHA1);
        assert_eq!(totp(Algorithm::Sha1, &key, 59, 30, 6).unwrap(), "287082");
        assert_eq!(
            totp(Algorithm::Sha1, &key, 1111111109, 30, 6).unwrap(),
            "081804"
        );
        let lower = base32_decode("gezdgnbvgy3tqojqgezdgnbvgy3tqojq").unwrap();
        assert_eq!(totp(Algorithm::Sha1, &lower, 59, 30, 6).unwrap(), "287082");
        assert_eq!(
            base32_decode("GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ").unwrap(),
            SEED_SHA1,
            "spaces as authenticator apps print them"
        );
    }

    #[test]
    fn base32_is_strict_about_the_alphabet_and_length() {
        assert_eq!(base32_decode("MZXW6YQ=").unwrap(), b"foob");
        assert_eq!(base32_decode("MZXW6YQ").unwrap(), b"foob");
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert_eq!(
            base32_decode("MZXW6YT1").unwrap_err(),
            "Non-base32 digit found"
        );
        assert_eq!(
            base32_decode("MZ=XW6YQ").unwrap_err(),
            "Non-base32 digit found"
        );
        assert_eq!(base32_decode("MZX").unwrap_err(), "Incorrect padding");
        assert!(base32_decode("").is_err());
        assert!(totp(Algorithm::Sha1, b"k", 1, 0, 6).is_err());
    }
}
