//! The HTTP listener: monitoring, the live explorer page, HTTP access to messages and
//! WebSocket sessions, on 127.0.0.1 only, started and stopped with the broker when
//! `http_port` is set.
//!
//! - [`guard`]: the Host, Origin and token checks every request passes.
//! - [`monitoring`]: `/healthz`, `/varz`, `/connz`, `/subsz` and `/topics`.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`api`]: `/api/messages/last`, `/api/messages/poll` and `/api/publish`.
//! - [`publisher`]: the in-process session that HTTP publishes go through.
//! - [`websocket`]: `/ws`, a broker session over a WebSocket.
//! - [`page`]: the page at `/` and the JavaScript client it and other pages use.
//! - [`error`], [`clock`]: error responses; times as NATS's monitoring writes them.

mod api;
mod clock;
mod error;
mod guard;
mod metrics;
mod monitoring;
mod page;
mod publisher;
mod websocket;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::monitor::Monitor;
use crate::broker::router::Router;
use crate::broker::{Messages, Peer};
use crate::error::BrokerError;

use self::publisher::Publisher;

/// How long a stopping listener waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every handler shares.
struct Web {
    router: Arc<Router>,
    monitor: Arc<Monitor>,
    /// Where WebSocket sessions and the publisher's connection are admitted, within
    /// the broker's connection limits.
    admit: mpsc::Sender<(Messages, Peer)>,
    publisher: Publisher,
    /// The port the listener is bound to, which the Host header must name.
    port: u16,
    closing: watch::Receiver<bool>,
}

impl Web {
    fn token_matches(&self, offered: &str) -> bool {
        self.router.access().is_some_and(|access| access.token_matches(offered))
    }

    /// Completes once the listener is stopping, so that long polls end at once.
    async fn closing(&self) {
        let mut closing = self.closing.clone();
        let _ = closing.wait_for(|closing| *closing).await;
    }
}

/// A running HTTP listener.
pub(crate) struct WebServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WebServer {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests, ends long polls and waits (briefly) for the rest.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await.is_err() {
            tracing::warn!("HTTP requests did not finish in time; aborting them");
            self.task.abort();
        }
    }
}

/// Binds 127.0.0.1:`port` and serves in the background.
pub(crate) async fn start(
    router: Arc<Router>,
    admit: mpsc::Sender<(Messages, Peer)>,
    port: u16,
) -> Result<WebServer, BrokerError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Bind { addr: addr.to_string(), source })?;
    let addr = listener.local_addr()?;
    let (stop, closing) = watch::channel(false);
    let monitor = router.enable_monitor();
    let max_body = router.config().max_message_size;
    let web = Arc::new(Web {
        publisher: Publisher::new(admit.clone()),
        router,
        monitor,
        admit,
        port: addr.port(),
        closing: closing.clone(),
    });
    let protected = axum::Router::new()
        .route("/varz", get(monitoring::varz))
        .route("/connz", get(monitoring::connz))
        .route("/subsz", get(monitoring::subsz))
        .route("/topics", get(monitoring::topics))
        .route("/metrics", get(metrics::metrics))
        .route("/api/messages/last", get(api::last))
        .route("/api/messages/poll", get(api::poll))
        .route("/api/publish", post(api::publish))
        .route_layer(axum::middleware::from_fn_with_state(web.clone(), guard::token));
    let app = axum::Router::new()
        .route("/", get(page::index))
        .route("/message-broker.js", get(page::client_module))
        .route("/healthz", get(monitoring::healthz))
        .route("/ws", get(websocket::upgrade))
        .merge(protected)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(web.clone(), guard::local_only))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(web);
    let mut stopping = closing;
    let task = tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "the HTTP listener failed");
        }
    });
    tracing::info!(%addr, "HTTP monitoring and WebSocket access listening");
    Ok(WebServer { addr, stop, task })
}
