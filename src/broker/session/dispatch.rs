//! From frames to method calls: a single call or a batch, answered in order, with
//! calls that answer later (requests, `qos=1` publishes) awaited without holding up
//! the connection.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::{RawValue, to_raw_value};

use super::{End, Session};
use crate::broker::access;
use crate::error::{ErrorCode, RpcError};
use crate::protocol::jsonrpc::{self, Call, Incoming};
use crate::protocol::message::notification;
use crate::protocol::method::{Method, MethodName};

pub(super) type RpcResult = Result<Box<RawValue>, RpcError>;
pub(super) type PendingResult = Pin<Box<dyn Future<Output = RpcResult> + Send>>;

/// What a method call produced.
pub(super) enum Outcome {
    Done(RpcResult),
    /// Carried out, for a notification: nothing to answer, so no answer was made.
    Unanswered,
    /// Answered later (a request of a batch waiting for its reply, a publish waiting
    /// for the store).
    Pending(PendingResult),
    /// A single request: whoever has its answer queues it (see [`super::request`]).
    AwaitingReply,
    /// Answered, then the connection closes for the reason given (`disconnect`, a
    /// `connect` with a wrong token).
    Close(RpcResult, End),
}

impl Outcome {
    pub(super) fn from_result(result: Result<Outcome, RpcError>) -> Outcome {
        result.unwrap_or_else(|error| Outcome::Done(Err(error)))
    }
}

impl Session {
    /// Handles one frame: a single call or a batch. Returns `Some` when the
    /// connection must close afterwards.
    pub(super) async fn handle_frame(&mut self, body: &[u8]) -> Option<End> {
        let incoming = match jsonrpc::parse(body) {
            Ok(incoming) => incoming,
            Err(error) => {
                self.protocol_error();
                self.respond(jsonrpc::failure(None, &error)).await;
                return None;
            }
        };
        let call = match incoming {
            Incoming::Batch(calls) => return self.handle_batch(calls).await,
            Incoming::Single(Err(rejected)) => {
                self.protocol_error();
                self.respond(jsonrpc::failure(rejected.id, &rejected.error)).await;
                return None;
            }
            Incoming::Single(Ok(call)) => call,
        };
        let mut closes = None;
        match self.dispatch(&call, true) {
            Outcome::Unanswered | Outcome::AwaitingReply => {}
            Outcome::Done(result) => {
                if let Some(response) = self.encode(&call, result) {
                    self.respond(response).await;
                }
            }
            Outcome::Close(result, end) => {
                if let Some(response) = self.encode(&call, result) {
                    self.respond(response).await;
                }
                closes = Some(end);
            }
            // A notification gets no answer, so nothing waits for its reply.
            Outcome::Pending(pending) => {
                if let Some(id) = call.id.map(RawValue::to_owned) {
                    let outbox = self.outbox.clone();
                    self.spawn(async move {
                        let result = pending.await;
                        outbox.send(Bytes::from(encode_result(&id, result))).await;
                    });
                }
            }
        }
        closes
    }

    async fn handle_batch(&mut self, calls: Vec<jsonrpc::Parsed<'_>>) -> Option<End> {
        let mut slots = Vec::with_capacity(calls.len());
        let mut close = None;
        for call in calls {
            let call = match call {
                Ok(call) => call,
                Err(rejected) => {
                    self.protocol_error();
                    slots.push(Slot::Ready(jsonrpc::failure(rejected.id, &rejected.error)));
                    continue;
                }
            };
            if let Some(slot) = self.batch_slot(&call, &mut close) {
                slots.push(slot);
            }
        }
        if close.is_some() {
            // The connection closes after this batch: requests in it cannot wait.
            for slot in &mut slots {
                if let Slot::Waiting(id, _) = slot {
                    let error =
                        RpcError::new(ErrorCode::NotConnected, "disconnected before the reply arrived");
                    *slot = Slot::Ready(jsonrpc::failure(Some(id), &error));
                }
            }
        }
        if slots.iter().all(|slot| matches!(slot, Slot::Ready(_))) {
            let responses: Vec<Vec<u8>> = slots.into_iter().filter_map(Slot::ready).collect();
            if !responses.is_empty() {
                self.respond(jsonrpc::batch(&responses)).await;
            }
        } else {
            let outbox = self.outbox.clone();
            self.spawn(async move {
                let responses = answer_all(slots).await;
                outbox.send(Bytes::from(jsonrpc::batch(&responses))).await;
            });
        }
        close
    }

