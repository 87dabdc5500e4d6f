//! Encoding of delivered messages.
//!
//! A published message is encoded once, into a notification that every subscriber
//! receives as the same shared bytes:
//! `{"jsonrpc":"2.0","method":"message","params":{"topic","payload","sender","id","timestamp",...}}`.
//! The payload and headers are copied as the publisher wrote it, never parsed into a tree and
//! re-serialised.

use super::json_value;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// The metadata and payload of one message on its way to subscribers.
#[derive(Debug, Serialize)]
pub struct Delivery<'a> {
    pub topic: &'a str,
    pub payload: &'a RawValue,
    pub sender: &'a str,
    pub id: &'a str,
    /// Seconds since the Unix epoch when the broker accepted the message.
    pub timestamp: f64,
    /// Where a reply goes; present on requests only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<&'a str>,
    /// Seconds the publisher gave the message to live; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<f64>,
    /// 1 for at-least-once messages; absent for 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub qos: u8,
    /// The publisher's headers, a JSON object of strings, as written; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<&'a RawValue>,
    /// Set when the message comes from the retained store (a late joiner's catch-up).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retained: bool,
    /// For deliveries from a queue: which queue, the tag to acknowledge, and how many
    /// times the message has been delivered (this time included).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub from_queue: Option<FromQueue<'a>>,
}

/// How a delivery from a queue is acknowledged.
#[derive(Debug, Serialize)]
pub struct FromQueue<'a> {
    pub queue: &'a str,
    pub delivery: u64,
    pub delivery_count: u32,
}

fn is_zero(value: &u8) -> bool {
    *value == 0
}

#[derive(Serialize)]
struct Notification<'a, P: Serialize> {
    jsonrpc: &'static str,
    method: &'static str,
    params: &'a P,
}

/// Encodes a notification frame body for `method` with `params`.
pub fn notification<P: Serialize>(method: &'static str, params: &P) -> Bytes {
    let body = serde_json::to_vec(&Notification { jsonrpc: "2.0", method, params })
        .expect("notification params always serialise");
    Bytes::from(body)
}

