//! One channel's queue: the messages kept for it, oldest first, and the receivers
//! waiting on it, each handed the next message it takes.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{ChannelStats, ReceiveBy};

/// What a kept message costs beyond its text and its channel's name, near enough.
const ENTRY_OVERHEAD: usize = 96;

/// A message for a receiver: the channel it was sent to, its JSON text, and when it
/// expires (seconds since the epoch); `seq` orders messages by when they were sent,
/// and `tag` names one taken for a connection (0 when it was not).
#[derive(Debug, Clone)]
pub struct Taken {
    pub channel: Arc<str>,
    pub message: Arc<RawValue>,
    pub expires: f64,
    pub seq: u64,
    pub tag: u64,
}

impl Taken {
    pub(super) fn size(&self) -> usize {
        self.channel.len() + self.message.get().len() + ENTRY_OVERHEAD
    }
}

/// A receiver waiting for the next message it takes.
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) by: ReceiveBy,
    pub(super) tx: oneshot::Sender<Vec<Taken>>,
}

/// One channel's messages and the receivers waiting on it.
#[derive(Default)]
pub(super) struct ChannelQueue {
    /// Oldest first (by `seq`).
    pub(super) entries: VecDeque<Taken>,
    pub(super) bytes: usize,
    /// Receivers waiting, oldest first; while some wait, `entries` holds only messages
    /// each of them leaves (see [`ReceiveBy::exclude`]).
    pub(super) waiters: VecDeque<Waiter>,
}

impl ChannelQueue {
    pub(super) fn is_idle(&self) -> bool {
        self.entries.is_empty() && self.waiters.iter().all(|w| w.tx.is_closed())
    }

    /// Hands `taken` to the oldest live waiter that takes its channel, or gives it back.
    pub(super) fn hand_to_waiter(&mut self, mut taken: Taken) -> Result<(), Taken> {
        let mut index = 0;
        while let Some(waiter) = self.waiters.get(index) {
            if waiter.tx.is_closed() {
                self.waiters.remove(index);
                continue;
            }
            if !waiter.by.takes(&taken.channel) {
                index += 1;
                continue;
            }
            let waiter = self.waiters.remove(index).expect("looked at");
            match waiter.tx.send(vec![taken]) {
                Ok(()) => return Ok(()),
                // That receiver went away: the next one, or the channel, gets it.
                Err(back) => taken = back.into_iter().next().expect("sent one"),
            }
        }
        Err(taken)
    }

    /// Puts messages given back where they belong by `seq` (they were sent before
    /// those kept since).
    pub(super) fn merge_front(&mut self, returned: Vec<Taken>) {
        let kept = std::mem::take(&mut self.entries);
        self.bytes = 0;
        let mut returned = returned.into_iter().peekable();
        let mut kept = kept.into_iter().peekable();
        let mut merged = VecDeque::with_capacity(returned.len() + kept.len());
        loop {
            let next = match (returned.peek(), kept.peek()) {
                (Some(back), Some(here)) if back.seq < here.seq => returned.next(),
                (Some(_), Some(_)) | (None, Some(_)) => kept.next(),
                (Some(_), None) => returned.next(),
                (None, None) => break,
            };
            let next = next.expect("peeked");
            self.bytes += next.size();
            merged.push_back(next);
        }
        self.entries = merged;
    }
}

/// Drops the expired messages at the front of a channel: those a receive would take
/// first (the others go at the upkeep tick, or when they come to the front).
pub(super) fn expire_front(queue: &mut ChannelQueue, now: f64, memory: &mut usize, stats: &mut ChannelStats) {
    while queue.entries.front().is_some_and(|taken| taken.expires <= now) {
        let taken = queue.entries.pop_front().expect("looked at");
        let size = taken.size();
        queue.bytes -= size;
        *memory -= size;
        stats.expired += 1;
    }
}
