//! Who is connected and what they subscribed to: registering a client (taking over
//! a live connection with the same id), its patterns with their flags, and leaving.

use foldhash::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::json;
use tokio::sync::Notify;

use super::Router;
use crate::broker::outbox::Outbox;
use crate::broker::transport::Peer;
use crate::error::{ErrorCode, RpcError};
use crate::index::{SessionId, SubscriptionIndex};
use crate::protocol::method::SubscriptionFlags;
use crate::protocol::rules::MAX_PATTERNS_PER_CLIENT;
use crate::protocol::topic::{matches, system};

/// Who a connected client says it is, and where it connected from.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: Arc<str>,
    pub client_type: Option<String>,
    pub version: Option<String>,
    pub peer: Peer,
}

pub(super) struct Entry {
    pub(super) session: SessionId,
    pub(super) info: ClientInfo,
    pub(super) connected_at: SystemTime,
    pub(super) outbox: Outbox,
    /// Woken when another connection takes this client's id over.
    evicted: Arc<Notify>,
    /// In subscription order.
    pub(super) patterns: Vec<Arc<str>>,
    flags: HashMap<Arc<str>, SubscriptionFlags>,
    /// Patterns with each flag set: fan-out looks at the flags only when one could
    /// change the outcome (a passive pattern, or a no_local one for its own messages).
    passive: usize,
    no_local: usize,
}

impl Entry {
    /// Whether this client takes a message on `topic` that the index matched to it
    /// (`own`: its own connection published it), and if so in which role.
    pub(super) fn takes(&self, topic: &str, own: bool) -> Option<Role> {
        if self.passive == 0 && (!own || self.no_local == 0) {
            return Some(Role::Responder);
        }
        let mut takes = None;
        for (pattern, flags) in &self.flags {
            if (own && flags.no_local) || !matches(pattern, topic) {
                continue;
            }
            if !flags.passive {
                return Some(Role::Responder);
            }
            let role = if flags.relay { Role::Relay } else { Role::Listener };
            takes = takes.max(Some(role));
        }
        takes
    }

    /// The flags a held pattern was subscribed with.
    pub(super) fn flags_of(&self, pattern: &str) -> SubscriptionFlags {
        self.flags.get(pattern).copied().unwrap_or_default()
    }

    /// Counts a pattern's flags in (`added`) or out.
    fn count(&mut self, flags: SubscriptionFlags, added: bool) {
        let change = |count: &mut usize, set: bool| match (set, added) {
            (false, _) => {}
            (true, true) => *count += 1,
            (true, false) => *count -= 1,
        };
        change(&mut self.passive, flags.passive);
        change(&mut self.no_local, flags.no_local);
    }
}

/// What a client that takes a message is to a request among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Role {
    /// A passive subscriber: it never answers.
    Listener,
    /// A passive subscriber that carries the request on elsewhere and says when no
    /// one there answers.
    Relay,
    /// A subscriber that may answer.
    Responder,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) index: SubscriptionIndex,
    pub(super) sessions: HashMap<SessionId, Entry>,
    by_client: HashMap<Arc<str>, SessionId>,
}

impl Router {
    /// A client id for a client that connects without one. No client can have chosen
    /// it beforehand: it holds this broker's random prefix.
    pub fn anonymous_client_id(&self, session: SessionId) -> String {
        format!("anonymous-{}-{session}", self.ids.prefix())
    }

    pub fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a connected client. A live connection with the same `client_id` is
    /// taken over: it is removed at once and told to close, as MQTT does, so that a
    /// restarted app is never locked out by its half-dead predecessor.
    pub fn register(
        &self,
        session: SessionId,
        info: ClientInfo,
        outbox: Outbox,
        evicted: Arc<Notify>,
    ) -> Result<(), RpcError> {
        if self.is_shutting_down() {
            return Err(RpcError::new(ErrorCode::ShuttingDown, "the broker is shutting down"));
        }
        let client_id = info.client_id.clone();
        let client_type = info.client_type.clone();
        let taken_over = {
            let mut state = self.state.write();
            let previous = state.by_client.insert(client_id.clone(), session);
            let taken_over = previous.and_then(|old| self.remove_locked(&mut state, old));
            let entry = Entry {
                session,
                info,
                connected_at: SystemTime::now(),
                outbox,
                evicted,
                patterns: Vec::new(),
                flags: HashMap::default(),
                passive: 0,
                no_local: 0,
            };
            state.sessions.insert(session, entry);
            taken_over
        };
        if let Some(old) = taken_over {
            old.evicted.notify_one();
            self.leave_queues(old.session, None);
            tracing::info!(client_id = %client_id, "client reconnected; the previous connection is closed");
            self.announce(
                system::CLIENT_DISCONNECTED,
                &json!({"client_id": &*client_id, "reason": "taken over"}),
            );
        }
        tracing::debug!(client_id = %client_id, "client connected");
        self.announce(
            system::CLIENT_CONNECTED,
            &json!({"client_id": &*client_id, "client_type": client_type}),
        );
        Ok(())
    }

