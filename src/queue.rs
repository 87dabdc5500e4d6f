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
use crate::store::{LoadRequest, Loaded, Op, Restored, Store, StoreError};
use crate::topic::parse_pattern;

/// Default bound on the messages a queue holds (ready and in flight).
pub const DEFAULT_MAX_LENGTH: usize = 100_000;
/// Default bound on the bytes a durable queue keeps in the store.
pub const DEFAULT_MAX_BYTES_STORED: u64 = 4 << 30;
/// Default bound on the bytes a queue kept in memory holds.
pub const DEFAULT_MAX_BYTES_IN_MEMORY: u64 = 64 << 20;
/// The most messages, and bytes, of a stored queue held in memory, ready to go.
pub const WINDOW_COUNT: usize = 10_000;
pub const WINDOW_BYTES: usize = 8 << 20;
/// Bytes one consumer may hold unacknowledged (its first delivery always goes).
pub const MAX_UNACKED_BYTES: usize = 16 << 20;
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
    /// Bytes the queue may hold; `None` for the default of where it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
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
            max_bytes: None,
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
        if self.max_bytes == Some(0) {
            return Err(RpcError::invalid_params(format!(
                "queue {:?}: max_bytes must be at least 1",
                self.name
            )));
        }
        if let Some(topic) = &self.dead_letter_topic {
            crate::topic::validate_topic(topic)?;
        }
        Ok(())
    }

    /// The byte bound in force, for a queue kept in the store or in memory.
    pub fn max_bytes(&self, stored: bool) -> u64 {
        self.max_bytes.unwrap_or(if stored { DEFAULT_MAX_BYTES_STORED } else { DEFAULT_MAX_BYTES_IN_MEMORY })
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

    /// What it costs to keep in memory, near enough: its fields and some overhead.
    pub fn size(&self) -> usize {
        const OVERHEAD: usize = 128;
        self.topic.len()
            + self.payload.get().len()
            + self.sender.len()
            + self.id.len()
            + self.reply_to.as_ref().map_or(0, String::len)
            + OVERHEAD
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

/// The payload of a dead letter: the message and why it left its queue.
#[derive(Serialize)]
struct DeadLetterBody<'a> {
    queue: &'a str,
    reason: &'static str,
    delivery_count: u32,
    topic: &'a str,
    payload: &'a RawValue,
    sender: &'a str,
    id: &'a str,
    timestamp: f64,
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
    /// Refused because the queue was full (by count or bytes) or memory was.
    pub dropped: u64,
}

/// Why a queue refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It holds `max_length` messages.
    MaxLength(usize),
    /// The message would take it past `max_bytes`.
    MaxBytes(u64),
    /// Queues in memory hold the broker's `max_memory`.
    Memory(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MaxLength(n) => write!(f, "it holds max_length ({n}) messages"),
            Refusal::MaxBytes(n) => write!(f, "the message would take it past max_bytes ({n} bytes)"),
            Refusal::Memory(n) => {
                write!(f, "the queues kept in memory hold the broker's max_memory ({n} bytes)")
            }
        }
    }
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
    /// Its size as counted against the queue's bounds.
    size: usize,
}

struct Consumer {
    session: SessionId,
    outbox: Outbox,
    prefetch: usize,
    unacked: usize,
    unacked_bytes: usize,
}

impl Consumer {
    fn has_room(&self) -> bool {
        self.unacked < self.prefetch && (self.unacked == 0 || self.unacked_bytes < MAX_UNACKED_BYTES)
    }
}

/// The ready messages of a stored queue that are only on disk: all of them come after
/// those in memory.
#[derive(Debug, Default)]
struct OnDisk {
    count: usize,
    bytes: usize,
    /// The highest sequence number moved into memory so far.
    after: u64,
    /// A read is on its way.
    loading: bool,
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
    /// Kept in the store, with only a window of it in memory.
    stored: bool,
    /// The next ready messages, in sequence order.
    ready: VecDeque<Item>,
    ready_bytes: usize,
    /// What follows `ready`, for a stored queue.
    on_disk: OnDisk,
    in_flight: HashMap<u64, InFlight>,
    in_flight_bytes: usize,
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

/// Bytes held by the queues kept in memory, against the broker's `max_memory`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    used: usize,
    limit: usize,
}

/// What the queue operations need besides the queue itself.
struct Context<'a> {
    store: Option<&'a Store>,
    tags: &'a mut HashMap<u64, Arc<str>>,
    next_tag: &'a mut u64,
    dead: &'a mut Vec<DeadLetter>,
    memory: &'a mut Memory,
    now: f64,
}

