//! The client's connection task: connect (with retries), serve the connection, and
//! reconnect with back-off until the client is closed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::timeout;

use super::incoming::{Handled, handle_frame};
use super::outbound::frame_into;
use super::stream::{self, Endpoint, ReadHalf, WriteHalf};
use super::subscriptions::by_flags;
use super::{Event, PatternsParams, RemoteError, Shared, backoff};
use crate::error::ErrorCode;
use crate::protocol::frame::{Decoded, Framing};
use crate::protocol::jsonrpc::{self, CallId};
use crate::protocol::method::MethodName;
use crate::protocol::reader::FrameReader;
use crate::runtime_file;

/// Largest frame accepted from the broker (which enforces its own, smaller limit).
const MAX_INBOUND_FRAME: usize = 64 * 1024 * 1024;
/// Time a frame from the broker may take to arrive once started.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a clean disconnect may take to flush and hear the broker's answer.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
const IDLE_BUFFER_LIMIT: usize = 64 * 1024;

// Ids of the calls the task makes itself; user calls have numeric ids.
const CONNECT_ID: &str = "connect";
const RESUBSCRIBE_ID: &str = "resubscribe";
const DISCONNECT_ID: &str = "disconnect";
const HEARTBEAT_ID: &str = "heartbeat";

/// Why a connection whose session another connection took over ended.
const TAKEN_OVER: &str = "taken over by another connection with this client_id";

struct Connection {
    reader: FrameReader<ReadHalf>,
    writer: WriteHalf,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
}

enum Failure {
    /// Worth another attempt (nobody listening, timeout, connection reset).
    Retry(String),
    /// The broker refused the connect itself (a bad client_id, a wrong token, ...),
    /// with the error code it answered.
    Refused { reason: String, code: Option<i32> },
}

/// Why a connection ended; `last` when the client must not reconnect.
struct End {
    reason: String,
    last: bool,
}

impl End {
    fn retry(reason: impl Into<String>) -> End {
        End { reason: reason.into(), last: false }
    }
}

