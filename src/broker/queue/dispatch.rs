//! One queue: its window of ready messages, what waits on disk, the deliveries in
//! flight and the consumers they go to.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::confirm::AckOutcome;
use super::message::{DeadLetter, DeadLetterBody, QueueStats, Refusal, StoredMessage};
use super::spec::{MAX_UNACKED_BYTES, QueueSpec, WINDOW_BYTES, WINDOW_COUNT};
use crate::broker::outbox::Outbox;
use crate::broker::permissions::ClientPermissions;
use crate::broker::store::{LoadRequest, Op, Store, StoredRow as Row};
use crate::index::SessionId;
use crate::protocol::message::FromQueue;

#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) seq: u64,
    pub(super) message: Arc<StoredMessage>,
    pub(super) delivery_count: u32,
    /// Its size as counted against the queue's bounds.
    pub(super) size: usize,
}

pub(super) struct Consumer {
    pub(super) session: SessionId,
    /// What the consumer's client may subscribe to: a binding added to the queue later
    /// must be one it may receive.
    pub(super) permissions: Arc<ClientPermissions>,
    pub(super) outbox: Outbox,
    pub(super) prefetch: usize,
    pub(super) unacked: usize,
    pub(super) unacked_bytes: usize,
}

impl Consumer {
    pub(super) fn has_room(&self) -> bool {
        self.unacked < self.prefetch && (self.unacked == 0 || self.unacked_bytes < MAX_UNACKED_BYTES)
    }
}

/// The ready messages of a stored queue that are only on disk: all of them come after
/// those in memory.
#[derive(Debug, Default)]
pub(super) struct OnDisk {
    pub(super) count: usize,
    pub(super) bytes: usize,
    /// The highest sequence number moved into memory so far.
    pub(super) after: u64,
    /// A read is on its way.
    pub(super) loading: bool,
}

pub(super) struct InFlight {
    pub(super) consumer: SessionId,
    pub(super) item: Item,
}

pub(super) struct Queue {
    pub(super) spec: QueueSpec,
    pub(super) name: Arc<str>,
    /// The queue's key in the binding index.
    pub(super) number: u64,
    /// Kept in the store, with only a window of it in memory.
    pub(super) stored: bool,
    /// The next ready messages, in sequence order.
    pub(super) ready: VecDeque<Item>,
    pub(super) ready_bytes: usize,
    /// What follows `ready`, for a stored queue.
    pub(super) on_disk: OnDisk,
    pub(super) in_flight: HashMap<u64, InFlight>,
    pub(super) in_flight_bytes: usize,
    pub(super) consumers: Vec<Consumer>,
    /// Where the round-robin resumes.
    pub(super) cursor: usize,
    pub(super) next_seq: u64,
    pub(super) stats: QueueStats,
    /// Publishers waiting for a consumer to acknowledge their message, by its
    /// sequence number (a queue with `confirm_on_ack`); at most one per message held.
    pub(super) awaiting_ack: HashMap<u64, oneshot::Sender<AckOutcome>>,
}

/// Why a message leaves a queue unacknowledged.
#[derive(Debug, Clone, Copy)]
pub(super) enum Exit {
    Expired,
    Rejected,
    TooManyDeliveries,
}

impl Exit {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Exit::Expired => "expired",
            Exit::Rejected => "rejected",
            Exit::TooManyDeliveries => "max_deliveries",
        }
    }
}

/// Bytes held by the queues kept in memory, against the broker's `max_memory`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Memory {
    pub(super) used: usize,
    pub(super) limit: usize,
}

/// What the queue operations need besides the queue itself.
pub(super) struct Context<'a> {
    pub(super) store: Option<&'a Store>,
    pub(super) tags: &'a mut HashMap<u64, Arc<str>>,
    pub(super) next_tag: &'a mut u64,
    pub(super) dead: &'a mut Vec<DeadLetter>,
    pub(super) memory: &'a mut Memory,
    pub(super) now: f64,
}

impl Queue {
    pub(super) fn new(spec: QueueSpec, number: u64, stored: bool) -> Queue {
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
            awaiting_ack: HashMap::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ready.len() + self.on_disk.count + self.in_flight.len()
    }

    /// Bytes of every message it holds, wherever they are.
    pub(super) fn bytes(&self) -> usize {
        self.ready_bytes + self.on_disk.bytes + self.in_flight_bytes
    }

    /// Bytes it holds in memory.
    pub(super) fn memory(&self) -> usize {
        self.ready_bytes + self.in_flight_bytes
    }

