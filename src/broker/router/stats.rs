//! Counting and reporting: the broker-wide counters and the status document answered
//! to `status` and to requests on the `status` topic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use super::Router;
use super::registry::Entry;
use crate::broker::access::Access;

/// Broker-wide counters, reported by `status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    /// Payload bytes of the published messages.
    pub published_bytes: AtomicU64,
    pub delivered: AtomicU64,
    /// Payload bytes of the deliveries (a message to three subscribers counts thrice).
    pub delivered_bytes: AtomicU64,
    pub dropped: AtomicU64,
    /// Times a client's queue filled up and deliveries to it began to be dropped.
    pub slow_consumers: AtomicU64,
    /// Subscriptions made and removed since the start.
    pub subscribed: AtomicU64,
    pub unsubscribed: AtomicU64,
    /// The most clients one message was delivered to.
    pub max_fanout: AtomicUsize,
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub late_replies: AtomicU64,
    pub no_responders: AtomicU64,
    pub timeouts: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub connections_open: AtomicUsize,
    /// Of those, the ones over the local socket or in-process: they have a budget of
    /// their own, so that TCP clients can never lock the owner out.
    pub same_user_open: AtomicUsize,
    pub protocol_errors: AtomicU64,
}

impl Router {
    /// The broker's status, as answered to `status` and to requests on `status`.
    pub fn status(&self) -> Value {
        let state = self.state.read();
        let mut clients: Vec<(&Entry, Value)> = state
            .sessions
            .values()
            .map(|entry| {
                let stats = entry.outbox.stats();
                let connected_at =
                    entry.connected_at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                let value = json!({
                    "client_id": &*entry.info.client_id,
                    "client_type": entry.info.client_type,
                    "version": entry.info.version,
                    "connected_at": connected_at,
                    "subscriptions": entry.patterns.iter().map(|p| &**p).collect::<Vec<_>>(),
                    "queued": entry.outbox.len(),
                    "queued_bytes": stats.bytes.load(Ordering::Relaxed),
                    "delivered": stats.delivered.load(Ordering::Relaxed),
                    "dropped": stats.dropped.load(Ordering::Relaxed),
                });
                (entry, value)
            })
            .collect();
        clients.sort_by_key(|(entry, _)| entry.connected_at);
        let c = &self.counters;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let access = self.access.get();
        let addr = access.map(Access::tcp);
        let (queues, totals, data_dir, (memory_used, max_memory)) = {
            let queues = self.queues.lock();
            let data_dir = queues.store().map(|s| s.path().display().to_string());
            (queues.status(), queues.totals(), data_dir, queues.memory())
        };
        let retained = self.retained.lock().len();
        json!({
            "broker_version": crate::VERSION,
            "host": addr.map(|a| a.ip().to_string()),
            "port": addr.map(|a| a.port()),
            "uptime": self.started.elapsed().as_secs_f64(),
            // The runtime's worker threads (MESSAGE_BROKER_WORKER_THREADS in Python).
            "worker_threads": tokio::runtime::Handle::try_current().ok().map(|h| h.metrics().num_workers()),
            "client_count": state.sessions.len(),
            "clients": clients.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "subscription_count": state.index.len(),
            "messages": {
                "published": load(&c.published),
                "delivered": load(&c.delivered),
                "dropped": load(&c.dropped),
                "requests": load(&c.requests),
                "replies": load(&c.replies),
                "late_replies": load(&c.late_replies),
                "no_responders": load(&c.no_responders),
                "timeouts": load(&c.timeouts),
                "retained": retained,
                "queued": totals.enqueued,
                "acked": totals.acked,
                "redelivered": totals.redelivered,
                "dead_lettered": totals.dead_lettered,
                "expired": totals.expired,
                "refused_by_full_queues": totals.dropped,
            },
            "queues": queues,
            "channels": self.channels_status(),
            "bridges": self.bridges.status(),
            "security": access.map(Access::status),
            "persistence": {
                "store": data_dir,
                "fsync": self.config.fsync,
            },
            "memory": {
                "queued_bytes": memory_used,
                "max_memory": max_memory,
            },
            "connections": {
                "open": c.connections_open.load(Ordering::Relaxed),
                "accepted": load(&c.connections_accepted),
                "rejected": load(&c.connections_rejected),
                "protocol_errors": load(&c.protocol_errors),
            },
            "limits": {
                "max_connections": self.config.max_connections,
                "max_message_size": self.config.max_message_size,
                "max_queue_size": self.config.max_queue_size,
                "max_queue_bytes": self.config.max_queue_bytes,
                "heartbeat_interval": self.config.heartbeat_interval.as_secs_f64(),
                "heartbeat_timeout": self.config.heartbeat_timeout.as_secs_f64(),
            },
        })
    }
}
