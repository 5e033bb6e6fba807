//! The HTTP edge (process A): `POST /webhooks/workos`, `GET /healthz`, `GET /readyz`.
//!
//! The order is verify, persist, acknowledge: the signature is checked on the raw body bytes
//! before anything reads them, the envelope is read, the delivery is committed to the inbox
//! (see [`crate::ingest`]), and only then does the request get its 200. A redelivery of a stored
//! id is a success. Rejections are logged at `warn` with their reason, never with the body, the
//! header or a secret.
//!
//! The webhook route keeps its own time limit, span and metrics instead of the generic layers
//! the other routes get (`app::Service`): it is the one route every delivery takes, and those
//! layers cost it about a tenth of the receiver's CPU (BENCHMARKS.md, "The webhook route
//! without the generic layers").

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tracing::Instrument;

use crate::envelope::Envelope;
use crate::inbox::NewDelivery;
use crate::ingest::{Ingest, IngestError, Stored};
use crate::metrics::Metrics;
use crate::signature::{SignatureError, Verifier, HEADER};

/// The path WorkOS posts to.
pub const WEBHOOK_PATH: &str = "/webhooks/workos";

/// What the receiver's routes share.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Verifier,
    ingest: Ingest,
    pool: PgPool,
    body_limit: usize,
    /// How long a delivery may take, its body included, before it is answered 408.
    request_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// `/readyz` answers 503 if the database takes longer than this.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

impl Receiver {
    /// A receiver storing through `ingest` (see [`Ingest::start`]), answering 408 to a delivery
    /// that takes longer than `request_timeout`, its body included.
    pub fn new(
        verifier: Verifier,
        ingest: Ingest,
        pool: PgPool,
        body_limit: usize,
        request_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Receiver {
            inner: Arc::new(Inner {
                verifier,
                ingest,
                pool,
                body_limit,
                request_timeout,
                metrics,
            }),
        }
    }

    /// The webhook route and the health routes, ready to be served or merged into an existing
    /// axum application.
    pub fn router(self) -> Router {
        let health = Self::health_router(self.inner.pool.clone());
        self.webhook_router().merge(health)
    }

    /// The webhook route alone. It needs no layer: it bounds its own time and opens its own
    /// span.
    pub fn webhook_router(self) -> Router {
        Router::new()
            .route(WEBHOOK_PATH, post(receive).fallback(method_not_allowed))
            .with_state(self)
    }

    /// `GET /metrics` in the Prometheus text format.
    pub fn metrics_router(metrics: Arc<Metrics>, pool: PgPool) -> Router {
        Router::new()
            .route("/metrics", get(render_metrics))
            .with_state((metrics, pool))
    }

    /// `GET /healthz` (the process is up) and `GET /readyz` (200 only while the database
    /// answers), for processes that do not receive (`--role worker`).
    pub fn health_router(pool: PgPool) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(pool)
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let inner = &receiver.inner;
    let span = tracing::debug_span!("request", method = "POST", uri = WEBHOOK_PATH);
    let work = verify_and_store(inner, &headers, body).instrument(span);
    let result = match tokio::time::timeout(inner.request_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::Timeout),
    };
    let outcome = match &result {
        Ok(Stored::New) => "accepted",
        Ok(Stored::Duplicate) => "duplicate",
        Err(error) => error.parts().1,
    };
    receiver.inner.metrics.delivery(outcome, started.elapsed());
    match result {
        Ok(_) => (StatusCode::OK, Json(json!({ "status": outcome }))).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn verify_and_store(
    receiver: &Inner,
    headers: &HeaderMap,
    body: Body,
) -> Result<Stored, ApiError> {
    let signature = headers.get(HEADER).map(|value| value.as_bytes());
    if signature.is_none() {
        return Err(SignatureError::Missing.into());
    }
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > receiver.body_limit as u64) {
        return Err(ApiError::TooLarge(receiver.body_limit));
    }
    let body = axum::body::to_bytes(body, receiver.body_limit)
        .await
        .map_err(|error| ApiError::from_body_error(error, receiver.body_limit))?;

    receiver
        .verifier
        .verify(signature, &body, SystemTime::now())?;
    let envelope =
        Envelope::parse(&body).map_err(|error| ApiError::NotAnEvent(error.to_string()))?;
    tracing::debug!(event.id = %envelope.id, event.type = %envelope.event, "delivery verified");
    let directory = envelope.directory_id().map(Cow::into_owned);
    let (id, event) = (envelope.id.into_owned(), envelope.event.into_owned());
    // The envelope parsed, so the body is valid JSON and therefore UTF-8. (Taking the bytes
    // over reuses their allocation when nothing else holds them.)
    let payload = String::from_utf8(Vec::from(body)).expect("JSON bodies are UTF-8");
    let delivery = NewDelivery {
        id,
        event,
        payload,
        turn_delay: Duration::ZERO,
    };
    receiver
        .ingest
        .store(delivery, directory)
        .await
        .map_err(ApiError::Storage)
}

