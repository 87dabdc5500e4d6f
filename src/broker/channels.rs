//! Channels and groups, for a Django Channels layer.
//!
//! A channel keeps the messages sent to it until a receiver takes them: each goes to
//! exactly one receiver (competing consumers), in the order sent, and a message not
//! taken within its ttl is dropped. A channel is created by the first send (or the
//! first receive that waits) and goes once it holds nothing and nobody waits on it.
//! Process-specific channels (`name!local`) are kept under their part up to and
//! including the `!`: one process receives all of them with one call, and each
//! message says which channel it was sent to.
//!
//! A receive either takes what is there or waits: the waiting receiver is handed the
//! next message directly by the send. A receiver that went away before it was
//! answered gives what it was handed back to the front of the channel
//! ([`Channels::forget_waiter`]).
//!
//! What a connection receives stays its own until it acknowledges it: each message
//! taken for a connection (its *lease*, [`Channels::lease`]) carries a tag, and is
//! kept, up to [`MAX_UNACKED`] per connection, until `channel_ack` names the tag.
//! `channel_nack` gives messages back, and when the connection ends for any reason
//! everything it had not acknowledged goes back to the front of its channels
//! ([`Channels::end_lease`]), in the order it was sent: a message is lost only once
//! its receiver said it has it, and may be received twice when a connection ends
//! between taking a message and acknowledging it (at least once).
//!
//! A group is a set of channels, each member with its own expiry and the capacity
//! its channel was added with; a message sent to a group goes to every member with
//! room, and a full member is skipped and counted, never an error.
//!
//! Everything belongs to a prefix (a layer's namespace), which `flush` clears alone.
//! Everything is bounded: a channel by its capacity and [`MAX_CHANNEL_BYTES`], all
//! channels together by the broker's `max_memory`, and the number of channels,
//! groups and members by the limits of [`crate::protocol::rules`]. Expiry is lazy (at
//! each send and receive of a channel) and swept by the broker's upkeep tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub use self::queue::Taken;
use self::queue::{ChannelQueue, Waiter, expire_front};
use crate::error::{ErrorCode, RpcError};
use crate::index::SessionId;
use crate::protocol::channels::queue_key;
use crate::protocol::rules::{
    MAX_CHANNEL_BYTES, MAX_CHANNEL_CAPACITY, MAX_CHANNELS, MAX_GROUP_MEMBERS, MAX_GROUPS, MAX_MEMBERSHIPS,
};

/// Messages one connection may hold unacknowledged: past them its receives are
/// refused until it acknowledges some.
pub const MAX_UNACKED: usize = 10_000;

/// Who receives, and what: the connection the messages are taken for (`None`: taken
/// for good, acknowledged at once), and channels whose messages it leaves where they
/// are (its own buffer for them is full).
#[derive(Debug, Clone, Default)]
pub struct ReceiveBy {
    pub lease: Option<SessionId>,
    pub exclude: Arc<HashSet<Box<str>>>,
}

impl ReceiveBy {
    fn takes(&self, channel: &str) -> bool {
        !self.exclude.contains(channel)
    }
}

/// A message taken for a connection and not yet acknowledged.
struct Leased {
    prefix: Arc<str>,
    key: Arc<str>,
    taken: Taken,
}

/// What one connection holds unacknowledged, by tag.
#[derive(Default)]
struct Lease {
    unacked: BTreeMap<u64, Leased>,
}

struct Member {
    expires: f64,
    capacity: usize,
}

#[derive(Default)]
struct Space {
    queues: HashMap<Arc<str>, ChannelQueue>,
    groups: HashMap<Arc<str>, HashMap<Arc<str>, Member>>,
}

/// Counters over every prefix, reported by `status`.
#[derive(Debug, Default, Clone, Copy)]
struct ChannelStats {
    sent: u64,
    received: u64,
    /// Put back: taken by a receiver that went away before it acknowledged them,
    /// or given back.
    returned: u64,
    acked: u64,
    expired: u64,
    /// Sends refused with `CHANNEL_FULL`.
    refused: u64,
    group_sends: u64,
    /// Messages of group sends not kept by a full member.
    group_dropped: u64,
    flushes: u64,
}

