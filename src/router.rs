//! The router: who is connected, who subscribed to what, and where each message goes.
//!
//! All connection tasks share one `Router`. Publishing takes a read lock on the
//! subscription state, encodes the message once and offers the same bytes to every
//! matching client's queue; subscribing and connecting take the write lock briefly.
//! Queues and retained messages have locks of their own, taken only when a message
//! is bound for them, so plain fire-and-forget traffic never waits for them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

use crate::config::BrokerConfig;
use crate::error::{BrokerError, ErrorCode, RpcError};
use crate::ids::MessageIds;
use crate::index::{SessionId, SubscriptionIndex};
use crate::outbox::{Offer, Outbox};
use crate::protocol::message::Delivery;
use crate::queue::{DeadLetter, Join, Queues, Refusal, StoredMessage};
use crate::store::{Op, Store};
use crate::topic::matches;

/// The `sender` of messages the broker publishes itself.
pub const BROKER_SENDER: &str = "broker";
/// Reply addresses are `_internal.reply.<n>`.
pub const REPLY_PREFIX: &str = "_internal.reply.";
/// Most patterns one client may hold, so one client cannot grow the index without bound.
pub const MAX_PATTERNS_PER_CLIENT: usize = 10_000;
/// Most topics with a retained message.
pub const MAX_RETAINED: usize = 100_000;

/// Who a connected client says it is.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: Arc<str>,
    pub client_type: Option<String>,
    pub version: Option<String>,
}

struct Entry {
    session: SessionId,
    info: ClientInfo,
    connected_at: SystemTime,
    outbox: Outbox,
    /// Woken when another connection takes this client's id over.
    evicted: Arc<Notify>,
    /// In subscription order.
    patterns: Vec<Arc<str>>,
    pattern_set: HashSet<Arc<str>>,
}

#[derive(Default)]
struct State {
    index: SubscriptionIndex,
    sessions: HashMap<SessionId, Entry>,
    by_client: HashMap<Arc<str>, SessionId>,
}

/// Broker-wide counters, reported by `status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub late_replies: AtomicU64,
    pub no_responders: AtomicU64,
    pub timeouts: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub connections_open: AtomicUsize,
    pub protocol_errors: AtomicU64,
}

/// A request's reply address and its requester, waiting.
struct AwaitedReply {
    /// The random token in the reply address.
    token: u64,
    requester: oneshot::Sender<Box<RawValue>>,
}

/// A message to route.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// Chosen by the publisher (already validated), else generated here.
    pub message_id: Option<&'a str>,
    pub topic: &'a str,
    pub payload: &'a RawValue,
    pub sender: &'a str,
    pub reply_to: Option<&'a str>,
    pub ttl: Option<f64>,
    /// 1: the publisher wants to know once the message is stored in every durable
    /// queue it matches (see [`Published::stored`]).
    pub qos: u8,
    /// Keep it as the topic's retained message (an empty payload clears it).
    pub retain: bool,
}

impl<'a> Publish<'a> {
    /// A plain message: no reply address, no ttl, qos 0, not retained.
    pub fn new(topic: &'a str, payload: &'a RawValue, sender: &'a str) -> Publish<'a> {
        Publish { message_id: None, topic, payload, sender, reply_to: None, ttl: None, qos: 0, retain: false }
    }
}

#[derive(Debug, Serialize)]
pub struct Published {
    pub message_id: String,
    /// Clients and queues the message was queued for.
    pub recipients: usize,
    /// Completes once the message is committed to the store, for a `qos=1` message
    /// that went into durable queues backed by one.
    #[serde(skip)]
    pub stored: Option<oneshot::Receiver<Result<(), String>>>,
    /// Queues that refused the message, and why.
    #[serde(skip)]
    pub full: Vec<(Arc<str>, Refusal)>,
}

pub struct Router {
    config: BrokerConfig,
    local_addr: Mutex<Option<SocketAddr>>,
    state: RwLock<State>,
    /// Requests waiting for a reply, by sequence number.
    replies: Mutex<HashMap<u64, AwaitedReply>>,
    next_reply: AtomicU64,
    next_session: AtomicU64,
    ids: MessageIds,
    started: Instant,
    shutting_down: AtomicBool,
    pub counters: Counters,
    queues: Mutex<Queues>,
    /// Set once any queue exists: until then publishing never looks at them.
    has_queues: AtomicBool,
    /// The last retained message of each topic.
    retained: Mutex<BTreeMap<String, Arc<StoredMessage>>>,
    /// The store behind `queues`, reachable without their lock.
    store: Option<Arc<Store>>,
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn raw(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("JSON values always serialise")
}

impl Router {
    /// A router with everything in memory (`data_dir` is not looked at).
    pub fn new(config: BrokerConfig) -> Arc<Router> {
        let mut queues = Queues::new(None, config.max_memory);
        for spec in &config.queues {
            queues.configure(spec.clone());
        }
        Self::build(config, queues, BTreeMap::new())
    }