async fn render_metrics(State((metrics, pool)): State<(Arc<Metrics>, PgPool)>) -> Response {
    let text = metrics.render(&pool).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(pool): State<PgPool>) -> Response {
    let ping = sqlx::query("SELECT 1").execute(&pool);
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(_)) => Json(json!({ "status": "ready" })).into_response(),
        _ => ApiError::NotReady.into_response(),
    }
}

/// Every way a request can fail, each with its status. The body is `{"error", "message"}`.
#[derive(Debug)]
pub enum ApiError {
    /// 401
    Signature(SignatureError),
    /// 400: signed, but not an event.
    NotAnEvent(String),
    /// 400: the body could not be read (the client went away mid-body).
    BadBody,
    /// 413: the body is larger than the limit.
    TooLarge(usize),
    /// 503 (or 400 when Postgres refuses the event's data).
    Storage(IngestError),
    /// 408: the request (its body included) took longer than `server.request_timeout_ms`.
    Timeout,
    /// 503 from `/readyz`: the database does not answer.
    NotReady,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
}

/// Answers 408 (with the usual JSON body) when a request takes longer than `timeout`.
pub async fn with_timeout(
    timeout: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// The JSON 404 for paths that are not routes.
pub async fn not_found() -> Response {
    ApiError::NotFound.into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

impl From<SignatureError> for ApiError {
    fn from(error: SignatureError) -> Self {
        ApiError::Signature(error)
    }
}

impl ApiError {
    fn from_body_error(error: axum::Error, limit: usize) -> ApiError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(current) = source {
            if current.is::<http_body_util::LengthLimitError>() {
                return ApiError::TooLarge(limit);
            }
            source = current.source();
        }
        ApiError::BadBody
    }

    /// The status, a stable error name, and a message safe to show anyone.
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::Signature(error) => {
                (StatusCode::UNAUTHORIZED, error.reason(), error.to_string())
            }
            ApiError::NotAnEvent(message) => {
                (StatusCode::BAD_REQUEST, "not_an_event", message.clone())
            }
            ApiError::BadBody => (
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "the request body could not be read".to_owned(),
            ),
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {limit} bytes"),
            ),
            ApiError::Storage(error @ IngestError::Refused(_)) => (
                StatusCode::BAD_REQUEST,
                "refused_by_database",
                error.to_string(),
            ),
            ApiError::Storage(error) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{error}; the delivery was not stored, retry later"),
            ),
            ApiError::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the database does not answer".to_owned(),
            ),
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request took too long; the delivery was not stored".to_owned(),
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such endpoint; WorkOS posts to {WEBHOOK_PATH}"),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{WEBHOOK_PATH} takes POST"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = self.parts();
        match self {
            ApiError::NotFound | ApiError::MethodNotAllowed => {
                tracing::debug!(http.status = status.as_u16(), error, "not a route")
            }
            // Polled every few seconds; the failing pool already logs why.
            ApiError::NotReady => tracing::debug!(error, "not ready"),
            _ if status.is_server_error() => {
                tracing::error!(http.status = status.as_u16(), error, "delivery not stored")
            }
            _ => tracing::warn!(http.status = status.as_u16(), error, "delivery rejected"),
        }
        (status, Json(json!({ "error": error, "message": message }))).into_response()
    }
}
