//! The listener: binds TCP, accepts connections (TCP, the local socket, in-process)
//! within `max_connections`, runs the broker's upkeep, and shuts down gracefully:
//! subscribers hear `system.broker.shutdown` before their connections close, every
//! connection task is joined, and the runtime file and socket are removed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, lookup_host};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::access::Origin;
use super::local_socket::LocalListener;
use super::router::Router;
use super::session;
use super::shutdown::Shutdown;
use super::transport::{ByteStream, Messages, Peer, Transport, TransportKind};
use crate::error::{BrokerError, ErrorCode, RpcError};
use crate::protocol::frame::Framing;
use crate::protocol::jsonrpc;

/// How long a graceful stop waits for connections to flush and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a refused connection gets to read its error before it is closed.
const REJECT_LINGER: Duration = Duration::from_secs(1);
/// How long a refused connection may take to show its framing with a first byte.
const REJECT_PEEK: Duration = Duration::from_millis(100);
/// Refused connections being told why at once; past this they are closed unanswered.
const MAX_REFUSALS_IN_PROGRESS: usize = 64;
/// How often expired messages are removed and stalled queue deliveries retried.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Idle time before TCP keepalive probes start: how dead peers that never ping are found.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Binds the first address `host` resolves to that accepts, IPv4 first: `localhost`
/// means the same loopback address to every client whatever the resolver's order.
pub(super) async fn bind(host: &str, port: u16) -> Result<TcpListener, BrokerError> {
    let mut addrs: Vec<SocketAddr> = lookup_host((host, port))
        .await
        .map_err(|source| BrokerError::Resolve { host: host.to_owned(), source })?
        .collect();
    addrs.sort_by_key(|addr| !addr.is_ipv4());
    let mut last_error = None;
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(source) => last_error = Some(BrokerError::Bind { addr: addr.to_string(), source }),
        }
    }
    Err(last_error.unwrap_or_else(|| BrokerError::Resolve {
        host: host.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    }))
}

/// Decrements the open-connection counts when a connection task ends, however it ends.
struct OpenConnection(Arc<Router>, Origin);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let counters = &self.0.counters;
        counters.connections_open.fetch_sub(1, Ordering::Relaxed);
        if self.1 == Origin::SameUser {
            counters.same_user_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub(super) async fn serve(
    listener: TcpListener,
    mut local: Option<LocalListener>,
    mut in_process: mpsc::Receiver<(Messages, Peer)>,
    router: Arc<Router>,
    mut stopped: oneshot::Receiver<String>,
) {
    let (notify_shutdown, _) = broadcast::channel::<()>(1);
    let mut connections = JoinSet::new();
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS));
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Messages of durable queues read back from the store, as their consumers need them.
    let mut loaded = router.store().and_then(|store| store.take_loaded());
    let reason = loop {
        tokio::select! {
            reason = &mut stopped => break reason.unwrap_or_else(|_| "broker handle dropped".to_owned()),
            _ = upkeep.tick() => router.tick(),
            Some(answer) = async { loaded.as_mut()?.recv().await }, if loaded.is_some() => router.loaded(answer),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some((channel, peer)) = in_process.recv() => {
                // Over the limit, the channel is dropped: the opener sees it end.
                let _ = admit(channel, peer, &router, &notify_shutdown, &mut connections);
            }
            Some(accepted) = async { Some(local.as_mut()?.accept().await) }, if local.is_some() => match accepted {
                // Over the limit a local client sees its connection close: it is one of
                // the owner's programs, and the broker's log says why.
                Ok((stream, peer)) => {
                    let peer = Peer::new(peer, TransportKind::Local);
                    let _ = admit(ByteStream(stream), peer, &router, &notify_shutdown, &mut connections);
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a local connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => accept(stream, peer, &router, &notify_shutdown, &mut connections, &refusals),
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    };
    drop(listener);
    if let Some(access) = router.access() {
        access.close(local.as_ref());
    }
    drop(local);
    tracing::info!(reason, "message broker shutting down");
    router.begin_shutdown(&reason);
    let _ = notify_shutdown.send(());
    let drained = timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = connections.len(), "connections did not close in time; aborting them");
        connections.shutdown().await;
    }
    // Every connection is gone, so nothing writes any more: commit and close.
    let closing = router.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close_store()).await;
    tracing::info!("message broker stopped");
}

fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    router: &Arc<Router>,
    notify_shutdown: &broadcast::Sender<()>,
    connections: &mut JoinSet<()>,
    refusals: &Arc<Semaphore>,
) {
    if let Err(error) = configure(&stream) {
        tracing::debug!(%peer, %error, "could not set socket options");
    }
    let peer = Peer::new(peer.to_string(), TransportKind::Tcp);
    let Err(ByteStream(stream)) = admit(ByteStream(stream), peer, router, notify_shutdown, connections)
    else {
        return;
    };
    // Explained to a bounded number at a time; in a flood the rest are just closed.
    if let Ok(permit) = refusals.clone().try_acquire_owned() {
        let max = router.config().max_connections;
        tokio::spawn(async move {
            reject(stream, max).await;
            drop(permit);
        });
    }
}

/// Starts a session over `transport`, counted as an open connection while it runs.
/// Over `max_connections` the transport is counted as rejected and handed back: a
/// TCP client is told why, an in-process opener sees its channel end. TCP and the
/// same-user transports each have `max_connections` of their own: connections that
/// anyone on the machine can open never use up the owner's.
fn admit<T: Transport>(
    transport: T,
    peer: Peer,
    router: &Arc<Router>,
    notify_shutdown: &broadcast::Sender<()>,
    connections: &mut JoinSet<()>,
) -> Result<(), T> {
    let max = router.config().max_connections;
    let counters = &router.counters;
    let same_user = counters.same_user_open.load(Ordering::Relaxed);
    let origin = peer.transport.origin();
    let open = match origin {
        Origin::SameUser => same_user,
        Origin::Network | Origin::Web => {
            counters.connections_open.load(Ordering::Relaxed).saturating_sub(same_user)
        }
    };
    if open >= max {
        router.counters.connections_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %peer.address, max_connections = max, "connection refused: too many connections");
        return Err(transport);
    }
    counters.connections_open.fetch_add(1, Ordering::Relaxed);
    if origin == Origin::SameUser {
        counters.same_user_open.fetch_add(1, Ordering::Relaxed);
    }
    counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
    let open = OpenConnection(router.clone(), origin);
    let shutdown = Shutdown::new(notify_shutdown.subscribe());
    let router = router.clone();
    connections.spawn(async move {
        let _open = open;
        session::run(transport, peer, router, shutdown).await;
    });
    Ok(())
}

fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Tells a connection over the limit why it is refused, in its own framing when its
/// first byte arrives quickly, then closes it.
async fn reject(mut stream: TcpStream, max: usize) {
    let error = RpcError::new(
        ErrorCode::TooManyConnections,
        format!("the broker already serves max_connections={max} clients; try again later"),
    );
    let mut first = [0u8; 1];
    let framing = match timeout(REJECT_PEEK, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Framing::detect(first[0]),
        _ => Framing::LengthPrefixed,
    };
    let mut buf = BytesMut::new();
    framing.encode(&jsonrpc::failure(None, &error), &mut buf);
    let _ = timeout(REJECT_LINGER, async {
        stream.write_all(&buf).await?;
        stream.shutdown().await?;
        // Read until the client closes, so the error is not lost to a reset.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}