    /// A router whose durable queues and retained messages live in the configured
    /// `data_dir` (restored from it), or in memory without one.
    pub fn open(config: BrokerConfig) -> Result<Arc<Router>, BrokerError> {
        let Some(dir) = config.data_dir.clone() else {
            return Ok(Self::new(config));
        };
        let (store, restored) = Store::open(&dir, config.fsync)?;
        let store = Arc::new(store);
        let path = store.path().display().to_string();
        let mut retained = BTreeMap::new();
        for (topic, record) in &restored.retained {
            let message =
                StoredMessage::from_record(record).map_err(|e| crate::store::StoreError::Corrupt {
                    path: path.clone().into(),
                    detail: format!("the retained message of {topic:?} cannot be read: {e}"),
                })?;
            retained.insert(topic.clone(), Arc::new(message));
        }
        let mut queues = Queues::new(Some(store), config.max_memory);
        let restored_queues = restored.queues.len();
        queues.restore(restored, &config.queues, &path)?;
        tracing::info!(queues = restored_queues, retained = retained.len(), "restored from {path}");
        Ok(Self::build(config, queues, retained))
    }

    fn build(
        config: BrokerConfig,
        queues: Queues,
        retained: BTreeMap<String, Arc<StoredMessage>>,
    ) -> Arc<Router> {
        Arc::new(Router {
            has_queues: AtomicBool::new(!queues.is_empty()),
            store: queues.store().cloned(),
            queues: Mutex::new(queues),
            retained: Mutex::new(retained),
            config,
            local_addr: Mutex::new(None),
            state: RwLock::new(State::default()),
            replies: Mutex::new(HashMap::new()),
            next_reply: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            ids: MessageIds::new(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn set_local_addr(&self, addr: SocketAddr) {
        *self.local_addr.lock() = Some(addr);
    }

    /// A client id for a client that connects without one. No client can have chosen
    /// it beforehand: it holds this broker's random prefix.
    pub fn anonymous_client_id(&self, session: SessionId) -> String {
        format!("anonymous-{}-{session}", self.ids.prefix())
    }

    pub fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
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
            let taken_over = previous.and_then(|old| Self::remove_locked(&mut state, old));
            state.sessions.insert(
                session,
                Entry {
                    session,
                    info,
                    connected_at: SystemTime::now(),
                    outbox,
                    evicted,
                    patterns: Vec::new(),
                    pattern_set: HashSet::new(),
                },
            );
            taken_over
        };
        if let Some(old) = taken_over {
            old.evicted.notify_one();
            self.leave_queues(old.session, None);
            tracing::info!(client_id = %client_id, "client reconnected; the previous connection is closed");
            self.announce(
                "system.client.disconnected",
                &json!({"client_id": &*client_id, "reason": "taken over"}),
            );
        }
        tracing::debug!(client_id = %client_id, "client connected");
        self.announce(
            "system.client.connected",
            &json!({"client_id": &*client_id, "client_type": client_type}),
        );
        Ok(())
    }

    /// Forgets a connection (if it is still the registered one) and announces it.
    pub fn unregister(&self, session: SessionId, reason: &str) {
        let removed = {
            let mut state = self.state.write();
            let removed = Self::remove_locked(&mut state, session);
            if let Some(entry) = &removed {
                state.by_client.remove(&entry.info.client_id);
            }
            removed
        };
        // Whatever it had in flight goes back to its queues.
        self.leave_queues(session, None);
        if let Some(entry) = removed {
            tracing::debug!(client_id = %entry.info.client_id, reason, "client disconnected");
            self.announce(
                "system.client.disconnected",
                &json!({"client_id": &*entry.info.client_id, "reason": reason}),
            );
        }
    }

    fn remove_locked(state: &mut State, session: SessionId) -> Option<Entry> {
        let entry = state.sessions.remove(&session)?;
        for pattern in &entry.patterns {
            state.index.remove(session, pattern);
        }
        Some(entry)
    }

    /// Adds validated patterns, then queues the retained messages that the newly
    /// added ones match.
    pub fn subscribe(&self, session: SessionId, patterns: &[Arc<str>]) -> Result<(), RpcError> {
        let (outbox, added) = self.add_patterns(session, patterns)?;
        self.deliver_retained(&outbox, &added);
        Ok(())
    }

    fn add_patterns(
        &self,
        session: SessionId,
        patterns: &[Arc<str>],
    ) -> Result<(Outbox, Vec<Arc<str>>), RpcError> {
        let mut state = self.state.write();
        let State { index, sessions, .. } = &mut *state;
        let entry = sessions
            .get_mut(&session)
            .ok_or_else(|| RpcError::new(ErrorCode::NotConnected, "not connected"))?;
        let new = patterns.iter().filter(|p| !entry.pattern_set.contains(*p)).count();
        if entry.patterns.len() + new > MAX_PATTERNS_PER_CLIENT {
            return Err(RpcError::invalid_params(format!(
                "a client may hold at most {MAX_PATTERNS_PER_CLIENT} patterns"
            )));
        }
        let mut added = Vec::new();
        for pattern in patterns {
            if entry.pattern_set.insert(pattern.clone()) {
                index.insert(session, pattern.clone());
                entry.patterns.push(pattern.clone());
                added.push(pattern.clone());
            }
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
        let removed: Vec<Arc<str>> =
            patterns.iter().filter(|p| entry.pattern_set.remove(*p)).cloned().collect();
        for pattern in &removed {
            index.remove(session, pattern);
        }
        if !removed.is_empty() {
            entry.patterns.retain(|p| entry.pattern_set.contains(p));
        }
        removed
    }

    /// Routes a message: to every matching subscriber, to every queue bound to its
    /// topic, and into the retained store when asked. Refused only for a retained
    /// message when the retained store is full.
    pub fn publish(&self, msg: Publish<'_>) -> Result<Published, RpcError> {
        self.publish_skipping(msg, None)
    }

    fn publish_skipping(&self, msg: Publish<'_>, skip_queue: Option<&str>) -> Result<Published, RpcError> {
        let message_id = msg.message_id.map_or_else(|| self.ids.next(), str::to_owned);
        let timestamp = unix_now();
        // Copied out of the frame only when a queue or the retained store keeps it.
        let keep = || {
            Arc::new(StoredMessage {
                topic: msg.topic.to_owned(),
                payload: msg.payload.to_owned(),
                sender: msg.sender.to_owned(),
                id: message_id.clone(),
                timestamp,
                reply_to: msg.reply_to.map(str::to_owned),
                ttl: msg.ttl,
                qos: msg.qos,
            })
        };
        let retained = msg.retain.then(keep);
        if let Some(message) = &retained {
            self.retain(message)?;
        }
        let frame = Delivery {
            topic: msg.topic,
            payload: msg.payload,
            sender: msg.sender,
            id: &message_id,
            timestamp,
            reply_to: msg.reply_to,
            ttl: msg.ttl,
            qos: msg.qos,
            retained: false,
            from_queue: None,
        }
        .encode();
        let (mut recipients, congested) = self.fan_out(msg.topic, frame);
        let (mut stored, mut full) = (None, Vec::new());
        if self.has_queues.load(Ordering::Acquire) {
            let (enqueued, dead, store) = {
                let mut queues = self.queues.lock();
                let message = || retained.clone().unwrap_or_else(keep);
                let (enqueued, dead) = queues.enqueue(msg.topic, message, skip_queue, timestamp);
                (enqueued, dead, queues.store().cloned())
            };
            recipients += enqueued.queued;
            if msg.qos > 0 && enqueued.stored > 0 {
                stored = store.map(|store| store.flush());
            }
            if !enqueued.full.is_empty() {
                for (queue, why) in &enqueued.full {
                    tracing::warn!(%queue, topic = msg.topic, "the queue is full ({why}); the message was not kept in it");
                }
            }
            full = enqueued.full;
            self.dead_letter(dead);
        }
        // A retained qos=1 message is confirmed once the retained store has it too.
        if stored.is_none() && msg.retain && msg.qos > 0 {
            stored = self.queues.lock().store().map(|store| store.flush());
        }
        let published = Published { message_id, recipients, stored, full };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        if self.config.log_messages {
            tracing::info!(
                target: "message_broker::messages",
                topic = msg.topic,
                sender = msg.sender,
                id = %published.message_id,
                recipients,
                "{}",
                msg.payload.get()
            );
        }
        for (client_id, dropped) in congested {
            tracing::warn!(%client_id, dropped, "slow consumer: its queue is full, messages for it are dropped");
            self.announce(
                "system.client.slow",
                &json!({
                    "client_id": &*client_id,
                    "dropped": dropped,
                    "queue_size": self.config.max_queue_size,
                }),
            );
        }
        Ok(published)
    }

    /// Keeps `message` as its topic's retained message; an empty payload (`null` or
    /// `""`) clears it instead.
    fn retain(&self, message: &Arc<StoredMessage>) -> Result<(), RpcError> {
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
        if let Some(store) = self.queues.lock().store() {
            let record = (!clear).then(|| message.record());
            store.write(Op::Retain { topic: message.topic.clone(), record });
        }
        Ok(())
    }

    /// Queues the retained messages matching any of `patterns` for `session`, oldest
    /// topic first, marked `retained`.
    fn deliver_retained(&self, outbox: &Outbox, patterns: &[Arc<str>]) {
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
                .filter(|m| !m.is_expired(now) && patterns.iter().any(|p| matches(p, &m.topic)))
                .map(|m| m.frame(true, None))
                .collect()
        };
        for frame in frames {
            if outbox.offer(frame) != Offer::Queued {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Publishes dead letters on their topics (never back into the queue they left).
    fn dead_letter(&self, letters: Vec<DeadLetter>) {
        for letter in letters {
            let msg = Publish { qos: 1, ..Publish::new(&letter.topic, &letter.payload, BROKER_SENDER) };
            if let Err(error) = self.publish_skipping(msg, Some(&letter.queue)) {
                tracing::warn!(queue = %letter.queue, "a dead letter was lost: {error}");
            }
        }
    }

    /// Makes `session` a consumer of a queue (declared on first use).
    pub fn join_queue(&self, session: SessionId, join: Join) -> Result<(), RpcError> {
        let outbox = {
            let state = self.state.read();
            let entry = state
                .sessions
                .get(&session)
                .ok_or_else(|| RpcError::new(ErrorCode::NotConnected, "not connected"))?;
            entry.outbox.clone()
        };
        let dead = self.queues.lock().join(session, outbox, join, unix_now())?;
        self.has_queues.store(true, Ordering::Release);
        self.dead_letter(dead);
        Ok(())
    }

    /// Removes `session` from one queue or all; returns the queues it left.
    pub fn leave_queues(&self, session: SessionId, name: Option<&str>) -> Vec<Arc<str>> {
        if !self.has_queues.load(Ordering::Acquire) {
            return Vec::new();
        }
        let (left, dead) = self.queues.lock().leave(session, name, unix_now());
        self.dead_letter(dead);
        left
    }

    /// Acknowledges (`ack`) or rejects deliveries of `session`; returns how many it held.
    pub fn settle(&self, session: SessionId, tags: &[u64], ack: bool, requeue: bool) -> usize {
        let (settled, dead) = self.queues.lock().settle(session, tags, ack, requeue, unix_now());
        self.dead_letter(dead);
        settled
    }

    /// Deletes a queue with its messages; `None` when there is no such queue.
    pub fn delete_queue(&self, name: &str) -> Option<usize> {
        self.queues.lock().delete(name)
    }

    /// Takes messages a queue asked the store for (see [`Queues::loaded`]).
    pub fn loaded(&self, loaded: crate::store::Loaded) {
        let dead = self.queues.lock().loaded(loaded, unix_now());
        self.dead_letter(dead);
    }

    /// The store behind durable queues, if any.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Periodic upkeep: expires messages past their ttl and retries deliveries that
    /// found no room.
    pub fn tick(&self) {
        let now = unix_now();
        if self.has_queues.load(Ordering::Acquire) {
            let dead = self.queues.lock().tick(now);
            self.dead_letter(dead);
        }
        let expired: Vec<String> = {
            let mut retained = self.retained.lock();
            let expired: Vec<String> =
                retained.iter().filter(|(_, m)| m.is_expired(now)).map(|(t, _)| t.clone()).collect();
            for topic in &expired {
                retained.remove(topic);
            }
            expired
        };
        if !expired.is_empty()
            && let Some(store) = self.queues.lock().store()
        {
            for topic in expired {
                store.write(Op::Retain { topic, record: None });
            }
        }
    }

    /// Commits what the store still has queued and closes it.
    pub fn close_store(&self) {
        let store = self.queues.lock().store().cloned();
        if let Some(store) = store {
            store.close();
        }
    }

    /// Offers `frame` to each matching client; returns how many queued it and the
    /// clients that just became congested.
    fn fan_out(&self, topic: &str, frame: Bytes) -> (usize, Vec<(Arc<str>, u64)>) {
        let mut targets = Vec::new();
        let mut congested = Vec::new();
        let mut queued = 0;
        let state = self.state.read();
        state.index.collect(topic, &mut targets);
        for session in targets {
            let Some(entry) = state.sessions.get(&session) else {
                continue;
            };
            match entry.outbox.offer(frame.clone()) {
                Offer::Queued => queued += 1,
                Offer::Dropped { newly_congested } => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    if newly_congested {
                        let dropped = entry.outbox.stats().dropped.load(Ordering::Relaxed);
                        congested.push((entry.info.client_id.clone(), dropped));
                    }
                }
                Offer::Closed => {}
            }
        }
        self.counters.delivered.fetch_add(queued as u64, Ordering::Relaxed);
        (queued, congested)
    }

    /// Publishes a broker event on a system topic (not while shutting down, when
    /// every client is leaving anyway).
    fn announce(&self, topic: &str, payload: &Value) {
        if self.is_shutting_down() {
            return;
        }
        self.publish_system(topic, payload);
    }

    pub fn publish_system(&self, topic: &str, payload: &Value) {
        let payload = raw(payload);
        // Only a retained message can be refused, and system events are not retained.
        let _ = self.publish(Publish::new(topic, &payload, BROKER_SENDER));
    }

    /// Marks the broker as stopping and tells every subscriber, before any
    /// connection is closed.
    pub fn begin_shutdown(&self, reason: &str) {
        self.publish_system("system.broker.shutdown", &json!({"reason": reason}));
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Publishes a request with a fresh reply address. Fails at once when no client
    /// is subscribed to the topic: nobody could ever answer.
    pub fn request(
        self: &Arc<Self>,
        msg: Publish<'_>,
        timeout: Duration,
    ) -> Result<(Published, PendingReply), RpcError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let seq = self.next_reply.fetch_add(1, Ordering::Relaxed);
        // The random token keeps other clients from guessing, and answering, the
        // address of someone else's request.
        let token = RandomState::new().hash_one(seq);
        let reply_to = format!("{REPLY_PREFIX}{seq}.{token:016x}");
        let (tx, rx) = oneshot::channel();
        self.replies.lock().insert(seq, AwaitedReply { token, requester: tx });
        let published = match self.publish(Publish { reply_to: Some(&reply_to), ..msg }) {
            Ok(published) => published,
            Err(error) => {
                self.replies.lock().remove(&seq);
                return Err(error);
            }
        };
        if published.recipients == 0 {
            self.replies.lock().remove(&seq);
            self.counters.no_responders.fetch_add(1, Ordering::Relaxed);
            return Err(RpcError::new(
                ErrorCode::NoResponders,
                format!("no responders: no client is subscribed to {:?}", msg.topic),
            ));
        }
        let pending = PendingReply { router: self.clone(), seq, rx, timeout, topic: msg.topic.to_owned() };
        Ok((published, pending))
    }

    /// Hands a reply to the waiting requester. An unknown or already answered reply
    /// address is counted as a late reply and discarded: the first answer wins.
    pub fn reply(&self, reply_to: &str, payload: &RawValue) -> Published {
        let address = reply_to.strip_prefix(REPLY_PREFIX).and_then(|rest| rest.split_once('.'));
        let waiter = address
            .and_then(|(seq, token)| Some((seq.parse::<u64>().ok()?, u64::from_str_radix(token, 16).ok()?)))
            .and_then(|(seq, token)| {
                let mut replies = self.replies.lock();
                match replies.get(&seq) {
                    Some(awaited) if awaited.token == token => replies.remove(&seq).map(|a| a.requester),
                    _ => None,
                }
            });
        let delivered = waiter.is_some_and(|tx| tx.send(payload.to_owned()).is_ok());
        let counter = if delivered { &self.counters.replies } else { &self.counters.late_replies };
        counter.fetch_add(1, Ordering::Relaxed);
        Published {
            message_id: self.ids.next(),
            recipients: usize::from(delivered),
            stored: None,
            full: Vec::new(),
        }
    }

    pub fn client_count(&self) -> usize {
        self.state.read().sessions.len()
    }

    /// The broker's status, as answered to `status` and to requests on `status`.
    pub fn status(&self) -> Value {
        let state = self.state.read();
        let mut clients: Vec<(&Entry, Value)> = state
            .sessions
            .values()
            .map(|entry| {
                let stats = entry.outbox.stats();
                let connected_at =
                    entry.connected_at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                let value = json!({
                    "client_id": &*entry.info.client_id,
                    "client_type": entry.info.client_type,
                    "version": entry.info.version,
                    "connected_at": connected_at,
                    "subscriptions": entry.patterns.iter().map(|p| &**p).collect::<Vec<_>>(),
                    "queued": entry.outbox.len(),
                    "queued_bytes": stats.bytes.load(Ordering::Relaxed),
                    "delivered": stats.delivered.load(Ordering::Relaxed),
                    "dropped": stats.dropped.load(Ordering::Relaxed),
                });
                (entry, value)
            })
            .collect();
        clients.sort_by_key(|(entry, _)| entry.connected_at);
        let c = &self.counters;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let addr = *self.local_addr.lock();
        let (queues, totals, data_dir, (memory_used, max_memory)) = {
            let queues = self.queues.lock();
            let data_dir = queues.store().map(|s| s.path().display().to_string());
            (queues.status(), queues.totals(), data_dir, queues.memory())
        };
        let retained = self.retained.lock().len();
        json!({
            "broker_version": crate::VERSION,
            "host": addr.map(|a| a.ip().to_string()),
            "port": addr.map(|a| a.port()),
            "uptime": self.started.elapsed().as_secs_f64(),
            "client_count": state.sessions.len(),
            "clients": clients.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "subscription_count": state.index.len(),
            "messages": {
                "published": load(&c.published),
                "delivered": load(&c.delivered),
                "dropped": load(&c.dropped),
                "requests": load(&c.requests),
                "replies": load(&c.replies),
                "late_replies": load(&c.late_replies),
                "no_responders": load(&c.no_responders),
                "timeouts": load(&c.timeouts),
                "retained": retained,
                "queued": totals.enqueued,
                "acked": totals.acked,
                "redelivered": totals.redelivered,
                "dead_lettered": totals.dead_lettered,
                "expired": totals.expired,
                "refused_by_full_queues": totals.dropped,
            },
            "queues": queues,
            "persistence": {
                "store": data_dir,
                "fsync": self.config.fsync,
            },
            "memory": {
                "queued_bytes": memory_used,
                "max_memory": max_memory,
            },
            "connections": {
                "open": c.connections_open.load(Ordering::Relaxed),
                "accepted": load(&c.connections_accepted),
                "rejected": load(&c.connections_rejected),
                "protocol_errors": load(&c.protocol_errors),
            },
            "limits": {
                "max_connections": self.config.max_connections,
                "max_message_size": self.config.max_message_size,
                "max_queue_size": self.config.max_queue_size,
                "max_queue_bytes": self.config.max_queue_bytes,
                "heartbeat_interval": self.config.heartbeat_interval.as_secs_f64(),
                "heartbeat_timeout": self.config.heartbeat_timeout.as_secs_f64(),
            },
        })
    }
}

/// A request waiting for its first reply.
pub struct PendingReply {
    router: Arc<Router>,
    seq: u64,
    rx: oneshot::Receiver<Box<RawValue>>,
    timeout: Duration,
    topic: String,
}

impl PendingReply {
    pub async fn wait(mut self) -> Result<Box<RawValue>, RpcError> {
        match tokio::time::timeout(self.timeout, &mut self.rx).await {
            Ok(Ok(payload)) => Ok(payload),
            _ => {
                self.router.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(RpcError::new(
                    ErrorCode::Timeout,
                    format!("request timed out: no reply on {:?} within {:?}", self.topic, self.timeout),
                ))
            }
        }
    }
}

impl Drop for PendingReply {
    /// However the wait ends (reply, timeout, or the requester leaving), the reply
    /// address is retired.
    fn drop(&mut self) {
        self.router.replies.lock().remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{self, OutboxReceiver};

    fn connect(router: &Router, client_id: &str) -> (SessionId, OutboxReceiver, Arc<Notify>) {
        let session = router.new_session_id();
        let (outbox, rx) = outbox::channel(16, 1 << 20);
        let evicted = Arc::new(Notify::new());
        let info = ClientInfo { client_id: client_id.into(), client_type: None, version: None };
        router.register(session, info, outbox, evicted.clone()).unwrap();
        (session, rx, evicted)
    }

    fn drain(rx: &mut OutboxReceiver) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(frame) = rx.try_recv() {
            frames.push(serde_json::from_slice(&frame).unwrap());
        }
        frames
    }

    fn payload(value: Value) -> Box<RawValue> {
        raw(&value)
    }

    fn publish(router: &Router, topic: &str, value: Value) -> Published {
        let payload = payload(value);
        router.publish(Publish::new(topic, &payload, "test")).unwrap()
    }

    #[test]
    fn fan_out_to_matching_clients_only() {
        let router = Router::new(BrokerConfig::default());
        let mut subscribers: Vec<_> = (0..20).map(|i| connect(&router, &format!("sub{i}"))).collect();
        for (session, _, _) in &subscribers {
            router.subscribe(*session, &["jobs.*".into()]).unwrap();
        }
        let (other, mut other_rx, _) = connect(&router, "other");
        router.subscribe(other, &["scripts.#".into()]).unwrap();

        let published = publish(&router, "jobs.activated", json!({"job_id": "123"}));
        assert_eq!(published.recipients, 20);
        for (_, rx, _) in &mut subscribers {
            let frames = drain(rx);
            let messages: Vec<_> =
                frames.iter().filter(|f| f["params"]["topic"] == "jobs.activated").collect();
            assert_eq!(messages.len(), 1);
            assert_eq!(messages[0]["params"]["payload"]["job_id"], "123");
            assert_eq!(messages[0]["params"]["id"], published.message_id.as_str());
        }
        assert!(drain(&mut other_rx).is_empty());
    }

    #[test]
    fn unsubscribe_stops_delivery_and_reports_what_was_removed() {
        let router = Router::new(BrokerConfig::default());
        let (session, mut rx, _) = connect(&router, "a");
        router.subscribe(session, &["a.*".into(), "b.*".into()]).unwrap();
        let removed = router.unsubscribe(session, &["a.*".into(), "never.*".into()]);
        assert_eq!(removed, vec![Arc::<str>::from("a.*")]);
        assert_eq!(publish(&router, "a.x", json!(1)).recipients, 0);
        assert_eq!(publish(&router, "b.x", json!(2)).recipients, 1);
        assert_eq!(drain(&mut rx).len(), 1);
    }

    #[test]
    fn take_over_evicts_the_old_connection_and_its_subscriptions() {
        let router = Router::new(BrokerConfig::default());
        let (watcher, mut watcher_rx, _) = connect(&router, "watcher");
        router.subscribe(watcher, &["system.client.*".into()]).unwrap();
        let (old, _old_rx, evicted) = connect(&router, "app");
        router.subscribe(old, &["jobs.*".into()]).unwrap();
        let (_new, _new_rx, _) = connect(&router, "app");

        assert_eq!(router.client_count(), 2);
        assert_eq!(publish(&router, "jobs.x", json!(null)).recipients, 0, "old subscriptions are gone");
        // The eviction left a permit: the old connection's task wakes up and closes.
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            tokio::time::timeout(Duration::from_secs(1), evicted.notified()).await.unwrap();
        });
        router.unregister(old, "connection closed");
        let events: Vec<(String, String)> = drain(&mut watcher_rx)
            .iter()
            .map(|f| {
                (
                    f["params"]["topic"].as_str().unwrap().to_owned(),
                    f["params"]["payload"]["client_id"].to_string(),
                )
            })
            .collect();
        assert_eq!(
            events,
            vec![
                ("system.client.connected".into(), "\"app\"".into()),
                ("system.client.disconnected".into(), "\"app\"".into()),
                ("system.client.connected".into(), "\"app\"".into()),
            ],
            "the old connection's own close is not announced twice"
        );
    }

    #[test]
    fn slow_consumer_is_announced_once_and_others_still_receive() {
        let config = BrokerConfig { max_queue_size: 3, ..Default::default() };
        let router = Router::new(config);
        let (watcher, mut watcher_rx, _) = connect(&router, "watcher");
        router.subscribe(watcher, &["system.client.slow".into()]).unwrap();
        let session = router.new_session_id();
        let (outbox, _slow_rx) = outbox::channel(3, 1 << 20);
        let info = ClientInfo { client_id: "slow".into(), client_type: None, version: None };
        router.register(session, info, outbox, Arc::new(Notify::new())).unwrap();
        router.subscribe(session, &["data".into()]).unwrap();
        let (fast, mut fast_rx, _) = connect(&router, "fast");
        router.subscribe(fast, &["data".into()]).unwrap();

        for i in 0..10 {
            publish(&router, "data", json!(i));
            drain(&mut fast_rx);
        }
        assert_eq!(router.counters.dropped.load(Ordering::Relaxed), 7);
        let status = router.status();
        let slow = status["clients"].as_array().unwrap().iter().find(|c| c["client_id"] == "slow").unwrap();
        assert_eq!(slow["dropped"], 7);
        let slow_events = drain(&mut watcher_rx);
        assert_eq!(slow_events.len(), 1, "{slow_events:?}");
        assert_eq!(slow_events[0]["params"]["payload"]["client_id"], "slow");
    }

    #[tokio::test]
    async fn request_reply_no_responders_and_timeout() {
        let router = Router::new(BrokerConfig::default());
        let payload = payload(json!({"id": "saw1"}));
        let msg = Publish::new("scripts.status", &payload, "req");

        let err = router.request(msg, Duration::from_secs(5)).err().unwrap();
        assert_eq!(err.code, ErrorCode::NoResponders);

        let (responder, mut rx, _) = connect(&router, "responder");
        router.subscribe(responder, &["scripts.*".into()]).unwrap();
        let (_, pending) = router.request(msg, Duration::from_secs(5)).unwrap();
        let delivered = drain(&mut rx);
        let reply_to = delivered[0]["params"]["reply_to"].as_str().unwrap().to_owned();
        assert!(reply_to.starts_with(REPLY_PREFIX));
        assert_eq!(router.reply(&reply_to, &self::payload(json!({"running": true}))).recipients, 1);
        assert_eq!(router.reply(&reply_to, &self::payload(json!(2))).recipients, 0, "the first reply wins");
        assert_eq!(pending.wait().await.unwrap().get(), r#"{"running":true}"#);

        let (_, pending) = router.request(msg, Duration::from_millis(20)).unwrap();
        assert_eq!(pending.wait().await.unwrap_err().code, ErrorCode::Timeout);
        assert_eq!(router.counters.timeouts.load(Ordering::Relaxed), 1);
    }
}