    /// Forgets a connection (if it is still the registered one) and announces it.
    pub fn unregister(&self, session: SessionId, reason: &str) {
        let removed = {
            let mut state = self.state.write();
            let removed = self.remove_locked(&mut state, session);
            if let Some(entry) = &removed {
                state.by_client.remove(&entry.info.client_id);
            }
            removed
        };
        // Whatever it had in flight goes back to its queues, and to its channels.
        self.leave_queues(session, None);
        self.end_channel_lease(session);
        if let Some(entry) = removed {
            tracing::debug!(client_id = %entry.info.client_id, reason, "client disconnected");
            self.announce(
                system::CLIENT_DISCONNECTED,
                &json!({"client_id": &*entry.info.client_id, "reason": reason}),
            );
        }
    }

    /// Adds validated patterns (or changes the flags of ones already held), then
    /// queues the retained messages that the newly added ones match.
    pub fn subscribe(
        &self,
        session: SessionId,
        patterns: &[Arc<str>],
        flags: SubscriptionFlags,
    ) -> Result<(), RpcError> {
        let (outbox, added) = self.add_patterns(session, patterns, flags)?;
        self.deliver_retained(&outbox, &added);
        Ok(())
    }

    fn add_patterns(
        &self,
        session: SessionId,
        patterns: &[Arc<str>],
        flags: SubscriptionFlags,
    ) -> Result<(Outbox, Vec<Arc<str>>), RpcError> {
        let mut state = self.state.write();
        let State { index, sessions, .. } = &mut *state;
        let entry = sessions
            .get_mut(&session)
            .ok_or_else(|| RpcError::new(ErrorCode::NotConnected, "not connected"))?;
        let new = patterns.iter().filter(|p| !entry.flags.contains_key(*p)).count();
        if entry.patterns.len() + new > MAX_PATTERNS_PER_CLIENT {
            return Err(RpcError::invalid_params(format!(
                "a client may hold at most {MAX_PATTERNS_PER_CLIENT} patterns"
            )));
        }
        let mut added = Vec::new();
        for pattern in patterns {
            match entry.flags.insert(pattern.clone(), flags) {
                None => {
                    index.insert(session, pattern.clone());
                    entry.patterns.push(pattern.clone());
                    added.push(pattern.clone());
                    self.counters.subscribed.fetch_add(1, Ordering::Relaxed);
                }
                Some(before) => entry.count(before, false),
            }
            entry.count(flags, true);
        }
        Ok((entry.outbox.clone(), added))
    }

    /// Removes patterns; returns those that were subscribed.
    pub fn unsubscribe(&self, session: SessionId, patterns: &[Arc<str>]) -> Vec<Arc<str>> {
        let mut state = self.state.write();
        let State { index, sessions, .. } = &mut *state;
        let Some(entry) = sessions.get_mut(&session) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for pattern in patterns {
            if let Some(flags) = entry.flags.remove(pattern) {
                entry.count(flags, false);
                index.remove(session, pattern);
                removed.push(pattern.clone());
            }
        }
        if !removed.is_empty() {
            entry.patterns.retain(|p| entry.flags.contains_key(p));
            self.counters.unsubscribed.fetch_add(removed.len() as u64, Ordering::Relaxed);
        }
        removed
    }

    pub fn client_count(&self) -> usize {
        self.state.read().sessions.len()
    }

    /// The outbox of a connected client.
    pub(super) fn outbox_of(&self, session: SessionId) -> Result<Outbox, RpcError> {
        let state = self.state.read();
        let entry = state
            .sessions
            .get(&session)
            .ok_or_else(|| RpcError::new(ErrorCode::NotConnected, "not connected"))?;
        Ok(entry.outbox.clone())
    }
}

impl Router {
    fn remove_locked(&self, state: &mut State, session: SessionId) -> Option<Entry> {
        let entry = state.sessions.remove(&session)?;
        for pattern in &entry.patterns {
            state.index.remove(session, pattern);
        }
        self.counters.unsubscribed.fetch_add(entry.patterns.len() as u64, Ordering::Relaxed);
        Some(entry)
    }
}
