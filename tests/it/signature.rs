//! The verifier against the official SDKs: the Node SDK's vectors and the Rust crate's signer.

use std::time::{Duration, UNIX_EPOCH};

use dsyncd::config::Secret;
use dsyncd::signature::{SignatureError, Verifier};
use serde::Deserialize;

use crate::helpers::{fixture_path, sample_path};

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    body_file: Option<String>,
    body_inline: Option<String>,
    secret: String,
    t: u64,
    header: String,
}

impl Vector {
    fn body(&self) -> Vec<u8> {
        match (&self.body_file, &self.body_inline) {
            (Some(file), _) => {
                // The vectors name their bodies as `events/<name>`; the bodies are in samples/.
                let name = file.strip_prefix("events/").unwrap();
                let text = std::fs::read_to_string(sample_path(name)).unwrap();
                text.trim_end_matches('\n').as_bytes().to_vec()
            }
            (None, Some(inline)) => inline.as_bytes().to_vec(),
            (None, None) => panic!("a vector without a body"),
        }
    }
}

fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(fixture_path("signature-vectors.json")).unwrap();
    serde_json::from_str::<Vectors>(&text).unwrap().vectors
}

#[test]
fn every_node_sdk_vector_verifies_at_its_time_and_fails_with_any_flipped_byte() {
    let vectors = vectors();
    assert!(vectors.len() >= 15);
    for vector in vectors {
        let verifier = Verifier::new(&[Secret::new(&vector.secret)], Duration::from_secs(180));
        let at = UNIX_EPOCH + Duration::from_millis(vector.t);
        let body = vector.body();
        assert_eq!(
            verifier.verify(Some(vector.header.as_bytes()), &body, at),
            Ok(()),
            "{}",
            vector.header
        );
        for position in [0, body.len() / 2, body.len() - 1] {
            let mut flipped = body.clone();
            flipped[position] ^= 0x01;
            assert_eq!(
                verifier.verify(Some(vector.header.as_bytes()), &flipped, at),
                Err(SignatureError::Mismatch),
                "byte {position} flipped"
            );
        }
        let mut header = vector.header.clone().into_bytes();
        let last = header.len() - 1;
        header[last] = if header[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            verifier.verify(Some(&header), &body, at),
            Err(SignatureError::Mismatch)
        );
    }
}

#[test]
fn accepts_what_the_official_rust_crate_computes() {
    let body = r#"{"id":"event_1","event":"dsync.user.created","data":{}}"#;
    let t = "1700000000000";
    let v1 = workos::compute_webhook_signature("whsec_rotating", t, body);
    let verifier = Verifier::new(
        &[Secret::new("whsec_old"), Secret::new("whsec_rotating")],
        Duration::from_secs(180),
    );
    let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
    assert_eq!(
        verifier.verify(
            Some(format!("t={t}, v1={v1}").as_bytes()),
            body.as_bytes(),
            at
        ),
        Ok(())
    );
}

#[test]
fn the_official_rust_crate_accepts_what_dsyncd_signs() {
    let body = r#"{"id":"event_1","event":"dsync.user.created","data":{}}"#;
    let now_ms = crate::helpers::now_ms();
    let header = dsyncd::signature::sign(&Secret::new("whsec_x"), now_ms, body.as_bytes());
    let official = workos::WebhookVerifier::new("whsec_x");
    assert_eq!(official.verify_payload(&header, body).unwrap(), body);
}
