//! The development loop without WorkOS: sample deliveries, one for every `dsync.*` event, made
//! from the WorkOS example bodies in `samples/`, and a sender that signs exactly as WorkOS does.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, Utc};
use serde_json::Value;

use crate::config::Secret;
use crate::signature;

/// What the endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The response body.
    pub body: String,
}

/// Posts `body` to `url` with a `WorkOS-Signature` made now with `secret`: millisecond `t`,
/// `t=…, v1=…`, as WorkOS sends it.
pub async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    secret: &Secret,
    body: Vec<u8>,
) -> Result<Answer, reqwest::Error> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("WorkOS-Signature", signature::sign(secret, now_ms, &body))
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    Ok(Answer { status, body })
}

/// The example bodies, by event type.
const SAMPLES: &[(&str, &str)] = &[
    (
        "dsync.activated",
        include_str!("../samples/dsync.activated.json"),
    ),
    (
        "dsync.deactivated",
        include_str!("../samples/legacy.dsync.deactivated.json"),
    ),
    (
        "dsync.deleted",
        include_str!("../samples/dsync.deleted.json"),
    ),
    (
        "dsync.user.created",
        include_str!("../samples/dsync.user.created.json"),
    ),
    (
        "dsync.user.updated",
        include_str!("../samples/dsync.user.updated.json"),
    ),
    (
        "dsync.user.deleted",
        include_str!("../samples/dsync.user.deleted.json"),
    ),
    (
        "dsync.group.created",
        include_str!("../samples/dsync.group.created.json"),
    ),
    (
        "dsync.group.updated",
        include_str!("../samples/dsync.group.updated.json"),
    ),
    (
        "dsync.group.deleted",
        include_str!("../samples/dsync.group.deleted.json"),
    ),
    (
        "dsync.group.user_added",
        include_str!("../samples/dsync.group.user_added.json"),
    ),
    (
        "dsync.group.user_removed",
        include_str!("../samples/dsync.group.user_removed.json"),
    ),
    (
        "dsync.token.created",
        include_str!("../samples/dsync.token.created.json"),
    ),
];

/// The event types there is a sample for.
pub fn event_types() -> impl Iterator<Item = &'static str> {
    SAMPLES.iter().map(|(event, _)| *event)
}

/// A fresh delivery of `event_type`: the example body with a new event id and every
/// timestamp set to now, so that it is newer than anything sent before and is applied.
/// `None` for a type without a sample.
pub fn fresh(event_type: &str) -> Option<String> {
    let (_, body) = SAMPLES.iter().find(|(event, _)| *event == event_type)?;
    let mut body: Value = serde_json::from_str(body).expect("samples are JSON");
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    body["id"] = Value::String(new_event_id());
    body["created_at"] = Value::String(now.clone());
    let data = &mut body["data"];
    touch(data, &now);
    for nested in ["user", "group"] {
        if let Some(object) = data.get_mut(nested) {
            touch(object, &now);
        }
    }
    Some(body.to_string())
}

fn touch(object: &mut Value, now: &str) {
    if let Some(updated_at) = object.get_mut("updated_at") {
        *updated_at = Value::String(now.to_owned());
    }
}

/// An id shaped like WorkOS's (`event_` and 26 characters), unique enough for samples.
fn new_event_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let suffix: String = (0..26)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("event_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_the_directory_handler_applies_has_a_fresh_sample() {
        for event in crate::DirectoryHandler::event_types() {
            let body: Value = serde_json::from_str(&fresh(event).unwrap()).unwrap();
            assert_eq!(body["event"], event);
            assert!(body["id"].as_str().unwrap().starts_with("event_"));
            assert_eq!(body["id"].as_str().unwrap().len(), 32);
        }
        assert!(fresh("dsync.unknown").is_none());
    }

    #[test]
    fn a_fresh_sample_is_new_and_newer() {
        let first: Value = serde_json::from_str(&fresh("dsync.group.user_added").unwrap()).unwrap();
        let second: Value =
            serde_json::from_str(&fresh("dsync.group.user_added").unwrap()).unwrap();
        assert_ne!(first["id"], second["id"]);
        let now = Utc::now().format("%Y-%m-%d").to_string();
        assert!(first["created_at"].as_str().unwrap().starts_with(&now));
        assert!(first["data"]["user"]["updated_at"]
            .as_str()
            .unwrap()
            .starts_with(&now));
        assert!(first["data"]["group"]["updated_at"]
            .as_str()
            .unwrap()
            .starts_with(&now));
    }
}
