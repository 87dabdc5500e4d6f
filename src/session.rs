//! One client connection: reads frames, answers the protocol's methods, and closes
//! with a reason.
//!
//! Methods: `connect`, `disconnect`, `subscribe`, `unsubscribe`, `publish`,
//! `request`, `ping`, `status`, and for queues `ack`, `nack` and `delete_queue`.
//! Everything but `connect` and `ping` needs `connect` first. A request (a call with an `id`) gets exactly one response; a notification
//! gets none, errors included.

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use crate::connection::{AbortOnDrop, FrameReader, ReadError, write_loop};
use crate::error::{ErrorCode, RpcError};
use crate::index::SessionId;
use crate::outbox::{self, Outbox};
use crate::protocol::frame::{Decoded, FrameError};
use crate::protocol::jsonrpc::{self, Call, Incoming};
use crate::protocol::message::{notification, single_line};
use crate::queue::{DEFAULT_PREFETCH, Join, MAX_PREFETCH, validate_queue_name};
use crate::router::{ClientInfo, MAX_PATTERNS_PER_CLIENT, Publish, REPLY_PREFIX, Router};
use crate::shutdown::Shutdown;
use crate::topic::{is_reserved, parse_pattern, validate_topic};

/// How long a closing connection may take to flush what is queued for it.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);
/// Longest `client_id` accepted, in characters.
const MAX_CLIENT_ID_LEN: usize = 256;
/// Requests one connection may have waiting for replies at once.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 10_000;
/// Longest publisher-chosen `message_id`, in bytes.
const MAX_MESSAGE_ID_LEN: usize = 128;
/// Default and largest timeout of a `request`, in seconds.
const DEFAULT_REQUEST_TIMEOUT: f64 = 5.0;
const MAX_REQUEST_TIMEOUT: f64 = 3600.0;
/// The topic on which requests are answered by the broker itself with its status.
pub const STATUS_TOPIC: &str = "status";

pub const METHODS: [&str; 11] = [
    "connect",
    "disconnect",
    "subscribe",
    "unsubscribe",
    "publish",
    "request",
    "ping",
    "status",
    "ack",
    "nack",
    "delete_queue",
];
/// Most deliveries settled by one `ack` or `nack`.
const MAX_SETTLE: usize = 100_000;

type RpcResult = Result<Box<RawValue>, RpcError>;
type PendingResult = Pin<Box<dyn Future<Output = RpcResult> + Send>>;

/// What a method call produced.
enum Outcome {
    Done(RpcResult),
    /// Answered later (a request waiting for its reply).
    Pending(PendingResult),
    /// Answered, then the connection closes (`disconnect`).
    Close(RpcResult),
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Disconnected,
    Closed,
    Lost(String),
    TakenOver,
    Shutdown,
    HeartbeatTimeout(Duration),
    HandshakeTimeout(Duration),
    FrameTimeout(Duration),
    FarTooLarge(FrameError),
}

impl End {
    fn reason(&self) -> Cow<'static, str> {
        match self {
            End::Disconnected => "client disconnect".into(),
            End::Closed => "connection closed".into(),
            End::Lost(why) => format!("connection lost: {why}").into(),
            End::TakenOver => "taken over".into(),
            End::Shutdown => "broker shutdown".into(),
            End::HeartbeatTimeout(_) => "heartbeat timeout".into(),
            End::HandshakeTimeout(_) => "no connect in time".into(),
            End::FrameTimeout(_) => "frame timeout".into(),
            End::FarTooLarge(_) => "frame too large".into(),
        }
    }

    /// The error sent to the client just before its connection closes.
    fn notice(&self) -> Option<RpcError> {
        let (code, message) = match self {
            End::Disconnected | End::Closed | End::Lost(_) => return None,
            End::TakenOver => (
                ErrorCode::SessionTakenOver,
                "another connection connected with this client_id; closing this one".into(),
            ),
            End::Shutdown => (ErrorCode::ShuttingDown, "the broker is shutting down".into()),
            End::HeartbeatTimeout(after) => {
                (ErrorCode::HeartbeatTimeout, format!("no heartbeat for {after:?}; closing the connection"))
            }
            End::HandshakeTimeout(after) => {
                (ErrorCode::ReadTimeout, format!("no connect within {after:?}; closing the connection"))
            }
            End::FrameTimeout(after) => (
                ErrorCode::ReadTimeout,
                format!("a frame took longer than {after:?} to arrive; closing the connection"),
            ),
            End::FarTooLarge(err) => (ErrorCode::MessageTooLarge, err.to_string()),
        };
        Some(RpcError::new(code, message))
    }
}

