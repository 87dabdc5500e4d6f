//! Errors of the HTTP API: a status and a JSON body saying what went wrong, for a
//! refusal of the broker's as for a malformed query or an unknown path.

use axum::Json;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{ErrorCode, RpcError};

#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
    /// The broker's error code, when the broker refused the call.
    code: Option<i32>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), code: None }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<RpcError> for ApiError {
    fn from(error: RpcError) -> ApiError {
        let status = match error.code {
            ErrorCode::InvalidParams | ErrorCode::InvalidRequest | ErrorCode::ParseError => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::QueueFull | ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ShuttingDown | ErrorCode::NoResponders => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, message: error.message, code: Some(error.code.code()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"status": self.status.as_u16(), "message": self.message});
        if let Some(code) = self.code {
            error["code"] = code.into();
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

/// A query string read into `T`; a malformed one is a JSON error naming the field.
pub(super) struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(params)) => Ok(Params(params)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// The answer for a path the listener does not serve.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "nothing at {}: the paths are /, /healthz, /varz, /connz, /subsz, /topics, /metrics, \
             /api/messages/last, /api/messages/poll, /api/publish and /ws",
            uri.path()
        ),
    )
}
