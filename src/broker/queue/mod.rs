//! Queues: messages kept for competing consumers and acknowledged one by one.
//!
//! A queue is bound to patterns and receives a copy of every matching message. Each
//! message goes to exactly one of the queue's consumers, round-robin among those with
//! room under their prefetch; it stays in flight until that consumer acknowledges it.
//! When a consumer goes away its unacknowledged messages go back to the front of the
//! queue, and after `max_deliveries` deliveries (or a rejection, or expiry) a message
//! leaves the queue on its dead-letter topic.
//!
//! A queue group (`durable = false`) lives as long as it has consumers. A durable
//! queue keeps its messages while nobody consumes, up to `max_length` and
//! `max_bytes`, and with a [`Store`] survives a restart: every message is written
//! there when it is queued, and removed when it is acknowledged.
//!
//! Memory stays bounded whatever the backlog. A durable queue with a store keeps
//! only a window of its next messages in memory ([`WINDOW_COUNT`], [`WINDOW_BYTES`]);
//! the others stay on disk and are read back in order as consumers take them. Every
//! other queue lives in memory, and together they may hold at most the broker's
//! `max_memory`; past it they refuse new messages. What a consumer holds
//! unacknowledged is bounded by its prefetch and by [`MAX_UNACKED_BYTES`].

mod confirm;
mod dispatch;
mod message;
mod spec;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::broker::access::denied;
use crate::broker::outbox::Outbox;
use crate::broker::permissions::ClientPermissions;
use crate::broker::store::{Loaded, Op, Restored, Store, StoreError};
use crate::error::{ErrorCode, RpcError};
use crate::index::{SessionId, SubscriptionIndex};
pub use confirm::AckOutcome;
use dispatch::{Consumer, Context, Memory, Queue};
pub use message::{DeadLetter, QueueStats, Refusal, StoredMessage};
pub use spec::*;

/// What a subscriber asks of a queue when it joins it.
#[derive(Debug, Clone)]
pub struct Join {
    pub name: String,
    pub patterns: Vec<Arc<str>>,
    pub durable: bool,
    pub prefetch: usize,
    pub max_length: Option<usize>,
    pub max_bytes: Option<u64>,
    pub max_deliveries: Option<u32>,
    pub dead_letter_topic: Option<String>,
    /// Sets the queue's `confirm_on_ack` (its consumer knows when a message is taken
    /// care of, so the last one to join with it decides).
    pub confirm_on_ack: Option<f64>,
    /// What the joining client may do (unrestricted on a broker without rules).
    pub permissions: Arc<ClientPermissions>,
}

/// Where a message went among the queues.
#[derive(Debug, Default)]
pub struct Enqueued {
    /// Queues that took the message.
    pub queued: usize,
    /// Of those, durable ones backed by the store: a `qos=1` publish waits for it.
    pub stored: usize,
    /// Queues that refused it, and why.
    pub full: Vec<(Arc<str>, Refusal)>,
    /// Queues with `confirm_on_ack` that took a `qos=1` message: its publisher waits
    /// for their consumers' acknowledgements.
    pub awaiting_ack: Vec<AwaitedAck>,
}

/// A consumer's acknowledgement a `qos=1` publisher waits for.
#[derive(Debug)]
pub struct AwaitedAck {
    pub queue: Arc<str>,
    /// How long the publisher waits.
    pub within: Duration,
    pub outcome: oneshot::Receiver<AckOutcome>,
}

/// Every queue of the broker.
pub struct Queues {
    queues: HashMap<Arc<str>, Queue>,
    by_number: HashMap<u64, Arc<str>>,
    index: SubscriptionIndex,
    next_number: u64,
    /// Which queue each delivery tag in flight belongs to.
    tags: HashMap<u64, Arc<str>>,
    next_tag: u64,
    store: Option<Arc<Store>>,
    /// Counters of queues that no longer exist, so broker totals never go back.
    retired: QueueStats,
    memory: Memory,
}