/// Serves one connection until it ends, then flushes what is queued for it (briefly)
/// and closes it.
pub async fn run<S>(stream: S, peer: SocketAddr, router: Arc<Router>, mut shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let config = router.config();
    let (read_half, write_half) = tokio::io::split(stream);
    let framing = Arc::new(OnceLock::new());
    let (outbox, queue) = outbox::channel(config.max_queue_size, config.max_queue_bytes);
    let write_failed = Arc::new(Notify::new());
    let writing = write_loop(write_half, queue, framing.clone(), config.frame_timeout);
    let mut writer = AbortOnDrop(tokio::spawn({
        let write_failed = write_failed.clone();
        async move {
            let written = writing.await;
            if written.is_err() {
                write_failed.notify_one();
            }
            written
        }
    }));
    let mut reader = FrameReader::new(read_half, config.max_message_size, config.frame_timeout);

    let mut session = Session {
        id: router.new_session_id(),
        router: router.clone(),
        outbox,
        client_id: None,
        evicted: Arc::new(Notify::new()),
        pinged: false,
        last_seen: Instant::now(),
        waiting: JoinSet::new(),
        in_flight: Arc::default(),
        will: None,
    };
    let end = session.serve(&mut reader, &mut shutdown, &write_failed, &framing).await;
    // A client cut off inside its first frame still gets its notice in its framing.
    if framing.get().is_none()
        && let Some(detected) = reader.framing()
    {
        let _ = framing.set(detected);
    }
    match &end {
        End::Closed | End::Disconnected | End::Shutdown => {
            tracing::debug!(%peer, client_id = session.client_id.as_deref(), reason = %end.reason(), "connection ended")
        }
        _ => {
            tracing::info!(%peer, client_id = session.client_id.as_deref(), reason = %end.reason(), "connection ended")
        }
    }
    if let Some(notice) = end.notice() {
        session.outbox.try_send(Bytes::from(jsonrpc::failure(None, &notice)));
    }
    router.unregister(session.id, &end.reason());
    // The client went away without saying goodbye: its last will is published. Not
    // after a take-over (the client is back) nor at shutdown (the broker is leaving).
    if let (
        Some(will),
        End::Closed | End::Lost(_) | End::HeartbeatTimeout(_) | End::FrameTimeout(_) | End::FarTooLarge(_),
    ) = (&session.will, &end)
    {
        session.publish_will(will);
    }
    // Dropping the last sender lets the writer flush the queue and close the socket.
    drop(session);
    // Bounded: the guard aborts the writer if it has not finished flushing by then.
    let _ = timeout(FLUSH_ON_CLOSE, &mut writer.0).await;
}

struct Session {
    id: SessionId,
    router: Arc<Router>,
    outbox: Outbox,
    client_id: Option<Arc<str>>,
    evicted: Arc<Notify>,
    /// Clients that ping are held to `heartbeat_timeout`; others are never dropped
    /// for being idle (TCP keepalive finds dead peers).
    pinged: bool,
    last_seen: Instant,
    /// Answers still to come; dropping the set (with the session) cancels them.
    waiting: JoinSet<()>,
    /// Requests waiting for a reply on this connection.
    in_flight: Arc<AtomicUsize>,
    /// Published by the broker if the connection ends without `disconnect`.
    will: Option<Will>,
}

/// A client's last will, given at `connect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Will {
    topic: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    qos: Option<Value>,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    ttl: f64,
}

