//! A broker client on the tokio runtime: the engine behind the Python `BrokerClient`.
//!
//! It connects with bounded retries, pings, reconnects with back-off, restores its
//! subscriptions, coalesces writes, and matches incoming messages against its own
//! subscriptions. It never calls its user: everything it has to say goes into the
//! [`Inbox`], drained in batches by whoever owns the client.
//!
//! Publishing only queues a frame: the message id is chosen here and the publish is a
//! notification, so `publish` returns without waiting for the broker, which answers
//! only a refusal (a `publish_failed` notification, surfaced as
//! [`Event::PublishFailed`]).

mod config;
mod inbox;
mod incoming;
mod outbound;
#[cfg(windows)]
pub(crate) mod pipe;
mod stream;
mod subscriptions;
mod task;
mod written;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};

pub use config::ClientConfig;
use config::backoff;
pub use inbox::{Delivered, DeliveryFields, Event, Inbox, QueueDelivery, RemoteError, Waker};
use outbound::Outbound;
pub use stream::Endpoint;
use stream::WriteHalf;
use subscriptions::{Subscriptions, by_flags};

use crate::ids::MessageIds;
use crate::protocol::jsonrpc::{self, CallId};
use crate::protocol::method::{MethodName, PublishCall, ReplyError, SubscriptionFlags};
use crate::protocol::rules::{DEFAULT_MAX_MESSAGE_SIZE, MAX_ERROR_MESSAGE_LEN, MAX_ERROR_TYPE_LEN};
use crate::protocol::topic::{REPLY_PREFIX, is_reserved, parse_pattern, validate_topic};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidPattern(String),
    #[error("message of {size} bytes exceeds the broker's max_message_size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("not connected to the broker")]
    NotConnected,
    #[error("not connected to the broker, and {0} messages already wait to be sent; this one was not queued")]
    BufferFull(usize),
    /// Connected, but the outgoing queue is full: wait for [`Event::Writable`].
    #[error("the outgoing queue is full")]
    QueueFull,
    #[error("the client is closed")]
    Closed,
}

/// A subscription to a queue, restored on reconnection like the patterns.
struct QueueSubscription {
    sub: u64,
    name: String,
    /// The `subscribe` params, as sent.
    params: serde_json::Value,
}

#[derive(Default)]
struct State {
    outbound: Outbound,
    queues: Vec<QueueSubscription>,
    /// Calls written on the current connection and not answered yet.
    awaiting: HashSet<u64>,
    subscriptions: Subscriptions,
    /// A publish found the queue full; announce room with `Event::Writable`.
    want_writable: bool,
    /// The live connection's write side, shared with the writer task so that a frame
    /// can be written at once by the thread that makes it (see `Client::push`).
    socket: Option<Arc<WriteHalf>>,
    /// The writer task holds frames taken from the queue that are not written yet:
    /// until it is done, new frames must queue behind them.
    writing: bool,
}

struct Shared {
    config: ClientConfig,
    inbox: Inbox,
    state: Mutex<State>,
    writer_wake: Notify,
    closing: watch::Sender<bool>,
    connected: AtomicBool,
    /// The broker's limit, learned at connect.
    max_message_size: AtomicUsize,
    ids: MessageIds,
    next_call: AtomicU64,
    /// Counts connections: deliveries from queues can be settled only on the
    /// connection they came on.
    generation: AtomicU64,
    /// Why the client stopped by itself, once it has (see [`Client::stop_reason`]).
    stop_reason: Mutex<Option<String>>,
}

/// Frame overhead of a publish beyond topic and payload, generously counted.
const PUBLISH_OVERHEAD: usize = 160;

impl Shared {
    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    fn fail_awaiting(&self, reason: &str) {
        let calls: Vec<u64> = self.state.lock().awaiting.drain().collect();
        for call in calls {
            self.inbox.push(Event::Response {
                call,
                result: Err(RemoteError { code: CONNECTION_LOST, message: reason.to_owned(), data: None }),
            });
        }
    }
}

