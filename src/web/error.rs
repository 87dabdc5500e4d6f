//! Errors of the HTTP API: a status and a JSON body saying what went wrong.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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
