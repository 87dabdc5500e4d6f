//! What the broker sends a client, turned into events: deliveries for the
//! subscriptions they match, answers to calls, refusals of publishes sent without
//! waiting, and notices before the broker closes the connection.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::written::{self, WrittenDelivery};
use super::{Delivered, DeliveryFields, Event, QueueDelivery, RemoteError, Shared, encode_settle};
use crate::protocol::jsonrpc::present;

/// What a frame from the broker was, once handled.
pub(super) enum Handled {
    Done,
    /// The answer to one of the task's own calls.
    Internal {
        id: String,
        result: Result<String, RemoteError>,
    },
    /// An error not tied to a call (`"id": null`): the broker is about to close.
    Notice(RemoteError),
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<WireError<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    code: i32,
    message: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug))]
struct MessageParams<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    timestamp: f64,
    #[serde(borrow, default)]
    reply_to: Option<Cow<'a, str>>,
    #[serde(default)]
    ttl: Option<f64>,
    #[serde(default)]
    qos: u8,
    #[serde(borrow, default)]
    headers: Option<&'a RawValue>,
    #[serde(default)]
    retained: bool,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    delivery: Option<u64>,
    #[serde(default)]
    delivery_count: u32,
}

pub(super) fn handle_frame(shared: &Shared, body: &Bytes) -> Handled {
    // Deliveries keep the frame they are read from.
    let body = &own_frame(body);
    if let Some(delivery) = written::read(body) {
        deliver(shared, body, delivery);
        return Handled::Done;
    }
    let frame: Frame<'_> = match serde_json::from_slice(body) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::warn!(%error, "ignored a frame from the broker that is not a JSON-RPC object");
            return Handled::Done;
        }
    };
    if let Some(method) = frame.method {
        match method.as_ref() {
            "message" => {
                match frame.params.map(|params| serde_json::from_str::<MessageParams<'_>>(params.get())) {
                    Some(Ok(params)) => deliver(shared, body, WrittenDelivery::from(params)),
                    Some(Err(error)) => tracing::warn!(%error, "ignored a malformed message from the broker"),
                    None => tracing::warn!("ignored a message from the broker without params"),
                }
            }
            "publish_failed" => publish_failed(shared, frame.params),
            _ => {}
        }
        return Handled::Done;
    }
    let result = match frame.error {
        Some(error) => Err(RemoteError {
            code: error.code,
            message: error.message,
            data: error.data.map(|data| data.get().to_owned()),
        }),
        None => Ok(frame.result.map_or("null", RawValue::get)),
    };
    let Some(id) = frame.id else {
        return Handled::Done;
    };
    let id = id.get();
    if id == "null" {
        return match result {
            Err(error) => Handled::Notice(error),
            Ok(_) => Handled::Done,
        };
    }
    if let Ok(call) = id.parse::<u64>() {
        shared.state.lock().awaiting.remove(&call);
        shared.inbox.push(Event::Response { call, result: result.map(str::to_owned) });
        return Handled::Done;
    }
    let Ok(id) = serde_json::from_str::<String>(id) else {
        return Handled::Done;
    };
    Handled::Internal { id, result: result.map(str::to_owned) }
}

fn publish_failed(shared: &Shared, params: Option<&RawValue>) {
    #[derive(Deserialize)]
    struct Failed {
        message_id: String,
        code: i32,
        message: String,
    }
    let Some(Ok(failed)) = params.map(|p| serde_json::from_str::<Failed>(p.get())) else {
        tracing::warn!("ignored a malformed publish_failed notice from the broker");
        return;
    };
    let error = RemoteError { code: failed.code, message: failed.message, data: None };
    shared.inbox.push(Event::PublishFailed { message_id: failed.message_id, error });
}

impl<'a> From<MessageParams<'a>> for WrittenDelivery<'a> {
    fn from(params: MessageParams<'a>) -> Self {
        let fields = DeliveryFields {
            topic: params.topic,
            payload: params.payload.get(),
            sender: params.sender,
            id: params.id,
            reply_to: params.reply_to,
            headers: params.headers.map(RawValue::get),
            timestamp: params.timestamp,
            ttl: params.ttl,
            qos: params.qos,
            retained: params.retained,
        };
        let from_queue = match (params.queue, params.delivery) {
            (Some(queue), Some(tag)) => Some((Cow::Owned(queue), tag, params.delivery_count)),
            _ => None,
        };
        WrittenDelivery { fields, from_queue }
    }
}

/// Queues a delivery read from `frame` for the subscriptions it is for.
fn deliver(shared: &Shared, frame: &Bytes, delivery: WrittenDelivery<'_>) {
    let WrittenDelivery { fields, from_queue } = delivery;
    let from_queue = from_queue.map(|(queue, tag, delivery_count)| QueueDelivery {
        queue: queue.into_owned(),
        tag,
        delivery_count,
        generation: shared.generation.load(Ordering::Acquire),
    });
    let subscriptions = {
        let state = shared.state.lock();
        match &from_queue {
            Some(delivery) => {
                state.queues.iter().filter(|q| q.name == delivery.queue).map(|q| q.sub).collect()
            }
            // A retained message is the topic's state, whoever set it: never skipped.
            None => {
                let own = !fields.retained && *fields.sender == *shared.config.client_id;
                state.subscriptions.matching(&fields.topic, own)
            }
        }
    };
    if subscriptions.is_empty() {
        // Sent before an unsubscribe reached the broker. A queue's message goes back
        // to the queue for another consumer.
        if let Some(delivery) = from_queue {
            let frame = encode_settle(&[delivery.tag], false, true);
            shared.state.lock().outbound.push(&frame, None);
            shared.writer_wake.notify_one();
        }
        return;
    }
    shared.inbox.push(Event::Message(Delivered::new(subscriptions, frame, fields, from_queue)));
}

