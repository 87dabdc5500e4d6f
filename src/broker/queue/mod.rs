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

mod dispatch;
mod message;
mod spec;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::broker::access::denied;
use crate::broker::outbox::Outbox;
use crate::broker::permissions::ClientPermissions;
use crate::broker::store::{Loaded, Op, Restored, Store, StoreError};
use crate::error::{ErrorCode, RpcError};
use crate::index::{SessionId, SubscriptionIndex};
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
                if !new.is_empty() {
                    for pattern in &new {
                        self.index.insert(queue.number, pattern.as_str().into());
                    }
                    queue.spec.patterns.extend(new);
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
        let queue = self.queues.remove(name)?;
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
            let ((taken, stored), dead) = self
                .with_queue(&name, now, |queue, ctx| {
                    let taken = queue.enqueue(message, ctx);
                    queue.dispatch(ctx);
                    (taken, queue.stored)
                })
                .expect("indexed queues exist");
            dead_letters.extend(dead);
            match taken {
                Ok(()) => {
                    enqueued.queued += 1;
                    enqueued.stored += usize::from(stored);
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
mod tests {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::*;
    use crate::broker::outbox::{self, OutboxReceiver};
    use crate::broker::permissions;

    fn message(topic: &str, n: u64, ttl: Option<f64>) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            topic: topic.into(),
            payload: RawValue::from_string(n.to_string()).unwrap(),
            sender: "test".into(),
            id: format!("m{n}"),
            timestamp: 100.0,
            reply_to: None,
            ttl,
            qos: 1,
            headers: None,
        })
    }

    fn consumer() -> (Outbox, OutboxReceiver) {
        outbox::channel(100, 1 << 20)
    }

    fn join(name: &str, patterns: &[&str], durable: bool, prefetch: usize) -> Join {
        Join {
            name: name.into(),
            patterns: patterns.iter().map(|p| Arc::from(*p)).collect(),
            durable,
            prefetch,
            max_length: None,
            max_bytes: None,
            max_deliveries: None,
            dead_letter_topic: None,
            permissions: Arc::default(),
        }
    }

    /// `(payload, delivery tag, delivery count)` of each delivery waiting in `rx`.
    fn received(rx: &mut OutboxReceiver) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        while let Some(frame) = rx.try_recv() {
            let v: Value = serde_json::from_slice(&frame).unwrap();
            let p = &v["params"];
            out.push((
                p["payload"].as_u64().unwrap(),
                p["delivery"].as_u64().unwrap(),
                p["delivery_count"].as_u64().unwrap(),
            ));
        }
        out
    }

    #[test]
    fn each_message_goes_to_exactly_one_member_in_turn() {
        let mut queues = Queues::new(None, usize::MAX);
        let (a, mut a_rx) = consumer();
        let (b, mut b_rx) = consumer();
        queues.join(1, a, join("workers", &["jobs.*"], false, 100), 0.0).unwrap();
        queues.join(2, b, join("workers", &["jobs.*"], false, 100), 0.0).unwrap();
        for n in 0..10 {
            let (enqueued, _) = queues.enqueue("jobs.x", || message("jobs.x", n, None), None, 0.0);
            assert_eq!(enqueued.queued, 1);
        }
        let a_got: Vec<u64> = received(&mut a_rx).iter().map(|r| r.0).collect();
        let b_got: Vec<u64> = received(&mut b_rx).iter().map(|r| r.0).collect();
        assert_eq!(a_got, vec![0, 2, 4, 6, 8]);
        assert_eq!(b_got, vec![1, 3, 5, 7, 9]);
    }

    #[test]
    fn prefetch_holds_back_until_acknowledged() {
        let mut queues = Queues::new(None, usize::MAX);
        let (a, mut rx) = consumer();
        queues.join(1, a, join("q", &["t"], true, 2), 0.0).unwrap();
        for n in 0..5 {
            queues.enqueue("t", || message("t", n, None), None, 0.0);
        }
        let first = received(&mut rx);
        assert_eq!(first.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1]);
        let (acked, _) = queues.settle(1, &[first[0].1], true, false, 0.0);
        assert_eq!(acked, 1);
        assert_eq!(received(&mut rx).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
        let (acked, _) = queues.settle(2, &[first[1].1], true, false, 0.0);
        assert_eq!(acked, 0, "another session cannot acknowledge it");
    }

    #[test]
    fn a_lost_consumer_hands_back_its_messages_in_order_then_dead_letters() {
        let mut queues = Queues::new(None, usize::MAX);
        let mut spec = join("q", &["t"], true, 10);
        spec.max_deliveries = Some(2);
        let (a, mut a_rx) = consumer();
        queues.join(1, a, spec.clone(), 0.0).unwrap();
        for n in 0..3 {
            queues.enqueue("t", || message("t", n, None), None, 0.0);
        }
        assert_eq!(received(&mut a_rx).len(), 3);
        let (left, dead) = queues.leave(1, None, 0.0);
        assert_eq!((left.len(), dead.len()), (1, 0));

        let (b, mut b_rx) = consumer();
        queues.join(2, b, spec.clone(), 0.0).unwrap();
        let again = received(&mut b_rx);
        assert_eq!(again.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(), vec![(0, 2), (1, 2), (2, 2)]);
        let (_, dead) = queues.settle(2, &[again[1].1], false, true, 0.0);
        assert_eq!(dead.len(), 1, "the second delivery was the last");
        assert_eq!(dead[0].topic, "dead_letter.q");
        let letter: Value = serde_json::from_str(dead[0].payload.get()).unwrap();
        assert_eq!(
            (letter["reason"].as_str(), letter["payload"].as_u64()),
            (Some("max_deliveries"), Some(1))
        );
        let (_, dead) = queues.settle(2, &[again[0].1], false, false, 0.0);
        assert_eq!(dead.len(), 1, "a rejection dead-letters at once");
        let status = &queues.status()[0];
        assert_eq!((status["depth"].as_u64(), status["in_flight"].as_u64()), (Some(0), Some(1)));
        assert_eq!(status["dead_lettered"], 2);
    }

    #[test]
    fn a_dead_letter_carries_any_payload_as_written() {
        let mut queues = Queues::new(None, usize::MAX);
        let (a, mut rx) = consumer();
        queues.join(1, a, join("q", &["t"], false, 10), 0.0).unwrap();
        let digits = "9".repeat(5000);
        for text in [digits.as_str(), "1e999", r#""\ud800""#] {
            let mut odd = Arc::into_inner(message("t", 0, None)).unwrap();
            odd.payload = RawValue::from_string(text.to_owned()).unwrap();
            queues.enqueue("t", || Arc::new(odd), None, 0.0);
            let frame = rx.try_recv().unwrap();
            // Read without a `Value`, which cannot hold every payload.
            #[derive(Deserialize)]
            struct Frame {
                params: Params,
            }
            #[derive(Deserialize)]
            struct Params {
                delivery: u64,
            }
            let tag = serde_json::from_slice::<Frame>(&frame).unwrap().params.delivery;
            let (_, dead) = queues.settle(1, &[tag], false, false, 0.0);
            assert!(dead[0].payload.get().contains(&format!(r#""payload":{text}"#)), "{}", dead[0].payload);
        }
    }

    #[test]
    fn a_queue_group_goes_away_with_its_last_member_but_a_durable_queue_stays() {
        let mut queues = Queues::new(None, usize::MAX);
        let (a, _rx) = consumer();
        queues.join(1, a.clone(), join("group", &["t"], false, 10), 0.0).unwrap();
        queues.join(1, a, join("durable", &["t"], true, 10), 0.0).unwrap();
        queues.leave(1, None, 0.0);
        let (enqueued, _) = queues.enqueue("t", || message("t", 1, None), None, 0.0);
        assert_eq!(enqueued.queued, 1);
        assert_eq!(queues.status().len(), 1);
        assert_eq!(queues.status()[0]["depth"], 1);
    }

    #[test]
    fn full_queues_refuse_and_expired_messages_are_never_delivered() {
        let mut queues = Queues::new(None, usize::MAX);
        let mut spec = join("q", &["t"], true, 10);
        spec.max_length = Some(2);
        let (a, _rx) = consumer();
        queues.join(1, a, spec, 0.0).unwrap();
        queues.leave(1, None, 0.0);
        queues.enqueue("t", || message("t", 1, Some(5.0)), None, 0.0);
        queues.enqueue("t", || message("t", 2, None), None, 0.0);
        let (enqueued, _) = queues.enqueue("t", || message("t", 3, None), None, 0.0);
        assert_eq!(enqueued.full.len(), 1);
        let dead = queues.tick(200.0);
        assert_eq!(dead.len(), 1);
        let (b, mut b_rx) = consumer();
        queues.join(2, b, join("q", &["t"], true, 10), 0.0).unwrap();
        assert_eq!(received(&mut b_rx).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
        let totals = queues.totals();
        assert_eq!((totals.expired, totals.dropped), (1, 1));
    }

    fn big(topic: &str, n: u64, size: usize) -> Arc<StoredMessage> {
        let mut m = Arc::into_inner(message(topic, n, None)).unwrap();
        m.payload = RawValue::from_string(format!("[{n},\"{}\"]", "x".repeat(size))).unwrap();
        Arc::new(m)
    }

    fn payload_number(frame: &[u8]) -> (u64, u64) {
        let v: Value = serde_json::from_slice(frame).unwrap();
        (v["params"]["payload"][0].as_u64().unwrap(), v["params"]["delivery"].as_u64().unwrap())
    }

    /// Consumes everything `queues` hands to session 1, acknowledging each, while
    /// answering the store's reads; returns the payload numbers in arrival order.
    async fn drain_with_loads(
        queues: &mut Queues,
        rx: &mut OutboxReceiver,
        loaded: &mut tokio::sync::mpsc::UnboundedReceiver<Loaded>,
        expected: usize,
    ) -> Vec<u64> {
        let mut got = Vec::new();
        while got.len() < expected {
            let mut tags = Vec::new();
            while let Some(frame) = rx.try_recv() {
                let (n, tag) = payload_number(&frame);
                // Those past `expected` stay unacknowledged: still the queue's.
                if got.len() < expected {
                    tags.push(tag);
                }
                got.push(n);
            }
            let status = &queues.status()[0];
            assert!(
                status["memory_bytes"].as_u64().unwrap() <= (WINDOW_BYTES + MAX_UNACKED_BYTES + 8192) as u64
            );
            if tags.is_empty() {
                let answer = tokio::time::timeout(std::time::Duration::from_secs(10), loaded.recv()).await;
                queues.loaded(answer.expect("the store answers").unwrap(), 0.0);
            } else {
                queues.settle(1, &tags, true, false, 0.0);
            }
        }
        got
    }

    #[tokio::test]
    async fn a_stored_queue_keeps_a_window_in_memory_and_reads_the_rest_back_in_order() {
        let dir = std::env::temp_dir().join(format!("mb-queue-window-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let count = 3000u64;
        {
            let (store, _) = Store::open(&dir, false).unwrap();
            let mut queues = Queues::new(Some(Arc::new(store)), usize::MAX);
            let (a, _rx) = consumer();
            queues.join(1, a, join("q", &["t"], true, 10), 0.0).unwrap();
            queues.leave(1, None, 0.0);
            for n in 0..count {
                let (enqueued, _) = queues.enqueue("t", || big("t", n, 20_000), None, 0.0);
                assert_eq!(enqueued.queued, 1);
            }
            let status = &queues.status()[0];
            assert_eq!(status["depth"], count);
            assert!(status["memory_bytes"].as_u64().unwrap() <= WINDOW_BYTES as u64, "{status}");
            assert!(status["bytes"].as_u64().unwrap() > count * 20_000);
            // Half of it consumed before a restart.
            let mut loaded = queues.store().unwrap().take_loaded().unwrap();
            let (b, mut rx) = outbox::channel(100, 1 << 30);
            queues.join(1, b, join("q", &["t"], true, 1000), 0.0).unwrap();
            let got = drain_with_loads(&mut queues, &mut rx, &mut loaded, 1500).await;
            assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
            queues.store().unwrap().flush().await.unwrap().unwrap();
        }
        let (store, restored) = Store::open(&dir, false).unwrap();
        let mut loaded = store.take_loaded().unwrap();
        let mut queues = Queues::new(Some(Arc::new(store)), usize::MAX);
        queues.restore(restored, &[], "test").unwrap();
        let status = &queues.status()[0];
        assert_eq!(
            (status["depth"].as_u64(), status["memory_bytes"].as_u64()),
            (Some(count - 1500), Some(0))
        );
        let (b, mut rx) = outbox::channel(100, 1 << 30);
        queues.join(1, b, join("q", &["t"], true, 1000), 0.0).unwrap();
        let rest = drain_with_loads(&mut queues, &mut rx, &mut loaded, (count - 1500) as usize).await;
        assert_eq!(rest, (1500..count).collect::<Vec<_>>(), "the unacknowledged ones come back first");
        assert_eq!(queues.status()[0]["depth"], 0);
        drop(queues);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn byte_bounds_refuse_with_their_reason() {
        let mut queues = Queues::new(None, 200_000);
        let mut spec = join("small", &["s"], true, 10);
        spec.max_bytes = Some(50_000);
        let (a, _rx) = consumer();
        queues.join(1, a.clone(), spec, 0.0).unwrap();
        queues.join(1, a, join("big", &["b"], true, 10), 0.0).unwrap();
        queues.leave(1, None, 0.0);
        let refusals = |queues: &mut Queues, topic: &str, n| {
            (0..n)
                .filter_map(|i| queues.enqueue(topic, || big(topic, i, 10_000), None, 0.0).0.full.pop())
                .count()
        };
        assert_eq!(refusals(&mut queues, "s", 10), 6, "4 fit in 50,000 bytes");
        let (enqueued, _) = queues.enqueue("s", || big("s", 0, 10_000), None, 0.0);
        assert!(matches!(enqueued.full[0].1, Refusal::MaxBytes(50_000)));
        assert_eq!(refusals(&mut queues, "b", 30), 15, "the broker's max_memory is shared");
        let (enqueued, _) = queues.enqueue("b", || big("b", 0, 10_000), None, 0.0);
        assert!(matches!(enqueued.full[0].1, Refusal::Memory(200_000)));
        assert!(queues.memory().0 <= 200_000);
        queues.delete("big", &ClientPermissions::default()).unwrap().unwrap();
        assert!(queues.memory().0 < 50_000, "a deleted queue gives its memory back");
        let (a, _rx) = consumer();
        queues.join(1, a, join("big", &["b"], true, 10), 0.0).unwrap();
        queues.leave(1, None, 0.0);
        assert_eq!(refusals(&mut queues, "b", 10), 0, "room again");
    }

    #[test]
    fn a_consumer_holds_a_bounded_number_of_bytes_unacknowledged() {
        let mut queues = Queues::new(None, usize::MAX);
        let mut spec = join("q", &["t"], true, 1000);
        spec.max_bytes = Some(1 << 30);
        let (a, mut rx) = outbox::channel(100, 1 << 30);
        queues.join(1, a, spec, 0.0).unwrap();
        for n in 0..100 {
            queues.enqueue("t", || big("t", n, 1 << 20), None, 0.0);
        }
        let mut held = 0;
        while rx.try_recv().is_some() {
            held += 1;
        }
        let size = big("t", 0, 1 << 20).size();
        assert_eq!(held, MAX_UNACKED_BYTES.div_ceil(size), "prefetch 1000, but bytes bound it");
    }

    #[test]
    fn purging_drops_ready_messages_and_keeps_bindings_consumers_and_deliveries_in_flight() {
        let mut queues = Queues::new(None, usize::MAX);
        let (a, mut rx) = consumer();
        queues.join(1, a, join("q", &["t"], true, 2), 0.0).unwrap();
        for n in 0..5 {
            queues.enqueue("t", || message("t", n, None), None, 0.0);
        }
        let held = received(&mut rx);
        assert_eq!(held.len(), 2, "prefetch 2: three stay ready");
        let memory_before = queues.memory().0;

        assert_eq!(queues.purge("q", &ClientPermissions::default(), 0.0).unwrap(), Some(3));
        let status = &queues.status()[0];
        assert_eq!(
            (status["depth"].as_u64(), status["in_flight"].as_u64(), status["consumers"].as_u64()),
            (Some(0), Some(2), Some(1))
        );
        assert!(queues.memory().0 < memory_before, "the dropped messages give their memory back");
        assert_eq!(queues.purge("q", &ClientPermissions::default(), 0.0).unwrap(), Some(0));
        assert_eq!(queues.purge("none", &ClientPermissions::default(), 0.0).unwrap(), None);

        // The binding and the consumer are still there: a new message is delivered once
        // the consumer has room, after what it held.
        queues.enqueue("t", || message("t", 9, None), None, 0.0);
        queues.settle(1, &[held[0].1], true, false, 0.0);
        assert_eq!(received(&mut rx).iter().map(|r| r.0).collect::<Vec<_>>(), vec![9]);
    }

    #[test]
    fn purging_needs_leave_to_read_what_the_queue_is_bound_to() {
        let rule: permissions::PermissionRule = serde_json::from_value(serde_json::json!(
            {"client": "spy", "subscribe": {"deny": ["secret.#"]}}
        ))
        .unwrap();
        let spy = permissions::Permissions::new(vec![rule]).for_client("spy");
        let mut queues = Queues::new(None, usize::MAX);
        let (a, _rx) = consumer();
        queues.join(1, a, join("vault", &["secret.x"], true, 10), 0.0).unwrap();
        queues.leave(1, None, 0.0);
        queues.enqueue("secret.x", || message("secret.x", 1, None), None, 0.0);
        let error = queues.purge("vault", &spy, 0.0).unwrap_err();
        assert_eq!(error.code, ErrorCode::PermissionDenied);
        assert_eq!(queues.status()[0]["depth"], 1, "nothing was dropped");
    }

    #[tokio::test]
    async fn purging_a_stored_queue_deletes_its_messages_on_disk_but_not_those_in_flight() {
        let dir = std::env::temp_dir().join(format!("mb-queue-purge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // More than the window holds, so that most are only on disk.
        let count = 1000u64;
        let in_flight = {
            let (store, _) = Store::open(&dir, false).unwrap();
            let mut queues = Queues::new(Some(Arc::new(store)), usize::MAX);
            let mut loaded = queues.store().unwrap().take_loaded().unwrap();
            let (a, _rx) = consumer();
            queues.join(1, a, join("q", &["t"], true, 1), 0.0).unwrap();
            queues.leave(1, None, 0.0);
            for n in 0..count {
                queues.enqueue("t", || big("t", n, 20_000), None, 0.0);
            }
            // The consumer takes the whole window, so the queue asks the store for more.
            let (b, mut rx) = outbox::channel(1000, 1 << 30);
            queues.join(2, b, join("q", &["t"], true, 1000), 0.0).unwrap();
            let mut in_flight = 0;
            while rx.try_recv().is_some() {
                in_flight += 1;
            }
            assert!(in_flight > 0 && in_flight < count as usize / 2, "{in_flight}");

            let purged = queues.purge("q", &ClientPermissions::default(), 0.0).unwrap();
            assert_eq!(purged, Some(count as usize - in_flight));
            // The read asked for before the purge brings back messages it dropped.
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), loaded.recv()).await;
            let answer = answer.expect("the store answers").unwrap();
            assert!(!answer.rows.as_ref().unwrap().is_empty());
            queues.loaded(answer, 0.0);
            assert_eq!(queues.status()[0]["depth"], 0, "what was purged stays purged");
            assert!(rx.try_recv().is_none());

            queues.enqueue("t", || big("t", count, 20_000), None, 0.0);
            queues.store().unwrap().flush().await.unwrap().unwrap();
            in_flight
        };
        let (store, restored) = Store::open(&dir, false).unwrap();
        assert_eq!(restored.queues.len(), 1, "the queue stays");
        assert_eq!(restored.queues[0].count, in_flight + 1, "those in flight and the one queued after");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn joining_with_other_limits_is_refused() {
        let mut queues = Queues::new(None, usize::MAX);
        let (a, _rx) = consumer();
        queues.join(1, a.clone(), join("q", &["t"], true, 10), 0.0).unwrap();
        let error = queues.join(2, a.clone(), join("q", &["t"], false, 10), 0.0).unwrap_err();
        assert!(error.message.contains("durable"), "{}", error.message);
        let mut other = join("q", &["t"], true, 10);
        other.max_length = Some(5);
        assert!(queues.join(2, a.clone(), other, 0.0).unwrap_err().message.contains("max_length"));
        assert!(queues.join(2, a, join("bad name", &["t"], true, 10), 0.0).is_err());
    }
}