/// Why a channel did not keep a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Capacity(usize),
    Bytes,
    Memory(usize),
    TooManyChannels,
}

impl Refusal {
    fn error(self, channel: &str) -> RpcError {
        let why = match self {
            Refusal::Capacity(capacity) => format!("it holds its capacity of {capacity} messages"),
            Refusal::Bytes => format!("the message would take it past {MAX_CHANNEL_BYTES} bytes"),
            Refusal::Memory(max) => format!("the channels hold the broker's max_memory ({max} bytes)"),
            Refusal::TooManyChannels => format!("the broker holds its most channels ({MAX_CHANNELS})"),
        };
        RpcError::new(
            ErrorCode::ChannelFull,
            format!("channel {channel:?} is full: {why}; the message was not kept"),
        )
    }
}

/// How much one receive takes at most.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveLimit {
    pub max: usize,
    /// Bytes of message text, so that the answer stays within a frame.
    pub max_bytes: usize,
}

/// What a receive found.
pub enum Received {
    /// Taken (tagged and leased when taken for a connection).
    Ready(Vec<Taken>),
    /// Nothing yet: the next message sent comes through `rx`. `id` names the waiter
    /// for [`Channels::forget_waiter`].
    Waiting { id: u64, rx: oneshot::Receiver<Vec<Taken>> },
}

/// Where a group send went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupSent {
    pub members: usize,
    pub sent: usize,
    /// Members that were full: the message was not kept for them.
    pub full: usize,
}

/// Every channel and group of the broker, by prefix.
pub struct Channels {
    spaces: HashMap<Arc<str>, Space>,
    queue_count: usize,
    group_count: usize,
    membership_count: usize,
    /// Bytes the kept messages take, against `max_memory`.
    memory: usize,
    max_memory: usize,
    next_waiter: u64,
    next_seq: u64,
    next_tag: u64,
    leases: HashMap<SessionId, Lease>,
    unacked: usize,
    stats: ChannelStats,
}

impl Channels {
    /// Channels whose messages hold at most `max_memory` bytes together.
    pub fn new(max_memory: usize) -> Channels {
        Channels {
            spaces: HashMap::new(),
            queue_count: 0,
            group_count: 0,
            membership_count: 0,
            memory: 0,
            max_memory,
            next_waiter: 0,
            next_seq: 0,
            next_tag: 0,
            leases: HashMap::new(),
            unacked: 0,
            stats: ChannelStats::default(),
        }
    }

    /// Keeps `message` for a receiver of `channel` for `ttl` seconds, unless the
    /// channel holds `capacity` messages (or its bytes, or memory is used up).
    pub fn send(
        &mut self,
        prefix: &str,
        channel: &str,
        message: Arc<RawValue>,
        ttl: f64,
        capacity: usize,
        now: f64,
    ) -> Result<(), RpcError> {
        let taken = self.new_taken(channel.into(), message, now + ttl);
        self.offer(prefix, taken, capacity, now).map_err(|refusal| {
            self.stats.refused += 1;
            refusal.error(channel)
        })
    }

    fn new_taken(&mut self, channel: Arc<str>, message: Arc<RawValue>, expires: f64) -> Taken {
        self.next_seq += 1;
        Taken { channel, message, expires, seq: self.next_seq, tag: 0 }
    }

    fn offer(&mut self, prefix: &str, taken: Taken, capacity: usize, now: f64) -> Result<(), Refusal> {
        let channel = taken.channel.clone();
        let key = queue_key(&channel);
        let capacity = capacity.min(MAX_CHANNEL_CAPACITY);
        let size = taken.size();
        let space = match self.spaces.get_mut(prefix) {
            Some(space) => space,
            None => self.spaces.entry(prefix.into()).or_default(),
        };
        let queue = match space.queues.get_mut(key) {
            Some(queue) => queue,
            None if self.queue_count >= MAX_CHANNELS => {
                self.drop_space_if_empty(prefix);
                return Err(Refusal::TooManyChannels);
            }
            None => {
                self.queue_count += 1;
                space.queues.entry(key.into()).or_default()
            }
        };
        expire_front(queue, now, &mut self.memory, &mut self.stats);
        let taken = match queue.hand_to_waiter(taken) {
            Ok(()) => {
                self.stats.sent += 1;
                self.stats.received += 1;
                self.drop_queue_if_idle(prefix, key);
                return Ok(());
            }
            Err(taken) => taken,
        };
        let refusal = if queue.entries.len() >= capacity {
            Some(Refusal::Capacity(capacity))
        } else if queue.bytes + size > MAX_CHANNEL_BYTES {
            Some(Refusal::Bytes)
        } else if self.memory + size > self.max_memory {
            Some(Refusal::Memory(self.max_memory))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.drop_queue_if_idle(prefix, key);
            return Err(refusal);
        }
        queue.bytes += size;
        self.memory += size;
        queue.entries.push_back(taken);
        self.stats.sent += 1;
        Ok(())
    }