/// A frame cut from the read buffer shares the buffer's allocation: one that waits in
/// the inbox alone would hold all of it. Frames this small are kept as a copy of their
/// own; larger ones fill most of the allocation they share.
const SHARED_FRAME_MIN: usize = 4 * 1024;

fn own_frame(body: &Bytes) -> Bytes {
    if body.len() < SHARED_FRAME_MIN { Bytes::copy_from_slice(body) } else { body.clone() }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    use super::*;
    use crate::protocol::message::{Delivery, FromQueue};

    /// The delivery as serde reads it: the frame first, then its params.
    fn read_by_serde(body: &[u8]) -> String {
        let frame: Frame<'_> = serde_json::from_slice(body).unwrap();
        assert_eq!(frame.method.as_deref(), Some("message"));
        let params: MessageParams<'_> = serde_json::from_str(frame.params.unwrap().get()).unwrap();
        format!("{:?}", WrittenDelivery::from(params))
    }

    fn plain(payload: &RawValue) -> Delivery<'_> {
        Delivery {
            topic: "jobs.a",
            payload,
            sender: "pub",
            id: "m1",
            timestamp: 1764619200.123456,
            reply_to: None,
            ttl: None,
            qos: 0,
            headers: None,
            retained: false,
            from_queue: None,
        }
    }

    #[test]
    fn a_delivery_as_the_broker_writes_it_is_read_in_one_pass_as_serde_reads_it() {
        let payload =
            RawValue::from_string(r#"{"n": [1, "x\"}]", {"a": []}], "m": null, "s": "é"}"#.into()).unwrap();
        let full = Delivery {
            reply_to: Some("_inbox.x.1"),
            ttl: Some(2.25),
            qos: 1,
            retained: true,
            from_queue: Some(FromQueue { queue: "work", delivery: 7, delivery_count: 2 }),
            ..plain(&payload)
        };
        for delivery in [plain(&payload), full] {
            let body = delivery.encode();
            let read = written::read(&body).expect("read in one pass");
            assert_eq!(format!("{read:?}"), read_by_serde(&body));
            assert_eq!(read.fields.payload, payload.get());
        }
        for scalar in ["1", "-2.5e3", "\"text\"", "true", "null", "[]", "{}"] {
            let scalar = RawValue::from_string(scalar.into()).unwrap();
            let body = plain(&scalar).encode();
            assert_eq!(written::read(&body).expect("read in one pass").fields.payload, scalar.get());
        }
    }

    #[test]
    fn what_the_one_pass_does_not_expect_is_left_to_serde() {
        let payload = RawValue::from_string("1".into()).unwrap();
        let headers = RawValue::from_string(r#"{"trace":"t"}"#.into()).unwrap();
        let escaped = Delivery { topic: "jobs.\"quoted\"", ..plain(&payload) };
        let with_headers = Delivery { headers: Some(&headers), ..plain(&payload) };
        for body in [escaped.encode(), with_headers.encode()] {
            assert!(written::read(&body).is_none());
            read_by_serde(&body);
        }
        for body in [
            &br#"{"method":"message","jsonrpc":"2.0","params":{"topic":"t","payload":1,"sender":"s","id":"i","timestamp":1}}"#[..],
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i","timestamp":1},"id":3}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","timestamp":1}}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i","timestamp":1}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":,"sender":"s","id":"i","timestamp":1}}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":"open,"sender":"s","id":"i","timestamp":1}}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i","timestamp":x}}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i","timestamp":-inf}}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i","timestamp":1.}}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i","timestamp":-.5}}"#,
            br#"{"jsonrpc":"2.0","method":"publish_failed","params":{"message_id":"m","code":1,"message":"x"}}"#,
        ] {
            assert!(written::read(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            "[a-z\"\\\\{}\\[\\],:é\\n ]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z\"\\\\{}]{0,6}", inner, 0..6)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_one_pass_reads_what_serde_reads_or_leaves_it(
            payload in json_value(),
            topic in "[a-z.\"\\\\é]{1,12}",
            reply_to in proptest::option::of("[a-z._]{1,12}"),
            ttl in proptest::option::of(0.001f64..1e6),
            qos in 0u8..2,
            retained in any::<bool>(),
            from_queue in proptest::option::of(("[a-z\"]{1,8}", any::<u64>(), any::<u32>())),
        ) {
            let payload = RawValue::from_string(payload.to_string()).unwrap();
            let queue = from_queue.as_ref().map(|(name, delivery, count)| {
                FromQueue { queue: name.as_str(), delivery: *delivery, delivery_count: *count }
            });
            let delivery = Delivery {
                topic: &topic,
                reply_to: reply_to.as_deref(),
                ttl,
                qos,
                retained,
                from_queue: queue,
                ..plain(&payload)
            };
            let body = delivery.encode();
            let by_serde = read_by_serde(&body);
            match written::read(&body) {
                Some(read) => prop_assert_eq!(format!("{read:?}"), by_serde),
                None => prop_assert!(
                    topic.contains(['"', '\\']) || from_queue.is_some_and(|(name, ..)| name.contains('"')),
                    "only strings with escapes are left to serde here: {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }

    #[test]
    fn a_small_frame_is_kept_as_a_copy_not_as_part_of_the_read_buffer() {
        let mut buffer = bytes::BytesMut::zeroed(64 * 1024);
        let small = buffer.split_to(200).freeze();
        let large = buffer.split_to(SHARED_FRAME_MIN).freeze();
        let kept = own_frame(&small);
        assert_eq!(kept, small);
        assert_ne!(kept.as_ptr(), small.as_ptr(), "its own allocation");
        assert_eq!(own_frame(&large).as_ptr(), large.as_ptr(), "shared: it fills its share");
    }
}
