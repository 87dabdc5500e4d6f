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
//! queue keeps its messages while nobody consumes, up to `max_length`, and with a
//! [`Store`] survives a restart: every message is written there when it is queued,
//! and removed when it is acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::error::{ErrorCode, RpcError};
use crate::index::{SessionId, SubscriptionIndex};
use crate::outbox::Outbox;
use crate::protocol::message::{Delivery, FromQueue};
use crate::store::{Op, Restored, Store, StoreError};
use crate::topic::parse_pattern;

/// Default bound on the messages a queue holds (ready and in flight).
pub const DEFAULT_MAX_LENGTH: usize = 100_000;
/// Default number of deliveries before a message is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = 10;
/// Default and largest number of unacknowledged deliveries per consumer.
pub const DEFAULT_PREFETCH: usize = 100;
pub const MAX_PREFETCH: usize = 1000;
/// Dead letters go to `dead_letter.<queue>` unless the queue names another topic.
pub const DEAD_LETTER_PREFIX: &str = "dead_letter.";
const MAX_QUEUE_NAME_LEN: usize = 128;

/// What a queue is: its name, bindings and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub name: String,
    pub patterns: Vec<String>,
    #[serde(default = "durable_default")]
    pub durable: bool,
    #[serde(default = "max_length_default")]
    pub max_length: usize,
    /// 0 means no limit.
    #[serde(default = "max_deliveries_default")]
    pub max_deliveries: u32,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
}

fn durable_default() -> bool {
    true
}
fn max_length_default() -> usize {
    DEFAULT_MAX_LENGTH
}
fn max_deliveries_default() -> u32 {
    DEFAULT_MAX_DELIVERIES
}

impl QueueSpec {
    pub fn new(name: impl Into<String>, patterns: Vec<String>, durable: bool) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            patterns,
            durable,
            max_length: DEFAULT_MAX_LENGTH,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            dead_letter_topic: None,
        }
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{DEAD_LETTER_PREFIX}{}", self.name))
    }

    pub fn validate(&self) -> Result<(), RpcError> {
        validate_queue_name(&self.name)?;
        for pattern in &self.patterns {
            parse_pattern(pattern)?;
        }
        if self.max_length == 0 {
            return Err(RpcError::invalid_params(format!(
                "queue {:?}: max_length must be at least 1",
                self.name
            )));
        }
        if let Some(topic) = &self.dead_letter_topic {
            crate::topic::validate_topic(topic)?;
        }
        Ok(())
    }
}

pub fn validate_queue_name(name: &str) -> Result<(), RpcError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_QUEUE_NAME_LEN
        && !name.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '*' | '+' | '#'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!(
            "queue name {name:?} must be 1 to {MAX_QUEUE_NAME_LEN} bytes without spaces, wildcards or empty segments"
        )))
    }
}

/// A message as a queue or the retained store keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Box<RawValue>,
    pub sender: String,
    pub id: String,
    pub timestamp: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<f64>,
    #[serde(default)]
    pub qos: u8,
}

impl StoredMessage {
    pub fn is_expired(&self, now: f64) -> bool {
        self.ttl.is_some_and(|ttl| now >= self.timestamp + ttl)
    }

    /// The bytes written to the store.
    pub fn record(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("stored messages serialise"))
    }

    pub fn from_record(record: &[u8]) -> Result<StoredMessage, serde_json::Error> {
        serde_json::from_slice(record)
    }

    /// The `message` notification for this message.
    pub fn frame(&self, retained: bool, from_queue: Option<FromQueue<'_>>) -> Bytes {
        Delivery {
            topic: &self.topic,
            payload: &self.payload,
            sender: &self.sender,
            id: &self.id,
            timestamp: self.timestamp,
            reply_to: self.reply_to.as_deref(),
            ttl: self.ttl,
            qos: self.qos,
            retained,
            from_queue,
        }
        .encode()
    }
}

/// A message that left a queue without being acknowledged, on its way to the
/// queue's dead-letter topic.
#[derive(Debug)]
pub struct DeadLetter {
    pub queue: Arc<str>,
    pub topic: String,
    pub payload: Box<RawValue>,
}

/// Counters of one queue, reported by `status`.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueStats {
    pub enqueued: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    /// Refused because the queue was full.
    pub dropped: u64,
}