impl Queue {
    fn new(spec: QueueSpec, number: u64, stored: bool) -> Queue {
        Queue {
            name: spec.name.as_str().into(),
            spec,
            number,
            stored,
            ready: VecDeque::new(),
            ready_bytes: 0,
            on_disk: OnDisk::default(),
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            consumers: Vec::new(),
            cursor: 0,
            next_seq: 1,
            stats: QueueStats::default(),
        }
    }

    fn len(&self) -> usize {
        self.ready.len() + self.on_disk.count + self.in_flight.len()
    }

    /// Bytes of every message it holds, wherever they are.
    fn bytes(&self) -> usize {
        self.ready_bytes + self.on_disk.bytes + self.in_flight_bytes
    }

    /// Bytes it holds in memory.
    fn memory(&self) -> usize {
        self.ready_bytes + self.in_flight_bytes
    }

    fn store<'a>(&self, ctx: &Context<'a>) -> Option<&'a Store> {
        if self.stored { ctx.store } else { None }
    }

    /// Gives back what a message that left the queue held in memory.
    fn forget(&self, item: &Item, ctx: &mut Context<'_>) {
        if !self.stored {
            ctx.memory.used = ctx.memory.used.saturating_sub(item.size);
        }
    }

    fn save_definition(&self, store: Option<&Store>) {
        if let (true, Some(store)) = (self.spec.durable, store) {
            let definition = serde_json::to_string(&self.spec).expect("specs serialise");
            store.write(Op::SaveQueue { name: self.spec.name.clone(), definition });
        }
    }

    fn enqueue(&mut self, message: &Arc<StoredMessage>, ctx: &mut Context<'_>) -> Result<(), Refusal> {
        let record = self.stored.then(|| message.record());
        let size = record.as_ref().map_or_else(|| message.size(), Bytes::len);
        let refusal = if self.len() >= self.spec.max_length {
            Some(Refusal::MaxLength(self.spec.max_length))
        } else if (self.bytes() + size) as u64 > self.spec.max_bytes(self.stored) {
            Some(Refusal::MaxBytes(self.spec.max_bytes(self.stored)))
        } else if !self.stored && ctx.memory.used + size > ctx.memory.limit {
            Some(Refusal::Memory(ctx.memory.limit))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.stats.dropped += 1;
            return Err(refusal);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let (Some(store), Some(record)) = (self.store(ctx), record) {
            store.write(Op::Put { queue: self.spec.name.clone(), seq, delivery_count: 0, record });
        }
        self.stats.enqueued += 1;
        let fits_window = self.on_disk.count == 0
            && self.ready.len() < WINDOW_COUNT
            && self.ready_bytes + size <= WINDOW_BYTES;
        if self.stored && !fits_window {
            self.on_disk.count += 1;
            self.on_disk.bytes += size;
            return Ok(());
        }
        if self.stored {
            self.on_disk.after = seq;
        } else {
            ctx.memory.used += size;
        }
        self.ready_bytes += size;
        self.ready.push_back(Item { seq, message: message.clone(), delivery_count: 0, size });
        Ok(())
    }

    /// Asks the store for the next messages when the window runs low and somebody
    /// consumes; [`Queue::loaded`] takes the answer.
    fn refill(&mut self, ctx: &Context<'_>) {
        let low = self.ready.len() < WINDOW_COUNT / 2 && self.ready_bytes < WINDOW_BYTES / 2;
        if self.on_disk.count == 0 || self.on_disk.loading || self.consumers.is_empty() || !low {
            return;
        }
        let Some(store) = self.store(ctx) else { return };
        store.load(LoadRequest {
            queue: self.spec.name.clone(),
            number: self.number,
            after: self.on_disk.after,
            max_count: WINDOW_COUNT - self.ready.len(),
            max_bytes: WINDOW_BYTES - self.ready_bytes,
        });
        self.on_disk.loading = true;
    }

    /// Moves messages read from the store into the window, then hands them out.
    fn loaded(&mut self, rows: Result<Vec<crate::store::StoredRow>, String>, ctx: &mut Context<'_>) {
        self.on_disk.loading = false;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                // Tried again at the next upkeep tick.
                tracing::error!(queue = %self.name, %error, "reading queued messages from the store failed");
                return;
            }
        };
        if rows.is_empty() && self.on_disk.count > 0 {
            tracing::error!(
                queue = %self.name,
                missing = self.on_disk.count,
                "the store holds fewer messages than the queue counted; the count is corrected"
            );
            self.on_disk.count = 0;
            self.on_disk.bytes = 0;
        }
        for row in rows {
            if row.seq <= self.on_disk.after {
                continue;
            }
            let size = row.record.len();
            self.on_disk.count = self.on_disk.count.saturating_sub(1);
            self.on_disk.bytes = self.on_disk.bytes.saturating_sub(size);
            self.on_disk.after = row.seq;
            match StoredMessage::from_record(&row.record) {
                Ok(message) => {
                    self.ready_bytes += size;
                    let item = Item {
                        seq: row.seq,
                        message: Arc::new(message),
                        delivery_count: row.delivery_count,
                        size,
                    };
                    self.ready.push_back(item);
                }
                Err(error) => {
                    tracing::error!(queue = %self.name, seq = row.seq, %error, "a stored message cannot be read; it is removed");
                    if let Some(store) = self.store(ctx) {
                        store.write(Op::Remove { queue: self.spec.name.clone(), seq: row.seq });
                    }
                }
            }
        }
        self.dispatch(ctx);
    }

    /// Hands ready messages to consumers with room, round-robin.
    fn dispatch(&mut self, ctx: &mut Context<'_>) {
        let mut blocked = vec![false; self.consumers.len()];
        while !self.ready.is_empty() {
            let n = self.consumers.len();
            let Some(at) =
                (0..n).map(|i| (self.cursor + i) % n).find(|&c| !blocked[c] && self.consumers[c].has_room())
            else {
                break;
            };
            let mut item = self.ready.pop_front().expect("not empty");
            self.ready_bytes -= item.size;
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
                consumer.unacked_bytes += item.size;
                self.in_flight_bytes += item.size;
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
                self.ready_bytes += item.size;
                self.ready.push_front(item);
                blocked[at] = true;
            }
        }
        self.refill(ctx);
    }

    /// Takes a message out of flight for `session`, if it holds it.
    fn settle(&mut self, session: SessionId, tag: u64, ctx: &mut Context<'_>) -> Option<Item> {
        match self.in_flight.get(&tag) {
            Some(flight) if flight.consumer == session => {}
            _ => return None,
        }
        self.take_in_flight(tag, ctx)
    }

    /// Takes a delivery out of flight, whoever holds it.
    fn take_in_flight(&mut self, tag: u64, ctx: &mut Context<'_>) -> Option<Item> {
        let flight = self.in_flight.remove(&tag)?;
        ctx.tags.remove(&tag);
        self.in_flight_bytes -= flight.item.size;
        if let Some(consumer) = self.consumers.iter_mut().find(|c| c.session == flight.consumer) {
            consumer.unacked = consumer.unacked.saturating_sub(1);
            consumer.unacked_bytes = consumer.unacked_bytes.saturating_sub(flight.item.size);
        }
        Some(flight.item)
    }

    fn ack(&mut self, session: SessionId, tag: u64, ctx: &mut Context<'_>) -> bool {
        let Some(item) = self.settle(session, tag, ctx) else { return false };
        self.stats.acked += 1;
        self.forget(&item, ctx);
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
        self.ready_bytes += item.size;
        self.ready.insert(at, item);
    }

    fn exit(&mut self, item: Item, exit: Exit, ctx: &mut Context<'_>) {
        if let Some(store) = self.store(ctx) {
            store.write(Op::Remove { queue: self.spec.name.clone(), seq: item.seq });
        }
        self.forget(&item, ctx);
        match exit {
            Exit::Expired => self.stats.expired += 1,
            Exit::Rejected | Exit::TooManyDeliveries => {}
        }
        self.stats.dead_lettered += 1;
        let message = &item.message;
        // Serialised around the payload as written: going through a `Value` would
        // re-read it (and fail on numbers serde_json cannot hold).
        let letter = DeadLetterBody {
            queue: &self.name,
            reason: exit.reason(),
            delivery_count: item.delivery_count,
            topic: &message.topic,
            payload: &message.payload,
            sender: &message.sender,
            id: &message.id,
            timestamp: message.timestamp,
        };
        let payload = serde_json::value::to_raw_value(&letter).expect("dead letters serialise");
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
            let item = self.take_in_flight(tag, ctx).expect("listed");
            self.requeue(item, ctx);
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
            self.ready_bytes -= item.size;
            self.exit(item, Exit::Expired, ctx);
        }
    }

    fn status(&self) -> Value {
        let s = &self.stats;
        json!({
            "name": &*self.name,
            "durable": self.spec.durable,
            "patterns": self.spec.patterns,
            "depth": self.ready.len() + self.on_disk.count,
            "in_flight": self.in_flight.len(),
            "bytes": self.bytes(),
            "in_memory": self.ready.len() + self.in_flight.len(),
            "memory_bytes": self.memory(),
            "consumers": self.consumers.len(),
            "enqueued": s.enqueued,
            "delivered": s.delivered,
            "redelivered": s.redelivered,
            "acked": s.acked,
            "dead_lettered": s.dead_lettered,
            "expired": s.expired,
            "dropped": s.dropped,
            "max_length": self.spec.max_length,
            "max_bytes": self.spec.max_bytes(self.stored),
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
    pub max_bytes: Option<u64>,
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
            max_bytes: None,
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
        queues.delete("big").unwrap();
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