pub(super) async fn run(shared: Arc<Shared>) {
    let mut closing = shared.closing.subscribe();
    let mut failures = 0u32;
    let mut ever_connected = false;
    // With `connect_wait`, the first connection is tried until then.
    let give_up_at = shared.config.connect_wait.map(|wait| tokio::time::Instant::now() + wait);
    loop {
        let attempt = tokio::select! {
            attempt = connect(&shared) => attempt,
            _ = closing.wait_for(|closing| *closing) => break,
        };
        match attempt {
            Ok(connection) => {
                failures = 0;
                ever_connected = true;
                shared.connected.store(true, Ordering::Release);
                shared.inbox.push(Event::Connected);
                let end = serve(&shared, connection, &mut closing).await;
                shared.connected.store(false, Ordering::Release);
                shared.fail_awaiting(&end.reason);
                let reconnecting = shared.config.reconnect && !end.last && !shared.is_closing();
                if reconnecting {
                    tracing::warn!(client_id = %shared.config.client_id, reason = %end.reason, "connection to the broker lost; reconnecting");
                }
                if !reconnecting && !shared.is_closing() {
                    stopping(&shared, &end.reason);
                }
                shared.inbox.push(Event::Disconnected { reason: end.reason, reconnecting });
                if !reconnecting {
                    break;
                }
            }
            Err(Failure::Refused { reason, code }) if !ever_connected => {
                stopping(&shared, &reason);
                shared.inbox.push(Event::ConnectFailed { reason, code });
                break;
            }
            Err(Failure::Retry(reason) | Failure::Refused { reason, .. }) => {
                failures += 1;
                let out_of_attempts = match give_up_at {
                    Some(at) => tokio::time::Instant::now() >= at,
                    None => failures > shared.config.connect_retries,
                };
                if !ever_connected && out_of_attempts {
                    stopping(&shared, &reason);
                    shared.inbox.push(Event::ConnectFailed { reason, code: None });
                    break;
                }
                tracing::debug!(client_id = %shared.config.client_id, %reason, attempt = failures, "connecting failed");
            }
        }
        let mut pause = backoff(&shared.config, failures.max(1));
        if let Some(at) = give_up_at.filter(|_| !ever_connected) {
            // The last attempt comes when the wait is up, not a back-off after it.
            pause = pause.min(at.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = closing.wait_for(|closing| *closing) => break,
        }
    }
    // From here on publish and call refuse at once: nothing would ever send them.
    shared.closing.send_replace(true);
    shared.connected.store(false, Ordering::Release);
    shared.fail_awaiting("the client is closed");
    shared.inbox.push(Event::Closed);
}

/// The client stops by itself, for `reason`: from now on publish and call refuse at
/// once, saying why (before the event that tells of it, so nothing is queued in vain).
fn stopping(shared: &Shared, reason: &str) {
    *shared.stop_reason.lock() = Some(reason.to_owned());
    shared.closing.send_replace(true);
}

async fn connect(shared: &Shared) -> Result<Connection, Failure> {
    let config = &shared.config;
    let attempt = async {
        // Read at every attempt: a broker that restarted has a new token. A token from
        // the runtime file goes only to the address the broker wrote there.
        let (endpoint, token) = match (&config.endpoint, config.token.clone()) {
            (endpoint, Some(token)) => (endpoint.clone(), Some(token)),
            (Endpoint::Tcp { host, port }, None) => match runtime_file::env_token() {
                Some(token) => (config.endpoint.clone(), Some(token)),
                None => match runtime_file::find_local(host, *port) {
                    Some(local) => {
                        (Endpoint::Tcp { host: local.address.to_string(), port: *port }, Some(local.token))
                    }
                    None => (config.endpoint.clone(), None),
                },
            },
            // The local socket needs no token, and one meant for another broker would
            // only get the connection refused.
            (Endpoint::Local(_), None) => (config.endpoint.clone(), None),
        };
        let (read, writer) = stream::connect(&endpoint)
            .await
            .map_err(|e| Failure::Retry(format!("cannot connect to {endpoint}: {e}")))?;
        let mut reader = FrameReader::new(read, MAX_INBOUND_FRAME, FRAME_TIMEOUT);

        let mut params = serde_json::json!({
            "client_id": config.client_id, "client_type": config.client_type, "version": config.version,
        });
        if let Some(will) = &config.will {
            params["will"] = serde_json::from_str(will.get()).expect("the will is JSON");
        }
        if let Some(token) = token {
            params["token"] = token.into();
        }
        let hello = jsonrpc::call(MethodName::Connect, Some(&params), Some(CallId::Name(CONNECT_ID)));
        write_frame(&writer, &hello).await?;
        let accepted =
            await_internal(shared, &mut reader, CONNECT_ID).await?.map_err(|e| Failure::Refused {
                reason: format!("the broker refused the connection: {}", e.message),
                code: Some(e.code),
            })?;

        #[derive(Deserialize)]
        struct Accepted {
            heartbeat_interval: f64,
            heartbeat_timeout: f64,
            max_message_size: usize,
        }
        let accepted: Accepted = serde_json::from_str(&accepted).map_err(|e| Failure::Refused {
            reason: format!("unexpected answer to connect: {e}"),
            code: None,
        })?;
        shared.max_message_size.store(accepted.max_message_size, Ordering::Relaxed);
        shared.generation.fetch_add(1, Ordering::AcqRel);

        let patterns = shared.state.lock().subscriptions.patterns();
        for (flags, patterns) in by_flags(patterns) {
            let params = PatternsParams::new(&patterns, flags);
            let restore =
                jsonrpc::call(MethodName::Subscribe, Some(&params), Some(CallId::Name(RESUBSCRIBE_ID)));
            write_frame(&writer, &restore).await?;
            if let Err(error) = await_internal(shared, &mut reader, RESUBSCRIBE_ID).await? {
                tracing::error!(client_id = %config.client_id, "restoring subscriptions failed: {}", error.message);
            }
        }
        let queues: Vec<(String, serde_json::Value)> =
            shared.state.lock().queues.iter().map(|q| (q.name.clone(), q.params.clone())).collect();
        for (name, params) in queues {
            let restore =
                jsonrpc::call(MethodName::Subscribe, Some(&params), Some(CallId::Name(RESUBSCRIBE_ID)));
            write_frame(&writer, &restore).await?;
            if let Err(error) = await_internal(shared, &mut reader, RESUBSCRIBE_ID).await? {
                tracing::error!(client_id = %config.client_id, queue = %name, "restoring a queue subscription failed: {}", error.message);
            }
        }
        let seconds = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(30));
        Ok(Connection {
            reader,
            writer,
            heartbeat_interval: seconds(accepted.heartbeat_interval),
            heartbeat_timeout: seconds(accepted.heartbeat_timeout),
        })
    };
    timeout(config.connect_timeout, attempt).await.unwrap_or_else(|_| {
        Err(Failure::Retry(format!("no answer from {} within {:?}", config.endpoint, config.connect_timeout)))
    })
}

