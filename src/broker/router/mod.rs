//! The router: where each message goes.
//!
//! All connection tasks share one `Router`. Publishing takes a read lock on the
//! subscription state, encodes the message once and offers the same bytes to every
//! matching client's queue; subscribing and connecting take the write lock briefly.
//! Queues and retained messages have locks of their own, taken only when a message
//! is bound for them, so plain fire-and-forget traffic never waits for them.
//!
//! Publishing and fan-out are here; [`registry`] knows who is connected and what
//! they subscribed to, [`connections`] copies that out for monitoring, [`retained`]
//! keeps each topic's last retained message, [`queues`] is the door to queue groups and durable queues, [`requests`] routes
//! replies to their requesters, and [`stats`] counts and reports. [`channels`] is
//! the door to the channels and groups of the Channels layer methods.

mod channels;
mod connections;
mod queues;
mod registry;
mod requests;
mod retained;
mod stats;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::access::Access;
use super::channels::Channels;
use super::monitor::Monitor;
use super::outbox::Offer;
use super::queue::{AwaitedAck, Queues, Refusal, StoredMessage};
use super::store::{Store, StoreError};
use crate::config::BrokerConfig;
use crate::error::{BrokerError, RpcError};
use crate::ids::MessageIds;
use crate::index::SessionId;
use crate::protocol::message::Delivery;
use crate::protocol::topic::{BROKER_SENDER, matches, system};

pub use self::channels::{ChannelReceipt, ChannelWait};
pub use self::connections::Connection;
pub use self::registry::ClientInfo;
use self::registry::{Role, State};
use self::requests::AwaitedReply;
pub use self::requests::{InFlight, PendingReply, RELAY_NO_RESPONDERS, ReplyTo};
pub use self::stats::Counters;
pub use crate::protocol::method::SubscriptionFlags;

/// A message to route.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// Chosen by the publisher (already validated), else generated here.
    pub message_id: Option<&'a str>,
    pub topic: &'a str,
    pub payload: &'a RawValue,
    pub sender: &'a str,
    /// The connection that published it, for subscriptions that skip their own.
    pub origin: Option<SessionId>,
    pub reply_to: Option<&'a str>,
    pub ttl: Option<f64>,
    /// 1: the publisher wants to know once the message is stored in every durable
    /// queue it matches (see [`Published::stored`]).
    pub qos: u8,
    /// Keep it as the topic's retained message (an empty payload clears it).
    pub retain: bool,
    /// A JSON object of strings beside the payload, forwarded as written.
    pub headers: Option<&'a RawValue>,
    /// When the broker received it (seconds since the Unix epoch); `None`: now. A
    /// session gives the time it read the frames that came together.
    pub received_at: Option<f64>,
}