impl Delivery<'_> {
    /// The notification every subscriber receives, written field by field: the same
    /// text as serialising the struct, without serde's per-key escaping and map
    /// machinery, as this runs once for every message routed.
    pub fn encode(&self) -> Bytes {
        let payload = self.payload.get();
        let headers = self.headers.map_or(0, |h| h.get().len());
        let strings = self.topic.len() + self.sender.len() + self.id.len();
        let mut out = Vec::with_capacity(160 + payload.len() + headers + strings);
        out.extend_from_slice(br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"#);
        write_str(&mut out, self.topic);
        out.extend_from_slice(br#","payload":"#);
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(br#","sender":"#);
        write_str(&mut out, self.sender);
        out.extend_from_slice(br#","id":"#);
        write_str(&mut out, self.id);
        out.extend_from_slice(br#","timestamp":"#);
        write_timestamp(&mut out, self.timestamp);
        if let Some(reply_to) = self.reply_to {
            out.extend_from_slice(br#","reply_to":"#);
            write_str(&mut out, reply_to);
        }
        if let Some(ttl) = self.ttl {
            out.extend_from_slice(br#","ttl":"#);
            write_number(&mut out, ttl);
        }
        if self.qos != 0 {
            out.extend_from_slice(br#","qos":"#);
            out.extend_from_slice(self.qos.to_string().as_bytes());
        }
        if let Some(headers) = self.headers {
            out.extend_from_slice(br#","headers":"#);
            out.extend_from_slice(headers.get().as_bytes());
        }
        if self.retained {
            out.extend_from_slice(br#","retained":true"#);
        }
        if let Some(from_queue) = &self.from_queue {
            out.extend_from_slice(br#","queue":"#);
            write_str(&mut out, from_queue.queue);
            out.extend_from_slice(br#","delivery":"#);
            out.extend_from_slice(from_queue.delivery.to_string().as_bytes());
            out.extend_from_slice(br#","delivery_count":"#);
            out.extend_from_slice(from_queue.delivery_count.to_string().as_bytes());
        }
        out.extend_from_slice(b"}}");
        Bytes::from(out)
    }
}

/// A JSON string: as it is when nothing in it needs escaping (topics, ids, client ids
/// and most keys and values), else as serde_json escapes it; the characters escaped
/// are those `json.dumps(ensure_ascii=False)` escapes too.
pub(crate) fn write_str(out: &mut Vec<u8>, text: &str) {
    if json_value::plain_len(text.as_bytes()) == text.len() {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, text).expect("a string always serialises");
    }
}

fn write_number(out: &mut Vec<u8>, value: f64) {
    serde_json::to_writer(out, &value).expect("a number always serialises");
}

thread_local! {
    /// The last timestamp written on this thread, and its text: the messages of one
    /// batch of frames share their timestamp, so its digits are made once.
    static LAST_TIMESTAMP: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

fn write_timestamp(out: &mut Vec<u8>, timestamp: f64) {
    LAST_TIMESTAMP.with_borrow_mut(|(bits, text)| {
        if *bits != timestamp.to_bits() || text.is_empty() {
            text.clear();
            write_number(text, timestamp);
            *bits = timestamp.to_bits();
        }
        out.extend_from_slice(text);
    });
}

/// Returns the payload with raw line breaks replaced by spaces. In valid JSON a raw
/// line break can only be whitespace between tokens, so this never changes the value,
/// and it keeps forwarded payloads safe for newline-delimited connections.
pub fn single_line(payload: &RawValue) -> Option<Box<RawValue>> {
    let text = payload.get();
    memchr::memchr2(b'\n', b'\r', text.as_bytes())?;
    let flat = text.replace(['\n', '\r'], " ");
    Some(RawValue::from_string(flat).expect("replacing whitespace keeps JSON valid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn delivery_carries_the_payload_and_headers_verbatim() {
        let payload = RawValue::from_string(r#"{"b":1,  "a":[1.50,"é"]}"#.into()).unwrap();
        let headers = RawValue::from_string(r#"{"trace" : "t-1"}"#.into()).unwrap();
        let body = Delivery {
            topic: "jobs.activated",
            payload: &payload,
            sender: "app1",
            id: "abc-1",
            timestamp: 1.5,
            reply_to: None,
            ttl: None,
            qos: 0,
            headers: Some(&headers),
            retained: false,
            from_queue: None,
        }
        .encode();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(r#""payload":{"b":1,  "a":[1.50,"é"]}"#), "{text}");
        assert!(text.contains(r#""headers":{"trace" : "t-1"}"#), "{text}");
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["method"], "message");
        assert_eq!(value["params"]["topic"], "jobs.activated");
        assert_eq!(value["params"]["sender"], "app1");
        assert_eq!(value["params"]["id"], "abc-1");
        assert!(value["params"].get("reply_to").is_none());
        assert!(value.get("id").is_none(), "a notification has no id");
        for absent in ["qos", "retained", "queue", "delivery", "delivery_count"] {
            assert!(value["params"].get(absent).is_none(), "{absent} is left out when unset");
        }
    }

    #[test]
    fn delivery_is_written_as_serde_writes_it() {
        let payload = RawValue::from_string(r#"[1, {"x":"\u0007"}]"#.into()).unwrap();
        let headers = RawValue::from_string(r#"{"k":"v"}"#.into()).unwrap();
        let plain = Delivery {
            topic: "jobs.activated",
            payload: &payload,
            sender: "app1",
            id: "abc-1",
            timestamp: 1_764_000_000.123_456,
            reply_to: None,
            ttl: None,
            qos: 0,
            headers: None,
            retained: false,
            from_queue: None,
        };
        let everything = Delivery {
            topic: "odd.\"quoted\".t\u{1}",
            sender: "back\\slash é\u{7f}",
            id: "id\n1",
            reply_to: Some("_internal.reply.7.ab"),
            ttl: Some(2.5),
            qos: 1,
            headers: Some(&headers),
            retained: true,
            from_queue: Some(FromQueue { queue: "jobs", delivery: 18_446_744_073_709, delivery_count: 3 }),
            ..plain
        };
        for delivery in [&plain, &everything] {
            let by_serde = notification("message", delivery);
            assert_eq!(delivery.encode(), by_serde, "{}", String::from_utf8_lossy(&by_serde));
        }
        // The digits of the last timestamp are kept: the same one again, another, and
        // back, each written as serde writes it.
        for timestamp in [1_764_000_000.123_456, 1_764_000_000.123_457, 0.0, 1e16, 1_764_000_000.123_456] {
            let delivery = Delivery { timestamp, from_queue: None, ..plain };
            assert_eq!(delivery.encode(), notification("message", &delivery), "{timestamp}");
        }
    }

    #[test]
    fn line_breaks_become_spaces() {
        let payload = RawValue::from_string("{\n  \"a\": \"x\\ny\"\r\n}".into()).unwrap();
        let flat = single_line(&payload).unwrap();
        assert!(!flat.get().contains('\n'));
        let value: Value = serde_json::from_str(flat.get()).unwrap();
        assert_eq!(value, json!({"a": "x\ny"}));
        assert!(single_line(&RawValue::from_string("[1]".into()).unwrap()).is_none());
    }
}
