//! The router's door to queue groups and durable queues: joining and leaving,
//! settling deliveries, messages read back from the store, and dead letters, which
//! are published like any message (never back into the queue they left).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Publish, Router, unix_now};
use crate::broker::permissions::ClientPermissions;
use crate::broker::queue::{DeadLetter, Join};
use crate::broker::store::{Loaded, Store};
use crate::error::RpcError;
use crate::index::SessionId;
use crate::protocol::topic::BROKER_SENDER;

impl Router {
    /// Makes `session` a consumer of a queue (declared on first use).
    pub fn join_queue(&self, session: SessionId, join: Join) -> Result<(), RpcError> {
        let outbox = self.outbox_of(session)?;
        let dead = self.queues.lock().join(session, outbox, join, unix_now())?;
        self.has_queues.store(true, Ordering::Release);
        self.dead_letter(dead);
        Ok(())
    }

    /// Removes `session` from one queue or all; returns the queues it left.
    pub fn leave_queues(&self, session: SessionId, name: Option<&str>) -> Vec<Arc<str>> {
        if !self.has_queues.load(Ordering::Acquire) {
            return Vec::new();
        }
        let (left, dead) = self.queues.lock().leave(session, name, unix_now());
        self.dead_letter(dead);
        left
    }

    /// Acknowledges (`ack`) or rejects deliveries of `session`; returns how many it held.
    pub fn settle(&self, session: SessionId, tags: &[u64], ack: bool, requeue: bool) -> usize {
        let (settled, dead) = self.queues.lock().settle(session, tags, ack, requeue, unix_now());
        self.dead_letter(dead);
        settled
    }

    /// Deletes a queue with its messages, when `by` may subscribe to all it is bound
    /// to; `None` when there is no such queue.
    pub fn delete_queue(&self, name: &str, by: &ClientPermissions) -> Result<Option<usize>, RpcError> {
        self.queues.lock().delete(name, by)
    }

    /// Drops the ready messages of a queue, keeping its bindings, consumers and the
    /// deliveries in flight, under the same rule as [`Router::delete_queue`]; returns
    /// how many it dropped, `None` when there is no such queue.
    pub fn purge_queue(&self, name: &str, by: &ClientPermissions) -> Result<Option<usize>, RpcError> {
        self.queues.lock().purge(name, by, unix_now())
    }

    /// Takes messages a queue asked the store for.
    pub fn loaded(&self, loaded: Loaded) {
        let dead = self.queues.lock().loaded(loaded, unix_now());
        self.dead_letter(dead);
    }

    /// The store behind durable queues, if any.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Commits what the store still has queued and closes it.
    pub fn close_store(&self) {
        if let Some(store) = &self.store {
            store.close();
        }
    }

    /// Expires queued messages past their ttl and retries deliveries that found no room.
    pub(super) fn tick_queues(&self, now: f64) {
        if self.has_queues.load(Ordering::Acquire) {
            let dead = self.queues.lock().tick(now);
            self.dead_letter(dead);
        }
    }

    /// Publishes dead letters on their topics (never back into the queue they left).
    pub(super) fn dead_letter(&self, letters: Vec<DeadLetter>) {
        for letter in letters {
            let msg = Publish { qos: 1, ..Publish::new(&letter.topic, &letter.payload, BROKER_SENDER) };
            if let Err(error) = self.publish_skipping(msg, Some(&letter.queue)) {
                tracing::warn!(queue = %letter.queue, "a dead letter was lost: {error}");
            }
        }
    }
}
