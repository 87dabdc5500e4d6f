//! `publish`: its params as given and as checked, and the call as a client writes it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::RpcError;
use crate::protocol::message::write_str;
use crate::protocol::rules;
use crate::protocol::topic::{REPLY_PREFIX, validate_topic};
use crate::protocol::{json_value, jsonrpc};

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

impl<'a> PublishParams<'a> {
    /// The id the publisher gave the message, if any.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// The params of a publish as [`PublishCall::encode`] writes them for a plain
    /// message (no ttl, qos, retain or headers), with the length of text they took:
    /// read in one pass, where the general reading matches every member name against
    /// the struct's. The payload is checked in the same pass, by the grammar serde_json
    /// checks it with ([`json_value::split_raw`]). `None` for any other text (another
    /// order, spacing or member, an escape in the topic or id, a payload that is not
    /// plainly valid), which the general reading then takes, with its errors.
    pub(crate) fn read_written(text: &'a str) -> Option<(PublishParams<'a>, usize)> {
        let rest = text.strip_prefix(r#"{"topic":"#)?;
        let (topic, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(r#","payload":"#)?;
        let (payload, rest) = json_value::split_raw(rest)?;
        let rest = rest.strip_prefix(r#","message_id":"#)?;
        let (message_id, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix('}')?;
        let params = PublishParams {
            topic: Cow::Borrowed(topic),
            // As serde reads an `Option`: `null` is none.
            payload: (payload.get() != "null").then_some(payload),
            qos: None,
            ttl: 0.0,
            retain: false,
            message_id: Some(Cow::Borrowed(message_id)),
            headers: None,
            error: None,
        };
        Some((params, text.len() - rest.len()))
    }
}

/// A JSON string at the start of `text` with nothing escaped in it, and the text after.
fn plain_string(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix('"')?;
    let end = json_value::plain_len(inner.as_bytes());
    (inner.as_bytes().get(end) == Some(&b'"')).then(|| (&inner[..end], &inner[end + 1..]))
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
        let mut frame = Vec::new();
        self.encode_into(&mut frame, id);
        frame
    }

    /// Appends the call to `frame`.
    pub fn encode_into(&self, frame: &mut Vec<u8>, id: Option<u64>) {
        let headers = self.headers.map_or(0, str::len);
        frame.reserve(98 + self.topic.len() + self.payload.len() + 2 * self.message_id.len() + headers);
        frame.extend_from_slice(br#"{"jsonrpc":"2.0","method":"publish","params":{"topic":"#);
        write_str(frame, self.topic);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The general reading of params, with the length of text it took.
    fn general(text: &str) -> Option<(String, usize)> {
        let mut values = serde_json::Deserializer::from_str(text).into_iter::<PublishParams<'_>>();
        let params = values.next()?.ok()?;
        Some((format!("{params:?}"), values.byte_offset()))
    }

    fn one_pass(text: &str) -> Option<(String, usize)> {
        PublishParams::read_written(text).map(|(params, read)| (format!("{params:?}"), read))
    }

    #[test]
    fn a_plain_publish_is_read_in_one_pass() {
        for payload in [r#"{"k":[1,"}",{"a":null}]}"#, "null", "3", r#""s""#, "[]", "true"] {
            let params = format!(r#"{{"topic":"a.b","payload":{payload},"message_id":"m-1"}}"#);
            for after in ["", r#","id":7}"#, "}"] {
                let text = format!("{params}{after}");
                assert!(one_pass(&text).is_some(), "{text}");
                assert_eq!(one_pass(&text), general(&text), "{text}");
            }
        }
        let (params, _) =
            PublishParams::read_written(r#"{"topic":"a","payload":null,"message_id":"m"}"#).unwrap();
        assert!(params.payload.is_none(), "a null payload reads as none, as serde reads it");
    }

    proptest! {
        /// Whatever the one pass reads, the general reading reads the same, to the
        /// same length; and the one pass takes the text clients write.
        #[test]
        fn the_one_pass_reads_as_the_general_reading(
            topic in r#"[a.\"\\\u{1}\u{e9}]{0,6}"#,
            payload in prop_oneof![
                Just("{}"), Just(r#"{"a":[1,2.5e3,"x\"y"]}"#), Just("null"), Just("-0"), Just("[1,]"),
                Just("{"), Just("01"), Just(r#""\ud800""#), Just("nul"), Just("1 "), Just(" 1"), Just("tru"),
            ],
            message_id in r#"[m\-1\"\\\u{7}]{0,4}"#,
            after in prop_oneof![
                Just(""), Just(r#","ttl":5"#), Just(r#","qos":1"#), Just(r#","message_id":"x""#),
                Just(r#","retain":true"#), Just(r#","headers":{"a":"b"}"#), Just(" "),
            ],
            close in prop_oneof![Just("}"), Just(""), Just("},"), Just("}}")],
        ) {
            let text = format!(r#"{{"topic":"{topic}","payload":{payload},"message_id":"{message_id}"{after}{close}"#);
            if let Some(read) = one_pass(&text) {
                prop_assert_eq!(Some(read), general(&text), "{}", text);
            }
            let plain = |s: &str| !s.contains(['"', '\\']) && !s.bytes().any(|b| b < 0x20);
            // What clients write: no whitespace around the payload (with it, the general
            // reading takes the text).
            let valid_payload = serde_json::from_str::<&RawValue>(payload).is_ok() && payload.trim() == payload;
            if plain(&topic) && plain(&message_id) && valid_payload && after.is_empty() && close.starts_with('}') {
                prop_assert!(one_pass(&text).is_some(), "{}", text);
            }
        }
    }
}