    /// Takes up to `max` messages of the channel kept under `key` for good, as
    /// [`Channels::receive_by`] for nobody in particular.
    #[cfg(test)]
    pub fn receive(
        &mut self,
        prefix: &str,
        key: &str,
        limit: ReceiveLimit,
        wait: bool,
        now: f64,
    ) -> Result<Received, RpcError> {
        self.receive_by(&ReceiveBy::default(), prefix, key, limit, wait, now)
    }

    /// Takes up to `max` messages of the channel kept under `key` that `by` takes,
    /// together at most `max_bytes` of message text (the first one whatever its size),
    /// leased to `by`'s connection; with none there, and `wait`, registers a waiter for
    /// the next one. Refused when the connection holds [`MAX_UNACKED`] messages.
    pub fn receive_by(
        &mut self,
        by: &ReceiveBy,
        prefix: &str,
        key: &str,
        limit: ReceiveLimit,
        wait: bool,
        now: f64,
    ) -> Result<Received, RpcError> {
        let mut max = limit.max;
        if let Some(session) = by.lease {
            let held = self.leases.entry(session).or_default().unacked.len();
            if held >= MAX_UNACKED {
                return Err(RpcError::new(
                    ErrorCode::TooManyRequests,
                    format!(
                        "this connection holds {held} channel messages not acknowledged, the most it may; \
                         channel_ack some first"
                    ),
                ));
            }
            max = max.min(MAX_UNACKED - held);
        }
        let mut taken: Vec<Taken> = Vec::new();
        let mut text = 0;
        if let Some(queue) = self.spaces.get_mut(prefix).and_then(|space| space.queues.get_mut(key)) {
            expire_front(queue, now, &mut self.memory, &mut self.stats);
            let mut index = 0;
            while taken.len() < max {
                let Some(entry) = queue.entries.get(index) else { break };
                if entry.expires > now && !by.takes(&entry.channel) {
                    index += 1;
                    continue;
                }
                let len = entry.message.get().len();
                if entry.expires > now && !taken.is_empty() && text + len > limit.max_bytes {
                    break;
                }
                let entry = queue.entries.remove(index).expect("looked at");
                let size = entry.size();
                queue.bytes -= size;
                self.memory -= size;
                if entry.expires <= now {
                    self.stats.expired += 1;
                } else {
                    text += len;
                    taken.push(entry);
                }
            }
        }
        if !taken.is_empty() || !wait {
            self.stats.received += taken.len() as u64;
            self.drop_queue_if_idle(prefix, key);
            let taken = match by.lease {
                Some(session) => self.lease(session, prefix, key, taken, now),
                None => taken,
            };
            return Ok(Received::Ready(taken));
        }
        let space = match self.spaces.get_mut(prefix) {
            Some(space) => space,
            None => self.spaces.entry(prefix.into()).or_default(),
        };
        let queue = match space.queues.get_mut(key) {
            Some(queue) => queue,
            None if self.queue_count >= MAX_CHANNELS => {
                self.drop_space_if_empty(prefix);
                return Err(Refusal::TooManyChannels.error(key));
            }
            None => {
                self.queue_count += 1;
                space.queues.entry(key.into()).or_default()
            }
        };
        queue.waiters.retain(|waiter| !waiter.tx.is_closed());
        self.next_waiter += 1;
        let id = self.next_waiter;
        let (tx, rx) = oneshot::channel();
        queue.waiters.push_back(Waiter { id, by: by.clone(), tx });
        Ok(Received::Waiting { id, rx })
    }

