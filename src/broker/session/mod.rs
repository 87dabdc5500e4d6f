//! One client connection: reads messages from its transport, answers the methods of
//! the protocol, and closes with a reason.
//!
//! A request (a call with an `id`) gets exactly one response; a notification gets
//! none, errors included. The run loop is here; [`dispatch`] turns frames and batches
//! into method calls, and each method or group of methods has a file of its own.

mod channels;
mod connect;
mod dispatch;
mod publish;
mod queues;
mod request;
mod subscribe;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use self::connect::Will;
use self::dispatch::unix_now;
use self::request::Deadlines;
use super::access::Origin;
use super::connection::AbortOnDrop;
use super::outbox::{self, Outbox};
use super::permissions::ClientPermissions;
use super::router::Router;
use super::shutdown::Shutdown;
use super::transport::{Inbound, Limits, Peer, Transport};
use crate::error::{ErrorCode, RpcError};
use crate::index::SessionId;
use crate::protocol::frame::{Decoded, FrameError};
use crate::protocol::jsonrpc;
use crate::protocol::reader::ReadError;

pub use self::request::MAX_REQUESTS_IN_FLIGHT;

/// Frames already read that a session handles before it looks at its signals again.
const FRAMES_PER_WAKE: usize = 256;

/// A message read, or why the connection ends (a closed connection given as
/// `Err(End::Closed)` inside the read).
fn frame_or_end(read: Result<Result<Decoded, End>, ReadError>) -> Result<Decoded, End> {
    match read {
        Ok(read) => read,
        Err(ReadError::FrameTimeout(after)) => Err(End::FrameTimeout(after)),
        Err(ReadError::Framing(err)) => Err(End::FarTooLarge(err)),
        Err(err) => Err(End::Lost(err.to_string())),
    }
}

