//! The `WorkOS-Signature` header: checking it on the raw body, and producing it (for `dsyncd
//! send` and tests).
//!
//! The header is `t=<unix milliseconds>, v1=<lowercase hex HMAC-SHA256>`, the MAC keyed with the
//! endpoint secret's UTF-8 bytes over `<t as written in the header>.<raw body bytes>`. Parsing
//! is lenient like the Go, Ruby and Rust SDKs: the parts in any order, spaces optional, unknown
//! parts ignored, several `v1` allowed. The body is never parsed or re-serialized here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The name of the header WorkOS signs deliveries with.
pub const HEADER: &str = "workos-signature";

/// Why a delivery's signature is not accepted. Every variant is a 401; the messages explain
/// the problem without echoing the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `WorkOS-Signature` header.
    #[error("the WorkOS-Signature header is missing")]
    Missing,
    /// The header is not `t=<milliseconds>, v1=<hex>`.
    #[error("the WorkOS-Signature header is not of the form `t=<milliseconds>, v1=<hex>`")]
    Malformed,
    /// `t` is further from now than the tolerance, in either direction.
    #[error("the signature timestamp is outside the accepted tolerance")]
    OutsideTolerance,
    /// No configured secret gives this signature for this body.
    #[error("the signature does not match the body")]
    Mismatch,
}

impl SignatureError {
    /// A stable, lower-case name for logs, metrics and error bodies.
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::OutsideTolerance => "signature_expired",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// Checks signatures against every configured secret (several while a secret is rotated).
#[derive(Clone)]
pub struct Verifier {
    /// One MAC already keyed per secret; cloning it is cheaper than keying again.
    keyed: Vec<HmacSha256>,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keyed.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// A verifier accepting any of `secrets`, with timestamps at most `tolerance` from now.
    pub fn new(secrets: &[Secret], tolerance: Duration) -> Self {
        let keyed = secrets
            .iter()
            .map(|secret| keyed_mac(secret.expose()))
            .collect();
        Verifier { keyed, tolerance }
    }