    /// Drops every channel (with its messages, those received and not acknowledged
    /// too) and group of `prefix`; receivers waiting there are answered with nothing.
    /// Returns how many channels and groups went.
    pub fn flush(&mut self, prefix: &str) -> (usize, usize) {
        self.stats.flushes += 1;
        for lease in self.leases.values_mut() {
            let before = lease.unacked.len();
            lease.unacked.retain(|_, leased| &*leased.prefix != prefix);
            self.unacked -= before - lease.unacked.len();
        }
        let Some(space) = self.spaces.remove(prefix) else { return (0, 0) };
        for queue in space.queues.values() {
            self.memory -= queue.bytes;
        }
        self.queue_count -= space.queues.len();
        self.group_count -= space.groups.len();
        self.membership_count -= space.groups.values().map(HashMap::len).sum::<usize>();
        (space.queues.len(), space.groups.len())
    }

    /// Drops what expired everywhere, and what nobody holds or waits on any more.
    pub fn tick(&mut self, now: f64) {
        let prefixes: Vec<Arc<str>> = self.spaces.keys().cloned().collect();
        for prefix in prefixes {
            let space = self.spaces.get_mut(&prefix).expect("listed");
            let mut idle = Vec::new();
            for (key, queue) in &mut space.queues {
                let before = queue.entries.len();
                let mut released = 0;
                queue.entries.retain(|taken| {
                    let keep = taken.expires > now;
                    if !keep {
                        released += taken.size();
                    }
                    keep
                });
                queue.bytes -= released;
                self.memory -= released;
                self.stats.expired += (before - queue.entries.len()) as u64;
                queue.waiters.retain(|waiter| !waiter.tx.is_closed());
                if queue.is_idle() {
                    idle.push(key.clone());
                }
            }
            self.queue_count -= idle.len();
            for key in idle {
                space.queues.remove(&key);
            }
            let mut empty = Vec::new();
            for (group, members) in &mut space.groups {
                let before = members.len();
                members.retain(|_, member| member.expires > now);
                self.membership_count -= before - members.len();
                if members.is_empty() {
                    empty.push(group.clone());
                }
            }
            self.group_count -= empty.len();
            for group in empty {
                space.groups.remove(&group);
            }
            self.drop_space_if_empty(&prefix);
        }
    }

    pub fn status(&self) -> Value {
        let queues = || self.spaces.values().flat_map(|space| space.queues.values());
        let s = &self.stats;
        json!({
            "prefixes": self.spaces.len(),
            "channels": self.queue_count,
            "messages": queues().map(|queue| queue.entries.len()).sum::<usize>(),
            "bytes": self.memory,
            "receivers_waiting": queues().map(|queue| queue.waiters.len()).sum::<usize>(),
            "unacked": self.unacked,
            "groups": self.group_count,
            "memberships": self.membership_count,
            "sent": s.sent,
            "received": s.received,
            "returned": s.returned,
            "acked": s.acked,
            "expired": s.expired,
            "refused_full": s.refused,
            "group_sends": s.group_sends,
            "group_dropped_full": s.group_dropped,
            "flushes": s.flushes,
            "limits": {
                "max_channels": MAX_CHANNELS,
                "max_channel_capacity": MAX_CHANNEL_CAPACITY,
                "max_channel_bytes": MAX_CHANNEL_BYTES,
                "max_groups": MAX_GROUPS,
                "max_group_members": MAX_GROUP_MEMBERS,
                "max_memberships": MAX_MEMBERSHIPS,
                "max_memory": self.max_memory,
                "max_unacked_per_connection": MAX_UNACKED,
            },
        })
    }

    fn drop_queue_if_idle(&mut self, prefix: &str, key: &str) {
        let Some(space) = self.spaces.get_mut(prefix) else { return };
        if space.queues.get(key).is_some_and(ChannelQueue::is_idle) {
            space.queues.remove(key);
            self.queue_count -= 1;
        }
        self.drop_space_if_empty(prefix);
    }

    fn drop_space_if_empty(&mut self, prefix: &str) {
        if self.spaces.get(prefix).is_some_and(|space| space.queues.is_empty() && space.groups.is_empty()) {
            self.spaces.remove(prefix);
        }
    }
}

mod groups;
mod leases;
mod queue;
#[cfg(test)]
mod tests;
