//! Hostile input over a real socket: broken and forged signatures, bodies that are not events,
//! compressed bodies, oversized and slow bodies, and HTTP that reqwest would never send. Each
//! request gets its documented status, nothing reaches the inbox, and the service still answers
//! afterwards.
//!
//! Requests are written as raw bytes on a `TcpStream`, so that every byte is the test's choice.
//! Statuses with a JSON body come from dsyncd (`receiver::ApiError`, 404, 405 and 408 included);
//! the others come from the HTTP layer (hyper's 400 and 431 for requests it cannot parse), which
//! answers with an empty body.

use std::time::{Duration, Instant};

use dsyncd::config::Secret;
use dsyncd::Role;
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Small, so that "just over the limit" is cheap to send.
const BODY_LIMIT: usize = 4096;

/// Longest a single exchange may take before the test fails instead of hanging.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(10);

/// One hostile request and the answer it must get.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// The `error` of dsyncd's JSON body, or `None` for an answer of the HTTP layer.
    error: Option<&'static str>,
}

fn case(name: &'static str, request: Vec<u8>, status: u16, error: Option<&'static str>) -> Case {
    Case {
        name,
        request,
        status,
        error,
    }
}

/// An answer as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// `POST /webhooks/workos` over HTTP/1.1 with `headers` (whole lines, without CRLF), a
/// `Content-Length` for `body`, and `body`.
fn post(headers: &[Vec<u8>], body: &[u8]) -> Vec<u8> {
    let mut lines = headers.to_vec();
    lines.push(format!("content-length: {}", body.len()).into_bytes());
    request(b"POST /webhooks/workos HTTP/1.1", &lines, body)
}