impl std::ops::AddAssign for QueueStats {
    fn add_assign(&mut self, other: QueueStats) {
        self.enqueued += other.enqueued;
        self.delivered += other.delivered;
        self.redelivered += other.redelivered;
        self.acked += other.acked;
        self.dead_lettered += other.dead_lettered;
        self.expired += other.expired;
        self.dropped += other.dropped;
    }
}

#[derive(Debug, Clone)]
struct Item {
    seq: u64,
    message: Arc<StoredMessage>,
    delivery_count: u32,
}

struct Consumer {
    session: SessionId,
    outbox: Outbox,
    prefetch: usize,
    unacked: usize,
}

struct InFlight {
    consumer: SessionId,
    item: Item,
}

pub struct Queue {
    spec: QueueSpec,
    name: Arc<str>,
    /// The queue's key in the binding index.
    number: u64,
    ready: VecDeque<Item>,
    in_flight: HashMap<u64, InFlight>,
    consumers: Vec<Consumer>,
    /// Where the round-robin resumes.
    cursor: usize,
    next_seq: u64,
    stats: QueueStats,
}

/// Why a message leaves a queue unacknowledged.
#[derive(Debug, Clone, Copy)]
enum Exit {
    Expired,
    Rejected,
    TooManyDeliveries,
}

impl Exit {
    fn reason(self) -> &'static str {
        match self {
            Exit::Expired => "expired",
            Exit::Rejected => "rejected",
            Exit::TooManyDeliveries => "max_deliveries",
        }
    }
}

/// What the queue operations need besides the queue itself.
struct Context<'a> {
    store: Option<&'a Store>,
    tags: &'a mut HashMap<u64, Arc<str>>,
    next_tag: &'a mut u64,
    dead: &'a mut Vec<DeadLetter>,
    now: f64,
}

impl Queue {
    fn new(spec: QueueSpec, number: u64) -> Queue {
        Queue {
            name: spec.name.as_str().into(),
            spec,
            number,
            ready: VecDeque::new(),
            in_flight: HashMap::new(),
            consumers: Vec::new(),
            cursor: 0,
            next_seq: 1,
            stats: QueueStats::default(),
        }
    }

    fn len(&self) -> usize {
        self.ready.len() + self.in_flight.len()
    }

