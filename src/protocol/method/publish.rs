//! `publish`: its params as given and as checked, and the call as a client writes it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::RpcError;
use crate::protocol::jsonrpc;
use crate::protocol::message::write_str;
use crate::protocol::rules;
use crate::protocol::topic::{REPLY_PREFIX, validate_topic};

/// `publish`, its fields checked; the payload and headers stay the text the
/// publisher wrote.
#[derive(Debug)]
pub struct Publish<'a> {
    pub topic: Cow<'a, str>,
    pub payload: Option<&'a RawValue>,
    pub qos: u8,
    pub ttl: Option<f64>,
    pub retain: bool,
    pub message_id: Option<Cow<'a, str>>,
    pub headers: Option<&'a RawValue>,
    /// A responder's failure, sent to a reply address instead of a payload.
    pub error: Option<ReplyError>,
}

/// What a responder that failed answers a request with: the `error` of a publish to
/// the request's `reply_to`, in place of the payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyError {
    /// The name of the exception type (`ValueError`), or the responder's own kind of
    /// error.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// The params of `publish` as given, before [`Publish::check`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishParams<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    qos: Option<Value>,
    #[serde(default)]
    ttl: f64,
    #[serde(default)]
    retain: bool,
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    headers: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ReplyError>,
}

impl PublishParams<'_> {
    /// The id the publisher gave the message, if any.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
}

impl<'a> Publish<'a> {
    pub(super) fn parse(params: Option<&'a RawValue>) -> Result<Publish<'a>, RpcError> {
        Publish::check(jsonrpc::params(params)?)
    }

    /// Checks params read already (with the envelope, see [`jsonrpc::parse`]).
    pub fn check(given: PublishParams<'a>) -> Result<Publish<'a>, RpcError> {
        validate_topic(&given.topic)?;
        if let Some(error) = &given.error {
            if !given.topic.starts_with(REPLY_PREFIX) {
                return Err(RpcError::invalid_params(
                    "\"error\" answers a request: publish it to the request's reply_to",
                ));
            }
            if given.payload.is_some() {
                return Err(RpcError::invalid_params("a reply carries a payload or an error, not both"));
            }
            rules::error_type(&error.kind)?;
        }
        if let Some(id) = &given.message_id {
            rules::message_id(id)?;
        }
        let qos = rules::qos(given.qos.as_ref())?;
        let ttl = rules::ttl(given.ttl)?;
        if let Some(headers) = given.headers {
            rules::headers(headers)?;
        }
        Ok(Publish {
            topic: given.topic,
            payload: given.payload,
            qos,
            ttl,
            retain: given.retain,
            message_id: given.message_id,
            headers: given.headers.filter(|headers| !rules::is_empty_object(headers)),
            error: given.error,
        })
    }
}

/// A publish as a client sends it. The hot path of every client: written straight
/// into one buffer, the payload and headers copied as the caller encoded them.
#[derive(Debug, Clone, Copy)]
pub struct PublishCall<'a> {
    pub topic: &'a str,
    /// JSON text.
    pub payload: &'a str,
    pub message_id: &'a str,
    pub ttl: Option<f64>,
    pub qos: u8,
    pub retain: bool,
    /// A JSON object of strings, as text.
    pub headers: Option<&'a str>,
}

impl PublishCall<'_> {
    /// The call, as a request with `id` (answered once the broker has the message) or
    /// a notification (answered only by a `publish_failed` refusal).
    pub fn encode(&self, id: Option<u64>) -> Vec<u8> {
        let headers = self.headers.map_or(0, str::len);
        let mut frame = Vec::with_capacity(
            98 + self.topic.len() + self.payload.len() + 2 * self.message_id.len() + headers,
        );
        frame.extend_from_slice(br#"{"jsonrpc":"2.0","method":"publish","params":{"topic":"#);
        write_str(&mut frame, self.topic);
        frame.extend_from_slice(br#","payload":"#);
        frame.extend_from_slice(self.payload.as_bytes());
        frame.extend_from_slice(br#","message_id":""#);
        frame.extend_from_slice(self.message_id.as_bytes());
        frame.push(b'"');
        if let Some(ttl) = self.ttl {
            frame.extend_from_slice(format!(r#","ttl":{ttl}"#).as_bytes());
        }
        if self.qos > 0 {
            frame.extend_from_slice(format!(r#","qos":{}"#, self.qos).as_bytes());
        }
        if self.retain {
            frame.extend_from_slice(br#","retain":true"#);
        }
        if let Some(headers) = self.headers {
            frame.extend_from_slice(br#","headers":"#);
            frame.extend_from_slice(headers.as_bytes());
        }
        match id {
            Some(id) => frame.extend_from_slice(format!(r#"}},"id":{id}}}"#).as_bytes()),
            None => frame.extend_from_slice(b"}}"),
        }
        frame
    }
}
