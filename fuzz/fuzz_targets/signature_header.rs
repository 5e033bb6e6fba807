//! `WorkOS-Signature` parsing and verification on arbitrary bytes.
//!
//! The input is `<header>\n<body>` (no newline: all header, empty body). The seeds are the
//! official SDK's vectors, which verify at `NOW`; mutations of them reach every rejection.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use dsyncd::config::Secret;
use dsyncd::signature::{sign, SignatureError, SignatureHeader, Verifier};
use libfuzzer_sys::fuzz_target;

/// The secret of `tests/fixtures/signature-vectors.json`.
const SECRET: &str = "whsec_test_secret";
/// The vectors' `t`.
const NOW_MS: u64 = 1_700_000_000_000;
const TOLERANCE: Duration = Duration::from_secs(180);

fuzz_target!(|input: &[u8]| {
    let (header, body) = match input.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (&input[..newline], &input[newline + 1..]),
        None => (input, &b""[..]),
    };
    let secret = Secret::new(SECRET);
    let verifier = Verifier::new(std::slice::from_ref(&secret), TOLERANCE);
    let now = UNIX_EPOCH + Duration::from_millis(NOW_MS);

    let parsed = SignatureHeader::parse(header);
    if let Ok(parsed) = &parsed {
        let text = std::str::from_utf8(parsed.timestamp_text).expect("t is ASCII digits");
        assert!(!text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(text.parse::<u64>().ok(), Some(parsed.timestamp_ms));
        assert!(!parsed.signatures.is_empty());
    }

    match verifier.verify(Some(header), body, now) {
        Ok(()) => {
            let parsed = parsed.expect("a verified header parses");
            assert!(NOW_MS.abs_diff(parsed.timestamp_ms) <= TOLERANCE.as_millis() as u64);
            // The MAC binds the body: one more byte and it no longer verifies.
            let longer = [body, b" "].concat();
            assert_eq!(
                verifier.verify(Some(header), &longer, now),
                Err(SignatureError::Mismatch)
            );
        }
        Err(SignatureError::Missing) => unreachable!("a header was given"),
        Err(SignatureError::Malformed) => assert!(parsed.is_err()),
        Err(SignatureError::OutsideTolerance | SignatureError::Mismatch) => {
            assert!(parsed.is_ok())
        }
    }

    // What dsyncd signs, it verifies, whatever the body.
    let t = NOW_MS - (body.len() as u64 % 100_000);
    let signed = sign(&secret, t, body);
    let at_t = UNIX_EPOCH + Duration::from_millis(t);
    assert_eq!(verifier.verify(Some(signed.as_bytes()), body, at_t), Ok(()));
});