    fn store<'a>(&self, ctx: &Context<'a>) -> Option<&'a Store> {
        if self.spec.durable { ctx.store } else { None }
    }

    fn save_definition(&self, store: Option<&Store>) {
        if let (true, Some(store)) = (self.spec.durable, store) {
            let definition = serde_json::to_string(&self.spec).expect("specs serialise");
            store.write(Op::SaveQueue { name: self.spec.name.clone(), definition });
        }
    }

    fn enqueue(&mut self, message: &Arc<StoredMessage>, ctx: &mut Context<'_>) -> bool {
        if self.len() >= self.spec.max_length {
            self.stats.dropped += 1;
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(store) = self.store(ctx) {
            store.write(Op::Put {
                queue: self.spec.name.clone(),
                seq,
                delivery_count: 0,
                record: message.record(),
            });
        }
        self.ready.push_back(Item { seq, message: message.clone(), delivery_count: 0 });
        self.stats.enqueued += 1;
        true
    }

    /// Hands ready messages to consumers with room, round-robin.
    fn dispatch(&mut self, ctx: &mut Context<'_>) {
        let mut blocked = vec![false; self.consumers.len()];
        while !self.ready.is_empty() {
            let n = self.consumers.len();
            let Some(at) = (0..n)
                .map(|i| (self.cursor + i) % n)
                .find(|&c| !blocked[c] && self.consumers[c].unacked < self.consumers[c].prefetch)
            else {
                break;
            };
            let mut item = self.ready.pop_front().expect("not empty");
            if item.message.is_expired(ctx.now) {
                self.exit(item, Exit::Expired, ctx);
                continue;
            }
            item.delivery_count += 1;
            *ctx.next_tag += 1;
            let tag = *ctx.next_tag;
            let from_queue =
                FromQueue { queue: &self.name, delivery: tag, delivery_count: item.delivery_count };
            let frame = item.message.frame(false, Some(from_queue));
            let consumer = &mut self.consumers[at];
            if consumer.outbox.push_credited(frame) {
                consumer.unacked += 1;
                self.cursor = (at + 1) % n;
                self.stats.delivered += 1;
                if item.delivery_count > 1 {
                    self.stats.redelivered += 1;
                }
                ctx.tags.insert(tag, self.name.clone());
                self.in_flight.insert(tag, InFlight { consumer: consumer.session, item });
            } else {
                // Its connection is closing or its reserve is used up: try the others.
                item.delivery_count -= 1;
                self.ready.push_front(item);
                blocked[at] = true;
            }
        }
    }

    /// Takes a message out of flight for `session`, if it holds it.
    fn settle(&mut self, session: SessionId, tag: u64, ctx: &mut Context<'_>) -> Option<Item> {
        match self.in_flight.get(&tag) {
            Some(flight) if flight.consumer == session => {}
            _ => return None,
        }
        let flight = self.in_flight.remove(&tag)?;
        ctx.tags.remove(&tag);
        if let Some(consumer) = self.consumers.iter_mut().find(|c| c.session == session) {
            consumer.unacked = consumer.unacked.saturating_sub(1);
        }
        Some(flight.item)
    }

    fn ack(&mut self, session: SessionId, tag: u64, ctx: &mut Context<'_>) -> bool {
        let Some(item) = self.settle(session, tag, ctx) else { return false };
        self.stats.acked += 1;
        if let Some(store) = self.store(ctx) {
            store.write(Op::Remove { queue: self.spec.name.clone(), seq: item.seq });
        }
        true
    }

    fn nack(&mut self, session: SessionId, tag: u64, requeue: bool, ctx: &mut Context<'_>) -> bool {
        let Some(item) = self.settle(session, tag, ctx) else { return false };
        if requeue {
            self.requeue(item, ctx);
        } else {
            self.exit(item, Exit::Rejected, ctx);
        }
        true
    }

    /// Puts a delivered message back in sequence order, or dead-letters it when it has
    /// had its deliveries.
    fn requeue(&mut self, item: Item, ctx: &mut Context<'_>) {
        if self.spec.max_deliveries > 0 && item.delivery_count >= self.spec.max_deliveries {
            return self.exit(item, Exit::TooManyDeliveries, ctx);
        }
        if let Some(store) = self.store(ctx) {
            store.write(Op::SetDeliveryCount {
                queue: self.spec.name.clone(),
                seq: item.seq,
                delivery_count: item.delivery_count,
            });
        }
        let at = self.ready.partition_point(|other| other.seq < item.seq);
        self.ready.insert(at, item);
    }

    fn exit(&mut self, item: Item, exit: Exit, ctx: &mut Context<'_>) {
        if let Some(store) = self.store(ctx) {
            store.write(Op::Remove { queue: self.spec.name.clone(), seq: item.seq });
        }
        match exit {
            Exit::Expired => self.stats.expired += 1,
            Exit::Rejected | Exit::TooManyDeliveries => {}
        }
        self.stats.dead_lettered += 1;
        let message = &item.message;
        let payload = serde_json::value::to_raw_value(&json!({
            "queue": &*self.name,
            "reason": exit.reason(),
            "delivery_count": item.delivery_count,
            "topic": message.topic,
            "payload": &message.payload,
            "sender": message.sender,
            "id": message.id,
            "timestamp": message.timestamp,
        }))
        .expect("dead letters serialise");
        ctx.dead.push(DeadLetter { queue: self.name.clone(), topic: self.spec.dead_letter_topic(), payload });
    }

    /// Removes a consumer; what it had in flight goes back to the queue.
    fn remove_consumer(&mut self, session: SessionId, ctx: &mut Context<'_>) -> bool {
        let Some(at) = self.consumers.iter().position(|c| c.session == session) else { return false };
        self.consumers.remove(at);
        if self.cursor > at {
            self.cursor -= 1;
        }
        if self.cursor >= self.consumers.len() {
            self.cursor = 0;
        }
        let mut returned: Vec<u64> =
            self.in_flight.iter().filter(|(_, f)| f.consumer == session).map(|(tag, _)| *tag).collect();
        returned.sort_unstable();
        for tag in returned {
            let flight = self.in_flight.remove(&tag).expect("listed");
            ctx.tags.remove(&tag);
            self.requeue(flight.item, ctx);
        }
        true
    }

    fn expire(&mut self, ctx: &mut Context<'_>) {
        if !self.ready.iter().any(|item| item.message.is_expired(ctx.now)) {
            return;
        }
        let (expired, kept): (VecDeque<Item>, VecDeque<Item>) =
            std::mem::take(&mut self.ready).into_iter().partition(|item| item.message.is_expired(ctx.now));
        self.ready = kept;
        for item in expired {
            self.exit(item, Exit::Expired, ctx);
        }
    }

    fn status(&self) -> Value {
        let s = &self.stats;
        json!({
            "name": &*self.name,
            "durable": self.spec.durable,
            "patterns": self.spec.patterns,
            "depth": self.ready.len(),
            "in_flight": self.in_flight.len(),
            "consumers": self.consumers.len(),
            "enqueued": s.enqueued,
            "delivered": s.delivered,
            "redelivered": s.redelivered,
            "acked": s.acked,
            "dead_lettered": s.dead_lettered,
            "expired": s.expired,
            "dropped": s.dropped,
            "max_length": self.spec.max_length,
            "max_deliveries": self.spec.max_deliveries,
            "dead_letter_topic": self.spec.dead_letter_topic(),
        })
    }
}

