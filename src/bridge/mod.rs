//! Bridges: chosen topics and requests carried between this broker and NATS or an
//! MQTT server, so that apps on several machines talk through an engine built for
//! that, each machine keeping its own broker and the same client API.
//!
//! - [`config`]: the `[[bridges]]` settings and their checks.
//! - [`mapping`]: topics and patterns to subjects and topic filters, and back.
//! - `local`: the bridge's session on this broker, over the in-process transport.
//! - `nats`, `mqtt`: the far sides.
//! - [`stats`]: per-bridge counters in `status`, the state on `system.bridge.<name>.state`.
//!
//! Loops are cut three ways: the bridge's subscriptions here are `no_local` (it never
//! receives what it published), its connection there does not echo either (NATS
//! `no_echo`, MQTT v5 No Local), and every message carries the id of the broker it
//! entered by and a hop count (headers `mb-origin`, `mb-hops`), so that rings of
//! brokers drop a message that comes back or has crossed `max_hops` bridges.
//! Its subscriptions here are relays: they never make a request look answered, yet
//! a request that only a bridge can carry waits for the far side's answer.

pub mod config;
mod local;
pub mod mapping;
mod mqtt;
mod nats;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;

use self::config::{BridgeKind, BridgeSpec, RuleSpec};
use self::local::{LocalError, LocalLink, LocalMessage};
use self::mapping::Mapping;
use self::stats::{BridgeStats, LinkState};
use crate::broker::InProcessConnector;
use crate::broker::router::{Publish, RELAY_NO_RESPONDERS, Router};
use crate::protocol::rules::{MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_HEADERS};
use crate::protocol::topic::BROKER_SENDER;

pub use self::config::{Direction, validate};

/// The id of the broker a message entered the bridged system by.
pub const ORIGIN_HEADER: &str = "mb-origin";
/// How many bridges a message has crossed.
pub const HOPS_HEADER: &str = "mb-hops";

/// Room in a frame for what surrounds a payload (topic, ids, headers).
const FRAME_OVERHEAD: usize = 1024;
/// Deliveries of a stream rule's queue in flight to JetStream at once.
const STREAM_PREFETCH: usize = 32;

/// One running bridge: its settings, its link to this broker, its counters.
pub(crate) struct Bridge {
    spec: BridgeSpec,
    mappings: Vec<Mapping>,
    link: Arc<LocalLink>,
    stats: Arc<BridgeStats>,
    router: Arc<Router>,
    /// This broker's id, carried in `mb-origin`.
    broker_id: String,
}

/// Where a message from the far side goes here.
struct Imported {
    topic: String,
    payload: Box<RawValue>,
    hops: u32,
}

impl Bridge {
    fn rules(&self) -> impl Iterator<Item = (&RuleSpec, &Mapping)> {
        self.spec.rules.iter().zip(&self.mappings)
    }

    fn queue_name(&self, index: usize) -> String {
        format!("bridge.{}.{index}", self.spec.name)
    }

    /// Subscribes to what the rules carry out: relay subscriptions for plain rules, a
    /// durable queue for each rule that names a stream.
    async fn subscribe_locally(&self) -> Result<(), LocalError> {
        let mut relayed = Vec::new();
        for (index, (rule, mapping)) in self.rules().enumerate() {
            if !rule.direction.exports() {
                continue;
            }
            if rule.stream.is_some() {
                let queue = json!({
                    "patterns": [mapping.local_pattern()],
                    "queue": self.queue_name(index),
                    "durable": true,
                    "prefetch": STREAM_PREFETCH,
                    // A qos=1 publish is confirmed once JetStream has the message.
                    "confirm_on_ack": self.spec.confirm_timeout,
                });
                self.link.call("subscribe", &queue).await?;
            } else {
                relayed.push(mapping.local_pattern());
            }
        }
        if !relayed.is_empty() {
            let params = json!({"patterns": relayed, "passive": true, "no_local": true, "relay": true});
            self.link.call("subscribe", &params).await?;
        }
        Ok(())
    }

    /// The rule, remote name and hop count of a message to carry out, or None when it
    /// is not to be carried (counted).
    fn route_out(&self, message: &LocalMessage) -> Option<(usize, String, u32)> {
        if message.sender == self.link.client_id {
            return None;
        }
        let queue_rule = message.delivery.map(|_| {
            (0..self.spec.rules.len()).find(|&index| self.queue_name(index) == message_queue(message))
        });
        // The first rule that carries the topic out maps it; a plain delivery of a
        // topic that a stream rule owns is left to that rule's queue.
        let index = match queue_rule {
            Some(found) => found?,
            None => {
                let index = self.rules().position(|(rule, mapping)| {
                    rule.direction.exports() && mapping.covers_local(&message.topic)
                })?;
                if self.spec.rules[index].stream.is_some() {
                    return None;
                }
                index
            }
        };
        let hops = message.headers.get(HOPS_HEADER).and_then(|h| h.parse::<u32>().ok()).unwrap_or(0);
        if hops >= self.spec.max_hops {
            self.stats.count(|c| &c.looped);
            return None;
        }
        match self.mappings[index].to_remote(&message.topic) {
            Ok(name) => Some((index, name, hops)),
            Err(why) => {
                self.stats.skipped(&why);
                None
            }
        }
    }

    /// Settles a queue delivery the bridge does not carry (counted by the caller): a
    /// `qos=1` one is rejected, so that its publisher, waiting for the far side to
    /// have it, hears that it is not confirmed.
    async fn not_carried(&self, message: &LocalMessage) {
        let Some(delivery) = message.delivery else { return };
        let _ =
            if message.qos > 0 { self.link.reject(delivery).await } else { self.link.ack(delivery).await };
    }

