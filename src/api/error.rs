//! The read API's errors, in the bodies WorkOS's SDKs expect (`API.md` §6): always a JSON
//! object with `message` and `code`, served as `application/json`.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// One parameter that failed validation: `{"field": …, "code": …}` in a 422's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The query parameter, e.g. `limit`.
    pub field: String,
    /// What is wrong with it, e.g. `out_of_range` (the codes are listed in README.md).
    pub code: &'static str,
}

/// Every way a read API request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no key, or not a configured one.
    #[error("unauthorized")]
    Unauthorized,
    /// 404: no live object with that id that the key may see (`what` names the kind).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 404: not a route of the read API (only on `api.listen`).
    #[error("no such endpoint")]
    NoRoute,
    /// 405: the route exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 422: bad parameters.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// 503: the database did not answer. (Shared: one failed statement answers every
    /// lookup it held, `lookup`.)
    #[error("database error: {0}")]
    Database(Arc<sqlx::Error>),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        ApiError::Database(Arc::new(error))
    }
}

impl ApiError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Unauthorized => json!({"message": "Unauthorized", "code": "unauthorized"}),
            ApiError::NotFound(what) => {
                json!({"message": format!("{what} not found."), "code": "entity_not_found"})
            }
            ApiError::NoRoute => json!({"message": "Not found.", "code": "not_found"}),
            ApiError::MethodNotAllowed => {
                json!({"message": "Method not allowed.", "code": "method_not_allowed"})
            }
            ApiError::Validation(errors) => json!({
                "message": "Validation failed.",
                "code": "invalid_request_parameters",
                "errors": errors,
            }),
            ApiError::Database(error) => {
                // The error names no parameter value: sqlx errors carry the statement's
                // text at most, and the values are bound.
                tracing::error!(error = %error, "read API query failed");
                json!({"message": "The database is unavailable; retry later.",
                       "code": "service_unavailable"})
            }
        };
        super::json_response(
            status,
            serde_json::to_vec(&body).expect("JSON values serialize"),
        )
    }
}