async fn write_frame(writer: &WriteHalf, body: &[u8]) -> Result<(), Failure> {
    let mut buf = BytesMut::new();
    Framing::LengthPrefixed.encode(body, &mut buf);
    writer.write_all(&buf).await.map_err(|e| Failure::Retry(format!("write failed: {e}")))
}

/// Reads until the answer to the task's own call `id`, handling what comes before it.
async fn await_internal(
    shared: &Shared,
    reader: &mut FrameReader<ReadHalf>,
    id: &str,
) -> Result<Result<String, RemoteError>, Failure> {
    loop {
        match reader.next().await {
            Ok(Some(Decoded::Frame(body))) => {
                if let Handled::Internal { id: answered, result } = handle_frame(shared, &body)
                    && answered == id
                {
                    return Ok(result);
                }
            }
            Ok(Some(Decoded::TooLarge { len })) => {
                tracing::warn!(
                    len,
                    "discarded a frame from the broker larger than {MAX_INBOUND_FRAME} bytes"
                );
            }
            Ok(None) => return Err(Failure::Retry("the broker closed the connection".into())),
            Err(error) => return Err(Failure::Retry(error.to_string())),
        }
    }
}

async fn serve(shared: &Arc<Shared>, connection: Connection, closing: &mut watch::Receiver<bool>) -> End {
    let Connection { mut reader, writer, heartbeat_interval, heartbeat_timeout } = connection;
    let writer = Arc::new(writer);
    shared.state.lock().socket = Some(writer.clone());
    let heartbeat = shared.config.heartbeat.then_some(heartbeat_interval);
    // The writer, not this select, watches for closing: cancelling it in the middle
    // of a write would cut a frame in two and corrupt the stream for the goodbye.
    let ended = tokio::select! {
        end = read_loop(shared, &mut reader, heartbeat_timeout) => Some(end),
        end = write_loop(shared, &writer, heartbeat, closing.clone()) => end,
    };
    {
        // From here on frames queue for the next connection.
        let mut guard = shared.state.lock();
        let state = &mut *guard;
        state.socket = None;
        state.writing = false;
        state.outbound.connection_ended(&mut state.awaiting);
    }
    match ended {
        Some(end) => end,
        None => {
            goodbye(shared, &mut reader, &writer).await;
            End { reason: "client disconnect".into(), last: true }
        }
    }
}

async fn read_loop(shared: &Shared, reader: &mut FrameReader<ReadHalf>, heartbeat_timeout: Duration) -> End {
    let mut notice: Option<RemoteError> = None;
    loop {
        // A consumer that falls behind slows the reading, not the memory.
        shared.inbox.wait_for_room().await;
        let next = if shared.config.heartbeat {
            match timeout(heartbeat_timeout, reader.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return End::retry(format!("no word from the broker for {heartbeat_timeout:?}"));
                }
            }
        } else {
            reader.next().await
        };
        match next {
            Ok(Some(decoded)) => {
                take(shared, decoded, &mut notice);
                // The frames already read are taken at once: no clock or room to check
                // for each of a burst.
                for _ in 1..FRAMES_AT_HAND {
                    match reader.buffered() {
                        Ok(Some(decoded)) => take(shared, decoded, &mut notice),
                        Ok(None) => break,
                        Err(error) => return End::retry(error.to_string()),
                    }
                }
            }
            Ok(None) => {
                return match notice {
                    // Replaced by a newer connection with our client_id: coming back
                    // would only take the connection over in turn.
                    Some(n) if n.code == ErrorCode::SessionTakenOver.code() => {
                        End { reason: TAKEN_OVER.into(), last: true }
                    }
                    Some(n) => End::retry(n.message),
                    None => End::retry("the broker closed the connection"),
                };
            }
            Err(error) => return End::retry(error.to_string()),
        }
    }
}

/// Frames handled from one read at most, before the inbox's room is looked at again.
const FRAMES_AT_HAND: usize = 256;