impl Queues {
    /// Queues backed by `store` when durable; those kept in memory hold at most
    /// `max_memory` bytes together.
    pub fn new(store: Option<Arc<Store>>, max_memory: usize) -> Queues {
        // Tags start at a random point so that an acknowledgement a client sends late,
        // after the broker restarted, cannot settle somebody else's delivery.
        let next_tag = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8) >> 20;
        Queues {
            queues: HashMap::new(),
            by_number: HashMap::new(),
            index: SubscriptionIndex::default(),
            next_number: 0,
            tags: HashMap::new(),
            next_tag,
            store,
            retired: QueueStats::default(),
            memory: Memory { used: 0, limit: max_memory },
        }
    }

    /// Bytes held by the queues kept in memory, and their limit.
    pub fn memory(&self) -> (usize, usize) {
        (self.memory.used, self.memory.limit)
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Runs `f` on queue `name` with the context it needs; returns the dead letters.
    fn with_queue<R>(
        &mut self,
        name: &str,
        now: f64,
        f: impl FnOnce(&mut Queue, &mut Context<'_>) -> R,
    ) -> Option<(R, Vec<DeadLetter>)> {
        let queue = self.queues.get_mut(name)?;
        let mut dead = Vec::new();
        let mut ctx = Context {
            store: self.store.as_deref(),
            tags: &mut self.tags,
            next_tag: &mut self.next_tag,
            dead: &mut dead,
            memory: &mut self.memory,
            now,
        };
        let result = f(queue, &mut ctx);
        Some((result, dead))
    }

    fn insert(&mut self, spec: QueueSpec) -> &mut Queue {
        self.next_number += 1;
        let number = self.next_number;
        for pattern in &spec.patterns {
            self.index.insert(number, pattern.as_str().into());
        }
        let stored = spec.durable && self.store.is_some();
        let queue = Queue::new(spec, number, stored);
        let name = queue.name.clone();
        self.by_number.insert(number, name.clone());
        queue.save_definition(self.store.as_deref());
        self.queues.entry(name).or_insert(queue)
    }

    /// Restores the durable queues a previous run stored, then applies the configured
    /// ones (the configuration wins over what was stored).
    pub fn restore(
        &mut self,
        restored: Restored,
        configured: &[QueueSpec],
        path: &str,
    ) -> Result<(), StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { path: path.into(), detail };
        for stored in restored.queues {
            let spec: QueueSpec = serde_json::from_str(&stored.definition)
                .map_err(|e| corrupt(format!("a queue definition cannot be read: {e}")))?;
            let queue = self.insert(spec);
            // Everything stays on disk until consumers take it.
            queue.on_disk.count = stored.count;
            queue.on_disk.bytes = stored.bytes;
            queue.next_seq = stored.last_seq + 1;
        }
        for spec in configured {
            self.configure(spec.clone());
        }
        Ok(())
    }

    /// Declares a queue from the configuration, or brings an existing one in line with it.
    pub fn configure(&mut self, spec: QueueSpec) {
        let Some(queue) = self.queues.get_mut(spec.name.as_str()) else {
            self.insert(spec);
            return;
        };
        if queue.spec == spec {
            return;
        }
        let number = queue.number;
        for pattern in &queue.spec.patterns {
            self.index.remove(number, pattern);
        }
        for pattern in &spec.patterns {
            self.index.insert(number, pattern.as_str().into());
        }
        queue.spec = spec;
        queue.save_definition(self.store.as_deref());
    }

    /// Adds `session` as a consumer of a queue, declaring the queue (or adding the
    /// patterns to its bindings) as needed.
    pub fn join(
        &mut self,
        session: SessionId,
        outbox: Outbox,
        join: Join,
        now: f64,
    ) -> Result<Vec<DeadLetter>, RpcError> {
        validate_queue_name(&join.name)?;
        let patterns: Vec<String> = join.patterns.iter().map(|p| p.to_string()).collect();
        match self.queues.get_mut(join.name.as_str()) {
            Some(queue) => {
                let conflict = |what: &str, has: String, asked: String| {
                    Err(RpcError::new(
                        ErrorCode::InvalidParams,
                        format!(
                            "queue {:?} already exists with {what} {has}; this subscription asks for {asked}",
                            join.name
                        ),
                    ))
                };
                if queue.spec.durable != join.durable {
                    return conflict("durable", queue.spec.durable.to_string(), join.durable.to_string());
                }
                if let Some(max_length) = join.max_length.filter(|m| *m != queue.spec.max_length) {
                    return conflict("max_length", queue.spec.max_length.to_string(), max_length.to_string());
                }
                let max_bytes = queue.spec.max_bytes(queue.stored);
                if let Some(asked) = join.max_bytes.filter(|m| *m != max_bytes) {
                    return conflict("max_bytes", max_bytes.to_string(), asked.to_string());
                }
                if let Some(max) = join.max_deliveries.filter(|m| *m != queue.spec.max_deliveries) {
                    return conflict(
                        "max_deliveries",
                        queue.spec.max_deliveries.to_string(),
                        max.to_string(),
                    );
                }
                if let Some(topic) =
                    join.dead_letter_topic.as_ref().filter(|t| **t != queue.spec.dead_letter_topic())
                {
                    return conflict("dead_letter_topic", queue.spec.dead_letter_topic(), topic.clone());
                }
                let new: Vec<String> =
                    patterns.into_iter().filter(|p| !queue.spec.patterns.contains(p)).collect();
                check_permissions(&join, &queue.spec, &new, &queue.consumers)?;
                let confirm_on_ack = join.confirm_on_ack.filter(|c| Some(*c) != queue.spec.confirm_on_ack);
                if let Some(seconds) = confirm_on_ack {
                    validate_confirm_on_ack(seconds)?;
                    queue.spec.confirm_on_ack = Some(seconds);
                }
                let changed = !new.is_empty() || confirm_on_ack.is_some();
                for pattern in &new {
                    self.index.insert(queue.number, pattern.as_str().into());
                }
                queue.spec.patterns.extend(new);
                if changed {
                    queue.save_definition(self.store.as_deref());
                }
            }
            None => {
                let spec = QueueSpec {
                    name: join.name.clone(),
                    patterns,
                    durable: join.durable,
                    max_length: join.max_length.unwrap_or(DEFAULT_MAX_LENGTH),
                    max_bytes: join.max_bytes,
                    max_deliveries: join.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES),
                    dead_letter_topic: join.dead_letter_topic.clone(),
                    confirm_on_ack: join.confirm_on_ack,
                };
                spec.validate()?;
                check_permissions(&join, &spec, &[], &[])?;
                self.insert(spec);
            }
        }
        let prefetch = join.prefetch.clamp(1, MAX_PREFETCH);
        let (_, dead) = self
            .with_queue(&join.name, now, |queue, ctx| {
                match queue.consumers.iter_mut().find(|c| c.session == session) {
                    Some(consumer) => consumer.prefetch = prefetch,
                    None => queue.consumers.push(Consumer {
                        session,
                        permissions: join.permissions.clone(),
                        outbox,
                        prefetch,
                        unacked: 0,
                        unacked_bytes: 0,
                    }),
                }
                queue.dispatch(ctx);
            })
            .expect("declared above");
        Ok(dead)
    }

    /// Removes `session` from one queue (`Some`) or from all (`None`); a queue group
    /// left without consumers goes away. Returns the queues it left.
    pub fn leave(
        &mut self,
        session: SessionId,
        name: Option<&str>,
        now: f64,
    ) -> (Vec<Arc<str>>, Vec<DeadLetter>) {
        let names: Vec<Arc<str>> = match name {
            Some(name) => self.queues.get_key_value(name).map(|(k, _)| k.clone()).into_iter().collect(),
            None => self.queues.keys().cloned().collect(),
        };
        let mut left = Vec::new();
        let mut dead_letters = Vec::new();
        for name in names {
            let Some((removed, dead)) = self.with_queue(&name, now, |queue, ctx| {
                let removed = queue.remove_consumer(session, ctx);
                if removed {
                    queue.dispatch(ctx);
                }
                removed
            }) else {
                continue;
            };
            dead_letters.extend(dead);
            if removed {
                left.push(name.clone());
                let queue = &self.queues[&name];
                if !queue.spec.durable && queue.consumers.is_empty() {
                    self.remove(&name);
                }
            }
        }
        (left, dead_letters)
    }

    fn remove(&mut self, name: &str) -> Option<Queue> {
        let mut queue = self.queues.remove(name)?;
        for (_, waiting) in queue.awaiting_ack.drain() {
            let _ = waiting.send(Err(format!("queue {name:?} was removed")));
        }
        for pattern in &queue.spec.patterns {
            self.index.remove(queue.number, pattern);
        }
        self.by_number.remove(&queue.number);
        for tag in queue.in_flight.keys() {
            self.tags.remove(tag);
        }
        if !queue.stored {
            self.memory.used = self.memory.used.saturating_sub(queue.memory());
        }
        self.retired += queue.stats;
        Some(queue)
    }

    /// Deletes a queue with its messages, when `by` may subscribe to everything it is
    /// bound to (the messages it throws away are ones it could have read).
    pub fn delete(&mut self, name: &str, by: &ClientPermissions) -> Result<Option<usize>, RpcError> {
        let Some(queue) = self.queues.get(name) else {
            return Ok(None);
        };
        for pattern in &queue.spec.patterns {
            by.may_subscribe(pattern).map_err(denied)?;
        }
        let queue = self.remove(name).expect("looked up above");
        if let (true, Some(store)) = (queue.spec.durable, &self.store) {
            store.write(Op::DeleteQueue { name: name.to_owned() });
        }
        Ok(Some(queue.len()))
    }

    /// Drops the ready messages of a queue (in memory and on disk), when `by` may
    /// subscribe to everything it is bound to; its bindings, consumers and deliveries
    /// in flight stay. Returns how many it dropped, `None` when there is no such queue.
    pub fn purge(&mut self, name: &str, by: &ClientPermissions, now: f64) -> Result<Option<usize>, RpcError> {
        let Some(queue) = self.queues.get(name) else {
            return Ok(None);
        };
        for pattern in &queue.spec.patterns {
            by.may_subscribe(pattern).map_err(denied)?;
        }
        let (purged, _) = self.with_queue(name, now, Queue::purge).expect("looked up above");
        Ok(Some(purged))
    }

    /// Offers a message to every queue bound to its topic, except `skip` (the queue a
    /// dead letter comes from, so that it never loops back into it).
    pub fn enqueue(
        &mut self,
        topic: &str,
        message: impl FnOnce() -> Arc<StoredMessage>,
        skip: Option<&str>,
        now: f64,
    ) -> (Enqueued, Vec<DeadLetter>) {
        let mut numbers = Vec::new();
        self.index.collect(topic, &mut numbers);
        let mut enqueued = Enqueued::default();
        if numbers.is_empty() {
            return (enqueued, Vec::new());
        }
        let message = &message();
        let mut dead_letters = Vec::new();
        for number in numbers {
            let Some(name) = self.by_number.get(&number).cloned() else { continue };
            if skip == Some(&*name) {
                continue;
            }
            let ((taken, stored, confirm_on_ack), dead) = self
                .with_queue(&name, now, |queue, ctx| {
                    let taken = queue.enqueue(message, ctx);
                    queue.dispatch(ctx);
                    (taken, queue.stored, queue.spec.confirm_on_ack)
                })
                .expect("indexed queues exist");
            dead_letters.extend(dead);
            match taken {
                Ok(awaited) => {
                    enqueued.queued += 1;
                    enqueued.stored += usize::from(stored);
                    if let (Some(outcome), Some(seconds)) = (awaited, confirm_on_ack) {
                        let within = Duration::from_secs_f64(seconds);
                        enqueued.awaiting_ack.push(AwaitedAck { queue: name, within, outcome });
                    }
                }
                Err(refusal) => enqueued.full.push((name, refusal)),
            }
        }
        (enqueued, dead_letters)
    }

    /// Settles deliveries of `session`: acknowledged, or rejected (`requeue` puts
    /// them back, else they are dead-lettered). Returns how many it held.
    pub fn settle(
        &mut self,
        session: SessionId,
        tags: &[u64],
        ack: bool,
        requeue: bool,
        now: f64,
    ) -> (usize, Vec<DeadLetter>) {
        let mut by_queue: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for tag in tags {
            if let Some(name) = self.tags.get(tag) {
                by_queue.entry(name.clone()).or_default().push(*tag);
            }
        }
        let mut settled = 0;
        let mut dead_letters = Vec::new();
        for (name, tags) in by_queue {
            let (count, dead) = self
                .with_queue(&name, now, |queue, ctx| {
                    let mut count = 0;
                    for tag in tags {
                        let done = if ack {
                            queue.ack(session, tag, ctx)
                        } else {
                            queue.nack(session, tag, requeue, ctx)
                        };
                        count += usize::from(done);
                    }
                    queue.dispatch(ctx);
                    count
                })
                .unwrap_or_default();
            settled += count;
            dead_letters.extend(dead);
        }
        (settled, dead_letters)
    }

    /// Takes messages read back from the store into their queue's window.
    pub fn loaded(&mut self, loaded: Loaded, now: f64) -> Vec<DeadLetter> {
        let Some(name) = self.by_number.get(&loaded.number).cloned() else {
            return Vec::new(); // deleted meanwhile
        };
        self.with_queue(&name, now, |queue, ctx| queue.loaded(loaded.rows, ctx))
            .map(|((), dead)| dead)
            .unwrap_or_default()
    }

    /// Expires what outlived its ttl and retries deliveries that found no room.
    pub fn tick(&mut self, now: f64) -> Vec<DeadLetter> {
        let names: Vec<Arc<str>> = self.queues.keys().cloned().collect();
        let mut dead_letters = Vec::new();
        for name in names {
            if let Some(((), dead)) = self.with_queue(&name, now, |queue, ctx| {
                queue.expire(ctx);
                queue.dispatch(ctx);
            }) {
                dead_letters.extend(dead);
            }
        }
        dead_letters
    }

    pub fn status(&self) -> Vec<Value> {
        let mut queues: Vec<&Queue> = self.queues.values().collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        queues.iter().map(|q| q.status()).collect()
    }

    /// Broker-wide totals over every queue there ever was.
    pub fn totals(&self) -> QueueStats {
        let mut totals = self.retired;
        for queue in self.queues.values() {
            totals += queue.stats;
        }
        totals
    }
}

/// A consumer receives whatever its queue is bound to, and the broker dead-letters
/// on its behalf: on a broker with permission rules, joining must be allowed for all
/// of it, and a new binding for every consumer already there.
fn check_permissions(
    join: &Join,
    spec: &QueueSpec,
    new: &[String],
    consumers: &[Consumer],
) -> Result<(), RpcError> {
    for pattern in spec.patterns.iter().chain(new) {
        join.permissions.may_subscribe(pattern).map_err(denied)?;
    }
    join.permissions.may_publish(&spec.dead_letter_topic()).map_err(denied)?;
    for consumer in consumers {
        for pattern in new {
            consumer.permissions.may_subscribe(pattern).map_err(|refused| {
                RpcError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "binding {pattern:?} to queue {:?} would deliver it to a consumer that may not receive it ({refused})",
                        spec.name
                    ),
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
