//! The envelope every WorkOS delivery shares: `{"id", "event", "data", "created_at", …}`.
//!
//! The receiver only needs `id` and `event` to store a delivery; everything else is kept as
//! received and read by the worker. Parsing borrows from the body, so reading the envelope of
//! a 1 KB delivery allocates nothing in the common case.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The longest `id` or `event` accepted. WorkOS ids are about 32 characters.
pub const MAX_FIELD_LEN: usize = 256;

/// The deepest nesting of arrays and objects accepted. WorkOS events nest about 5 levels;
/// Postgres refuses very deep JSON, so such a body is turned away before it reaches the inbox.
pub const MAX_DEPTH: usize = 64;

/// The parts of a delivery's body that dsyncd reads.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// The event id, stable across retries (`event_…`; very old deliveries used `wh_…`).
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The event type, e.g. `dsync.user.created`.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// The event's object, unparsed.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    /// When WorkOS created the event; absent on very old deliveries. Any JSON type is
    /// accepted here and only a string is used, so an odd value never rejects a delivery.
    #[serde(borrow, default)]
    pub created_at: Option<&'a RawValue>,
}

/// Why a body is not an event.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or not an object with string `id` and `event`.
    #[error("the body is not a JSON event object: {}", describe_json_error(.0))]
    Json(#[from] serde_json::Error),
    /// Not UTF-8, which JSON must be. (serde_json does not check the strings it skips, such as
    /// the values of fields dsyncd does not read.)
    #[error("the body is not UTF-8")]
    NotUtf8,
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("the body nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// `id` or `event` is empty, too long or has control characters.
    #[error("`{field}` must be 1 to {MAX_FIELD_LEN} characters without control characters")]
    Field {
        /// The offending field.
        field: &'static str,
    },
}

impl<'a> Envelope<'a> {
    /// Reads the envelope of a delivery body. The whole body must be one valid JSON value.
    pub fn parse(body: &'a [u8]) -> Result<Self, EnvelopeError> {
        let text = std::str::from_utf8(body).map_err(|_| EnvelopeError::NotUtf8)?;
        if nesting_depth(body) > MAX_DEPTH {
            return Err(EnvelopeError::TooDeep);
        }
        Self::parse_stored(text)
    }

    /// Reads the envelope of a body that [`Envelope::parse`] accepted when it was received (an
    /// inbox row): it is text, and its nesting was checked then, so only the fields are read.
    pub fn parse_stored(body: &'a str) -> Result<Self, EnvelopeError> {
        let envelope: Envelope<'a> = serde_json::from_str(body)?;
        check_field("id", &envelope.id)?;
        check_field("event", &envelope.event)?;
        Ok(envelope)
    }

    /// The directory the event is about: `data.directory_id`, or `data.id` for the directory's
    /// own events (`dsync.activated`, `dsync.deactivated`, `dsync.deleted`). `None` for an
    /// event that names none (and for `data` that is not an object).
    pub fn directory_id(&self) -> Option<Cow<'a, str>> {
        #[derive(Deserialize)]
        struct Names<'b> {
            #[serde(borrow, default)]
            directory_id: Option<Cow<'b, str>>,
            #[serde(borrow, default)]
            id: Option<Cow<'b, str>>,
        }
        let names: Names<'a> = serde_json::from_str(self.data?.get()).ok()?;
        let own = matches!(
            &*self.event,
            "dsync.activated" | "dsync.deactivated" | "dsync.deleted"
        );
        if own {
            names.id
        } else {
            names.directory_id
        }
    }

    /// The envelope's `created_at`, parsed leniently (see [`parse_timestamp`]).
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        let raw = self.created_at?;
        let text: Cow<'_, str> = serde_json::from_str(raw.get()).ok()?;
        parse_timestamp(&text)
    }
}