/// Handles one frame from the broker; a notice (the broker is about to close) is kept
/// to say why the connection ends.
fn take(shared: &Shared, decoded: Decoded, notice: &mut Option<RemoteError>) {
    match decoded {
        Decoded::Frame(body) => {
            if let Handled::Notice(error) = handle_frame(shared, &body) {
                tracing::warn!(client_id = %shared.config.client_id, code = error.code, "{}", error.message);
                *notice = Some(error);
            }
        }
        Decoded::TooLarge { len } => {
            tracing::warn!(len, "discarded a frame from the broker larger than {MAX_INBOUND_FRAME} bytes");
        }
    }
}

/// Takes queued frames and writes them in large chunks, and pings every
/// `heartbeat` (pings are written directly: they never wait in, or count against,
/// the queue of the user's messages). Returns `None` when the client is closing and
/// no write is under way, `Some` when writing failed.
async fn write_loop(
    shared: &Shared,
    writer: &WriteHalf,
    heartbeat: Option<Duration>,
    mut closing: watch::Receiver<bool>,
) -> Option<End> {
    let ping = jsonrpc::call::<()>(MethodName::Ping, None, Some(CallId::Name(HEARTBEAT_ID)));
    let mut next_ping = heartbeat.map(|interval| tokio::time::Instant::now() + interval);
    let mut buf = Vec::new();
    loop {
        let wake = shared.writer_wake.notified();
        let mut room = false;
        {
            // Taking frames, adding the ping and claiming the socket happen under one
            // lock, so a frame written directly by another thread can neither overtake
            // these nor interleave with them.
            let mut guard = shared.state.lock();
            let state = &mut *guard;
            state.outbound.take(&mut buf, &mut state.awaiting);
            if buf.is_empty() {
                // Idle: the buffers give back what a burst made them grow. A busy
                // connection keeps them, and its frames never wait for an allocation.
                if buf.capacity() > IDLE_BUFFER_LIMIT {
                    buf = Vec::new();
                }
                state.outbound.shrink_to(IDLE_BUFFER_LIMIT);
            }
            if let (Some(at), Some(interval)) = (next_ping, heartbeat)
                && tokio::time::Instant::now() >= at
            {
                frame_into(&mut buf, |out| out.extend_from_slice(&ping));
                next_ping = Some(tokio::time::Instant::now() + interval);
            }
            if state.want_writable && state.outbound.len() < shared.config.max_pending / 2 {
                state.want_writable = false;
                room = true;
            }
            state.writing = !buf.is_empty();
        }
        if room {
            shared.inbox.push(Event::Writable);
        }
        if buf.is_empty() {
            let ping_due = async {
                match next_ping {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let woken = tokio::select! {
                _ = wake => true,
                _ = ping_due => false,
                _ = closing.wait_for(|closing| *closing) => return None,
            };
            if woken {
                // One yield after the wake-up lets more frames join the next write.
                tokio::task::yield_now().await;
            }
            continue;
        }
        let written = writer.write_all(&buf).await;
        shared.state.lock().writing = false;
        if let Err(error) = written {
            return Some(End::retry(format!("write failed: {error}")));
        }
        buf.clear();
    }
}

/// A clean disconnect: write what is queued, tell the broker, wait for its answer.
async fn goodbye(shared: &Shared, reader: &mut FrameReader<ReadHalf>, writer: &WriteHalf) {
    let farewell = async {
        let mut buf = Vec::new();
        {
            let mut guard = shared.state.lock();
            let state = &mut *guard;
            state.outbound.take_all(&mut buf, &mut state.awaiting);
        }
        let bye = jsonrpc::call::<()>(MethodName::Disconnect, None, Some(CallId::Name(DISCONNECT_ID)));
        frame_into(&mut buf, |out| out.extend_from_slice(&bye));
        writer.write_all(&buf).await.ok()?;
        loop {
            match reader.next().await {
                Ok(Some(Decoded::Frame(body))) => {
                    if let Handled::Internal { id, .. } = handle_frame(shared, &body)
                        && id == DISCONNECT_ID
                    {
                        return Some(());
                    }
                }
                Ok(Some(Decoded::TooLarge { .. })) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    };
    // The write side closes when the last reference to it is dropped, right after.
    let _ = timeout(DISCONNECT_GRACE, farewell).await;
}
