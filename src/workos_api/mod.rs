//! The client of WorkOS's REST API, as reconciliation uses it: list pages of events,
//! directories, users and groups (`../shared/spec/API.md`).
//!
//! It owns the base URL, the bearer key (a [`Secret`], never logged), the answers' typed
//! errors, and retries: a 429 waits as its `Retry-After` says (seconds; exponential backoff
//! without one), 5xx answers, timeouts and connection errors back off exponentially, all
//! bounded by `workos.max_attempts`. A 401 is [`ApiError::Unauthorized`], which names
//! `WORKOS_API_KEY`; response bodies never reach an error or a log line.
//!
//! Items are kept as the JSON text WorkOS sent ([`RawValue`]): the tail stores events exactly as
//! returned. (The official `workos` crate's `EventSchema` holds `data` as a `HashMap` and would
//! re-serialize it, reordered, so it is not used here.)

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{Secret, WorkosConfig};
use crate::envelope::describe_json_error;

/// The longest a 429's `Retry-After` is honoured for; a longer one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The longest exponential backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a request to WorkOS failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: the key is missing, wrong or revoked. Reconciliation stops; webhooks go on.
    #[error(
        "WorkOS refused the API key (401 Unauthorized): check WORKOS_API_KEY (`workos.api_key`)"
    )]
    Unauthorized,
    /// 403: the key lacks a permission.
    #[error("WorkOS refused {path} (403 Forbidden): the key in WORKOS_API_KEY lacks a permission")]
    Forbidden {
        /// The request's path.
        path: String,
    },
    /// Another 4xx: WorkOS will not answer this request as asked (e.g. an unknown cursor).
    #[error("WorkOS refused {path} ({status})")]
    Refused {
        /// The request's path.
        path: String,
        /// The HTTP status.
        status: u16,
    },
    /// 429s, 5xx answers or timeouts through every attempt.
    #[error("WorkOS did not answer {path} after {attempts} attempts (last: {last})")]
    Unavailable {
        /// The request's path.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure: a status or a transport error's kind, never a body.
        last: String,
    },
    /// A 2xx whose body is not the list envelope.
    #[error("WorkOS answered {path} with a body that is not a list: {problem}")]
    Malformed {
        /// The request's path.
        path: String,
        /// What does not fit (serde's message without quoted values).
        problem: String,
    },
    /// The request could not be built (an invalid base URL).
    #[error("cannot build a request to WorkOS: {0}")]
    Request(String),
}

/// One page of a list endpoint: `{"object": "list", "data": […], "list_metadata": {…}}`.
#[derive(Debug, Deserialize)]
pub struct Page {
    /// The items, each exactly as WorkOS sent it.
    pub data: Vec<Box<RawValue>>,
    /// The cursors.
    pub list_metadata: ListMetadata,
}

/// `list_metadata` of a page.
#[derive(Debug, Default, Deserialize)]
pub struct ListMetadata {
    /// The id of the first item, or `null` at the start (absent on `/events`).
    #[serde(default)]
    pub before: Option<String>,
    /// The id of the last item, or `null` at the end of the list.
    #[serde(default)]
    pub after: Option<String>,
}

/// The WorkOS API client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    max_attempts: u32,
    backoff_base: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config`'s base URL with `api_key`.
    pub fn new(config: &WorkosConfig, api_key: Secret) -> Result<Client, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .user_agent(concat!("dsyncd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ApiError::Request(error.to_string()))?;
        Ok(Client {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            api_key,
            max_attempts: config.max_attempts.max(1),
            backoff_base: Duration::from_millis(config.backoff_base_ms),
        })
    }

    /// `GET path?query`, one page, with retries.
    pub async fn list(&self, path: &str, query: &[(&str, &str)]) -> Result<Page, ApiError> {
        let url = format!("{}{path}", self.base_url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .get(&url)
                .query(query)
                .bearer_auth(self.api_key.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await;
            let (last, wait) = match sent {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let body = response.bytes().await;
                        match body {
                            Ok(body) => {
                                return serde_json::from_slice(&body).map_err(|error| {
                                    ApiError::Malformed {
                                        path: path.to_owned(),
                                        problem: describe_json_error(&error),
                                    }
                                })
                            }
                            Err(error) => (transport_failure(&error), None),
                        }
                    } else if status == reqwest::StatusCode::UNAUTHORIZED {
                        return Err(ApiError::Unauthorized);
                    } else if status == reqwest::StatusCode::FORBIDDEN {
                        return Err(ApiError::Forbidden {
                            path: path.to_owned(),
                        });
                    } else if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        let retry_after = retry_after(response.headers());
                        (format!("{status}"), retry_after)
                    } else if status.is_server_error() {
                        (format!("{status}"), None)
                    } else {
                        return Err(ApiError::Refused {
                            path: path.to_owned(),
                            status: status.as_u16(),
                        });
                    }
                }
                Err(error) => (transport_failure(&error), None),
            };
            if attempt >= self.max_attempts {
                return Err(ApiError::Unavailable {
                    path: path.to_owned(),
                    attempts: attempt,
                    last,
                });
            }
            let wait = wait.unwrap_or_else(|| backoff(self.backoff_base, attempt));
            tracing::warn!(
                workos.path = path,
                attempt,
                failure = %last,
                wait_ms = wait.as_millis() as u64,
                "WorkOS request failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// What went wrong on the way, without the URL (it may carry cursors, not secrets, but the
/// error's own text can be long) or anything of a body.
fn transport_failure(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else if error.is_body() || error.is_decode() {
        "the answer broke off".to_owned()
    } else {
        "transport error".to_owned()
    }
}

/// `Retry-After` in seconds (what WorkOS sends), capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// `base × 2^(attempt-1)`, capped at [`MAX_BACKOFF`].
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        assert_eq!(backoff(base, 1), Duration::from_millis(500));
        assert_eq!(backoff(base, 2), Duration::from_secs(1));
        assert_eq!(backoff(base, 4), Duration::from_secs(4));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(reqwest::header::RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn pages_keep_items_as_sent() {
        let body =
            r#"{"object":"list","data":[{"z":1,"a":{"b":[2]}}],"list_metadata":{"after":null}}"#;
        let page: Page = serde_json::from_str(body).unwrap();
        assert_eq!(page.data[0].get(), r#"{"z":1,"a":{"b":[2]}}"#);
        assert_eq!(page.list_metadata.after, None);
    }

    #[test]
    fn the_key_never_prints() {
        let client = Client::new(&WorkosConfig::default(), Secret::new("sk_do_not_print")).unwrap();
        assert!(!format!("{client:?}").contains("sk_do_not_print"));
        assert!(!ApiError::Unauthorized.to_string().contains("sk_"));
    }
}
