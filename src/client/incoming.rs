//! What the broker sends a client, turned into events: deliveries for the
//! subscriptions they match, answers to calls, refusals of publishes sent without
//! waiting, and notices before the broker closes the connection.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Delivered, Event, QueueDelivery, RemoteError, Shared, encode_settle};
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
struct MessageParams<'a> {
    topic: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    sender: String,
    id: String,
    #[serde(default)]
    timestamp: f64,
    #[serde(default)]
    reply_to: Option<String>,
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

pub(super) fn handle_frame(shared: &Shared, body: &[u8]) -> Handled {
    let frame: Frame<'_> = match serde_json::from_slice(body) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::warn!(%error, "ignored a frame from the broker that is not a JSON-RPC object");
            return Handled::Done;
        }
    };
    if let Some(method) = frame.method {
        match method.as_ref() {
            "message" => deliver(shared, frame.params),
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

fn deliver(shared: &Shared, params: Option<&RawValue>) {
    let Some(params) = params else { return };
    let params: MessageParams<'_> = match serde_json::from_str(params.get()) {
        Ok(params) => params,
        Err(error) => {
            tracing::warn!(%error, "ignored a malformed message from the broker");
            return;
        }
    };
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
                let own = !params.retained && params.sender == shared.config.client_id;
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
    shared.inbox.push(Event::Message(Delivered {
        subscriptions,
        topic: params.topic,
        payload: params.payload.get().to_owned(),
        sender: params.sender,
        id: params.id,
        timestamp: params.timestamp,
        reply_to: params.reply_to,
        ttl: params.ttl,
        qos: params.qos,
        headers: params.headers.map(|headers| headers.get().to_owned()),
        retained: params.retained,
        from_queue,
    }));
}