/// What a subscriber asks of a queue when it joins it.
#[derive(Debug, Clone)]
pub struct Join {
    pub name: String,
    pub patterns: Vec<Arc<str>>,
    pub durable: bool,
    pub prefetch: usize,
    pub max_length: Option<usize>,
    pub max_deliveries: Option<u32>,
    pub dead_letter_topic: Option<String>,
}

/// Where a message went among the queues.
#[derive(Debug, Default)]
pub struct Enqueued {
    /// Queues that took the message.
    pub queued: usize,
    /// Of those, durable ones backed by the store: a `qos=1` publish waits for it.
    pub stored: usize,
    /// Queues that were full and refused it.
    pub full: Vec<Arc<str>>,
}

/// Every queue of the broker.
#[derive(Default)]
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
}

impl Queues {
    pub fn new(store: Option<Arc<Store>>) -> Queues {
        // Tags start at a random point so that an acknowledgement a client sends late,
        // after the broker restarted, cannot settle somebody else's delivery.
        let next_tag = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8) >> 20;
        Queues { store, next_tag, ..Default::default() }
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
        let queue = Queue::new(spec, number);
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
            for (seq, delivery_count, record) in stored.messages {
                let message = StoredMessage::from_record(&record).map_err(|e| {
                    corrupt(format!("message {seq} of queue {:?} cannot be read: {e}", queue.name))
                })?;
                queue.ready.push_back(Item { seq, message: Arc::new(message), delivery_count });
                queue.next_seq = seq + 1;
            }
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
                    max_deliveries: join.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES),
                    dead_letter_topic: join.dead_letter_topic.clone(),
                };
                spec.validate()?;
                self.insert(spec);
            }
        }
        let prefetch = join.prefetch.clamp(1, MAX_PREFETCH);
        let (_, dead) = self
            .with_queue(&join.name, now, |queue, ctx| {
                match queue.consumers.iter_mut().find(|c| c.session == session) {
                    Some(consumer) => consumer.prefetch = prefetch,
                    None => queue.consumers.push(Consumer { session, outbox, prefetch, unacked: 0 }),
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
        self.retired += queue.stats;
        Some(queue)
    }

    /// Deletes a queue and the messages in it; returns how many messages it held.
    pub fn delete(&mut self, name: &str) -> Option<usize> {
        let queue = self.remove(name)?;
        if let (true, Some(store)) = (queue.spec.durable, &self.store) {
            store.write(Op::DeleteQueue { name: name.to_owned() });
        }
        Some(queue.len())
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
            let (taken, dead) = self
                .with_queue(&name, now, |queue, ctx| {
                    let taken = queue.enqueue(message, ctx);
                    queue.dispatch(ctx);
                    (taken, queue.store(ctx).is_some())
                })
                .expect("indexed queues exist");
            dead_letters.extend(dead);
            match taken {
                (true, stored) => {
                    enqueued.queued += 1;
                    enqueued.stored += usize::from(stored);
                }
                (false, _) => enqueued.full.push(name),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{self, OutboxReceiver};

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
            max_deliveries: None,
            dead_letter_topic: None,
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
        let mut queues = Queues::new(None);
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
        let mut queues = Queues::new(None);
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
        let mut queues = Queues::new(None);
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
    fn a_queue_group_goes_away_with_its_last_member_but_a_durable_queue_stays() {
        let mut queues = Queues::new(None);
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
        let mut queues = Queues::new(None);
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

    #[test]
    fn joining_with_other_limits_is_refused() {
        let mut queues = Queues::new(None);
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
