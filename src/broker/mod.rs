//! The broker: a listener accepting connections, one session per connection over
//! its transport, and the router they share, with its queues and store.
//!
//! - [`listener`]: the accept loop, connection limits, upkeep and graceful shutdown.
//! - [`access`]: who may connect: the token, the runtime file, the local socket.
//! - [`local_socket`]: the transport only the broker's own user can open.
//! - [`token`]: the random token of each start, compared in constant time.
//! - `named_pipe` (Windows only): the acceptor of the broker's owner-only named pipe.
//! - [`transport`]: the seam between a session and what carries its messages.
//! - [`connection`]: the coalescing writer of byte-stream transports.
//! - [`session`]: what one connected client may do, one file per method or group.
//! - [`router`]: registry, fan-out, retained messages, requests, counters.
//! - [`outbox`]: the bounded per-client queue of frames to write.
//! - [`monitor`]: the passive tap behind the HTTP listener's topic tree and long-poll.
//! - [`permissions`]: the topics each client may publish to and subscribe to.
//! - [`queue`]: queue groups and durable queues.
//! - [`channels`]: channels and groups for a Django Channels layer.
//! - [`store`]: the SQLite store behind durable queues and retained messages.
//! - [`shutdown`]: the broadcast signal every connection listens to.

mod access;
pub(crate) mod channels;
mod connection;
mod listener;
mod local_socket;
pub mod monitor;
#[cfg(windows)]
mod named_pipe;
pub mod outbox;
pub mod permissions;
pub(crate) mod queue;
pub mod router;
mod session;
mod shutdown;
pub(crate) mod store;
mod token;
mod transport;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::access::Access;
use self::local_socket::LocalAddress;
use self::router::Router;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::protocol::topic::system;
use crate::web::{self, WebServer};

pub use self::queue::QueueSpec;
pub use self::session::MAX_REQUESTS_IN_FLIGHT;
pub(crate) use self::transport::Messages;
pub use self::transport::{Peer, TransportKind};

/// Messages an in-process connection may have in flight towards the broker before
/// its sender waits.
const IN_PROCESS_BACKLOG: usize = 64;

/// How long a stopping broker waits for each bridge to close its far side.
const BRIDGE_STOP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// A running broker. Dropping it stops the broker too (without waiting).
pub struct BrokerHandle {
    router: Arc<Router>,
    local_addr: SocketAddr,
    connector: InProcessConnector,
    stop: Option<oneshot::Sender<String>>,
    task: JoinHandle<()>,
    web: Option<WebServer>,
    bridges: Vec<JoinHandle<()>>,
}

/// Opens in-process connections: what the handle, the bridges and the HTTP listener
/// share.
#[derive(Clone)]
pub(crate) struct InProcessConnector {
    router: Arc<Router>,
    in_process: mpsc::Sender<(Messages, Peer)>,
}

impl InProcessConnector {
    pub(crate) async fn connect(&self) -> Result<InProcessConnection, BrokerError> {
        let (to_broker, incoming) = mpsc::channel(IN_PROCESS_BACKLOG);
        let (outgoing, from_broker) = mpsc::channel(self.router.config().max_queue_size.max(1));
        self.in_process
            .send((Messages { incoming, outgoing }, Peer::in_process()))
            .await
            .map_err(|_| BrokerError::Io(std::io::Error::other("the broker has stopped")))?;
        Ok(InProcessConnection { to_broker, from_broker })
    }

    /// Where transports of whole messages (WebSocket sessions) are admitted.
    pub(crate) fn admission(&self) -> mpsc::Sender<(Messages, Peer)> {
        self.in_process.clone()
    }
}

/// A connection to the broker within the same process: whole JSON-RPC messages in,
/// whole messages out, with the session, limits and ordering of a TCP connection.
pub struct InProcessConnection {
    /// Calls to the broker, one JSON text each.
    pub to_broker: mpsc::Sender<Bytes>,
    /// Responses and notifications, one JSON text each; ends when the session ends.
    pub from_broker: mpsc::Receiver<Bytes>,
}

impl BrokerHandle {
    /// The address the broker listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The token of this start, which TCP clients send when `require_token` is on.
    pub fn token(&self) -> &str {
        self.access().token()
    }

    /// The runtime file that tells this user's programs the token and local socket.
    pub fn runtime_file(&self) -> &Path {
        self.access().runtime_file()
    }

    /// The Unix socket (or, on Windows, the named pipe) only this user can open.
    pub fn local_socket(&self) -> Option<String> {
        self.access().local_address().map(|address| match address {
            LocalAddress::UnixSocket(path) => path.display().to_string(),
            LocalAddress::NamedPipe(name) => name.clone(),
        })
    }

    fn access(&self) -> &Access {
        self.router.access().expect("a started broker has its access settings")
    }

    /// The address of the HTTP listener, when `http_port` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(WebServer::local_addr)
    }

    /// True once the server task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Opens a connection within this process, without a socket. It counts against
    /// `max_connections` of the same-user transports, like a local socket connection.
    pub async fn connect_in_process(&self) -> Result<InProcessConnection, BrokerError> {
        self.connector.connect().await
    }

    /// Stops the broker: announces `system.broker.shutdown` with `reason`, closes every
    /// connection after flushing it (the bridges' too, which then close their far
    /// side), and returns when all are closed.
    pub async fn stop(mut self, reason: &str) {
        // HTTP first: long polls end, and WebSocket sessions close with the others.
        if let Some(web) = self.web.take() {
            web.stop().await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(reason.to_owned());
        }
        let _ = (&mut self.task).await;
        crate::bridge::join(std::mem::take(&mut self.bridges), BRIDGE_STOP_PATIENCE).await;
    }
}

/// Binds the listener and starts serving in the background on the current runtime.
pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
    config.validate()?;
    // Opening the store reads it back, which blocks: keep it off the async workers.
    let host = config.host.clone();
    let port = config.port;
    let router = tokio::task::spawn_blocking(move || Router::open(config))
        .await
        .map_err(|e| BrokerError::Io(std::io::Error::other(e.to_string())))??;
    let listener = listener::bind(&host, port).await?;
    let local_addr = listener.local_addr()?;
    let (access, local) = Access::open(router.config(), local_addr)?;
    let local_address = access.local_address().cloned();
    router.set_access(access);
    let (stop, stopped) = oneshot::channel();
    let (in_process, admitted) = mpsc::channel(IN_PROCESS_BACKLOG);
    let connector = InProcessConnector { router: router.clone(), in_process };
    let web = match router.config().http_port {
        Some(port) => match web::start(router.clone(), connector.admission(), port).await {
            Ok(web) => Some(web),
            Err(error) => {
                if let Some(access) = router.access() {
                    access.close(local.as_ref());
                }
                return Err(error);
            }
        },
        None => None,
    };
    let task = tokio::spawn(listener::serve(listener, local, admitted, router.clone(), stopped));
    tracing::info!(%local_addr, local = ?local_address, "message broker listening");
    router.publish_system(
        system::BROKER_READY,
        &json!({"host": local_addr.ip().to_string(), "port": local_addr.port()}),
    );
    let bridges = crate::bridge::start(&router, &connector, &router.config().bridges);
    Ok(BrokerHandle { router, local_addr, connector, stop: Some(stop), task, web, bridges })
}