    pub(super) fn store<'a>(&self, ctx: &Context<'a>) -> Option<&'a Store> {
        if self.stored { ctx.store } else { None }
    }

    /// Gives back what a message that left the queue held in memory.
    pub(super) fn forget(&self, item: &Item, ctx: &mut Context<'_>) {
        if !self.stored {
            ctx.memory.used = ctx.memory.used.saturating_sub(item.size);
        }
    }

    pub(super) fn save_definition(&self, store: Option<&Store>) {
        if let (true, Some(store)) = (self.spec.durable, store) {
            let definition = serde_json::to_string(&self.spec).expect("specs serialise");
            store.write(Op::SaveQueue { name: self.spec.name.clone(), definition });
        }
    }

    /// Takes a message; for a `qos=1` message into a queue with `confirm_on_ack`, the
    /// answer comes on the receiver once a consumer acknowledged it.
    pub(super) fn enqueue(
        &mut self,
        message: &Arc<StoredMessage>,
        ctx: &mut Context<'_>,
    ) -> Result<Option<oneshot::Receiver<AckOutcome>>, Refusal> {
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
        let awaited = (message.qos > 0 && self.spec.confirm_on_ack.is_some()).then(|| {
            let (answer, awaited) = oneshot::channel();
            self.awaiting_ack.insert(seq, answer);
            awaited
        });
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
            return Ok(awaited);
        }
        if self.stored {
            self.on_disk.after = seq;
        } else {
            ctx.memory.used += size;
        }
        self.ready_bytes += size;
        self.ready.push_back(Item { seq, message: message.clone(), delivery_count: 0, size });
        Ok(awaited)
    }

    /// Asks the store for the next messages when the window runs low and somebody
    /// consumes; [`Queue::loaded`] takes the answer.
    pub(super) fn refill(&mut self, ctx: &Context<'_>) {
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
    pub(super) fn loaded(&mut self, rows: Result<Vec<Row>, String>, ctx: &mut Context<'_>) {
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
            // What was only on disk is gone: its publishers hear it.
            self.answer_publishers_of_missing(|queue| {
                Err(format!("it was lost from queue {queue:?}'s store"))
            });
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
                    self.answer_publisher(row.seq, |queue| {
                        Err(format!("it could not be read back from queue {queue:?}'s store"))
                    });
                    if let Some(store) = self.store(ctx) {
                        store.write(Op::Remove { queue: self.spec.name.clone(), seq: row.seq });
                    }
                }
            }
        }
        self.dispatch(ctx);
    }

    /// Hands ready messages to consumers with room, round-robin.
    pub(super) fn dispatch(&mut self, ctx: &mut Context<'_>) {
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
    pub(super) fn settle(&mut self, session: SessionId, tag: u64, ctx: &mut Context<'_>) -> Option<Item> {
        match self.in_flight.get(&tag) {
            Some(flight) if flight.consumer == session => {}
            _ => return None,
        }
        self.take_in_flight(tag, ctx)
    }

    /// Takes a delivery out of flight, whoever holds it.
    pub(super) fn take_in_flight(&mut self, tag: u64, ctx: &mut Context<'_>) -> Option<Item> {
        let flight = self.in_flight.remove(&tag)?;
        ctx.tags.remove(&tag);
        self.in_flight_bytes -= flight.item.size;
        if let Some(consumer) = self.consumers.iter_mut().find(|c| c.session == flight.consumer) {
            consumer.unacked = consumer.unacked.saturating_sub(1);
            consumer.unacked_bytes = consumer.unacked_bytes.saturating_sub(flight.item.size);
        }
        Some(flight.item)
    }

    pub(super) fn ack(&mut self, session: SessionId, tag: u64, ctx: &mut Context<'_>) -> bool {
        let Some(item) = self.settle(session, tag, ctx) else { return false };
        self.stats.acked += 1;
        self.answer_publisher(item.seq, |_| Ok(()));
        self.forget(&item, ctx);
        if let Some(store) = self.store(ctx) {
            store.write(Op::Remove { queue: self.spec.name.clone(), seq: item.seq });
        }
        true
    }

    pub(super) fn nack(
        &mut self,
        session: SessionId,
        tag: u64,
        requeue: bool,
        ctx: &mut Context<'_>,
    ) -> bool {
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
    pub(super) fn requeue(&mut self, item: Item, ctx: &mut Context<'_>) {
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

    pub(super) fn exit(&mut self, item: Item, exit: Exit, ctx: &mut Context<'_>) {
        if let Some(store) = self.store(ctx) {
            store.write(Op::Remove { queue: self.spec.name.clone(), seq: item.seq });
        }
        self.forget(&item, ctx);
        match exit {
            Exit::Expired => self.stats.expired += 1,
            Exit::Rejected | Exit::TooManyDeliveries => {}
        }
        self.stats.dead_lettered += 1;
        self.answer_publisher(item.seq, |queue| {
            Err(format!("it left queue {queue:?} unacknowledged ({})", exit.reason()))
        });
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

    /// Drops every ready message, in memory and on disk; returns how many. What is in
    /// flight stays with its consumers (and comes back if they give it back).
    pub(super) fn purge(&mut self, ctx: &mut Context<'_>) -> usize {
        let purged = self.ready.len() + self.on_disk.count;
        let ready = std::mem::take(&mut self.ready);
        for item in &ready {
            self.forget(item, ctx);
        }
        if let Some(store) = self.store(ctx) {
            store.write(Op::Purge {
                queue: self.spec.name.clone(),
                seqs: ready.iter().map(|item| item.seq).collect(),
                after: self.on_disk.after,
            });
        }
        self.ready_bytes = 0;
        self.on_disk.count = 0;
        self.on_disk.bytes = 0;
        self.answer_publishers_of_missing(|queue| Err(format!("queue {queue:?} was purged")));
        // A read of the store still on its way returns messages dropped here: skipped,
        // as they are not past `after`.
        self.on_disk.after = self.next_seq - 1;
        purged
    }

    /// Removes a consumer; what it had in flight goes back to the queue.
    pub(super) fn remove_consumer(&mut self, session: SessionId, ctx: &mut Context<'_>) -> bool {
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

    pub(super) fn expire(&mut self, ctx: &mut Context<'_>) {
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

    pub(super) fn status(&self) -> Value {
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
            "confirm_on_ack": self.spec.confirm_on_ack,
        })
    }
}