/// The code of a call that failed because the connection was lost before its answer.
pub const CONNECTION_LOST: i32 = -32099;

/// The params of `subscribe` and `unsubscribe` for plain patterns.
#[derive(Serialize)]
pub(crate) struct PatternsParams<'a> {
    patterns: Vec<&'a str>,
    #[serde(flatten)]
    flags: SubscriptionFlags,
}

impl<'a> PatternsParams<'a> {
    pub(crate) fn new(patterns: &'a [Arc<str>], flags: SubscriptionFlags) -> Self {
        PatternsParams { patterns: patterns.iter().map(|p| &**p).collect(), flags }
    }
}

/// What an unsubscribe did.
#[derive(Debug)]
pub struct Unsubscribed {
    /// The patterns that were held.
    pub removed: Vec<String>,
    /// Subscriptions left without any pattern (their callbacks can go).
    pub emptied: Vec<u64>,
    /// The call id of the `unsubscribe` sent to the broker, if one was sent.
    pub call: Option<u64>,
}

/// A handle to a running client. Dropping every handle closes the client.
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Starts connecting in the background on `runtime`. The outcome arrives in the
    /// inbox as [`Event::Connected`] or [`Event::ConnectFailed`].
    pub fn start(config: ClientConfig, waker: Box<dyn Waker>, runtime: &Handle) -> Client {
        let inbox = Inbox::new(waker, config.inbox_limit);
        let shared = Arc::new(Shared {
            config,
            inbox,
            state: Mutex::new(State::default()),
            writer_wake: Notify::new(),
            closing: watch::channel(false).0,
            connected: AtomicBool::new(false),
            max_message_size: AtomicUsize::new(DEFAULT_MAX_MESSAGE_SIZE),
            ids: MessageIds::new(),
            next_call: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            stop_reason: Mutex::new(None),
        });
        runtime.spawn(task::run(shared.clone()));
        Client { shared }
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    pub fn max_message_size(&self) -> usize {
        self.shared.max_message_size.load(Ordering::Relaxed)
    }

    /// Why the client stopped by itself: its first connection failed, its session was
    /// taken over, or its connection was lost with `reconnect` off. `None` while it
    /// runs, and after [`Client::close`].
    pub fn stop_reason(&self) -> Option<String> {
        self.shared.stop_reason.lock().clone()
    }

    /// Takes up to `limit` events (see [`Inbox::drain`]).
    pub fn drain(&self, limit: usize) -> Vec<Event> {
        self.shared.inbox.drain(limit)
    }

    /// Asks the client to disconnect: queued frames are written, the broker is told,
    /// and [`Event::Closed`] ends the inbox.
    pub fn close(&self) {
        self.shared.closing.send_replace(true);
    }

    /// Queues a message for `topic`. `payload` must be valid JSON text. Returns the
    /// message id at once.
    pub fn publish(&self, topic: &str, payload: &str, ttl: Option<f64>) -> Result<String, ClientError> {
        let options = PublishOptions { ttl, ..Default::default() };
        self.publish_with(topic, payload, &options).map(|(id, _)| id)
    }

    /// Queues a message with options. With `qos=1` it is sent as a call, answered
    /// once the broker has stored it: the returned call id's [`Event::Response`]
    /// is the confirmation. A `qos=1` message queued while disconnected is sent,
    /// and confirmed, after reconnection.
    pub fn publish_with(
        &self,
        topic: &str,
        payload: &str,
        options: &PublishOptions,
    ) -> Result<(String, Option<u64>), ClientError> {
        validate_topic(topic).map_err(|e| ClientError::InvalidTopic(e.message))?;
        if is_reserved(topic) && !topic.starts_with(REPLY_PREFIX) {
            return Err(ClientError::InvalidTopic(format!(
                "topic {topic:?} is reserved for the broker: clients cannot publish to system.* or _internal.*"
            )));
        }
        let max = self.max_message_size();
        let headers = options.headers.as_deref().map_or(0, str::len);
        let size = payload.len() + topic.len() + headers + PUBLISH_OVERHEAD;
        if size > max {
            return Err(ClientError::TooLarge { size, max });
        }
        let message_id = self.shared.ids.next();
        let call = (options.qos > 0).then(|| self.shared.next_call.fetch_add(1, Ordering::Relaxed));
        let publish = PublishCall {
            topic,
            payload,
            message_id: &message_id,
            ttl: options.ttl,
            qos: options.qos,
            retain: options.retain,
            headers: options.headers.as_deref(),
        };
        let urgent = call.is_some() || topic.starts_with(REPLY_PREFIX);
        self.push(call, urgent, |out| publish.encode_into(out, call))?;
        Ok((message_id, call))
    }

    /// Answers the request whose reply address is `reply_to` with a failure instead of
    /// a payload: the requester's `request` fails with `RESPONDER_ERROR`, saying `kind`
    /// (the exception type) and `message`. Both are cut to the protocol's limits.
    pub fn reply_error(&self, reply_to: &str, kind: &str, message: &str) -> Result<(), ClientError> {
        if !reply_to.starts_with(REPLY_PREFIX) {
            return Err(ClientError::InvalidTopic(format!(
                "{reply_to:?} is not a reply address: only a request's reply_to is answered with an error"
            )));
        }
        let kind = cut(kind.trim(), MAX_ERROR_TYPE_LEN);
        let kind = if kind.is_empty() || kind.chars().any(char::is_control) { "Error" } else { kind };
        #[derive(Serialize)]
        struct Params<'a> {
            topic: &'a str,
            error: ReplyError,
        }
        let error =
            ReplyError { kind: kind.to_owned(), message: cut(message, MAX_ERROR_MESSAGE_LEN).to_owned() };
        let frame = jsonrpc::call(MethodName::Publish, Some(&Params { topic: reply_to, error }), None);
        let max = self.max_message_size();
        if frame.len() > max {
            return Err(ClientError::TooLarge { size: frame.len(), max });
        }
        self.push(None, true, |out| out.extend_from_slice(&frame))
    }

    /// Acknowledges (`ack`) or rejects deliveries from queues. Deliveries that came on
    /// an earlier connection are skipped: the broker gave them back to their queue
    /// when that connection ended. Returns how many were sent.
    pub fn settle(
        &self,
        generation: u64,
        tags: &[u64],
        ack: bool,
        requeue: bool,
    ) -> Result<usize, ClientError> {
        if tags.is_empty()
            || generation != self.shared.generation.load(Ordering::Acquire)
            || !self.is_connected()
        {
            return Ok(0);
        }
        let frame = encode_settle(tags, ack, requeue);
        match self.push(None, false, |out| out.extend_from_slice(&frame)) {
            Ok(()) => Ok(tags.len()),
            // The connection went meanwhile: the broker requeued them.
            Err(ClientError::NotConnected | ClientError::BufferFull(_)) => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// Consumes from queue `name` (subscription `sub`): `params` are the `subscribe`
    /// params (patterns, queue or durable, and the queue's options). Restored on
    /// reconnection. Returns the call id when sent now.
    pub fn subscribe_queue(
        &self,
        sub: u64,
        name: &str,
        patterns: &[String],
        params: serde_json::Value,
    ) -> Result<Option<u64>, ClientError> {
        validated(patterns)?;
        {
            let mut state = self.shared.state.lock();
            if state.queues.iter().any(|q| q.name == name) {
                return Err(ClientError::InvalidPattern(format!(
                    "this client already consumes from queue {name:?}; unsubscribe from it first"
                )));
            }
            state.queues.push(QueueSubscription { sub, name: name.to_owned(), params: params.clone() });
        }
        if !self.is_connected() {
            return Ok(None);
        }
        match self.call(MethodName::Subscribe, params) {
            Ok(call) => Ok(Some(call)),
            Err(ClientError::NotConnected) => Ok(None),
            Err(error) => {
                self.shared.state.lock().queues.retain(|q| q.name != name);
                Err(error)
            }
        }
    }

    /// Stops consuming from queue `name`; returns its subscription and the call id.
    pub fn unsubscribe_queue(&self, name: &str) -> Result<(Option<u64>, Option<u64>), ClientError> {
        let sub = {
            let mut state = self.shared.state.lock();
            let at = state.queues.iter().position(|q| q.name == name);
            at.map(|at| state.queues.remove(at).sub)
        };
        if sub.is_none() || !self.is_connected() {
            return Ok((sub, None));
        }
        match self.call(MethodName::Unsubscribe, serde_json::json!({"queue": name})) {
            Ok(call) => Ok((sub, Some(call))),
            Err(ClientError::NotConnected) => Ok((sub, None)),
            Err(error) => Err(error),
        }
    }

    /// Queues the frame `write` writes; `call` when an answer is expected for it,
    /// `urgent` when someone waits for it (a call, or the reply to a request).
    fn push(
        &self,
        call: Option<u64>,
        urgent: bool,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), ClientError> {
        let shared = &self.shared;
        if shared.is_closing() {
            return Err(ClientError::Closed);
        }
        let mut guard = shared.state.lock();
        let state = &mut *guard;
        let queued = state.outbound.len();
        if queued >= shared.config.max_pending {
            if !self.is_connected() {
                return Err(ClientError::BufferFull(queued));
            }
            state.want_writable = true;
            return Err(ClientError::QueueFull);
        }
        state.outbound.push_with(call, write);
        // An urgent frame, nothing else queued and nothing being written: write it now,
        // from this thread, and spare the hand-off to the writer task (a thread
        // wake-up, much of a request's round trip). The lock keeps frames in order.
        if urgent
            && queued == 0
            && !state.writing
            && let Some(socket) = &state.socket
            // Would block, or failed: the writer task carries on (and reports errors).
            && let Ok(written) = socket.try_write(state.outbound.only_frame())
        {
            state.outbound.written(written, &mut state.awaiting);
            if state.outbound.len() == 0 {
                return Ok(());
            }
        }
        drop(guard);
        shared.writer_wake.notify_one();
        Ok(())
    }

    /// Sends a call (`request`, `status`, `ping`, ...) whose answer arrives as
    /// [`Event::Response`] with the returned call id. Needs a live connection.
    pub fn call<P: Serialize>(&self, method: MethodName, params: P) -> Result<u64, ClientError> {
        if !self.is_connected() {
            return Err(ClientError::NotConnected);
        }
        let call = self.shared.next_call.fetch_add(1, Ordering::Relaxed);
        let frame = jsonrpc::call(method, Some(&params), Some(CallId::Number(call)));
        // The broker discards a frame over its limit without answering the call: refused
        // here, the caller hears why at once instead of waiting for a timeout.
        let max = self.max_message_size();
        if frame.len() > max {
            return Err(ClientError::TooLarge { size: frame.len(), max });
        }
        self.push(Some(call), true, |out| out.extend_from_slice(&frame))?;
        Ok(call)
    }

    /// Adds patterns to subscription `sub`. Returns the call id of the `subscribe`
    /// sent to the broker, or `None` when nothing needed sending now (all patterns
    /// already held, or not connected: they are sent on connect).
    /// Returns the id of the last `subscribe` call sent (None when the broker already
    /// holds the patterns as needed, or when disconnected: they are subscribed on
    /// connection).
    pub fn subscribe(
        &self,
        sub: u64,
        patterns: &[String],
        flags: SubscriptionFlags,
    ) -> Result<Option<u64>, ClientError> {
        let patterns = validated(patterns)?;
        let changed = self.shared.state.lock().subscriptions.add(sub, &patterns, flags);
        let mut call = None;
        for (flags, patterns) in by_flags(changed) {
            call = self.sync_patterns(MethodName::Subscribe, &patterns, flags)?.or(call);
        }
        Ok(call)
    }

    /// Removes patterns from every subscription.
    pub fn unsubscribe(&self, patterns: &[String]) -> Result<Unsubscribed, ClientError> {
        let patterns = validated(patterns)?;
        let (removed, emptied) = self.shared.state.lock().subscriptions.remove(&patterns);
        let call = self.sync_patterns(MethodName::Unsubscribe, &removed, SubscriptionFlags::default())?;
        Ok(Unsubscribed { removed: removed.iter().map(|p| p.to_string()).collect(), emptied, call })
    }

    /// Ends subscription `sub` alone, a queue subscription or a plain one: the other
    /// subscriptions keep their patterns, and the broker is told to drop a pattern
    /// only once no subscription holds it (or to hold a shared one with new flags).
    pub fn release(&self, sub: u64) -> Result<Unsubscribed, ClientError> {
        let (queue, released) = {
            let mut state = self.shared.state.lock();
            match state.queues.iter().position(|q| q.sub == sub) {
                Some(at) => (Some(state.queues.remove(at).name), Default::default()),
                None => (None, state.subscriptions.release(sub)),
            }
        };
        if let Some(name) = queue {
            let call = if self.is_connected() {
                match self.call(MethodName::Unsubscribe, serde_json::json!({"queue": &name})) {
                    Ok(call) => Some(call),
                    Err(ClientError::NotConnected) => None,
                    Err(error) => return Err(error),
                }
            } else {
                None
            };
            return Ok(Unsubscribed { removed: vec![name], emptied: vec![sub], call });
        }
        let mut call =
            self.sync_patterns(MethodName::Unsubscribe, &released.dropped, SubscriptionFlags::default())?;
        for (flags, patterns) in by_flags(released.changed) {
            call = self.sync_patterns(MethodName::Subscribe, &patterns, flags)?.or(call);
        }
        let removed = released.dropped.iter().map(|p| p.to_string()).collect();
        Ok(Unsubscribed { removed, emptied: vec![sub], call })
    }

    fn sync_patterns(
        &self,
        method: MethodName,
        patterns: &[Arc<str>],
        flags: SubscriptionFlags,
    ) -> Result<Option<u64>, ClientError> {
        if patterns.is_empty() || !self.is_connected() {
            return Ok(None);
        }
        let params = PatternsParams::new(patterns, flags);
        match self.call(method, params) {
            Ok(call) => Ok(Some(call)),
            // Lost the connection meanwhile: the patterns are restored on reconnect.
            Err(ClientError::NotConnected) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

/// The longest start of `text` of at most `max` bytes that ends on a character.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn validated(patterns: &[String]) -> Result<Vec<Arc<str>>, ClientError> {
    patterns
        .iter()
        .map(|p| {
            parse_pattern(p).map_err(|e| ClientError::InvalidPattern(e.message))?;
            Ok(Arc::from(p.as_str()))
        })
        .collect()
}

/// How a message is published.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub ttl: Option<f64>,
    pub qos: u8,
    pub retain: bool,
    /// A JSON object of strings, as text, delivered beside the payload.
    pub headers: Option<String>,
}

fn encode_settle(tags: &[u64], ack: bool, requeue: bool) -> Bytes {
    #[derive(Serialize)]
    struct Settle<'a> {
        deliveries: &'a [u64],
        #[serde(skip_serializing_if = "Option::is_none")]
        requeue: Option<bool>,
    }
    let (method, requeue) = if ack { (MethodName::Ack, None) } else { (MethodName::Nack, Some(requeue)) };
    Bytes::from(jsonrpc::call(method, Some(&Settle { deliveries: tags, requeue }), None))
}

#[cfg(test)]
mod tests;
