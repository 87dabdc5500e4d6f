//! What queues keep and report: stored messages, dead letters, counters, refusals.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::message::{Delivery, FromQueue};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<RawValue>>,
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
            + self.headers.as_ref().map_or(0, |headers| headers.get().len())
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
            headers: self.headers.as_deref(),
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
pub(super) struct DeadLetterBody<'a> {
    pub(super) queue: &'a str,
    pub(super) reason: &'static str,
    pub(super) delivery_count: u32,
    pub(super) topic: &'a str,
    pub(super) payload: &'a RawValue,
    pub(super) sender: &'a str,
    pub(super) id: &'a str,
    pub(super) timestamp: f64,
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