/// Counts a request while it waits for its reply.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        shutdown: &mut Shutdown,
        write_failed: &Notify,
        framing: &OnceLock<crate::protocol::frame::Framing>,
    ) -> End {
        let router = self.router.clone();
        let config = router.config();
        let handshake_deadline = Instant::now() + config.handshake_timeout;
        loop {
            let deadline = match (&self.client_id, self.pinged) {
                (None, _) => Some(handshake_deadline),
                (Some(_), true) => Some(self.last_seen + config.heartbeat_timeout),
                (Some(_), false) => None,
            };
            let read = async {
                match deadline {
                    Some(deadline) => timeout_at(deadline, reader.next()).await.ok(),
                    None => Some(reader.next().await),
                }
            };
            let read = tokio::select! {
                biased;
                _ = shutdown.recv() => return End::Shutdown,
                _ = self.evicted.notified() => return End::TakenOver,
                _ = write_failed.notified() => return End::Lost("writing to the client failed or stalled".into()),
                read = read => read,
            };
            let decoded = match read {
                None if self.client_id.is_none() => {
                    return End::HandshakeTimeout(config.handshake_timeout);
                }
                None => return End::HeartbeatTimeout(config.heartbeat_timeout),
                Some(Ok(Some(decoded))) => decoded,
                Some(Ok(None)) => return End::Closed,
                Some(Err(ReadError::FrameTimeout(after))) => return End::FrameTimeout(after),
                Some(Err(ReadError::Framing(err))) => return End::FarTooLarge(err),
                Some(Err(err)) => return End::Lost(err.to_string()),
            };
            if framing.get().is_none()
                && let Some(detected) = reader.framing()
            {
                let _ = framing.set(detected);
            }
            self.last_seen = Instant::now();
            match decoded {
                Decoded::TooLarge { len } => {
                    let error = RpcError::new(
                        ErrorCode::MessageTooLarge,
                        format!(
                            "message of {len} bytes exceeds max_message_size ({} bytes); it was discarded",
                            config.max_message_size
                        ),
                    );
                    self.protocol_error();
                    self.respond(jsonrpc::failure(None, &error)).await;
                }
                Decoded::Frame(body) => {
                    if let Some(end) = self.handle_frame(&body).await {
                        return end;
                    }
                    // A publisher faster than the disk waits here, before its next frame.
                    if let Some(store) = router.store() {
                        store.room().await;
                    }
                }
            }
        }
    }

    fn protocol_error(&self) {
        self.router.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    async fn respond(&self, body: Vec<u8>) {
        self.outbox.send(Bytes::from(body)).await;
    }

    /// Handles one frame: a single call or a batch. Returns `Some` when the
    /// connection must close afterwards.
    async fn handle_frame(&mut self, body: &[u8]) -> Option<End> {
        let incoming = match jsonrpc::parse(body) {
            Ok(incoming) => incoming,
            Err(error) => {
                self.protocol_error();
                self.respond(jsonrpc::failure(None, &error)).await;
                return None;
            }
        };
        match incoming {
            Incoming::Single(Err(rejected)) => {
                self.protocol_error();
                self.respond(jsonrpc::failure(rejected.id, &rejected.error)).await;
                None
            }
            Incoming::Single(Ok(call)) => {
                let id = call.id;
                let (outcome, closes) = self.dispatch(&call).into_answer();
                match outcome {
                    Answer::Now(result) => {
                        if let Some(response) = self.encode(id, &call, result) {
                            self.respond(response).await;
                        }
                    }
                    Answer::Later(pending) => {
                        // A notification gets no answer, so nothing waits for its reply.
                        if let Some(id) = id.map(RawValue::to_owned) {
                            let outbox = self.outbox.clone();
                            self.spawn(async move {
                                let result = pending.await;
                                outbox.send(Bytes::from(encode_result(&id, result))).await;
                            });
                        }
                    }
                }
                closes.then_some(End::Disconnected)
            }
            Incoming::Batch(calls) => self.handle_batch(calls).await,
        }
    }

    async fn handle_batch(&mut self, calls: Vec<jsonrpc::Parsed<'_>>) -> Option<End> {
        enum Slot {
            Ready(Vec<u8>),
            Waiting(Box<RawValue>, PendingResult),
        }
        let mut slots = Vec::with_capacity(calls.len());
        let mut close = false;
        for call in calls {
            let call = match call {
                Ok(call) => call,
                Err(rejected) => {
                    self.protocol_error();
                    slots.push(Slot::Ready(jsonrpc::failure(rejected.id, &rejected.error)));
                    continue;
                }
            };
            if close {
                // Calls after a `disconnect` in the same batch are not carried out.
                if let Some(id) = call.id {
                    let error = RpcError::new(
                        ErrorCode::NotConnected,
                        "not carried out: \"disconnect\" came earlier in this batch",
                    );
                    slots.push(Slot::Ready(jsonrpc::failure(Some(id), &error)));
                }
                continue;
            }
            let (outcome, closes) = self.dispatch(&call).into_answer();
            close |= closes;
            match (outcome, call.id) {
                (Answer::Now(result), id) => {
                    if let Some(response) = self.encode(id, &call, result) {
                        slots.push(Slot::Ready(response));
                    }
                }
                (Answer::Later(pending), Some(id)) => slots.push(Slot::Waiting(id.to_owned(), pending)),
                (Answer::Later(_), None) => {}
            }
        }
        if close {
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
            let responses: Vec<Vec<u8>> = slots
                .into_iter()
                .filter_map(|slot| if let Slot::Ready(r) = slot { Some(r) } else { None })
                .collect();
            if !responses.is_empty() {
                self.respond(jsonrpc::batch(&responses)).await;
            }
            return close.then_some(End::Disconnected);
        }
        // Wait for every request of the batch at once, then answer with one array.
        let outbox = self.outbox.clone();
        self.spawn(async move {
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
            let responses: Vec<Vec<u8>> = responses.into_iter().flatten().collect();
            outbox.send(Bytes::from(jsonrpc::batch(&responses))).await;
        });
        close.then_some(End::Disconnected)
    }

    /// Runs work that answers later (requests waiting for replies). It belongs to the
    /// session: when the connection ends, whatever still waits is dropped with it.
    fn spawn(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        while self.waiting.try_join_next().is_some() {}
        self.waiting.spawn(work);
    }

    /// The response to a call, or `None` for a notification (whose errors are logged).
    fn encode(&self, id: Option<&RawValue>, call: &Call<'_>, result: RpcResult) -> Option<Vec<u8>> {
        if result.is_err() {
            self.protocol_error();
        }
        match id {
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
        let named = (call.method == "publish")
            .then(|| call.params.and_then(|p| serde_json::from_str::<Named<'_>>(p.get()).ok()))
            .flatten()
            .and_then(|named| named.message_id);
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

    fn dispatch(&mut self, call: &Call<'_>) -> Outcome {
        let method = call.method.as_ref();
        if self.client_id.is_none() && !matches!(method, "connect" | "ping") && METHODS.contains(&method) {
            return Outcome::Done(Err(RpcError::new(
                ErrorCode::NotConnected,
                format!("call \"connect\" before \"{method}\""),
            )));
        }
        let params = call.params;
        match method {
            "connect" => Outcome::Done(self.connect(params)),
            "disconnect" => Outcome::Close(to_raw(&json!({"disconnected": true}))),
            "subscribe" => Outcome::Done(self.subscribe(params)),
            "unsubscribe" => Outcome::Done(self.unsubscribe(params)),
            "publish" => match self.publish(params) {
                Ok(Confirm::Now(published)) => Outcome::Done(Ok(published)),
                Ok(Confirm::Later(stored)) => Outcome::Pending(stored),
                Err(error) => Outcome::Done(Err(error)),
            },
            "ack" => Outcome::Done(self.settle(params, true)),
            "nack" => Outcome::Done(self.settle(params, false)),
            "delete_queue" => Outcome::Done(self.delete_queue(params)),
            "request" => match self.request(params) {
                Ok(pending) => Outcome::Pending(pending),
                Err(error) => Outcome::Done(Err(error)),
            },
            "ping" => {
                self.pinged = true;
                Outcome::Done(to_raw(&json!({"pong": true, "time": unix_now()})))
            }
            "status" => Outcome::Done(to_raw(&self.router.status())),
            other => Outcome::Done(Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("unknown method {other:?}; the methods are {}", METHODS.join(", ")),
            ))),
        }
    }

    fn connect(&mut self, params: Option<&RawValue>) -> RpcResult {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            #[serde(default)]
            client_id: Option<String>,
            #[serde(default)]
            client_type: Option<String>,
            #[serde(default)]
            version: Option<String>,
            #[serde(default)]
            will: Option<Will>,
        }
        let p: Params = jsonrpc::params(params)?;
        if let Some(will) = &p.will {
            validate_will(will)?;
        }
        let client_id = p.client_id.unwrap_or_else(|| self.router.anonymous_client_id(self.id));
        validate_client_id(&client_id)?;
        match &self.client_id {
            Some(current) if **current == *client_id => {}
            Some(current) => {
                return Err(RpcError::invalid_params(format!(
                    "this connection is already connected as {current:?}; open another connection for {client_id:?}"
                )));
            }
            None => {
                let client_id: Arc<str> = client_id.into();
                let info = ClientInfo {
                    client_id: client_id.clone(),
                    client_type: p.client_type,
                    version: p.version,
                };
                self.router.register(self.id, info, self.outbox.clone(), self.evicted.clone())?;
                self.client_id = Some(client_id);
            }
        }
        if p.will.is_some() {
            self.will = p.will;
        }
        let config = self.router.config();
        to_raw(&json!({
            "client_id": self.client_id.as_deref(),
            "broker_version": crate::VERSION,
            "heartbeat_interval": config.heartbeat_interval.as_secs_f64(),
            "heartbeat_timeout": config.heartbeat_timeout.as_secs_f64(),
            "max_message_size": config.max_message_size,
        }))
    }

    /// `{"patterns": [...]}` subscribes; with `"queue"` the patterns bind that queue
    /// and this client becomes one of its consumers (a queue group, or with
    /// `"durable": true` a durable queue; `"durable"` alone names the queue after
    /// the client, which keeps its messages while it is away).
    fn subscribe(&mut self, params: Option<&RawValue>) -> RpcResult {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            patterns: Vec<String>,
            #[serde(default)]
            queue: Option<String>,
            #[serde(default)]
            durable: bool,
            #[serde(default)]
            prefetch: Option<usize>,
            #[serde(default)]
            max_length: Option<usize>,
            #[serde(default)]
            max_bytes: Option<u64>,
            #[serde(default)]
            max_deliveries: Option<u32>,
            #[serde(default)]
            dead_letter_topic: Option<String>,
        }
        let p: Params = jsonrpc::params(params)?;
        let patterns = check_patterns(p.patterns)?;
        let queue = match (p.queue, p.durable) {
            (Some(queue), _) => Some(queue),
            (None, true) => self.client_id.as_deref().map(str::to_owned),
            (None, false) => None,
        };
        let Some(name) = queue else {
            if p.prefetch.is_some()
                || p.max_length.is_some()
                || p.max_bytes.is_some()
                || p.max_deliveries.is_some()
                || p.dead_letter_topic.is_some()
            {
                return Err(RpcError::invalid_params(
                    "prefetch, max_length, max_bytes, max_deliveries and dead_letter_topic apply to queues: give \"queue\" or \"durable\"",
                ));
            }
            self.router.subscribe(self.id, &patterns)?;
            return to_raw(&json!({"subscribed": patterns.iter().map(|p| &**p).collect::<Vec<_>>()}));
        };
        validate_queue_name(&name)?;
        let prefetch = p.prefetch.unwrap_or(DEFAULT_PREFETCH);
        if !(1..=MAX_PREFETCH).contains(&prefetch) {
            return Err(RpcError::invalid_params(format!(
                "prefetch must be 1 to {MAX_PREFETCH}, got {prefetch}"
            )));
        }
        if p.max_length == Some(0) {
            return Err(RpcError::invalid_params("max_length must be at least 1"));
        }
        if p.max_bytes == Some(0) {
            return Err(RpcError::invalid_params("max_bytes must be at least 1"));
        }
        if let Some(topic) = &p.dead_letter_topic {
            validate_topic(topic)?;
        }
        let join = Join {
            name: name.clone(),
            patterns: patterns.clone(),
            durable: p.durable,
            prefetch,
            max_length: p.max_length,
            max_bytes: p.max_bytes,
            max_deliveries: p.max_deliveries,
            dead_letter_topic: p.dead_letter_topic,
        };
        self.router.join_queue(self.id, join)?;
        to_raw(&json!({
            "subscribed": patterns.iter().map(|p| &**p).collect::<Vec<_>>(),
            "queue": name,
            "durable": p.durable,
        }))
    }

    /// `{"patterns": [...]}` unsubscribes; `{"queue": name}` stops consuming from a
    /// queue (a durable queue keeps its bindings and messages).
    fn unsubscribe(&mut self, params: Option<&RawValue>) -> RpcResult {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            #[serde(default)]
            patterns: Option<Vec<String>>,
            #[serde(default)]
            queue: Option<String>,
        }
        let p: Params = jsonrpc::params(params)?;
        match (p.patterns, p.queue) {
            (_, Some(queue)) => {
                let left = self.router.leave_queues(self.id, Some(&queue));
                to_raw(&json!({"unsubscribed": [], "queue": queue, "left": !left.is_empty()}))
            }
            (Some(patterns), None) => {
                let patterns = check_patterns(patterns)?;
                let removed = self.router.unsubscribe(self.id, &patterns);
                to_raw(&json!({"unsubscribed": removed.iter().map(|p| &**p).collect::<Vec<_>>()}))
            }
            (None, None) => Err(RpcError::invalid_params("give \"patterns\" or \"queue\"")),
        }
    }

    /// `ack` / `nack` of deliveries from queues: `{"deliveries": [tag, ...]}`, and for
    /// `nack` `"requeue"` (default true; false dead-letters them).
    fn settle(&mut self, params: Option<&RawValue>, ack: bool) -> RpcResult {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            deliveries: Vec<u64>,
            #[serde(default)]
            requeue: Option<bool>,
        }
        let p: Params = jsonrpc::params(params)?;
        if p.deliveries.len() > MAX_SETTLE {
            return Err(RpcError::invalid_params(format!("at most {MAX_SETTLE} deliveries per call")));
        }
        if ack && p.requeue.is_some() {
            return Err(RpcError::invalid_params("\"requeue\" belongs to nack"));
        }
        let settled = self.router.settle(self.id, &p.deliveries, ack, p.requeue.unwrap_or(true));
        let key = if ack { "acked" } else { "nacked" };
        to_raw(&json!({key: settled}))
    }

    fn delete_queue(&mut self, params: Option<&RawValue>) -> RpcResult {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            name: String,
        }
        let p: Params = jsonrpc::params(params)?;
        match self.router.delete_queue(&p.name) {
            Some(messages) => to_raw(&json!({"deleted": true, "messages": messages})),
            None => Err(RpcError::invalid_params(format!("there is no queue {:?}", p.name))),
        }
    }

    fn publish(&mut self, params: Option<&RawValue>) -> Result<Confirm, RpcError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params<'a> {
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
        }
        let p: Params<'_> = jsonrpc::params(params)?;
        validate_topic(&p.topic)?;
        if let Some(id) = &p.message_id {
            validate_message_id(id)?;
        }
        let qos = read_qos(p.qos.as_ref())?;
        let ttl = read_ttl(p.ttl)?;
        let payload = Payload::new(p.payload);
        if p.topic.starts_with(REPLY_PREFIX) {
            return Ok(Confirm::Now(to_raw(&self.router.reply(&p.topic, payload.get()))?));
        }
        refuse_reserved(&p.topic)?;
        let published = self.router.publish(Publish {
            message_id: p.message_id.as_deref(),
            ttl,
            qos,
            retain: p.retain,
            ..Publish::new(&p.topic, payload.get(), self.client_id.as_deref().unwrap_or_default())
        })?;
        if qos > 0 && !published.full.is_empty() {
            let refusals: Vec<String> =
                published.full.iter().map(|(queue, why)| format!("queue {queue:?} is full: {why}")).collect();
            return Err(RpcError::new(
                ErrorCode::QueueFull,
                format!(
                    "{}; message {} was not kept there (it went to the other subscribers)",
                    refusals.join("; "),
                    published.message_id
                ),
            ));
        }
        let answer = to_raw(&published)?;
        match published.stored {
            None => Ok(Confirm::Now(answer)),
            Some(stored) => Ok(Confirm::Later(Box::pin(async move {
                match stored.await {
                    Ok(Ok(())) => Ok(answer),
                    Ok(Err(reason)) => Err(RpcError::new(
                        ErrorCode::StorageFailed,
                        format!("the message could not be stored: {reason}"),
                    )),
                    Err(_) => Err(RpcError::new(
                        ErrorCode::StorageFailed,
                        "the store closed before the message was stored",
                    )),
                }
            }))),
        }
    }

    fn publish_will(&self, will: &Will) {
        let Ok(ttl) = read_ttl(will.ttl) else { return };
        let payload = Payload::new(will.payload.as_deref());
        let sender = self.client_id.as_deref().unwrap_or_default();
        let msg = Publish {
            ttl,
            qos: read_qos(will.qos.as_ref()).unwrap_or(0),
            retain: will.retain,
            ..Publish::new(&will.topic, payload.get(), sender)
        };
        match self.router.publish(msg) {
            Ok(_) => {
                tracing::info!(client_id = sender, topic = %will.topic, "published the last will of a client that went away")
            }
            Err(error) => tracing::warn!(client_id = sender, "the last will could not be published: {error}"),
        }
    }

    fn request(&mut self, params: Option<&RawValue>) -> Result<PendingResult, RpcError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params<'a> {
            #[serde(borrow)]
            topic: Cow<'a, str>,
            #[serde(borrow, default)]
            payload: Option<&'a RawValue>,
            #[serde(default)]
            timeout: Option<f64>,
        }
        let p: Params<'_> = jsonrpc::params(params)?;
        validate_topic(&p.topic)?;
        let timeout = p.timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if !(timeout > 0.0 && timeout <= MAX_REQUEST_TIMEOUT) {
            return Err(RpcError::invalid_params(format!(
                "timeout must be more than 0 and at most {MAX_REQUEST_TIMEOUT} seconds, got {timeout}"
            )));
        }
        if p.topic == STATUS_TOPIC {
            let status = to_raw(&self.router.status());
            return Ok(Box::pin(async move { status }));
        }
        refuse_reserved(&p.topic)?;
        if self.in_flight.load(Ordering::Relaxed) >= MAX_REQUESTS_IN_FLIGHT {
            return Err(RpcError::new(
                ErrorCode::TooManyRequests,
                format!("{MAX_REQUESTS_IN_FLIGHT} requests already wait for replies on this connection"),
            ));
        }
        let payload = Payload::new(p.payload);
        let msg = Publish::new(&p.topic, payload.get(), self.client_id.as_deref().unwrap_or_default());
        let (_, pending) = self.router.request(msg, Duration::from_secs_f64(timeout))?;
        let in_flight = InFlight::new(&self.in_flight);
        Ok(Box::pin(async move {
            let _in_flight = in_flight;
            pending.wait().await
        }))
    }
}

