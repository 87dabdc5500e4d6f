//! The bridge's side of this broker: a session over the in-process transport, like
//! any client's, speaking JSON-RPC. Delivered payloads are cut out of the frame they
//! arrived in, and payloads sent are written into the call as they are, so a message
//! crosses without being parsed into a tree or re-serialised.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::broker::InProcessConnection;
use crate::error::ErrorCode;

/// Messages delivered to the bridge and not yet carried across.
const BACKLOG: usize = 1024;

/// An error answer of this broker to one of the bridge's calls.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} ({code})")]
pub struct LocalError {
    pub code: i64,
    pub message: String,
    /// The error's `data` (a responder's failure carries its `type` there).
    pub data: Option<serde_json::Value>,
}

impl LocalError {
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == i64::from(code.code())
    }

    fn closed() -> LocalError {
        LocalError {
            code: i64::from(ErrorCode::ShuttingDown.code()),
            message: "the broker has stopped".into(),
            data: None,
        }
    }
}

type Answer = Result<Box<RawValue>, LocalError>;

/// A message this broker delivered to the bridge.
#[derive(Debug)]
pub struct LocalMessage {
    pub topic: String,
    /// The payload's JSON text, a slice of the frame it came in.
    pub payload: Bytes,
    pub sender: String,
    pub id: String,
    pub reply_to: Option<String>,
    pub qos: u8,
    pub headers: BTreeMap<String, String>,
    /// The tag to acknowledge and the queue, for a delivery from one of the
    /// bridge's queues.
    pub delivery: Option<u64>,
    pub queue: Option<String>,
}

/// Calls to this broker, shared by the bridge's tasks.
pub struct LocalLink {
    to_broker: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_id: AtomicU64,
    pub client_id: String,
}

#[derive(Serialize)]
struct Call<'a, P: Serialize> {
    jsonrpc: &'static str,
    method: &'a str,
    params: P,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

/// What `publish` and `request` take from the bridge.
#[derive(Serialize, Default)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default, borrow)]
    method: Option<&'a str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorObject>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
    message: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Delivered<'a> {
    topic: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    sender: String,
    id: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    delivery: Option<u64>,
    #[serde(default)]
    queue: Option<String>,
}

/// The part of `frame` that `text` (borrowed from it) is.
fn slice_of(frame: &Bytes, text: &str) -> Bytes {
    let start = text.as_ptr() as usize - frame.as_ptr() as usize;
    frame.slice(start..start + text.len())
}

impl LocalLink {
    /// Connects as `client_id` and returns the link and the messages delivered to it;
    /// the messages end when the broker closes the session (it is stopping).
    pub async fn open(
        connection: InProcessConnection,
        client_id: String,
    ) -> Result<(Arc<LocalLink>, mpsc::Receiver<LocalMessage>), LocalError> {
        let InProcessConnection { to_broker, mut from_broker } = connection;
        let link = Arc::new(LocalLink {
            to_broker,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            client_id,
        });
        let (deliver, messages) = mpsc::channel(BACKLOG);
        let reader = link.clone();
        tokio::spawn(async move {
            while let Some(frame) = from_broker.recv().await {
                if let Some(message) = reader.take(&frame)
                    && deliver.send(message).await.is_err()
                {
                    break;
                }
            }
            for (_, waiter) in reader.pending.lock().drain() {
                let _ = waiter.send(Err(LocalError::closed()));
            }
        });
        let params = serde_json::json!({"client_id": link.client_id, "client_type": "bridge", "version": crate::VERSION});
        link.call("connect", &params).await?;
        Ok((link, messages))
    }

    /// Hands a response to its caller; returns a delivered message.
    fn take(&self, frame: &Bytes) -> Option<LocalMessage> {
        let incoming: Incoming<'_> = match serde_json::from_slice(frame) {
            Ok(incoming) => incoming,
            Err(error) => {
                tracing::warn!(%error, "the broker sent the bridge a frame it cannot read");
                return None;
            }
        };
        match incoming.method {
            Some("message") => {
                let delivered: Delivered<'_> = serde_json::from_str(incoming.params?.get()).ok()?;
                return Some(LocalMessage {
                    payload: slice_of(frame, delivered.payload.get()),
                    topic: delivered.topic,
                    sender: delivered.sender,
                    id: delivered.id,
                    reply_to: delivered.reply_to,
                    qos: delivered.qos,
                    headers: delivered.headers,
                    delivery: delivered.delivery,
                    queue: delivered.queue,
                });
            }
            Some(method) => {
                tracing::warn!(method, params = ?incoming.params.map(RawValue::get), "the broker refused a bridged message");
                return None;
            }
            None => {}
        }
        let id = incoming.id.as_ref().and_then(serde_json::Value::as_u64)?;
        let waiter = self.pending.lock().remove(&id)?;
        let answer = match (incoming.result, incoming.error) {
            (_, Some(error)) => {
                Err(LocalError { code: error.code, message: error.message, data: error.data })
            }
            (Some(result), None) => Ok(result.to_owned()),
            (None, None) => Ok(RawValue::NULL.to_owned()),
        };
        let _ = waiter.send(answer);
        None
    }

    fn encode<P: Serialize>(method: &str, params: P, id: Option<u64>) -> Bytes {
        let call = Call { jsonrpc: "2.0", method, params, id };
        Bytes::from(serde_json::to_vec(&call).expect("bridge calls always serialise"))
    }

    /// A call that waits for its answer.
    pub async fn call<P: Serialize>(&self, method: &str, params: P) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        if self.to_broker.send(Self::encode(method, params, Some(id))).await.is_err() {
            self.pending.lock().remove(&id);
            return Err(LocalError::closed());
        }
        rx.await.unwrap_or_else(|_| Err(LocalError::closed()))
    }

    /// A call that wants no answer (a refused publish comes back as `publish_failed`).
    pub async fn notify<P: Serialize>(&self, method: &str, params: P) -> Result<(), LocalError> {
        self.to_broker.send(Self::encode(method, params, None)).await.map_err(|_| LocalError::closed())
    }

    pub async fn ack(&self, delivery: u64) -> Result<(), LocalError> {
        self.notify("ack", serde_json::json!({"deliveries": [delivery]})).await
    }

    /// Gives a queue delivery up: it goes to the queue's dead letters, and a
    /// publisher waiting for its acknowledgement hears that it is not confirmed.
    pub async fn reject(&self, delivery: u64) -> Result<(), LocalError> {
        self.notify("nack", serde_json::json!({"deliveries": [delivery], "requeue": false})).await
    }
}
