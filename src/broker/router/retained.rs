//! Retained messages: the last message of each topic published with `retain`, handed
//! to every new subscriber of a matching pattern, kept in the store when there is one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{Router, any_matches, unix_now};
use crate::broker::outbox::{Offer, Outbox};
use crate::broker::queue::StoredMessage;
use crate::broker::store::Op;
use crate::error::{ErrorCode, RpcError};

/// Most topics with a retained message.
pub const MAX_RETAINED: usize = 100_000;

impl Router {
    /// Keeps `message` as its topic's retained message; an empty payload (`null` or
    /// `""`) clears it instead.
    pub(super) fn retain(&self, message: &Arc<StoredMessage>) -> Result<(), RpcError> {
        let clear = matches!(message.payload.get(), "null" | "\"\"");
        let mut retained = self.retained.lock();
        if clear {
            retained.remove(&message.topic);
        } else {
            if retained.len() >= MAX_RETAINED && !retained.contains_key(&message.topic) {
                return Err(RpcError::new(
                    ErrorCode::QueueFull,
                    format!("{MAX_RETAINED} topics already have a retained message; clear some first"),
                ));
            }
            retained.insert(message.topic.clone(), message.clone());
        }
        if let Some(store) = &self.store {
            let record = (!clear).then(|| message.record());
            store.write(Op::Retain { topic: message.topic.clone(), record });
        }
        Ok(())
    }

    /// Queues the retained messages matching any of `patterns` for `outbox`, oldest
    /// topic first, marked `retained`.
    pub(super) fn deliver_retained(&self, outbox: &Outbox, patterns: &[Arc<str>]) {
        if patterns.is_empty() {
            return;
        }
        let now = unix_now();
        let frames: Vec<Bytes> = {
            let retained = self.retained.lock();
            if retained.is_empty() {
                return;
            }
            retained
                .values()
                .filter(|m| !m.is_expired(now) && any_matches(patterns, &m.topic))
                .map(|m| m.frame(true, None))
                .collect()
        };
        for frame in frames {
            if outbox.offer(frame) != Offer::Queued {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets retained messages past their ttl.
    pub(super) fn expire_retained(&self, now: f64) {
        let expired: Vec<String> = {
            let mut retained = self.retained.lock();
            let expired: Vec<String> =
                retained.iter().filter(|(_, m)| m.is_expired(now)).map(|(t, _)| t.clone()).collect();
            for topic in &expired {
                retained.remove(topic);
            }
            expired
        };
        if let Some(store) = &self.store {
            for topic in expired {
                store.write(Op::Retain { topic, record: None });
            }
        }
    }
}
