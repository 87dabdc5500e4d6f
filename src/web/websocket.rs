//! `GET /ws`: a broker session over a WebSocket, one JSON-RPC message per text
//! frame, with the methods, limits and ordering of a TCP connection. The session
//! always needs the token in its `connect`: any page the user visits could open a
//! WebSocket to 127.0.0.1 (and the Origin check refuses other sites' pages first).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::Web;
use crate::broker::{Messages, Peer, TransportKind};

/// Room above `max_message_size` for a frame the session still answers with a
/// "too large" error instead of the WebSocket closing.
const FRAME_SLACK: usize = 64 * 1024;

pub(super) async fn upgrade(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = web.router.config().max_message_size + FRAME_SLACK;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| serve(socket, peer, web))
}

async fn serve(mut socket: WebSocket, peer: SocketAddr, web: Arc<Web>) {
    let (to_broker, incoming) = mpsc::channel(64);
    let (outgoing, mut from_broker) = mpsc::channel(web.router.config().max_queue_size.max(1));
    let peer = Peer::new(peer.to_string(), TransportKind::WebSocket);
    if web.admit.send((Messages { incoming, outgoing }, peer)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            sent = from_broker.recv() => {
                // None: the session ended (its closing notice, if any, came first).
                let Some(frame) = sent else { break };
                let Ok(text) = Utf8Bytes::try_from(frame) else { continue };
                if socket.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            received = socket.recv() => match received {
                Some(Ok(Message::Text(text))) => {
                    if to_broker.send(Bytes::from(text)).await.is_err() {
                        break;
                    }
                }
                // A binary frame is taken as the UTF-8 JSON text it should be; the
                // session answers anything else with a parse error.
                Some(Ok(Message::Binary(data))) => {
                    if to_broker.send(data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