    /// Checks `header` (the raw header value) against `body` at the clock `now`.
    pub fn verify(
        &self,
        header: Option<&[u8]>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let parsed = SignatureHeader::parse(header)?;
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        if now_ms.abs_diff(u128::from(parsed.timestamp_ms)) > self.tolerance.as_millis() {
            return Err(SignatureError::OutsideTolerance);
        }
        for keyed in &self.keyed {
            let mut mac = keyed.clone();
            mac.update(parsed.timestamp_text);
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            // Every candidate is compared, in constant time, whatever matched before.
            let matched = parsed
                .signatures
                .iter()
                .fold(subtle::Choice::from(0), |any, candidate| {
                    any | subtle::ConstantTimeEq::ct_eq(&expected[..], &candidate[..])
                });
            if bool::from(matched) {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// The parts of a `WorkOS-Signature` header.
#[derive(Debug, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    /// `t` exactly as written: the MAC covers this text, not a re-formatted number.
    pub timestamp_text: &'a [u8],
    /// `t` as milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Every `v1`, decoded.
    pub signatures: Vec<[u8; 32]>,
}

impl<'a> SignatureHeader<'a> {
    /// Parses `t=<ms>, v1=<hex>` leniently: any order, optional spaces, unknown parts ignored.
    /// A repeated `t`, a `t` that is not a number, or no valid `v1` is malformed.
    pub fn parse(header: &'a [u8]) -> Result<Self, SignatureError> {
        let mut timestamp: Option<&[u8]> = None;
        let mut signatures = Vec::with_capacity(1);
        for part in header.split(|&byte| byte == b',') {
            let Some(eq) = part.iter().position(|&byte| byte == b'=') else {
                continue;
            };
            let key = part[..eq].trim_ascii();
            let value = part[eq + 1..].trim_ascii();
            match key {
                b"t" if timestamp.is_some() => return Err(SignatureError::Malformed),
                b"t" => timestamp = Some(value),
                b"v1" => {
                    let mut decoded = [0u8; 32];
                    hex::decode_to_slice(value, &mut decoded)
                        .map_err(|_| SignatureError::Malformed)?;
                    signatures.push(decoded);
                }
                _ => {}
            }
        }
        let timestamp_text = timestamp.ok_or(SignatureError::Malformed)?;
        let timestamp_ms = parse_millis(timestamp_text).ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed);
        }
        Ok(SignatureHeader {
            timestamp_text,
            timestamp_ms,
            signatures,
        })
    }
}

fn parse_millis(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn keyed_mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// The header WorkOS would send for `body` signed with `secret` at `timestamp_ms`.
pub fn sign(secret: &Secret, timestamp_ms: u64, body: &[u8]) -> String {
    let timestamp = timestamp_ms.to_string();
    let mut mac = keyed_mac(secret.expose());
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp}, v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn verifier(secrets: &[&str]) -> Verifier {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        Verifier::new(&secrets, Duration::from_secs(180))
    }

    #[test]
    fn accepts_what_it_signs() {
        let header = sign(&Secret::new("s3cret"), T, b"{}");
        assert!(header.starts_with("t=1700000000000, v1="));
        assert_eq!(
            verifier(&["s3cret"]).verify(Some(header.as_bytes()), b"{}", at(T)),
            Ok(())
        );
    }

    #[test]
    fn reads_the_header_leniently() {
        let canonical = sign(&Secret::new("k"), T, b"x");
        let v1 = canonical.split("v1=").nth(1).unwrap();
        let verifier = verifier(&["k"]);
        for header in [
            format!("t={T},v1={v1}"),
            format!("v1={v1}, t={T}"),
            format!("  t = {T} ,  v1 = {v1} "),
            format!("t={T}, v0=abc, v1={}, v1={v1}", "0".repeat(64)),
        ] {
            assert_eq!(
                verifier.verify(Some(header.as_bytes()), b"x", at(T)),
                Ok(()),
                "{header}"
            );
        }
    }

    #[test]
    fn rejects_malformed_headers() {
        let verifier = verifier(&["k"]);
        let v1 = "0".repeat(64);
        for header in [
            String::new(),
            "garbage".to_owned(),
            format!("v1={v1}"),
            format!("t={T}"),
            format!("t=abc, v1={v1}"),
            format!("t=-5, v1={v1}"),
            format!("t={T}, t={T}, v1={v1}"),
            format!("t={T}, v1=zz{}", "0".repeat(62)),
            format!("t={T}, v1={}", "0".repeat(63)),
            format!("t={T}, v1={}", "0".repeat(66)),
            format!("t={}, v1={v1}", "9".repeat(40)),
        ] {
            assert_eq!(
                verifier.verify(Some(header.as_bytes()), b"x", at(T)),
                Err(SignatureError::Malformed),
                "{header}"
            );
        }
        assert_eq!(
            verifier.verify(None, b"x", at(T)),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn enforces_the_tolerance_in_both_directions() {
        let header = sign(&Secret::new("k"), T, b"x");
        let verifier = verifier(&["k"]);
        let check = |now| verifier.verify(Some(header.as_bytes()), b"x", at(now));
        assert_eq!(check(T + 180_000), Ok(()));
        assert_eq!(check(T - 180_000), Ok(()));
        assert_eq!(check(T + 180_001), Err(SignatureError::OutsideTolerance));
        assert_eq!(check(T - 180_001), Err(SignatureError::OutsideTolerance));
    }

    #[test]
    fn any_configured_secret_verifies() {
        let header = sign(&Secret::new("new"), T, b"x");
        assert_eq!(
            verifier(&["old", "new"]).verify(Some(header.as_bytes()), b"x", at(T)),
            Ok(())
        );
        assert_eq!(
            verifier(&["old"]).verify(Some(header.as_bytes()), b"x", at(T)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_mac_covers_the_timestamp_as_written() {
        // Same number, different text: the MAC was computed over "1700000000000".
        let header = sign(&Secret::new("k"), T, b"x").replace("t=", "t=0");
        assert_eq!(
            verifier(&["k"]).verify(Some(header.as_bytes()), b"x", at(T)),
            Err(SignatureError::Mismatch)
        );
    }
}