/// The deepest nesting of `[` and `{` outside strings. Cheap enough to run on every body:
/// serde_json skips `data` without a depth limit, and Postgres has one. Strings, most of a
/// body, are skipped a quote or backslash at a time (`memchr`), not byte by byte.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut rest = body;
    while let Some((&byte, after)) = rest.split_first() {
        rest = after;
        match byte {
            b'"' => rest = after_string(rest),
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What follows the string whose opening quote preceded `rest` (nothing if it never closes).
fn after_string(mut rest: &[u8]) -> &[u8] {
    while let Some(at) = memchr::memchr2(b'"', b'\\', rest) {
        if rest[at] == b'"' {
            return &rest[at + 1..];
        }
        // A backslash escapes the byte after it, a quote included.
        rest = rest.get(at + 2..).unwrap_or_default();
    }
    &[]
}

fn check_field(field: &'static str, value: &str) -> Result<(), EnvelopeError> {
    let ok =
        !value.is_empty() && value.len() <= MAX_FIELD_LEN && !value.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(EnvelopeError::Field { field })
    }
}

/// serde_json's message for `error`, without the values it may quote. "invalid type: string
/// \"ada@example.com\", expected a sequence" would copy a piece of a delivery into a log line,
/// an error response or an inbox row's `last_error`; it becomes "invalid type: string, expected
/// a sequence". Syntax errors and missing or duplicate fields quote nothing from the body and
/// are kept; any other data error is reduced to its position.
pub(crate) fn describe_json_error(error: &serde_json::Error) -> String {
    let message = error.to_string();
    if error.classify() != serde_json::error::Category::Data
        || message.starts_with("missing field")
        || message.starts_with("duplicate field")
    {
        return message;
    }
    let position = format!("at line {} column {}", error.line(), error.column());
    // "invalid type: <kind> <quoted value>, expected <what the type wants>": the expectation
    // comes from the Rust type, the quoted value from the body.
    let quoted_kind = ["invalid type: ", "invalid value: "]
        .into_iter()
        .find_map(|prefix| {
            let (unexpected, expected) =
                message.strip_prefix(prefix)?.rsplit_once(", expected ")?;
            let expected = expected.strip_suffix(&position)?.trim_end();
            let kind = unexpected.split(['`', '"']).next()?.trim_end();
            Some(format!("{prefix}{kind}, expected {expected} {position}"))
        });
    quoted_kind.unwrap_or_else(|| format!("a value does not fit its field {position}"))
}

/// Parses a WorkOS timestamp: RFC 3339 (`2021-06-25T19:07:33.155Z`), or the zone-less form some
/// samples show (`2023-04-28 20:05:31.093`, read as UTC).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(parsed) = DateTime::parse_from_rfc3339(text) {
        return Some(parsed.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_id_event_and_created_at() {
        let body = br#"{"object":"event","id":"event_1","event":"dsync.user.created","data":{"id":"u"},"created_at":"2021-06-25T19:07:33.155Z"}"#;
        let envelope = Envelope::parse(body).unwrap();
        assert_eq!(envelope.id, "event_1");
        assert_eq!(envelope.event, "dsync.user.created");
        assert_eq!(envelope.data.unwrap().get(), r#"{"id":"u"}"#);
        assert_eq!(
            envelope.created_at().unwrap().to_rfc3339(),
            "2021-06-25T19:07:33.155+00:00"
        );
    }

    #[test]
    fn names_the_directory_of_every_kind_of_event() {
        let directory = |name: &str| {
            let body = std::fs::read(format!(
                "{}/samples/{name}.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let envelope = Envelope::parse(&body).unwrap();
            envelope.directory_id().map(Cow::into_owned)
        };
        for name in [
            "dsync.activated",
            "dsync.deleted",
            "legacy.dsync.deactivated",
            "dsync.user.created",
            "dsync.group.deleted",
            "dsync.group.user_added",
        ] {
            assert_eq!(
                directory(name).as_deref(),
                Some("directory_01ECAZ4NV9QMV47GW873HDCX74"),
                "{name}"
            );
        }
        assert_eq!(directory("unknown.connection.activated"), None);
        let odd = Envelope::parse(br#"{"id":"e","event":"dsync.user.created","data":[1]}"#);
        assert_eq!(odd.unwrap().directory_id(), None);
    }

    #[test]
    fn accepts_legacy_envelopes_without_created_at_or_data() {
        let envelope = Envelope::parse(br#"{"id":"wh_1","event":"dsync.deactivated"}"#).unwrap();
        assert!(envelope.created_at().is_none());
        assert!(envelope.data.is_none());
    }

    #[test]
    fn an_odd_created_at_does_not_reject_the_event() {
        let envelope = Envelope::parse(br#"{"id":"e","event":"x","created_at":12}"#).unwrap();
        assert!(envelope.created_at().is_none());
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        for body in [
            &b""[..],
            b"[]",
            b"null",
            b"{}",
            b"{\"id\":1,\"event\":\"x\"}",
            b"{\"id\":\"e\",\"event\":[]}",
            b"{\"id\":\"e\"}",
            b"{\"id\":\"e\",\"event\":\"x\"} trailing",
            b"{\"id\":\"\",\"event\":\"x\"}",
            b"{\"id\":\"e\\u0000\",\"event\":\"x\"}",
            b"{\"id\":\"e\",\"event\":\"x\",\"data\":\xff}",
        ] {
            assert!(
                Envelope::parse(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn rejects_invalid_utf8_even_where_it_is_not_read() {
        // The receiver stores a parsed body as text: every byte must be UTF-8, not only the
        // ones serde_json decodes.
        for body in [
            &b"{\"id\":\"e\",\"event\":\"x\",\"object\":\"\xff\"}"[..],
            b"{\"id\":\"e\",\"event\":\"x\",\"data\":{\"name\":\"\xc3\x28\"}}",
            b"{\"id\":\"e\xed\xa0\x80\",\"event\":\"x\"}",
        ] {
            assert!(
                matches!(Envelope::parse(body), Err(EnvelopeError::NotUtf8)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn messages_never_quote_the_body() {
        let message = |body: &str| Envelope::parse(body.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            message(r#""ada@example.com""#),
            "the body is not a JSON event object: invalid type: string, expected struct Envelope at line 1 column 17"
        );
        assert_eq!(
            message(r#"{"id":4111111111111111,"event":"x"}"#),
            "the body is not a JSON event object: invalid type: integer, expected a string at line 1 column 22"
        );
        assert_eq!(
            message(r#"{"id":"e","event":1.5e300}"#),
            "the body is not a JSON event object: invalid type: floating point, expected a string at line 1 column 25"
        );
        // Field names come from the type, not the body: they stay.
        assert_eq!(
            message(r#"{"id":"ada@example.com"}"#),
            "the body is not a JSON event object: missing field `event` at line 1 column 24"
        );
        // Anything else is reduced to where it is.
        let custom = serde_json::from_str::<std::net::Ipv4Addr>(r#""ada@example.com""#);
        assert_eq!(
            describe_json_error(&custom.unwrap_err()),
            "a value does not fit its field at line 1 column 17"
        );
    }

    #[test]
    fn rejects_deep_nesting_without_overflowing_the_stack() {
        let body = format!(
            r#"{{"id":"e","event":"x","data":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(Envelope::parse(body.as_bytes()).is_err());
    }

    #[test]
    fn counts_nesting_outside_strings_only() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":"[[[{{"}]}"#), 3);
        assert_eq!(nesting_depth(br#"{"a":"\\\"[["}"#), 1);
        assert_eq!(nesting_depth(br#"{"a":"\\\\"},[["#), 2);
        // An unterminated string ends the count.
        assert_eq!(nesting_depth(br#"{"a":["[[[\""#), 2);
        assert_eq!(nesting_depth(br#"{"a":["\"#), 2);
    }

    #[test]
    fn counts_nesting_as_a_byte_at_a_time_walk_does() {
        // The plain definition: every byte in turn, tracking strings and escapes.
        fn walk(body: &[u8]) -> usize {
            let (mut depth, mut deepest) = (0usize, 0usize);
            let (mut in_string, mut escaped) = (false, false);
            for &byte in body {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' if in_string => escaped = true,
                    b'"' => in_string = !in_string,
                    _ if in_string => {}
                    b'[' | b'{' => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            deepest
        }
        let sample = include_str!("../samples/dsync.user.created.json");
        let mut bodies = vec![sample.as_bytes().to_vec()];
        // Every prefix of a body dense in escapes, quotes and brackets.
        let dense = br#"{"a":["x\"[",{"b":"\\"},[[{"c":"]\\\"{"}]],"\u005b"],"d":{}}"#;
        bodies.extend((0..=dense.len()).map(|end| dense[..end].to_vec()));
        for body in bodies {
            assert_eq!(
                nesting_depth(&body),
                walk(&body),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn parses_both_timestamp_forms() {
        assert!(parse_timestamp("2021-06-25T19:07:33.155Z").is_some());
        assert!(parse_timestamp("2021-06-25T19:07:33+02:00").is_some());
        assert_eq!(
            parse_timestamp("2023-04-28 20:05:31.093")
                .unwrap()
                .to_rfc3339(),
            "2023-04-28T20:05:31.093+00:00"
        );
        assert!(parse_timestamp("yesterday").is_none());
    }
}