    /// One call of a batch. Calls after one that closes the connection (`disconnect`)
    /// in the same batch are not carried out; requests among them are told so.
    fn batch_slot(&mut self, call: &Call<'_>, close: &mut Option<End>) -> Option<Slot> {
        if let Some(end) = close {
            let error = RpcError::new(
                ErrorCode::NotConnected,
                format!(
                    "not carried out: the connection closes after an earlier call in this batch ({})",
                    end.reason()
                ),
            );
            return call.id.map(|id| Slot::Ready(jsonrpc::failure(Some(id), &error)));
        }
        match self.dispatch(call, false) {
            Outcome::Unanswered | Outcome::AwaitingReply => None,
            Outcome::Pending(pending) => call.id.map(|id| Slot::Waiting(id.to_owned(), pending)),
            Outcome::Close(result, end) => {
                *close = Some(end);
                self.encode(call, result).map(Slot::Ready)
            }
            Outcome::Done(result) => self.encode(call, result).map(Slot::Ready),
        }
    }

    /// Runs work that answers later (requests waiting for replies). It belongs to the
    /// session: when the connection ends, whatever still waits is dropped with it.
    pub(super) fn spawn(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        while self.waiting.try_join_next().is_some() {}
        self.waiting.spawn(work);
    }

    /// The response to a call, or `None` for a notification (whose errors are logged).
    fn encode(&self, call: &Call<'_>, result: RpcResult) -> Option<Vec<u8>> {
        if result.is_err() {
            self.protocol_error();
        }
        match call.id {
            Some(id) => Some(encode_result(id, result)),
            None => {
                if let Err(error) = result {
                    self.notification_failed(call, &error);
                }
                None
            }
        }
    }

