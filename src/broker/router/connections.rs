//! Snapshots of the connected clients for monitoring: who they are, where they came
//! from, what they subscribed to and their traffic, read without holding any lock
//! longer than the copy takes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::Router;
use super::registry::Entry;
use crate::broker::transport::Peer;
use crate::index::SessionId;
use crate::protocol::method::SubscriptionFlags;

/// One connected client, as monitoring shows it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub session: SessionId,
    pub client_id: Arc<str>,
    pub client_type: Option<String>,
    pub version: Option<String>,
    pub peer: Peer,
    pub connected_at: SystemTime,
    /// Its patterns in subscription order, with their flags.
    pub subscriptions: Vec<(Arc<str>, SubscriptionFlags)>,
    /// Frames waiting to be written to it, and their bytes.
    pub pending: usize,
    pub pending_bytes: usize,
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub dropped: u64,
    /// Calls it sent, and their bytes.
    pub received: u64,
    pub received_bytes: u64,
    /// Milliseconds since the Unix epoch of its last frame (0: none yet).
    pub last_activity_ms: u64,
}

impl Connection {
    fn of(entry: &Entry) -> Connection {
        let traffic = entry.outbox.stats();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        Connection {
            session: entry.session,
            client_id: entry.info.client_id.clone(),
            client_type: entry.info.client_type.clone(),
            version: entry.info.version.clone(),
            peer: entry.info.peer.clone(),
            connected_at: entry.connected_at,
            subscriptions: entry.patterns.iter().map(|p| (p.clone(), entry.flags_of(p))).collect(),
            pending: entry.outbox.len(),
            pending_bytes: traffic.bytes.load(Ordering::Relaxed),
            delivered: load(&traffic.delivered),
            delivered_bytes: load(&traffic.delivered_bytes),
            dropped: load(&traffic.dropped),
            received: load(&traffic.received),
            received_bytes: load(&traffic.received_bytes),
            last_activity_ms: load(&traffic.last_activity_ms),
        }
    }
}

impl Router {
    /// Every connected client, in the order they connected.
    pub fn connections(&self) -> Vec<Connection> {
        let mut connections: Vec<Connection> =
            self.state.read().sessions.values().map(Connection::of).collect();
        connections.sort_by_key(|c| c.session);
        connections
    }

    /// Subscriptions held in all (each pattern of each client once).
    pub fn subscription_count(&self) -> usize {
        self.state.read().index.len()
    }
}