enum Answer {
    Now(RpcResult),
    Later(PendingResult),
}

/// When a publish is answered: now, or once the store has it (`qos=1`).
enum Confirm {
    Now(Box<RawValue>),
    Later(PendingResult),
}

impl Outcome {
    /// The answer, and whether the connection closes after it.
    fn into_answer(self) -> (Answer, bool) {
        match self {
            Outcome::Done(result) => (Answer::Now(result), false),
            Outcome::Close(result) => (Answer::Now(result), true),
            Outcome::Pending(pending) => (Answer::Later(pending), false),
        }
    }
}

/// A published payload, flattened to one line when it had line breaks.
struct Payload<'a> {
    given: Option<&'a RawValue>,
    flattened: Option<Box<RawValue>>,
}

impl<'a> Payload<'a> {
    fn new(given: Option<&'a RawValue>) -> Self {
        Payload { given, flattened: given.and_then(single_line) }
    }

    fn get(&self) -> &RawValue {
        self.flattened.as_deref().or(self.given).unwrap_or(RawValue::NULL)
    }
}

fn check_patterns(given: Vec<String>) -> Result<Vec<Arc<str>>, RpcError> {
    if given.len() > MAX_PATTERNS_PER_CLIENT {
        return Err(RpcError::invalid_params(format!(
            "{} patterns in one call; a client may hold at most {MAX_PATTERNS_PER_CLIENT}",
            given.len()
        )));
    }
    let mut seen = HashSet::with_capacity(given.len());
    let mut patterns: Vec<Arc<str>> = Vec::with_capacity(given.len());
    for pattern in given {
        parse_pattern(&pattern)?;
        let pattern: Arc<str> = pattern.into();
        if seen.insert(pattern.clone()) {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

/// A publisher-chosen message id: what lets a client return the id without waiting.
fn validate_message_id(id: &str) -> Result<(), RpcError> {
    if id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN || id.chars().any(char::is_control) {
        return Err(RpcError::invalid_params(format!(
            "message_id must be 1 to {MAX_MESSAGE_ID_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// A `client_id` the broker accepts (the Python clients check theirs with this too).
pub(crate) fn validate_client_id(client_id: &str) -> Result<(), RpcError> {
    if client_id.is_empty() || client_id.chars().count() > MAX_CLIENT_ID_LEN {
        return Err(RpcError::invalid_params(format!(
            "client_id must be 1 to {MAX_CLIENT_ID_LEN} characters long"
        )));
    }
    if client_id.chars().any(char::is_control) {
        return Err(RpcError::invalid_params("client_id must not contain control characters"));
    }
    Ok(())
}

/// A last will the broker accepts at `connect`.
pub(crate) fn validate_will(will: &Will) -> Result<(), RpcError> {
    validate_topic(&will.topic)?;
    refuse_reserved(&will.topic)?;
    read_qos(will.qos.as_ref())?;
    read_ttl(will.ttl)?;
    Ok(())
}

/// `qos` as given (any JSON, so that a wrong one gets an error that names it).
pub(crate) fn read_qos(qos: Option<&Value>) -> Result<u8, RpcError> {
    match qos.map(|q| (q, q.as_u64())) {
        None => Ok(0),
        Some((_, Some(level @ (0 | 1)))) => Ok(level as u8),
        Some((given, _)) => Err(RpcError::invalid_params(format!(
            "qos must be 0 (at most once) or 1 (at least once), got {given}"
        ))),
    }
}

pub(crate) fn read_ttl(ttl: f64) -> Result<Option<f64>, RpcError> {
    if !ttl.is_finite() || ttl < 0.0 {
        return Err(RpcError::invalid_params(format!(
            "ttl must be 0 (no limit) or a positive number of seconds, got {ttl}"
        )));
    }
    Ok((ttl > 0.0).then_some(ttl))
}

fn refuse_reserved(topic: &str) -> Result<(), RpcError> {
    if is_reserved(topic) {
        return Err(RpcError::invalid_params(format!(
            "topic {topic:?} is reserved for the broker: clients cannot publish to system.* or _internal.*"
        )));
    }
    Ok(())
}

fn to_raw<T: serde::Serialize>(value: &T) -> RpcResult {
    to_raw_value(value).map_err(|e| RpcError::new(ErrorCode::InternalError, e.to_string()))
}

fn encode_result(id: &RawValue, result: RpcResult) -> Vec<u8> {
    match result {
        Ok(result) => jsonrpc::success(id, &result),
        Err(error) => jsonrpc::failure(Some(id), &error),
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