    /// The topic and payload here of a message from the far side that rule `index`
    /// subscribed to, or None when it is not to be carried (counted).
    fn route_in(
        &self,
        index: usize,
        name: &str,
        origin: Option<&str>,
        hops: Option<&str>,
        payload: &[u8],
    ) -> Option<Imported> {
        let hops = hops.and_then(|h| h.parse::<u32>().ok()).unwrap_or(0);
        if origin == Some(self.broker_id.as_str()) || hops >= self.spec.max_hops {
            self.stats.count(|c| &c.looped);
            return None;
        }
        // Overlapping rules: the first that imports the name carries it, once.
        let first = self
            .rules()
            .position(|(rule, mapping)| rule.direction.imports() && mapping.to_local(name).is_ok());
        if first.is_some_and(|first| first < index) {
            return None;
        }
        let topic = match self.mappings[index].to_local(name) {
            Ok(topic) => topic,
            Err(why) => {
                self.stats.skipped(&why);
                return None;
            }
        };
        if payload.len() + topic.len() + FRAME_OVERHEAD > self.router.config().max_message_size {
            self.stats.count(|c| &c.oversize);
            return None;
        }
        let Some(payload) = json_payload(payload) else {
            self.stats.count(|c| &c.not_json);
            return None;
        };
        Some(Imported { topic, payload, hops: hops + 1 })
    }

    /// Records the link's state and announces a change on its state topic.
    fn set_state(&self, state: LinkState, error: Option<String>) {
        if self.stats.set_state(state, error) {
            tracing::info!(bridge = %self.spec.name, state = state.as_str(), "bridge {}", state.as_str());
            publish_state(&self.router, &self.stats);
        }
    }
}

/// The queue a delivery came from (its `queue` field).
fn message_queue(message: &LocalMessage) -> &str {
    message.queue.as_deref().unwrap_or_default()
}

/// The far side's headers as this broker takes them: at most its limits, `mb-origin`
/// included; others that do not fit are left out.
fn local_headers(headers: &[(String, String)]) -> BTreeMap<&str, &str> {
    headers
        .iter()
        .filter(|(name, value)| {
            (1..=MAX_HEADER_NAME_LEN).contains(&name.len()) && value.len() <= MAX_HEADER_VALUE_LEN
        })
        .take(MAX_HEADERS - 1)
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

fn publish_state(router: &Router, stats: &BridgeStats) {
    if router.is_shutting_down() {
        return;
    }
    let topic = format!("system.bridge.{}.state", stats.name);
    let payload = serde_json::value::to_raw_value(&stats.state_event()).expect("JSON values serialise");
    // Retained, so that whoever subscribes later learns the state at once.
    let _ = router.publish(Publish { retain: true, ..Publish::new(&topic, &payload, BROKER_SENDER) });
}

/// Starts every configured bridge on the current runtime. Each one opens its session
/// here and its link there in the background, and ends when the broker closes its
/// session (the broker is stopping).
pub(crate) fn start(
    router: &Arc<Router>,
    connector: &InProcessConnector,
    specs: &[BridgeSpec],
) -> Vec<JoinHandle<()>> {
    specs
        .iter()
        .map(|spec| {
            let stats = BridgeStats::new(&spec.name, spec.kind.as_str(), spec.shown_url());
            router.bridges().add(stats.clone());
            publish_state(router, &stats);
            let (router, connector, spec) = (router.clone(), connector.clone(), spec.clone());
            tokio::spawn(async move {
                let name = spec.name.clone();
                let error = serve(router.clone(), connector, spec, stats.clone()).await.err();
                if let Some(error) = &error {
                    tracing::error!(bridge = %name, %error, "the bridge stopped");
                }
                if stats.set_state(LinkState::Stopped, error) {
                    publish_state(&router, &stats);
                }
            })
        })
        .collect()
}

async fn serve(
    router: Arc<Router>,
    connector: InProcessConnector,
    spec: BridgeSpec,
    stats: Arc<BridgeStats>,
) -> Result<(), String> {
    let connection = connector.connect().await.map_err(|e| e.to_string())?;
    // Without a dot: on a broker with permission rules a client id is one segment.
    let client_id = format!("bridge-{}", spec.name);
    let (link, messages) = LocalLink::open(connection, client_id).await.map_err(|e| e.to_string())?;
    let bridge = Arc::new(Bridge {
        mappings: spec.mappings(),
        broker_id: router.broker_id().to_owned(),
        spec,
        link,
        stats,
        router,
    });
    match bridge.spec.kind {
        BridgeKind::Nats => nats::run(bridge, messages).await,
        BridgeKind::Mqtt => mqtt::run(bridge, messages).await,
    }
}

/// Waits for stopped bridges, each at most `patience`.
pub(crate) async fn join(bridges: Vec<JoinHandle<()>>, patience: Duration) {
    for bridge in bridges {
        let abort = bridge.abort_handle();
        if tokio::time::timeout(patience, bridge).await.is_err() {
            abort.abort();
        }
    }
}

/// A far side's message body as the payload of ours: its JSON text as written, an
/// empty body as `null`; `None` when it is not JSON.
pub(crate) fn json_payload(body: &[u8]) -> Option<Box<RawValue>> {
    if body.is_empty() {
        return Some(RawValue::NULL.to_owned());
    }
    serde_json::from_slice::<&RawValue>(body).ok().map(RawValue::to_owned)
}
