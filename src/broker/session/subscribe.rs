//! `subscribe` and `unsubscribe`: patterns, and queues to consume from.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use super::Session;
use super::dispatch::{RpcResult, to_raw};
use crate::broker::access;
use crate::broker::queue::{
    DEFAULT_PREFETCH, Join, MAX_PREFETCH, validate_confirm_on_ack, validate_queue_name,
};
use crate::broker::router::SubscriptionFlags;
use crate::error::RpcError;
use crate::protocol::method::{Subscribe, Unsubscribe};
use crate::protocol::rules::{self, MAX_PATTERNS_PER_CLIENT};
use crate::protocol::topic::{parse_pattern, validate_topic};

impl Session {
    /// `{"patterns": [...]}` subscribes; with `"queue"` the patterns bind that queue
    /// and this client becomes one of its consumers (a queue group, or with
    /// `"durable": true` a durable queue; `"durable"` alone names the queue after
    /// the client, which keeps its messages while it is away).
    pub(super) fn subscribe(&mut self, p: Subscribe) -> RpcResult {
        let patterns = check_patterns(p.patterns)?;
        // All or nothing: one refused pattern and none is subscribed.
        for pattern in &patterns {
            self.permissions.may_subscribe(pattern).map_err(access::denied)?;
        }
        let queue = match (p.queue, p.durable) {
            (Some(queue), _) => Some(queue),
            (None, true) => self.client_id.as_deref().map(str::to_owned),
            (None, false) => None,
        };
        let Some(name) = queue else {
            let flags =
                SubscriptionFlags { passive: p.passive || p.relay, no_local: p.no_local, relay: p.relay };
            self.router.subscribe(self.id, &patterns, flags)?;
            return to_raw(&json!({"subscribed": patterns.iter().map(|p| &**p).collect::<Vec<_>>()}));
        };
        validate_queue_name(&name)?;
        let prefetch = p.prefetch.unwrap_or(DEFAULT_PREFETCH);
        if !(1..=MAX_PREFETCH).contains(&prefetch) {
            return Err(RpcError::invalid_params(format!(
                "prefetch must be 1 to {MAX_PREFETCH}, got {prefetch}"
            )));
        }
        if p.max_length == Some(0) {
            return Err(RpcError::invalid_params("max_length must be at least 1"));
        }
        if p.max_bytes == Some(0) {
            return Err(RpcError::invalid_params("max_bytes must be at least 1"));
        }
        if let Some(seconds) = p.confirm_on_ack {
            validate_confirm_on_ack(seconds)?;
        }
        if let Some(topic) = &p.dead_letter_topic {
            validate_topic(topic)?;
            // The broker publishes there on this client's behalf: never on its own
            // system topics (nor, with permission rules, where the client may not).
            rules::publishable(topic)?;
        }
        let join = Join {
            name: name.clone(),
            patterns: patterns.clone(),
            durable: p.durable,
            prefetch,
            max_length: p.max_length,
            max_bytes: p.max_bytes,
            max_deliveries: p.max_deliveries,
            dead_letter_topic: p.dead_letter_topic,
            confirm_on_ack: p.confirm_on_ack,
            permissions: self.permissions.clone(),
        };
        self.router.join_queue(self.id, join)?;
        to_raw(&json!({
            "subscribed": patterns.iter().map(|p| &**p).collect::<Vec<_>>(),
            "queue": name,
            "durable": p.durable,
        }))
    }

    /// `{"patterns": [...]}` unsubscribes; `{"queue": name}` stops consuming from a
    /// queue (a durable queue keeps its bindings and messages).
    pub(super) fn unsubscribe(&mut self, p: Unsubscribe) -> RpcResult {
        match (p.patterns, p.queue) {
            (_, Some(queue)) => {
                let left = self.router.leave_queues(self.id, Some(&queue));
                to_raw(&json!({"unsubscribed": [], "queue": queue, "left": !left.is_empty()}))
            }
            (Some(patterns), None) => {
                let patterns = check_patterns(patterns)?;
                let removed = self.router.unsubscribe(self.id, &patterns);
                to_raw(&json!({"unsubscribed": removed.iter().map(|p| &**p).collect::<Vec<_>>()}))
            }
            (None, None) => Err(RpcError::invalid_params("give \"patterns\" or \"queue\"")),
        }
    }
}

/// Valid patterns, without repeats, in the order given.
fn check_patterns(given: Vec<String>) -> Result<Vec<Arc<str>>, RpcError> {
    if given.len() > MAX_PATTERNS_PER_CLIENT {
        return Err(RpcError::invalid_params(format!(
            "{} patterns in one call; a client may hold at most {MAX_PATTERNS_PER_CLIENT}",
            given.len()
        )));
    }
    let mut seen = HashSet::with_capacity(given.len());
    let mut patterns: Vec<Arc<str>> = Vec::with_capacity(given.len());
    for pattern in given {
        parse_pattern(&pattern)?;
        let pattern: Arc<str> = pattern.into();
        if seen.insert(pattern.clone()) {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}