/// A request line, the given header lines plus `host` and `connection: close`, and `body` as
/// is (no framing header is added).
fn request(request_line: &[u8], headers: &[Vec<u8>], body: &[u8]) -> Vec<u8> {
    let mut bytes = request_line.to_vec();
    bytes.extend_from_slice(b"\r\nhost: localhost\r\nconnection: close\r\n");
    for line in headers {
        bytes.extend_from_slice(line);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

/// A `WorkOS-Signature` header line with this exact value.
fn signature(value: impl AsRef<[u8]>) -> Vec<u8> {
    [b"WorkOS-Signature: ".as_slice(), value.as_ref()].concat()
}

/// The signature line WorkOS would send for `body` now.
fn signed(body: &[u8]) -> Vec<u8> {
    signature(dsyncd::signature::sign(
        &Secret::new(SECRET),
        now_ms(),
        body,
    ))
}

/// A JSON content type line.
fn json() -> Vec<u8> {
    b"content-type: application/json".to_vec()
}

/// `body` signed as sent, posted as JSON.
fn signed_post(body: &[u8]) -> Vec<u8> {
    post(&[json(), signed(body)], body)
}

/// `body` as HTTP/1.1 chunks of at most `size` bytes, with the final chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for chunk in body.chunks(size) {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// `body` in the gzip format (RFC 1952) with one stored deflate block: what a compressing proxy
/// would forward, without a compression library. (`gzip -d` reads it back.)
fn gzip(body: &[u8]) -> Vec<u8> {
    let length = u16::try_from(body.len()).expect("one stored block holds 64 KiB");
    // Magic, deflate, no flags, no time, no extra flags, unknown OS.
    let mut bytes = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    // The final block, stored: its length, the length's complement, the bytes.
    bytes.push(0b001);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&(!length).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&crc32(body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes
}

/// CRC-32 (IEEE), as gzip's trailer needs it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The `host:port` of the app.
fn socket_address(app: &TestApp) -> &str {
    app.address.trim_start_matches("http://")
}

/// Sends `request` on a new connection and reads the answer.
async fn exchange(app: &TestApp, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(socket_address(app)).await.unwrap();
    // The server may answer and close before reading everything (a 413 on the declared
    // length, a 400 on a broken request line): what it answered is what counts.
    let _ = stream.write_all(request).await;
    read_answer(&mut stream).await
}

/// Reads one HTTP/1.x answer: the head, then a `Content-Length` body or everything until the
/// server closes.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Answer {
    let read = async {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(answer) = parse_answer(&bytes) {
                return answer;
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            }
        }
        parse_answer(&bytes).unwrap_or_else(|| {
            panic!(
                "no complete answer before the connection ended: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    tokio::time::timeout(EXCHANGE_DEADLINE, read)
        .await
        .expect("the server answers in time")
}

/// The answer in `bytes`, once its head and its `Content-Length` body are complete.
fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let head_end = bytes.windows(4).position(|window| window == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).expect("the head is ASCII");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1."), "{status_line}");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let length: usize = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse().unwrap())
        .unwrap_or(0);
    let body = bytes.get(head_end..head_end + length)?;
    Some(Answer {
        status,
        body: body.to_vec(),
    })
}

/// Checks an answer against its case.
fn check(case: &Case, answer: &Answer) {
    assert_eq!(answer.status, case.status, "{}: {answer:?}", case.name);
    if let Some(expected) = case.error {
        let body: Value = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|_| panic!("{}: the body is not JSON: {answer:?}", case.name));
        assert_eq!(body["error"], expected, "{}: {body}", case.name);
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            case.name
        );
    }
}

async fn assert_inbox_empty(pool: &PgPool, name: &str) {
    assert!(inbox(pool).await.is_empty(), "{name}: something was stored");
}

/// The service with a small body limit.
async fn spawn(pool: PgPool, request_timeout_ms: u64) -> TestApp {
    let mut config = TestApp::config();
    config.server.body_limit_bytes = BODY_LIMIT;
    config.server.request_timeout_ms = request_timeout_ms;
    config.server.idle_timeout_ms = request_timeout_ms;
    TestApp::spawn_with(pool, config, Role::Receiver).await
}

/// Every case sends a body that would be accepted if the signature were right, or a signed
/// body that is not an event, or a request that is not valid HTTP.
fn cases() -> Vec<Case> {
    let event = user_created("event_hostile").into_bytes();
    let now = now_ms();
    let sign = |secret: &str, t: u64, body: &[u8]| {
        dsyncd::signature::sign(&Secret::new(secret), t, body).into_bytes()
    };
    let valid = sign(SECRET, now, &event);
    let valid_v1 = String::from_utf8(valid.clone()).unwrap();
    let valid_v1 = valid_v1.split("v1=").nth(1).unwrap().to_owned();
    let with_v1 = |v1: &str| signature(format!("t={now}, v1={v1}"));
    let with_t = |t: &str| signature(format!("t={t}, v1={valid_v1}"));
    let wrong = sign("whsec_wrong", now, &event);
    let not_an_event = br#"{"id":"event_hostile"}"#;
    let over_limit = format!(
        r#"{{"id":"event_big","event":"dsync.user.created","data":"{}"}}"#,
        "x".repeat(BODY_LIMIT)
    );
    let over_limit = &over_limit.as_bytes()[..BODY_LIMIT + 1];
    let gzipped = gzip(&event);
    let gzip_header = b"content-encoding: gzip".to_vec();
    let http_1_0 = |headers: &[Vec<u8>], body: &[u8]| {
        let mut lines = headers.to_vec();
        lines.push(format!("content-length: {}", body.len()).into_bytes());
        request(b"POST /webhooks/workos HTTP/1.0", &lines, body)
    };
    let chunked_post = |headers: &[Vec<u8>], framed: &[u8]| {
        let mut lines = headers.to_vec();
        lines.push(b"transfer-encoding: chunked".to_vec());
        request(b"POST /webhooks/workos HTTP/1.1", &lines, framed)
    };
    let nested = |depth: usize| {
        format!(
            r#"{{"id":"event_deep","event":"dsync.user.created","data":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    };

    vec![
        // ---- The signature header ----
        case(
            "no signature header",
            post(&[json()], &event),
            401,
            Some("signature_missing"),
        ),
        case(
            "an empty signature header",
            post(&[json(), signature("")], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a signature header of garbage",
            post(&[json(), signature("garbage")], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "non-UTF-8 bytes in the signature header",
            post(&[json(), signature(b"t=\xff\xfe, v1=\x80\x81")], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a non-UTF-8 byte appended to a valid v1",
            post(
                &[json(), signature([valid.as_slice(), b"\xff"].concat())],
                &event,
            ),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a control character in the signature header",
            post(&[json(), signature(b"t=1\x01, v1=00")], &event),
            400,
            None,
        ),
        case(
            "a valid signature after a wrong one: only the first header counts",
            post(&[json(), signature(&wrong), signature(&valid)], &event),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "a valid signature after a malformed one",
            post(&[json(), signature("t=1"), signature(&valid)], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "two headers joined into one: a repeated t",
            post(
                &[
                    json(),
                    signature([wrong.as_slice(), b", ", &valid].concat()),
                ],
                &event,
            ),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a v1 of non-hex characters",
            post(&[json(), with_v1(&"z".repeat(64))], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a v1 one hex digit short",
            post(&[json(), with_v1(&valid_v1[..63])], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a v1 one byte too long",
            post(&[json(), with_v1(&format!("{valid_v1}00"))], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a v1 of SHA-1 length",
            post(&[json(), with_v1(&valid_v1[..40])], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a v1 of SHA-512 length",
            post(&[json(), with_v1(&valid_v1.repeat(2))], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "an empty v1",
            post(&[json(), with_v1("")], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "only a v0 signature",
            post(
                &[json(), signature(format!("t={now}, v0={valid_v1}"))],
                &event,
            ),
            401,
            Some("signature_malformed"),
        ),
        case(
            "no t",
            post(&[json(), signature(format!("v1={valid_v1}"))], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a negative t",
            post(&[json(), with_t("-1")], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a t of 20 digits",
            post(&[json(), with_t(&"1".repeat(20))], &event),
            401,
            Some("signature_malformed"),
        ),
        case(
            "a t in seconds instead of milliseconds",
            post(
                &[json(), signature(sign(SECRET, now / 1000, &event))],
                &event,
            ),
            401,
            Some("signature_expired"),
        ),
        case(
            "a t of 19 nines, near the largest u64",
            post(&[json(), with_t(&"9".repeat(19))], &event),
            401,
            Some("signature_expired"),
        ),
        case(
            "t=0",
            post(&[json(), with_t("0")], &event),
            401,
            Some("signature_expired"),
        ),
        case(
            "signed with another secret",
            post(&[json(), signature(&wrong)], &event),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "signed for another body",
            post(&[json(), signed(b"{}")], &event),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "the valid signature with a newline appended to the body",
            post(
                &[json(), signature(&valid)],
                &[event.as_slice(), b"\n"].concat(),
            ),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "a thousand wrong v1 values",
            post(
                &[
                    json(),
                    signature(format!(
                        "t={now}{}",
                        format!(", v1={}", "0".repeat(64)).repeat(1000)
                    )),
                ],
                &event,
            ),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "the signature in the query string instead of the header",
            request(
                format!("POST /webhooks/workos?signature=t={now},v1={valid_v1} HTTP/1.1")
                    .as_bytes(),
                &[
                    json(),
                    format!("content-length: {}", event.len()).into_bytes(),
                ],
                &event,
            ),
            401,
            Some("signature_missing"),
        ),
        // ---- Signed bodies that are not events ----
        case("an empty body", signed_post(b""), 400, Some("not_an_event")),
        case(
            "invalid UTF-8",
            signed_post(b"\xff\xfe{\"id\":\"e\",\"event\":\"x\"}"),
            400,
            Some("not_an_event"),
        ),
        case(
            "invalid UTF-8 in the string of a field dsyncd does not read",
            signed_post(b"{\"id\":\"e\",\"event\":\"x\",\"object\":\"\xff\"}"),
            400,
            Some("not_an_event"),
        ),
        case(
            "invalid UTF-8 in data",
            signed_post(b"{\"id\":\"e\",\"event\":\"x\",\"data\":{\"name\":\"\xc3\x28\"}}"),
            400,
            Some("not_an_event"),
        ),
        case(
            "a byte-order mark before the JSON",
            signed_post(&[b"\xef\xbb\xbf".as_slice(), &event].concat()),
            400,
            Some("not_an_event"),
        ),
        case(
            "nesting one level deeper than accepted",
            signed_post(&nested(dsyncd::envelope::MAX_DEPTH)),
            400,
            Some("not_an_event"),
        ),
        case(
            "nesting 2000 levels deep",
            signed_post(&nested(2000)),
            400,
            Some("not_an_event"),
        ),
        case(
            "an id of 1e999999",
            signed_post(br#"{"id":1e999999,"event":"dsync.user.created"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "an event of 300 digits",
            signed_post(format!(r#"{{"id":"e","event":{}}}"#, "9".repeat(300)).as_bytes()),
            400,
            Some("not_an_event"),
        ),
        case(
            "an id that is a number",
            signed_post(br#"{"id":12,"event":"dsync.user.created"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "an id that is null",
            signed_post(br#"{"id":null,"event":"dsync.user.created"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "an id that is an array of strings",
            signed_post(br#"{"id":["event_1"],"event":"dsync.user.created"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "an id that is an object",
            signed_post(br#"{"id":{"id":"event_1"},"event":"dsync.user.created"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "an event that is a boolean",
            signed_post(br#"{"id":"event_1","event":true}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "an empty id",
            signed_post(br#"{"id":"","event":"dsync.user.created"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "an id longer than 256 characters",
            signed_post(
                format!(
                    r#"{{"id":"{}","event":"dsync.user.created"}}"#,
                    "e".repeat(257)
                )
                .as_bytes(),
            ),
            400,
            Some("not_an_event"),
        ),
        case(
            "an id with an escaped NUL",
            signed_post(br#"{"id":"event\u0000","event":"dsync.user.created"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "an event type with an escaped newline",
            signed_post(br#"{"id":"event_1","event":"dsync.user.created\n"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "the id given twice",
            signed_post(br#"{"id":"event_1","id":"event_2","event":"dsync.user.created"}"#),
            400,
            Some("not_an_event"),
        ),
        case(
            "a JSON string",
            signed_post(br#""event_1""#),
            400,
            Some("not_an_event"),
        ),
        case(
            "two events in one body",
            signed_post(&[event.as_slice(), &event].concat()),
            400,
            Some("not_an_event"),
        ),
        case(
            "a form instead of JSON",
            post(
                &[
                    b"content-type: application/x-www-form-urlencoded".to_vec(),
                    signed(b"id=event_1&event=dsync.user.created"),
                ],
                b"id=event_1&event=dsync.user.created",
            ),
            400,
            Some("not_an_event"),
        ),
        // ---- Compressed bodies: dsyncd does not decompress; the signature covers the bytes
        // as sent ----
        case(
            "gzip with Content-Encoding, signed before compression",
            post(&[json(), gzip_header.clone(), signature(&valid)], &gzipped),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "gzip without Content-Encoding, signed before compression",
            post(&[json(), signature(&valid)], &gzipped),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "gzip with Content-Encoding, signed as sent",
            post(&[json(), gzip_header.clone(), signed(&gzipped)], &gzipped),
            400,
            Some("not_an_event"),
        ),
        case(
            "gzip without Content-Encoding, signed as sent",
            post(&[json(), signed(&gzipped)], &gzipped),
            400,
            Some("not_an_event"),
        ),
        // ---- Size ----
        case(
            "a Content-Length one byte over the limit, before any body byte",
            request(
                b"POST /webhooks/workos HTTP/1.1",
                &[
                    json(),
                    signed(over_limit),
                    format!("content-length: {}", BODY_LIMIT + 1).into_bytes(),
                ],
                b"",
            ),
            413,
            Some("body_too_large"),
        ),
        case(
            "chunks one byte over the limit",
            chunked_post(&[json(), signed(over_limit)], &chunked(over_limit, 1000)),
            413,
            Some("body_too_large"),
        ),
        case(
            "a header of 1 MiB",
            post(
                &[
                    json(),
                    signature(&wrong),
                    [b"x-padding: ".as_slice(), &vec![b'a'; 1 << 20]].concat(),
                ],
                &event,
            ),
            431,
            None,
        ),
        // ---- HTTP framing ----
        case(
            "HTTP/1.0 without a signature",
            http_1_0(&[json()], &event),
            401,
            Some("signature_missing"),
        ),
        case(
            "HTTP/1.0, signed, not an event",
            http_1_0(&[json(), signed(not_an_event)], not_an_event),
            400,
            Some("not_an_event"),
        ),
        case(
            "HTTP/1.0 without Content-Length: the body is empty",
            request(
                b"POST /webhooks/workos HTTP/1.0",
                &[json(), signature(&valid)],
                &event,
            ),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "chunked by hand, signed, not an event",
            chunked_post(&[json(), signed(not_an_event)], &chunked(not_an_event, 7)),
            400,
            Some("not_an_event"),
        ),
        case(
            "chunked with an invalid chunk size",
            chunked_post(&[json(), signature(&valid)], b"zz\r\n{}\r\n0\r\n\r\n"),
            400,
            Some("unreadable_body"),
        ),
        case(
            // Transfer-Encoding wins (RFC 9112): the signature covers the decoded body, which
            // is not an event. Read by its Content-Length, the body would be the chunk
            // framing, and the signature would not match.
            "both Content-Length and chunked",
            request(
                b"POST /webhooks/workos HTTP/1.1",
                &[
                    json(),
                    signed(not_an_event),
                    format!("content-length: {}", chunked(not_an_event, 5).len()).into_bytes(),
                    b"transfer-encoding: chunked".to_vec(),
                ],
                &chunked(not_an_event, 5),
            ),
            400,
            Some("not_an_event"),
        ),
        case(
            "two different Content-Length headers",
            request(
                b"POST /webhooks/workos HTTP/1.1",
                &[
                    json(),
                    signature(&valid),
                    format!("content-length: {}", event.len()).into_bytes(),
                    format!("content-length: {}", event.len() - 1).into_bytes(),
                ],
                &event,
            ),
            400,
            None,
        ),
        case(
            "a Content-Length that is not a number",
            request(
                b"POST /webhooks/workos HTTP/1.1",
                &[json(), signature(&valid), b"content-length: ten".to_vec()],
                &event,
            ),
            400,
            None,
        ),
        case(
            "a Content-Length shorter than the body: the signature is over more",
            request(
                b"POST /webhooks/workos HTTP/1.1",
                &[
                    json(),
                    signature(&valid),
                    format!("content-length: {}", event.len() - 1).into_bytes(),
                ],
                &event,
            ),
            401,
            Some("signature_mismatch"),
        ),
        case(
            "a garbled request line",
            [b"P\x00ST /webhooks/workos HTTP/1.1\r\n\r\n".as_slice()].concat(),
            400,
            None,
        ),
        case(
            "a header line without a colon",
            request(
                b"POST /webhooks/workos HTTP/1.1",
                &[b"WorkOS-Signature".to_vec()],
                b"",
            ),
            400,
            None,
        ),
        case(
            "GET on the webhook",
            request(b"GET /webhooks/workos HTTP/1.1", &[signature(&valid)], b""),
            405,
            Some("method_not_allowed"),
        ),
        case(
            "POST to another path",
            request(
                b"POST /webhooks/workos/ HTTP/1.1",
                &[
                    signature(&valid),
                    format!("content-length: {}", event.len()).into_bytes(),
                ],
                &event,
            ),
            404,
            Some("not_found"),
        ),
    ]
}

#[sqlx::test]
async fn hostile_requests_get_their_documented_status_and_store_nothing(pool: PgPool) {
    let app = spawn(pool.clone(), 10_000).await;
    let cases = cases();
    assert!(cases.len() >= 30);
    for case in &cases {
        let answer = exchange(&app, &case.request).await;
        check(case, &answer);
        assert_inbox_empty(&pool, case.name).await;
    }

    // The service is unharmed.
    for path in ["/healthz", "/readyz"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let body = user_created("event_after_the_hostile_ones");
    assert_eq!(app.deliver(&body).await.status(), 200);
    assert_eq!(inbox(&pool).await.len(), 1);
    app.stop().await;
}

/// Sends the head of a request declaring `declared` body bytes, then `body` one byte every
/// 100 ms, then nothing more; returns the answer and how long it took from the head.
async fn send_slowly(app: &TestApp, body: &[u8], declared: usize) -> (Answer, Duration) {
    let head = request(
        b"POST /webhooks/workos HTTP/1.1",
        &[
            json(),
            signed(body),
            format!("content-length: {declared}").into_bytes(),
        ],
        b"",
    );
    let (mut reader, mut writer) = TcpStream::connect(socket_address(app))
        .await
        .unwrap()
        .into_split();
    let started = Instant::now();
    writer.write_all(&head).await.unwrap();
    let body = body.to_vec();
    let dribbler = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // All sent, and the declared length still not reached: keep the connection open.
        std::future::pending::<()>().await;
    });
    let answer = read_answer(&mut reader).await;
    let elapsed = started.elapsed();
    dribbler.abort();
    (answer, elapsed)
}

#[sqlx::test]
async fn slow_or_idle_headers_do_not_hold_a_connection(pool: PgPool) {
    let app = spawn(pool.clone(), 500).await;
    // Half a request line, then nothing: the connection is closed once the idle timeout (set
    // to 500 ms here) has passed, with or without an answer.
    for (name, bytes) in [
        ("half a request line", &b"POST /webhooks/wor"[..]),
        (
            "headers that never end",
            &b"POST /webhooks/workos HTTP/1.1\r\nhost: x\r\n"[..],
        ),
        ("an idle connection", &b""[..]),
    ] {
        let mut stream = TcpStream::connect(socket_address(&app)).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "{name}: still open after 5 s");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{name}: closed too early"
        );
    }
    // A kept-alive connection that goes idle after a request is closed too.
    let mut stream = TcpStream::connect(socket_address(&app)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut stream).await.status, 200);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "an idle kept-alive connection: still open after 5 s"
    );

    assert_eq!(
        app.deliver(&user_created("event_after")).await.status(),
        200
    );
    app.stop().await;
}

#[sqlx::test]
async fn slow_and_short_bodies_are_cut_off_by_the_request_timeout(pool: PgPool) {
    let app = spawn(pool.clone(), 500).await;
    let timeout = Duration::from_millis(500);
    let event = user_created("event_slow").into_bytes();

    // A client dribbling its body (a minute at this pace), and one whose Content-Length
    // promises more than it sends.
    for (name, body, declared) in [
        ("a slow client", &event[..], event.len()),
        ("a Content-Length longer than the body", &event[..3], 3 + 1),
    ] {
        let (answer, elapsed) = send_slowly(&app, body, declared).await;
        check(&case(name, Vec::new(), 408, Some("timeout")), &answer);
        assert!(
            elapsed >= timeout && elapsed < timeout * 4,
            "{name}: the 408 came after {elapsed:?}"
        );
        assert_inbox_empty(&pool, name).await;
    }

    // A short body, and the client closes its side: the body cannot be read.
    let mut stream = TcpStream::connect(socket_address(&app)).await.unwrap();
    let head = request(
        b"POST /webhooks/workos HTTP/1.1",
        &[
            json(),
            signed(&event),
            format!("content-length: {}", event.len() + 100).into_bytes(),
        ],
        &event,
    );
    stream.write_all(&head).await.unwrap();
    stream.shutdown().await.unwrap();
    let answer = read_answer(&mut stream).await;
    check(
        &case(
            "a short body, then the client closes",
            head,
            400,
            Some("unreadable_body"),
        ),
        &answer,
    );
    assert_inbox_empty(&pool, "a short body").await;

    assert_eq!(
        app.deliver(&user_created("event_on_time")).await.status(),
        200
    );
    // Each cut-off delivery is counted, as every other rejection is.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let line = "dsyncd_deliveries_total{outcome=\"timeout\"} 2";
    assert!(
        metrics.lines().any(|l| l == line),
        "missing `{line}` in:\n{metrics}"
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_number_no_float_can_hold_is_stored_as_sent(pool: PgPool) {
    // The receiver never re-serializes: the number is neither rounded nor refused.
    let app = spawn(pool.clone(), 10_000).await;
    let body = r#"{"id":"event_huge","event":"dsync.user.created","data":{"n":1e999999,"m":123456789012345678901234567890.5}}"#;
    assert_eq!(
        exchange(&app, &signed_post(body.as_bytes())).await.status,
        200
    );
    assert_eq!(inbox(&pool).await[0].2, body);
    app.stop().await;
}
