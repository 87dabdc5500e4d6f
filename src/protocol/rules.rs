//! What the protocol accepts: limits and the checks of single fields, shared by the
//! broker (which enforces them), the client engine (which refuses early what the
//! broker would refuse) and the Python bindings (which export them).

use serde_json::Value;
use serde_json::value::RawValue;

use super::topic::is_reserved;
use crate::error::RpcError;

/// Largest message a broker accepts unless configured otherwise, in bytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// Longest `client_id` accepted, in characters.
pub const MAX_CLIENT_ID_LEN: usize = 256;
/// Longest publisher-chosen `message_id`, in bytes.
pub const MAX_MESSAGE_ID_LEN: usize = 128;
/// Default and largest timeout of a `request`, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT: f64 = 5.0;
pub const MAX_REQUEST_TIMEOUT: f64 = 3600.0;
/// Most deliveries settled by one `ack` or `nack`.
pub const MAX_SETTLE: usize = 100_000;
/// Most patterns one client may hold, so one client cannot grow the index without bound.
pub const MAX_PATTERNS_PER_CLIENT: usize = 10_000;
/// Most headers on one message, and the longest name and value, in bytes.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_NAME_LEN: usize = 256;
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Longest `type` of a responder's error reply, in bytes: the name of an exception.
pub const MAX_ERROR_TYPE_LEN: usize = 256;
/// Longest `message` of a responder's error reply that a client sends, in bytes;
/// clients cut longer ones (the broker only holds the frame to `max_message_size`).
pub const MAX_ERROR_MESSAGE_LEN: usize = 4096;

/// The Channels layer methods (see [`super::channels`]): names as the Channels
/// specification has them, shorter than this many characters.
pub const MAX_CHANNEL_NAME_LEN: usize = 100;
/// Most messages one channel may be given as its capacity.
pub const MAX_CHANNEL_CAPACITY: usize = 100_000;
/// Most bytes one channel holds, whatever its capacity.
pub const MAX_CHANNEL_BYTES: usize = 64 << 20;
/// Most channels holding messages (or awaited by a receive) at once, over every prefix.
pub const MAX_CHANNELS: usize = 100_000;
/// Most groups, over every prefix, and members of one group.
pub const MAX_GROUPS: usize = 100_000;
pub const MAX_GROUP_MEMBERS: usize = 10_000;
/// Most memberships over every group.
pub const MAX_MEMBERSHIPS: usize = 1_000_000;
/// Longest a message or a membership may be kept, in seconds (a year).
pub const MAX_CHANNEL_TTL: f64 = 365.0 * 86_400.0;
/// Most messages one `channel_receive` takes, and longest it waits for one, in seconds.
pub const MAX_RECEIVE_BATCH: usize = 1000;
pub const MAX_RECEIVE_TIMEOUT: f64 = 60.0;

/// 1 to [`MAX_CLIENT_ID_LEN`] characters, none of them a control character.
pub fn client_id(client_id: &str) -> Result<(), RpcError> {
    if client_id.is_empty() || client_id.chars().count() > MAX_CLIENT_ID_LEN {
        return Err(RpcError::invalid_params(format!(
            "client_id must be 1 to {MAX_CLIENT_ID_LEN} characters long"
        )));
    }
    if client_id.chars().any(char::is_control) {
        return Err(RpcError::invalid_params("client_id must not contain control characters"));
    }
    Ok(())
}

/// What a client id may not contain on a broker with permission rules: the
/// wildcards and the separator of patterns.
pub const SEGMENT_FORBIDDEN: [char; 4] = ['*', '+', '#', '.'];

/// Where permission rules apply, a client id is one topic segment, never a pattern:
/// substituted into a rule (`clients.{client}.#`) it can neither widen the rule nor
/// reach into the namespace of a client whose id it begins.
pub fn segment_client_id(client_id: &str) -> Result<(), RpcError> {
    if let Some(found) = client_id.chars().find(|c| SEGMENT_FORBIDDEN.contains(c)) {
        return Err(RpcError::invalid_params(format!(
            "client_id {client_id:?} must not contain {found:?} on a broker with permission rules: \
             there a client id is one topic segment, without the wildcards '*', '+', '#' and the separator '.'"
        )));
    }
    Ok(())
}

