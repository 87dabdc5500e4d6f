//! What each bridge counts and which state it is in, for `status` and for its state
//! topic `system.bridge.<name>.state`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde_json::{Value, json};

use super::mapping::Unmappable;

/// Where a bridge's link to the far side stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected,
    /// Lost; reconnecting with back-off.
    Disconnected,
    /// The broker is stopping, or the bridge gave up on a setting the far side refused.
    Stopped,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
            LinkState::Stopped => "stopped",
        }
    }
}

/// Counters of one bridge.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages carried from here to the far side, and from there to here.
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Requests carried each way, and those the far side had no responder for.
    pub requests_out: AtomicU64,
    pub requests_in: AtomicU64,
    pub no_responders: AtomicU64,
    /// Messages confirmed by JetStream (or the MQTT server at QoS 1).
    pub confirmed: AtomicU64,
    /// Skipped: a name the other side cannot express, or a reserved one.
    pub unmappable: AtomicU64,
    pub reserved: AtomicU64,
    /// Skipped: larger than the other side accepts.
    pub oversize: AtomicU64,
    /// Skipped: a payload that is not JSON (our messages carry JSON).
    pub not_json: AtomicU64,
    /// Skipped: the message came back to the broker it left, or crossed `max_hops`.
    pub looped: AtomicU64,
    /// Sends that failed (the far side or this broker refused them).
    pub errors: AtomicU64,
    pub reconnects: AtomicU64,
}

/// A bridge's counters and state.
#[derive(Debug)]
pub struct BridgeStats {
    pub name: String,
    pub kind: &'static str,
    pub url: String,
    pub counters: Counters,
    state: Mutex<(LinkState, Option<String>)>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl BridgeStats {
    pub fn new(name: &str, kind: &'static str, url: String) -> Arc<BridgeStats> {
        Arc::new(BridgeStats {
            name: name.to_owned(),
            kind,
            url,
            counters: Counters::default(),
            state: Mutex::new((LinkState::Connecting, None)),
        })
    }

    pub fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64) {
        bump(counter(&self.counters));
    }

    pub fn skipped(&self, why: &Unmappable) {
        match why {
            Unmappable::Reserved(_) => bump(&self.counters.reserved),
            Unmappable::Invalid(_) => bump(&self.counters.unmappable),
        }
    }

    /// Records a new state; true when it changed.
    pub fn set_state(&self, state: LinkState, error: Option<String>) -> bool {
        let mut current = self.state.lock();
        let changed = current.0 != state;
        if changed && state == LinkState::Connected && current.0 == LinkState::Disconnected {
            bump(&self.counters.reconnects);
        }
        *current = (state, error.or_else(|| if changed { None } else { current.1.take() }));
        changed
    }

    pub fn state(&self) -> LinkState {
        self.state.lock().0
    }

    /// The payload of `system.bridge.<name>.state`.
    pub fn state_event(&self) -> Value {
        let (state, error) = self.state.lock().clone();
        json!({"name": self.name, "kind": self.kind, "url": self.url, "state": state.as_str(), "error": error})
    }

    /// This bridge in `status`.
    pub fn status(&self) -> Value {
        let c = &self.counters;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let mut value = self.state_event();
        value["messages"] = json!({
            "sent": load(&c.sent),
            "received": load(&c.received),
            "requests_out": load(&c.requests_out),
            "requests_in": load(&c.requests_in),
            "no_responders": load(&c.no_responders),
            "confirmed": load(&c.confirmed),
            "errors": load(&c.errors),
        });
        value["skipped"] = json!({
            "unmappable": load(&c.unmappable),
            "reserved": load(&c.reserved),
            "oversize": load(&c.oversize),
            "not_json": load(&c.not_json),
            "looped": load(&c.looped),
        });
        value["reconnects"] = json!(load(&c.reconnects));
        value
    }
}

/// The bridges of one broker, as `status` lists them.
#[derive(Debug, Default)]
pub struct Registry(Mutex<Vec<Arc<BridgeStats>>>);

impl Registry {
    pub fn add(&self, stats: Arc<BridgeStats>) {
        self.0.lock().push(stats);
    }

    pub fn status(&self) -> Value {
        Value::Array(self.0.lock().iter().map(|bridge| bridge.status()).collect())
    }
}