/// How long a closing connection may take to flush what is queued for it.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);

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
    /// A `connect` without the token, or with a wrong one; it was answered why.
    Unauthorized,
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
            End::Unauthorized => "missing or wrong token".into(),
        }
    }

    /// The error sent to the client just before its connection closes.
    fn notice(&self) -> Option<RpcError> {
        let (code, message) = match self {
            End::Disconnected | End::Closed | End::Lost(_) | End::Unauthorized => return None,
            End::TakenOver => (
                ErrorCode::SessionTakenOver,
                "taken over by another connection with this client_id; closing this one".into(),
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

    /// A client that went away without saying goodbye leaves its last will. Not
    /// after a take-over (the client is back) nor at shutdown (the broker is leaving).
    fn leaves_will(&self) -> bool {
        matches!(
            self,
            End::Closed
                | End::Lost(_)
                | End::HeartbeatTimeout(_)
                | End::FrameTimeout(_)
                | End::FarTooLarge(_)
        )
    }
}

/// Serves one connection until it ends, then flushes what is queued for it (briefly)
/// and closes it. `peer` names the connection in logs and monitoring.
pub(crate) async fn run<T: Transport>(transport: T, peer: Peer, router: Arc<Router>, mut shutdown: Shutdown) {
    let config = router.config();
    let (outbox, queue) = outbox::channel(config.max_queue_size, config.max_queue_bytes);
    let limits = Limits { max_message_size: config.max_message_size, frame_timeout: config.frame_timeout };
    let (mut inbound, writing) = transport.open(queue, limits);
    let write_failed = Arc::new(Notify::new());
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

    let origin = peer.transport.origin();
    let owes_token = router.access().is_some_and(|access| access.needs_token(origin));
    let mut session = Session {
        id: router.new_session_id(),
        origin,
        peer,
        owes_token,
        router: router.clone(),
        outbox,
        client_id: None,
        evicted: Arc::new(Notify::new()),
        pinged: false,
        last_seen: Instant::now(),
        received_at: 0.0,
        waited: AtomicBool::new(false),
        waiting: JoinSet::new(),
        in_flight: Arc::default(),
        deadlines: Deadlines::new(router.clone()),
        will: None,
        permissions: Arc::default(),
    };
    let end = session.serve(&mut inbound, &mut shutdown, &write_failed).await;
    inbound.ended();
    let client_id = session.client_id.as_deref();
    let peer = &*session.peer.address;
    match &end {
        End::Closed | End::Disconnected | End::Shutdown => {
            tracing::debug!(peer, client_id, reason = %end.reason(), "connection ended")
        }
        _ => tracing::info!(peer, client_id, reason = %end.reason(), "connection ended"),
    }
    if let Some(notice) = end.notice() {
        session.outbox.try_send(Bytes::from(jsonrpc::failure(None, &notice)));
    }
    router.unregister(session.id, &end.reason());
    if end.leaves_will()
        && let Some(will) = &session.will
    {
        session.publish_will(will);
    }
    // Dropping the last sender lets the writer flush the queue and close the transport.
    drop(session);
    // Bounded: the guard aborts the writer if it has not finished flushing by then.
    let _ = timeout(FLUSH_ON_CLOSE, &mut writer.0).await;
}

struct Session {
    id: SessionId,
    origin: Origin,
    peer: Peer,
    /// Set until a `connect` with the right token, on a connection that must send it:
    /// every other call is refused until then.
    owes_token: bool,
    router: Arc<Router>,
    outbox: Outbox,
    client_id: Option<Arc<str>>,
    evicted: Arc<Notify>,
    /// Clients that ping are held to `heartbeat_timeout`; others are never dropped
    /// for being idle (TCP keepalive finds dead peers).
    pinged: bool,
    last_seen: Instant,
    /// When the frames being handled were read (seconds since the Unix epoch): the
    /// timestamp of the messages among them.
    received_at: f64,
    /// Set when handling a frame waited (for room to answer, for the store).
    waited: AtomicBool,
    /// Answers still to come; dropping the set (with the session) cancels them.
    waiting: JoinSet<()>,
    /// Calls waiting for an answer on this connection (requests, channel receives).
    in_flight: Arc<AtomicUsize>,
    /// The deadlines of its single requests, soonest first.
    deadlines: Deadlines,
    /// Published by the broker if the connection ends without `disconnect`.
    will: Option<Will>,
    /// What the permission rules let this client do, resolved at `connect`.
    permissions: Arc<ClientPermissions>,
}

impl Session {
    async fn serve(
        &mut self,
        inbound: &mut impl Inbound,
        shutdown: &mut Shutdown,
        write_failed: &Notify,
    ) -> End {
        let router = self.router.clone();
        let config = router.config();
        let handshake_deadline = Instant::now() + config.handshake_timeout;
        // Made once and polled again for every frame: a future made per frame would
        // register with its notifier, and leave it, each time.
        let evicted = self.evicted.clone();
        let (evicted, write_failed, shutdown) =
            (evicted.notified(), write_failed.notified(), shutdown.recv());
        tokio::pin!(evicted, write_failed, shutdown);
        // The timer is moved only when it fires before the deadline in force (which
        // every frame pushes back) or when that deadline comes earlier than it.
        let timer = tokio::time::sleep_until(handshake_deadline);
        tokio::pin!(timer);
        // Set to the soonest deadline of a request, when there is one.
        let requests_due = tokio::time::sleep_until(handshake_deadline);
        tokio::pin!(requests_due);
        loop {
            let deadline = match (&self.client_id, self.pinged) {
                (None, _) => Some(handshake_deadline),
                (Some(_), true) => Some(self.last_seen + config.heartbeat_timeout),
                (Some(_), false) => None,
            };
            if let Some(deadline) = deadline
                && deadline < timer.deadline()
            {
                timer.as_mut().reset(deadline);
            }
            let soonest_request = self.deadlines.soonest();
            if let Some(due) = soonest_request
                && due != requests_due.deadline()
            {
                requests_due.as_mut().reset(due);
            }
            let read = tokio::select! {
                biased;
                _ = &mut shutdown => return End::Shutdown,
                _ = &mut evicted => return End::TakenOver,
                _ = &mut write_failed => return End::Lost("writing to the client failed or stalled".into()),
                // Before the frames: a client that never stops sending still hears
                // that its requests timed out.
                () = &mut requests_due, if soonest_request.is_some() => {
                    self.deadlines.expire(Instant::now());
                    continue;
                }
                // Before the timer: a frame that is there when the deadline passes
                // shows the client is alive.
                read = inbound.next() => Some(read),
                () = &mut timer, if deadline.is_some() => {
                    let deadline = deadline.expect("a deadline");
                    if Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    None
                }
            };
            let mut decoded = match read {
                None if self.client_id.is_none() => {
                    return End::HandshakeTimeout(config.handshake_timeout);
                }
                None => return End::HeartbeatTimeout(config.heartbeat_timeout),
                Some(read) => match frame_or_end(read.map(|read| read.ok_or(End::Closed))) {
                    Ok(decoded) => decoded,
                    Err(end) => return end,
                },
            };
            self.note_activity();
            // Then the frames that came with it, without waiting on the signals again
            // (a bounded number, so that they are heard between batches).
            let mut taken = 0;
            loop {
                if let Some(end) = self.take(decoded).await {
                    return end;
                }
                // After a wait, the frames at hand may have come during it (a carrier
                // of whole messages hands over what arrived meanwhile): stamped anew.
                if self.waited.swap(false, Ordering::Relaxed) {
                    self.received_at = unix_now();
                }
                taken += 1;
                if taken == FRAMES_PER_WAKE {
                    break;
                }
                decoded = match inbound.at_hand() {
                    None => break,
                    Some(read) => match frame_or_end(read.map(Ok)) {
                        Ok(decoded) => decoded,
                        Err(end) => return end,
                    },
                };
            }
            // Handling the batch may have waited (for room to answer, for the store):
            // the client was heard from until its last frame.
            self.last_seen = Instant::now();
        }
    }

    /// Handles one message; `Some` when the connection must close.
    async fn take(&mut self, decoded: Decoded) -> Option<End> {
        self.count_received(&decoded);
        match decoded {
            Decoded::TooLarge { len } => {
                let error = RpcError::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "message of {len} bytes exceeds max_message_size ({} bytes); it was discarded",
                        self.router.config().max_message_size
                    ),
                );
                self.protocol_error();
                self.respond(jsonrpc::failure(None, &error)).await;
            }
            Decoded::Frame(body) => {
                if let Some(end) = self.handle_frame(&body).await {
                    return Some(end);
                }
                // A publisher faster than the disk waits here, before its next frame.
                if let Some(store) = self.router.store()
                    && !store.has_room()
                {
                    self.waited.store(true, Ordering::Relaxed);
                    store.room().await;
                }
            }
        }
        None
    }

    /// The client was heard from: once per batch of frames read together.
    fn note_activity(&mut self) {
        self.last_seen = Instant::now();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.received_at = now.as_secs_f64();
        let traffic = self.outbox.stats();
        traffic.last_activity_ms.store(now.as_millis() as u64, Ordering::Relaxed);
    }

    fn count_received(&self, decoded: &Decoded) {
        let traffic = self.outbox.stats();
        let len = match decoded {
            Decoded::Frame(body) => body.len(),
            Decoded::TooLarge { len } => *len,
        };
        traffic.received.fetch_add(1, Ordering::Relaxed);
        traffic.received_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    fn protocol_error(&self) {
        self.router.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    async fn respond(&self, body: Vec<u8>) {
        if self.outbox.is_full() {
            self.waited.store(true, Ordering::Relaxed);
        }
        self.outbox.send(Bytes::from(body)).await;
    }

    fn sender(&self) -> &str {
        self.client_id.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
