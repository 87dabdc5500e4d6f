//! Wire error codes and the error types of the core.

use std::io;

/// A JSON-RPC error code. The first seven come from the JSON-RPC 2.0 specification
/// and the original protocol; the rest are the broker's own, in the server-defined range
/// `-32000..=-32099`. After the codes marked "closes", the broker closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Invalid JSON or invalid UTF-8.
    ParseError,
    /// Valid JSON that is not a JSON-RPC 2.0 request.
    InvalidRequest,
    /// Unknown method.
    MethodNotFound,
    /// Missing or malformed parameters, reserved topic, invalid pattern.
    InvalidParams,
    /// A bug in the broker; the connection stays usable.
    InternalError,
    /// A method other than `connect` or `ping` before `connect`.
    NotConnected,
    /// A request got no reply within its timeout.
    Timeout,
    /// A request matched no subscriber, so nobody could answer it.
    NoResponders,
    /// A frame larger than `max_message_size` (closes when far beyond it).
    MessageTooLarge,
    /// The broker already serves `max_connections` clients (closes).
    TooManyConnections,
    /// Another connection connected with the same `client_id` (closes).
    SessionTakenOver,
    /// The broker is shutting down (closes).
    ShuttingDown,
    /// A client that pings went silent for `heartbeat_timeout` (closes).
    HeartbeatTimeout,
    /// No `connect` within `handshake_timeout`, or a frame that took longer than
    /// `frame_timeout` to arrive (closes).
    ReadTimeout,
    /// The connection already has the most requests waiting for replies.
    TooManyRequests,
    /// A queue (or the retained store) is full: the message was not kept there.
    QueueFull,
    /// The message could not be written to the store, so it is not confirmed.
    StorageFailed,
    /// A `connect` without the broker's token, or with a wrong one (closes); calls
    /// before a valid `connect` on a broker that requires a token get it too.
    Unauthorized,
    /// The broker's permission rules do not let this client publish to the topic or
    /// subscribe to the pattern; nothing was delivered or subscribed.
    PermissionDenied,
    /// The responder failed: it answered the request with an error (the exception its
    /// callback raised) instead of a payload. The error's `data` carries the
    /// [`ResponderFailure`].
    ResponderError,
    /// A channel (of the Channels layer methods) holds its capacity, or its bytes, or
    /// the channels hold the broker's memory for them: the message was not kept.
    ChannelFull,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::InternalError,
        ErrorCode::NotConnected,
        ErrorCode::Timeout,
        ErrorCode::NoResponders,
        ErrorCode::MessageTooLarge,
        ErrorCode::TooManyConnections,
        ErrorCode::SessionTakenOver,
        ErrorCode::ShuttingDown,
        ErrorCode::HeartbeatTimeout,
        ErrorCode::ReadTimeout,
        ErrorCode::TooManyRequests,
        ErrorCode::QueueFull,
        ErrorCode::StorageFailed,
        ErrorCode::Unauthorized,
        ErrorCode::PermissionDenied,
        ErrorCode::ResponderError,
        ErrorCode::ChannelFull,
    ];

    pub const fn code(self) -> i32 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::InternalError => -32603,
            ErrorCode::NotConnected => -32001,
            ErrorCode::Timeout => -32002,
            ErrorCode::NoResponders => -32003,
            ErrorCode::MessageTooLarge => -32004,
            ErrorCode::TooManyConnections => -32005,
            ErrorCode::SessionTakenOver => -32006,
            ErrorCode::ShuttingDown => -32007,
            ErrorCode::HeartbeatTimeout => -32008,
            ErrorCode::ReadTimeout => -32009,
            ErrorCode::TooManyRequests => -32010,
            ErrorCode::QueueFull => -32011,
            ErrorCode::StorageFailed => -32012,
            ErrorCode::Unauthorized => -32013,
            ErrorCode::PermissionDenied => -32014,
            ErrorCode::ResponderError => -32015,
            ErrorCode::ChannelFull => -32016,
        }
    }

    /// The upper-case name used in documentation and by client libraries.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::MethodNotFound => "METHOD_NOT_FOUND",
            ErrorCode::InvalidParams => "INVALID_PARAMS",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::NotConnected => "NOT_CONNECTED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::NoResponders => "NO_RESPONDERS",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::SessionTakenOver => "SESSION_TAKEN_OVER",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::HeartbeatTimeout => "HEARTBEAT_TIMEOUT",
            ErrorCode::ReadTimeout => "READ_TIMEOUT",
            ErrorCode::TooManyRequests => "TOO_MANY_REQUESTS",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::StorageFailed => "STORAGE_FAILED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::ResponderError => "RESPONDER_ERROR",
            ErrorCode::ChannelFull => "CHANNEL_FULL",
        }
    }
}

/// An error answered to one request. It never ends the connection by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
    /// For [`ErrorCode::ResponderError`]: how the responder failed, sent in `data`.
    pub failure: Option<Box<ResponderFailure>>,
}

/// How a responder failed, as its error reply said, and who it was.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResponderFailure {
    /// The name of the exception type (or the responder's own kind of error).
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// The client id of the responder.
    pub responder: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), failure: None }
    }

    /// The error a requester gets when its responder answered with a failure.
    pub fn responder_failed(failure: ResponderFailure) -> Self {
        let message =
            format!("the responder {:?} failed: {}: {}", failure.responder, failure.kind, failure.message);
        RpcError { code: ErrorCode::ResponderError, message, failure: Some(Box::new(failure)) }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(ErrorCode::InvalidParams, message)
    }
}

/// Errors that stop the broker from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot resolve host {host:?}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Store(#[from] crate::broker::store::StoreError),
    #[error("{0}")]
    RuntimeFile(#[from] crate::runtime_file::RuntimeFileError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_in_range() {
        let codes: HashSet<i32> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            let c = code.code();
            assert!((-32099..=-32000).contains(&c) || (-32768..=-32600).contains(&c), "{c}");
        }
    }
}
