//! Messages over plain HTTP, as braviz gave web pages: the last message of a topic,
//! a long poll for the next ones, and publishing. Unlike braviz, a poll carries a
//! cursor (the `seq` of the last message seen), so a burst between two polls is
//! read in full; what left the monitor's bounded log before a poll is reported as
//! `missed`, never silently skipped.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::Web;
use super::error::{ApiError, Params};
use super::publisher::CLIENT_ID;
use crate::broker::monitor::{Logged, MAX_POLL_MESSAGES};
use crate::protocol::method::MethodName;
use crate::protocol::topic::{parse_pattern, validate_topic};

/// How long a poll waits by default, and at most.
const DEFAULT_WAIT: Duration = Duration::from_secs(25);
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The response header that carries the cursor of an empty (204) poll.
const NEXT_SEQ: &str = "x-next-seq";

#[derive(Deserialize)]
pub(super) struct LastQuery {
    topic: Option<String>,
}

pub(super) async fn last(
    State(web): State<Arc<Web>>,
    Params(query): Params<LastQuery>,
) -> Result<Json<Value>, ApiError> {
    let topic = query.topic.ok_or_else(|| ApiError::bad_request("give the topic: ?topic=sensors.temp"))?;
    validate_topic(&topic)?;
    let stats = web.monitor.last(&topic).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no message on {topic:?} since the broker started"))
    })?;
    let message = match &stats.last {
        Some(last) => serde_json::from_slice::<Value>(last)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        None => Value::Null,
    };
    Ok(Json(json!({
        "topic": topic,
        "messages": stats.messages,
        "last_time": stats.last_time,
        "size": stats.last_size,
        // Null when it was larger than the monitor keeps.
        "message": message,
    })))
}

#[derive(Deserialize)]
pub(super) struct PollQuery {
    pattern: Option<String>,
    after: Option<u64>,
    /// Seconds to wait for a message.
    timeout: Option<f64>,
    limit: Option<usize>,
}

pub(super) async fn poll(
    State(web): State<Arc<Web>>,
    Params(query): Params<PollQuery>,
) -> Result<Response, ApiError> {
    let pattern = query.pattern.unwrap_or_else(|| "#".to_owned());
    parse_pattern(&pattern)?;
    let wait = match query.timeout {
        None => DEFAULT_WAIT,
        Some(secs) if secs.is_finite() && (0.0..=MAX_WAIT.as_secs_f64()).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Some(secs) => {
            return Err(ApiError::bad_request(format!(
                "timeout must be 0 to {} seconds, got {secs}",
                MAX_WAIT.as_secs()
            )));
        }
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_POLL_MESSAGES {
        return Err(ApiError::bad_request(format!("limit must be 1..={MAX_POLL_MESSAGES}")));
    }
    let polled = tokio::select! {
        polled = web.monitor.poll(&pattern, query.after, limit, wait) => polled,
        _ = web.closing() => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the broker is shutting down")),
    };
    if polled.messages.is_empty() && polled.missed == 0 && !polled.restarted {
        let mut response = StatusCode::NO_CONTENT.into_response();
        response.headers_mut().insert(NEXT_SEQ, HeaderValue::from(polled.next));
        return Ok(response);
    }
    let mut body =
        Vec::with_capacity(64 + polled.messages.iter().map(|m| m.message.len() + 24).sum::<usize>());
    body.extend_from_slice(br#"{"messages":["#);
    for (i, logged) in polled.messages.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        with_seq(logged, &mut body);
    }
    body.extend_from_slice(
        format!(r#"],"next":{},"missed":{},"restarted":{}}}"#, polled.next, polled.missed, polled.restarted)
            .as_bytes(),
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The logged message object with `"seq"` as its first member, without parsing it.
fn with_seq(logged: &Logged, out: &mut Vec<u8>) {
    out.extend_from_slice(format!(r#"{{"seq":{},"#, logged.seq).as_bytes());
    // The message is a JSON object: `{` and at least one member.
    out.extend_from_slice(&logged.message[1..]);
}

/// `POST /api/publish` with a JSON body, the params of a `publish` call: `topic`,
/// `payload`, and optionally `qos`, `retain`, `ttl`, `headers`, `message_id`.
pub(super) async fn publish(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let json_body =
        headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| {
            value.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json_body {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the message as JSON with Content-Type: application/json",
        ));
    }
    let params: &RawValue = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !params.get().trim_start().starts_with('{') {
        return Err(ApiError::bad_request(r#"the body must be an object: {"topic": "...", "payload": ...}"#));
    }
    let result = web.publisher.call(MethodName::Publish, params).await?;
    let mut answer: Value = serde_json::from_str(result.get())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    answer["sender"] = CLIENT_ID.into();
    Ok(Json(answer))
}
