//! The broker session behind `POST /api/publish`: one in-process connection, named
//! `web`, that HTTP publishes go through as `publish` calls. The checks, permission
//! rules, `qos=1` confirmation and errors are exactly those of any client, because
//! the same session code answers them.
//!
//! Calls are matched to their responses by id, so concurrent HTTP requests share
//! the connection. A connection that ends (another client took the name `web`, the
//! broker stops) is opened again by the next call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::broker::{Messages, Peer, TransportKind};
use crate::error::{ErrorCode, RpcError};
use crate::protocol::jsonrpc::{self, CallId};
use crate::protocol::method::MethodName;

/// The client id HTTP publishes carry as their sender.
pub(super) const CLIENT_ID: &str = "web";
/// Calls in flight towards the broker before a caller waits.
const BACKLOG: usize = 64;

type Answer = Result<Box<RawValue>, RpcError>;
type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

pub(super) struct Publisher {
    admit: mpsc::Sender<(Messages, Peer)>,
    link: tokio::sync::Mutex<Option<Link>>,
    next_id: AtomicU64,
}

#[derive(Clone)]
struct Link {
    to_broker: mpsc::Sender<Bytes>,
    waiting: Waiting,
}

impl Publisher {
    pub(super) fn new(admit: mpsc::Sender<(Messages, Peer)>) -> Publisher {
        Publisher { admit, link: tokio::sync::Mutex::new(None), next_id: AtomicU64::new(1) }
    }

    /// Calls `method` with `params` (a JSON object) and waits for its answer.
    pub(super) async fn call(&self, method: MethodName, params: &RawValue) -> Answer {
        let link = self.link().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        link.waiting.lock().insert(id, tx);
        let call = jsonrpc::call(method, Some(&params), Some(CallId::Number(id)));
        if link.to_broker.send(Bytes::from(call)).await.is_err() {
            link.waiting.lock().remove(&id);
            self.forget(&link).await;
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// The open connection, opened (and connected as `web`) if there is none.
    async fn link(&self) -> Result<Link, RpcError> {
        let mut held = self.link.lock().await;
        if let Some(link) = held.as_ref().filter(|link| !link.to_broker.is_closed()) {
            return Ok(link.clone());
        }
        let (to_broker, incoming) = mpsc::channel(BACKLOG);
        let (outgoing, from_broker) = mpsc::channel(BACKLOG);
        let peer = Peer::new("http api", TransportKind::InProcess);
        self.admit.send((Messages { incoming, outgoing }, peer)).await.map_err(|_| gone())?;
        let waiting: Waiting = Arc::default();
        tokio::spawn(read_answers(from_broker, waiting.clone()));
        let link = Link { to_broker, waiting };
        let (tx, rx) = oneshot::channel();
        link.waiting.lock().insert(0, tx);
        let params = json!({"client_id": CLIENT_ID, "client_type": "http"});
        let connect = jsonrpc::call(MethodName::Connect, Some(&params), Some(CallId::Number(0)));
        link.to_broker.send(Bytes::from(connect)).await.map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))?;
        *held = Some(link.clone());
        Ok(link)
    }

    async fn forget(&self, link: &Link) {
        let mut held = self.link.lock().await;
        if held.as_ref().is_some_and(|current| current.to_broker.same_channel(&link.to_broker)) {
            *held = None;
        }
    }
}

/// Hands each response to its caller; when the connection ends, every caller still
/// waiting learns it.
async fn read_answers(mut from_broker: mpsc::Receiver<Bytes>, waiting: Waiting) {
    #[derive(Deserialize)]
    struct Response {
        id: Option<u64>,
        result: Option<Box<RawValue>>,
        error: Option<Failure>,
    }
    #[derive(Deserialize)]
    struct Failure {
        code: i32,
        message: String,
    }
    while let Some(frame) = from_broker.recv().await {
        // Notifications (the session subscribes to nothing) and batches never come.
        let Ok(response) = serde_json::from_slice::<Response>(&frame) else { continue };
        let Some(caller) = response.id.and_then(|id| waiting.lock().remove(&id)) else { continue };
        let answer = match (response.result, response.error) {
            (_, Some(failure)) => {
                let code = ErrorCode::ALL.into_iter().find(|c| c.code() == failure.code);
                Err(RpcError::new(code.unwrap_or(ErrorCode::InternalError), failure.message))
            }
            (Some(result), None) => Ok(result),
            (None, None) => Ok(RawValue::NULL.to_owned()),
        };
        let _ = caller.send(answer);
    }
    waiting.lock().clear();
}

fn gone() -> RpcError {
    RpcError::new(ErrorCode::ShuttingDown, "the broker is not taking messages (shutting down?)")
}