/// A publisher-chosen message id: what lets a client return the id without waiting.
pub fn message_id(id: &str) -> Result<(), RpcError> {
    if id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN || id.chars().any(char::is_control) {
        return Err(RpcError::invalid_params(format!(
            "message_id must be 1 to {MAX_MESSAGE_ID_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// `qos` as given (any JSON, so that a wrong one gets an error that names it).
pub fn qos(qos: Option<&Value>) -> Result<u8, RpcError> {
    match qos.map(|q| (q, q.as_u64())) {
        None => Ok(0),
        Some((_, Some(level @ (0 | 1)))) => Ok(level as u8),
        Some((given, _)) => Err(RpcError::invalid_params(format!(
            "qos must be 0 (at most once) or 1 (at least once), got {given}"
        ))),
    }
}

/// Seconds a message may live: 0 means no limit.
pub fn ttl(ttl: f64) -> Result<Option<f64>, RpcError> {
    if !ttl.is_finite() || ttl < 0.0 {
        return Err(RpcError::invalid_params(format!(
            "ttl must be 0 (no limit) or a positive number of seconds, got {ttl}"
        )));
    }
    Ok((ttl > 0.0).then_some(ttl))
}

/// A request's timeout, [`DEFAULT_REQUEST_TIMEOUT`] when not given.
pub fn request_timeout(timeout: Option<f64>) -> Result<f64, RpcError> {
    let timeout = timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    if !(timeout > 0.0 && timeout <= MAX_REQUEST_TIMEOUT) {
        return Err(RpcError::invalid_params(format!(
            "timeout must be more than 0 and at most {MAX_REQUEST_TIMEOUT} seconds, got {timeout}"
        )));
    }
    Ok(timeout)
}

/// Topics under the reserved prefixes belong to the broker.
pub fn publishable(topic: &str) -> Result<(), RpcError> {
    if is_reserved(topic) {
        return Err(RpcError::invalid_params(format!(
            "topic {topic:?} is reserved for the broker: clients cannot publish to system.* or _internal.*"
        )));
    }
    Ok(())
}

/// Headers: an object of at most [`MAX_HEADERS`] string members, each name 1 to
/// [`MAX_HEADER_NAME_LEN`] bytes without control characters and each value at most
/// [`MAX_HEADER_VALUE_LEN`] bytes.
pub fn headers(headers: &RawValue) -> Result<(), RpcError> {
    let map: std::collections::BTreeMap<std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>> =
        serde_json::from_str(headers.get())
            .map_err(|_| RpcError::invalid_params("headers must be an object whose values are strings"))?;
    if map.len() > MAX_HEADERS {
        return Err(RpcError::invalid_params(format!("at most {MAX_HEADERS} headers per message")));
    }
    for (name, value) in &map {
        if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || name.chars().any(char::is_control) {
            return Err(RpcError::invalid_params(format!(
                "header names must be 1 to {MAX_HEADER_NAME_LEN} bytes without control characters, got {name:?}"
            )));
        }
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(RpcError::invalid_params(format!(
                "the value of header {name:?} is longer than {MAX_HEADER_VALUE_LEN} bytes"
            )));
        }
    }
    Ok(())
}

/// The `type` of a responder's error reply: 1 to [`MAX_ERROR_TYPE_LEN`] bytes without
/// control characters.
pub fn error_type(kind: &str) -> Result<(), RpcError> {
    if kind.is_empty() || kind.len() > MAX_ERROR_TYPE_LEN || kind.chars().any(char::is_control) {
        return Err(RpcError::invalid_params(format!(
            "error.type must be 1 to {MAX_ERROR_TYPE_LEN} bytes without control characters, got {kind:?}"
        )));
    }
    Ok(())
}

/// `{}` with any whitespace: headers that say nothing, and are not forwarded.
pub(crate) fn is_empty_object(raw: &RawValue) -> bool {
    let text = raw.get().trim();
    text.starts_with('{') && text.ends_with('}') && text[1..text.len() - 1].trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(client_id("app").is_ok());
        assert!(client_id("").is_err());
        assert!(client_id("a\u{7}").is_err());
        for pattern_like in ["a*", "+", "x#", "app.ui"] {
            assert!(
                client_id(pattern_like).is_ok() && segment_client_id(pattern_like).is_err(),
                "{pattern_like}"
            );
        }
        assert!(segment_client_id("sensor-1_A@host").is_ok());
        assert!(client_id(&"é".repeat(MAX_CLIENT_ID_LEN)).is_ok());
        assert!(client_id(&"é".repeat(MAX_CLIENT_ID_LEN + 1)).is_err());
    }

    #[test]
    fn headers_are_a_small_map_of_strings() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        assert!(headers(&raw(r#"{"trace-id":"abc","empty":""}"#)).is_ok());
        assert!(headers(&raw(r#"{"n":1}"#)).is_err());
        assert!(headers(&raw(r#"{"":"x"}"#)).is_err());
        assert!(headers(&raw("\"text\"")).is_err());
        let long = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_HEADER_VALUE_LEN + 1));
        assert!(headers(&raw(&long)).is_err());
        let many: Vec<String> = (0..=MAX_HEADERS).map(|n| format!(r#""h{n}":"v""#)).collect();
        assert!(headers(&raw(&format!("{{{}}}", many.join(",")))).is_err());
        assert!(is_empty_object(&raw("{ }")) && !is_empty_object(&raw(r#"{"a":"b"}"#)));
    }
}