impl<'a> Publish<'a> {
    /// A plain message: no reply address, no ttl, qos 0, not retained, no headers.
    pub fn new(topic: &'a str, payload: &'a RawValue, sender: &'a str) -> Publish<'a> {
        Publish {
            message_id: None,
            topic,
            payload,
            sender,
            origin: None,
            reply_to: None,
            ttl: None,
            qos: 0,
            retain: false,
            headers: None,
            received_at: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Published<'a> {
    /// The publisher's id for the message (borrowed from its call), or one made here.
    pub message_id: Cow<'a, str>,
    /// Clients and queues the message was queued for.
    pub recipients: usize,
    /// Those of the recipients that may answer a request: all but passive subscribers.
    #[serde(skip)]
    pub responders: usize,
    /// Those that are relays (see [`SubscriptionFlags::relay`]).
    #[serde(skip)]
    pub relays: usize,
    /// Completes once the message is committed to the store, for a `qos=1` message
    /// that went into durable queues backed by one.
    #[serde(skip)]
    pub stored: Option<oneshot::Receiver<Result<(), String>>>,
    /// Acknowledgements the confirmation of a `qos=1` message waits for, from queues
    /// with `confirm_on_ack`.
    #[serde(skip)]
    pub awaiting_ack: Vec<AwaitedAck>,
    /// Queues that refused the message, and why.
    #[serde(skip)]
    pub full: Vec<(Arc<str>, Refusal)>,
}

thread_local! {
    /// See [`Router::fan_out`].
    static MATCHED: std::cell::Cell<Vec<SessionId>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest matching buffer kept between messages (a message to more sessions
/// allocates its own).
const MATCHED_KEPT: usize = 4096;

pub struct Router {
    config: BrokerConfig,
    /// Set once the listener is bound; a router without a listener (in tests and
    /// benchmarks) asks no token.
    access: OnceLock<Access>,
    state: RwLock<State>,
    /// Requests waiting for a reply, by sequence number.
    replies: Mutex<std::collections::HashMap<u64, AwaitedReply>>,
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
    /// The tap behind the HTTP listener's topic tree and long-poll, when it is on.
    monitor: OnceLock<Arc<Monitor>>,
    /// Channels and groups of the Channels layer methods, in memory.
    channels: Mutex<Channels>,
    /// The bridges to other engines, for `status`.
    bridges: crate::bridge::stats::Registry,
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
            let message = StoredMessage::from_record(record).map_err(|e| StoreError::Corrupt {
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
            channels: Mutex::new(Channels::new(config.max_memory)),
            config,
            access: OnceLock::new(),
            state: RwLock::new(State::default()),
            replies: Mutex::new(std::collections::HashMap::new()),
            next_reply: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            ids: MessageIds::new(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            counters: Counters::default(),
            monitor: OnceLock::new(),
            bridges: Default::default(),
        })
    }

    /// This broker's random id, which bridges carry in `mb-origin`.
    pub fn broker_id(&self) -> &str {
        self.ids.prefix()
    }

    pub(crate) fn bridges(&self) -> &crate::bridge::stats::Registry {
        &self.bridges
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub(crate) fn set_access(&self, access: Access) {
        let _ = self.access.set(access);
    }

    pub(crate) fn access(&self) -> Option<&Access> {
        self.access.get()
    }

    /// Starts the monitor tap (once; later calls return the same one).
    pub fn enable_monitor(&self) -> Arc<Monitor> {
        self.monitor.get_or_init(|| Arc::new(Monitor::new())).clone()
    }

    pub fn monitor(&self) -> Option<&Arc<Monitor>> {
        self.monitor.get()
    }

    /// This start's random id, the prefix of the message ids it makes.
    pub fn server_id(&self) -> &str {
        self.ids.prefix()
    }

    /// When the broker started, for uptime.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Routes a message: to every matching subscriber, to every queue bound to its
    /// topic, and into the retained store when asked. Refused only for a retained
    /// message when the retained store is full.
    pub fn publish<'a>(&self, msg: Publish<'a>) -> Result<Published<'a>, RpcError> {
        self.publish_skipping(msg, None)
    }

    fn publish_skipping<'a>(
        &self,
        msg: Publish<'a>,
        skip_queue: Option<&str>,
    ) -> Result<Published<'a>, RpcError> {
        let message_id = msg.message_id.map_or_else(|| Cow::Owned(self.ids.next()), Cow::Borrowed);
        let timestamp = msg.received_at.unwrap_or_else(unix_now);
        // Copied out of the frame only when a queue or the retained store keeps it.
        let keep = || {
            Arc::new(StoredMessage {
                topic: msg.topic.to_owned(),
                payload: msg.payload.to_owned(),
                sender: msg.sender.to_owned(),
                id: message_id.clone().into_owned(),
                timestamp,
                reply_to: msg.reply_to.map(str::to_owned),
                ttl: msg.ttl,
                qos: msg.qos,
                headers: msg.headers.map(RawValue::to_owned),
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
            headers: msg.headers,
            retained: false,
            from_queue: None,
        }
        .encode();
        let fanned = self.fan_out(msg.topic, msg.origin, frame);
        let payload_len = msg.payload.get().len() as u64;
        let (mut recipients, mut responders) = (fanned.queued, fanned.responders);
        let relays = fanned.relays;
        let (mut stored, mut full, mut awaiting_ack) = (None, Vec::new(), Vec::new());
        if self.has_queues.load(Ordering::Acquire) {
            let (enqueued, dead) = {
                let mut queues = self.queues.lock();
                let message = || retained.clone().unwrap_or_else(keep);
                queues.enqueue(msg.topic, message, skip_queue, timestamp)
            };
            recipients += enqueued.queued;
            responders += enqueued.queued;
            if msg.qos > 0 && enqueued.stored > 0 {
                stored = self.store.as_ref().map(|store| store.flush());
            }
            for (queue, why) in &enqueued.full {
                tracing::warn!(%queue, topic = msg.topic, "the queue is full ({why}); the message was not kept in it");
            }
            full = enqueued.full;
            awaiting_ack = enqueued.awaiting_ack;
            self.dead_letter(dead);
        }
        // A retained qos=1 message is confirmed once the retained store has it too.
        if stored.is_none() && msg.retain && msg.qos > 0 {
            stored = self.store.as_ref().map(|store| store.flush());
        }
        let published = Published { message_id, recipients, responders, relays, stored, awaiting_ack, full };
        let c = &self.counters;
        c.published.fetch_add(1, Ordering::Relaxed);
        c.published_bytes.fetch_add(payload_len, Ordering::Relaxed);
        if fanned.queued > 0 {
            c.delivered_bytes.fetch_add(payload_len * fanned.queued as u64, Ordering::Relaxed);
            // Read first: the maximum rarely changes, so the cache line stays shared.
            if fanned.queued > c.max_fanout.load(Ordering::Relaxed) {
                c.max_fanout.fetch_max(fanned.queued, Ordering::Relaxed);
            }
        }
        if let Some(monitor) = self.monitor.get() {
            monitor.record(msg.topic, timestamp, &fanned.frame);
        }
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
        for (client_id, dropped) in fanned.congested {
            c.slow_consumers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%client_id, dropped, "slow consumer: its queue is full, messages for it are dropped");
            self.announce(
                system::CLIENT_SLOW,
                &json!({
                    "client_id": &*client_id,
                    "dropped": dropped,
                    "queue_size": self.config.max_queue_size,
                }),
            );
        }
        Ok(published)
    }

    /// Offers `frame` to each matching client.
    fn fan_out(&self, topic: &str, origin: Option<SessionId>, frame: Bytes) -> FanOut {
        // The matching sessions go into a buffer of the routing thread's, kept for its
        // next message (taken out while in use, so a nested publish gets its own).
        let mut targets = MATCHED.take();
        targets.clear();
        let mut fanned = FanOut { frame, queued: 0, responders: 0, relays: 0, congested: Vec::new() };
        let frame = &fanned.frame;
        let state = self.state.read();
        state.index.collect(topic, &mut targets);
        for &session in &targets {
            let Some(entry) = state.sessions.get(&session) else {
                continue;
            };
            let Some(role) = entry.takes(topic, origin == Some(session)) else {
                continue;
            };
            match entry.outbox.offer(frame.clone()) {
                Offer::Queued => {
                    fanned.queued += 1;
                    fanned.responders += usize::from(role == Role::Responder);
                    fanned.relays += usize::from(role == Role::Relay);
                }
                Offer::Dropped { newly_congested } => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    if newly_congested {
                        let dropped = entry.outbox.stats().dropped.load(Ordering::Relaxed);
                        fanned.congested.push((entry.info.client_id.clone(), dropped));
                    }
                }
                Offer::Closed => {}
            }
        }
        self.counters.delivered.fetch_add(fanned.queued as u64, Ordering::Relaxed);
        drop(state);
        if targets.capacity() <= MATCHED_KEPT {
            MATCHED.set(targets);
        }
        fanned
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
        self.publish_system(system::BROKER_SHUTDOWN, &json!({"reason": reason}));
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Periodic upkeep: expires messages past their ttl and retries deliveries that
    /// found no room.
    pub fn tick(&self) {
        let now = unix_now();
        self.tick_queues(now);
        self.expire_retained(now);
        self.tick_channels(now);
    }
}

/// Where one message went among the subscribers.
struct FanOut {
    /// The encoded delivery, shared by every subscriber's queue.
    frame: Bytes,
    queued: usize,
    responders: usize,
    relays: usize,
    /// Clients that just became congested, with what they dropped so far.
    congested: Vec<(Arc<str>, u64)>,
}

/// True when a retained message on `topic` is for a subscriber of one of `patterns`.
fn any_matches(patterns: &[Arc<str>], topic: &str) -> bool {
    patterns.iter().any(|pattern| matches(pattern, topic))
}

#[cfg(test)]
mod tests;