    /// A notification gets no response, errors included. A publish sent as a
    /// notification with a `message_id` is still never refused in silence: the
    /// publisher gets a `publish_failed` notification naming the message.
    fn notification_failed(&self, call: &Call<'_>, error: &RpcError) {
        #[derive(Deserialize)]
        struct Named<'a> {
            #[serde(borrow, default)]
            message_id: Option<Cow<'a, str>>,
        }
        let named = match &call.publish {
            Some(given) => given.message_id().map(Cow::Borrowed),
            None => (call.method == MethodName::Publish.as_str())
                .then(|| call.params.and_then(|p| serde_json::from_str::<Named<'_>>(p.get()).ok()))
                .flatten()
                .and_then(|named| named.message_id),
        };
        match named {
            Some(message_id) => {
                let failed = json!({
                    "message_id": message_id,
                    "code": error.code.code(),
                    "message": error.message,
                });
                self.outbox.try_send(notification("publish_failed", &failed));
            }
            None => tracing::debug!(
                client_id = self.client_id.as_deref(),
                method = %call.method,
                code = error.code.code(),
                "notification failed: {}",
                error.message
            ),
        }
    }

    /// Carries out one call; `single` when it is not part of a batch.
    fn dispatch(&mut self, call: &Call<'_>, single: bool) -> Outcome {
        let name = match MethodName::find(&call.method) {
            Ok(name) => name,
            Err(error) => return Outcome::Done(Err(error)),
        };
        if self.owes_token && name != MethodName::Connect {
            return Outcome::Done(Err(access::unauthorized()));
        }
        if self.client_id.is_none() && name.needs_connect() {
            return Outcome::Done(Err(RpcError::new(
                ErrorCode::NotConnected,
                format!("call \"connect\" before \"{}\"", name.as_str()),
            )));
        }
        let method = match Method::of(name, call) {
            Ok(method) => method,
            Err(error) => return Outcome::Done(Err(error)),
        };
        match method {
            Method::Connect(params) => match self.connect(params) {
                Err(error) if error.code == ErrorCode::Unauthorized => {
                    Outcome::Close(Err(error), End::Unauthorized)
                }
                result => Outcome::Done(result),
            },
            Method::Disconnect => Outcome::Close(to_raw(&json!({"disconnected": true})), End::Disconnected),
            Method::Subscribe(params) => Outcome::Done(self.subscribe(params)),
            Method::Unsubscribe(params) => Outcome::Done(self.unsubscribe(params)),
            Method::Publish(params) => Outcome::from_result(self.publish(params, call.id.is_some())),
            Method::Request(params) => Outcome::from_result(self.request(params, call.id.filter(|_| single))),
            Method::Settle(params) => Outcome::Done(self.settle(params)),
            Method::DeleteQueue(params) => Outcome::Done(self.delete_queue(params)),
            Method::PurgeQueue(params) => Outcome::Done(self.purge_queue(params)),
            Method::ChannelSend(params) => Outcome::Done(self.channel_send(params)),
            Method::ChannelReceive(params) => {
                Outcome::from_result(self.channel_receive(params, call.id.is_some()))
            }
            Method::GroupAdd(params) => Outcome::Done(self.group_add(params)),
            Method::GroupDiscard(params) => Outcome::Done(self.group_discard(params)),
            Method::GroupSend(params) => Outcome::Done(self.group_send(params)),
            Method::ChannelFlush(params) => Outcome::Done(self.channel_flush(params)),
            Method::ChannelAck(params) => Outcome::Done(self.channel_ack(params)),
            Method::ChannelNack(params) => Outcome::Done(self.channel_nack(params)),
            Method::ChannelCancel(params) => Outcome::Done(self.channel_cancel(params)),
            Method::Ping => {
                self.pinged = true;
                Outcome::Done(to_raw(&json!({"pong": true, "time": unix_now()})))
            }
            Method::Status => Outcome::Done(to_raw(&self.router.status())),
        }
    }
}

/// A batch's answer to one of its calls: ready, or waiting for a reply.
enum Slot {
    Ready(Vec<u8>),
    Waiting(Box<RawValue>, PendingResult),
}

impl Slot {
    fn ready(self) -> Option<Vec<u8>> {
        match self {
            Slot::Ready(response) => Some(response),
            Slot::Waiting(..) => None,
        }
    }
}

/// Waits for every request of a batch at once; the responses keep the batch's order.
async fn answer_all(slots: Vec<Slot>) -> Vec<Vec<u8>> {
    let mut waiting = tokio::task::JoinSet::new();
    let mut responses: Vec<Option<Vec<u8>>> = Vec::with_capacity(slots.len());
    for (at, slot) in slots.into_iter().enumerate() {
        match slot {
            Slot::Ready(response) => responses.push(Some(response)),
            Slot::Waiting(id, pending) => {
                responses.push(None);
                waiting.spawn(async move { (at, encode_result(&id, pending.await)) });
            }
        }
    }
    while let Some(done) = waiting.join_next().await {
        if let Ok((at, response)) = done {
            responses[at] = Some(response);
        }
    }
    responses.into_iter().flatten().collect()
}

pub(super) fn to_raw<T: serde::Serialize>(value: &T) -> RpcResult {
    to_raw_value(value).map_err(|e| RpcError::new(ErrorCode::InternalError, e.to_string()))
}

fn encode_result(id: &RawValue, result: RpcResult) -> Vec<u8> {
    match result {
        Ok(result) => jsonrpc::success(id, &result),
        Err(error) => jsonrpc::failure(Some(id), &error),
    }
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
