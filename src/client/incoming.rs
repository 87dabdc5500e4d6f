//! What the broker sends a client, turned into events: deliveries for the
//! subscriptions they match, answers to calls, refusals of publishes sent without
//! waiting, and notices before the broker closes the connection.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

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

/// How the broker begins every delivery it writes (`protocol::message::Delivery`).
const DELIVERY_START: &[u8] = br#"{"jsonrpc":"2.0","method":"message","params":"#;

pub(super) fn handle_frame(shared: &Shared, body: &Bytes) -> Handled {
    // Deliveries keep the frame they are read from.
    let body = &own_frame(body);
    if let Some(params) = delivery_as_written(body) {
        deliver(shared, body, params);
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
            "message" => match frame.params.map(|params| serde_json::from_str(params.get())) {
                Some(Ok(params)) => deliver(shared, body, params),
                Some(Err(error)) => tracing::warn!(%error, "ignored a malformed message from the broker"),
                None => tracing::warn!("ignored a message from the broker without params"),
            },
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

/// The params of a delivery written as the broker writes it, read in one pass: the
/// envelope is matched as text. Anything else (or anything wrong) is read as a whole
/// frame instead, with its errors.
fn delivery_as_written(body: &[u8]) -> Option<MessageParams<'_>> {
    let params = body.strip_prefix(DELIVERY_START)?.strip_suffix(b"}")?;
    serde_json::from_slice(params).ok()
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

/// Queues a delivery read from `frame` for the subscriptions it is for.
fn deliver(shared: &Shared, frame: &Bytes, params: MessageParams<'_>) {
    let from_queue = match (params.queue, params.delivery) {
        (Some(queue), Some(tag)) => Some(QueueDelivery {
            queue,
            tag,
            delivery_count: params.delivery_count,
            generation: shared.generation.load(Ordering::Acquire),
        }),
        _ => None,
    };
    let subscriptions = {
        let state = shared.state.lock();
        match &from_queue {
            Some(delivery) => {
                state.queues.iter().filter(|q| q.name == delivery.queue).map(|q| q.sub).collect()
            }
            // A retained message is the topic's state, whoever set it: never skipped.
            None => {
                let own = !params.retained && *params.sender == *shared.config.client_id;
                state.subscriptions.matching(&params.topic, own)
            }
        }
    };
    if subscriptions.is_empty() {
        // Sent before an unsubscribe reached the broker. A queue's message goes back
        // to the queue for another consumer.
        if let Some(delivery) = from_queue {
            let frame = encode_settle(&[delivery.tag], false, true);
            shared.state.lock().outbound.push_back(super::Outgoing::new(frame, None, false));
            shared.writer_wake.notify_one();
        }
        return;
    }
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
    use serde_json::value::RawValue;

    use super::*;
    use crate::protocol::message::{Delivery, FromQueue};

    /// The params as the general reading finds them: the frame first, then its params.
    fn read_as_a_whole(body: &[u8]) -> MessageParams<'_> {
        let frame: Frame<'_> = serde_json::from_slice(body).unwrap();
        assert_eq!(frame.method.as_deref(), Some("message"));
        serde_json::from_str(frame.params.unwrap().get()).unwrap()
    }

    #[test]
    fn a_delivery_as_the_broker_writes_it_is_read_in_one_pass_to_the_same_params() {
        let payload = RawValue::from_string(r#"{"n": [1, "x\"}"], "m": null}"#.into()).unwrap();
        let headers = RawValue::from_string(r#"{"trace":"a\u00e9"}"#.into()).unwrap();
        let plain = Delivery {
            topic: "jobs.a",
            payload: &payload,
            sender: "pub",
            id: "m1",
            timestamp: 1.5,
            reply_to: None,
            ttl: None,
            qos: 0,
            headers: None,
            retained: false,
            from_queue: None,
        };
        let full = Delivery {
            topic: "jobs.\"quoted\"",
            sender: "caf\u{e9}\n",
            reply_to: Some("_inbox.x.1"),
            ttl: Some(2.25),
            qos: 1,
            headers: Some(&headers),
            retained: true,
            from_queue: Some(FromQueue { queue: "work", delivery: 7, delivery_count: 2 }),
            ..plain
        };
        for delivery in [plain, full] {
            let body = delivery.encode();
            let fast = delivery_as_written(&body).expect("read in one pass");
            assert_eq!(format!("{fast:?}"), format!("{:?}", read_as_a_whole(&body)));
            assert_eq!(fast.topic, delivery.topic);
            assert_eq!(fast.sender, delivery.sender);
            assert_eq!(fast.payload.get(), payload.get());
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

    #[test]
    fn other_frames_and_damaged_deliveries_are_left_to_the_general_reading() {
        let written = br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i"}}"#;
        assert!(delivery_as_written(written).is_some());
        for body in [
            &br#"{"method":"message","jsonrpc":"2.0","params":{"topic":"t","payload":1,"sender":"s","id":"i"}}"#[..],
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i"},"id":3}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s"}}"#,
            br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","payload":1,"sender":"s","id":"i"}"#,
            br#"{"jsonrpc":"2.0","method":"publish_failed","params":{"message_id":"m","code":1,"message":"x"}}"#,
        ] {
            assert!(delivery_as_written(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
    }
}
