//! The router without sockets: fan-out, take-over, slow consumers, requests.

use std::time::Duration;

use tokio::sync::Notify;

use super::*;
use crate::broker::outbox::{self, OutboxReceiver};
use crate::broker::transport::Peer;
use crate::error::{ErrorCode, ResponderFailure};
use crate::protocol::topic::REPLY_PREFIX;

fn connect(router: &Router, client_id: &str) -> (SessionId, OutboxReceiver, Arc<Notify>) {
    let session = router.new_session_id();
    let (outbox, rx) = outbox::channel(16, 1 << 20);
    let evicted = Arc::new(Notify::new());
    let info = ClientInfo {
        client_id: client_id.into(),
        client_type: None,
        version: None,
        peer: Peer::in_process(),
    };
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

fn publish(router: &Router, topic: &str, value: Value) -> Published<'static> {
    let payload = payload(value);
    let p = router.publish(Publish::new(topic, &payload, "test")).unwrap();
    Published {
        message_id: p.message_id.into_owned().into(),
        recipients: p.recipients,
        responders: p.responders,
        relays: p.relays,
        stored: p.stored,
        awaiting_ack: p.awaiting_ack,
        full: p.full,
    }
}

#[test]
fn fan_out_to_matching_clients_only() {
    let router = Router::new(BrokerConfig::default());
    let mut subscribers: Vec<_> = (0..20).map(|i| connect(&router, &format!("sub{i}"))).collect();
    for (session, _, _) in &subscribers {
        router.subscribe(*session, &["jobs.*".into()], SubscriptionFlags::default()).unwrap();
    }
    let (other, mut other_rx, _) = connect(&router, "other");
    router.subscribe(other, &["scripts.#".into()], SubscriptionFlags::default()).unwrap();

    let published = publish(&router, "jobs.activated", json!({"job_id": "123"}));
    assert_eq!(published.recipients, 20);
    for (_, rx, _) in &mut subscribers {
        let frames = drain(rx);
        let messages: Vec<_> = frames.iter().filter(|f| f["params"]["topic"] == "jobs.activated").collect();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["params"]["payload"]["job_id"], "123");
        assert_eq!(messages[0]["params"]["id"], &*published.message_id);
    }
    assert!(drain(&mut other_rx).is_empty());
}

#[test]
fn unsubscribe_stops_delivery_and_reports_what_was_removed() {
    let router = Router::new(BrokerConfig::default());
    let (session, mut rx, _) = connect(&router, "a");
    router.subscribe(session, &["a.*".into(), "b.*".into()], SubscriptionFlags::default()).unwrap();
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
    router.subscribe(watcher, &["system.client.*".into()], SubscriptionFlags::default()).unwrap();
    let (old, _old_rx, evicted) = connect(&router, "app");
    router.subscribe(old, &["jobs.*".into()], SubscriptionFlags::default()).unwrap();
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
    router.subscribe(watcher, &["system.client.slow".into()], SubscriptionFlags::default()).unwrap();
    let session = router.new_session_id();
    let (outbox, _slow_rx) = outbox::channel(3, 1 << 20);
    let info =
        ClientInfo { client_id: "slow".into(), client_type: None, version: None, peer: Peer::in_process() };
    router.register(session, info, outbox, Arc::new(Notify::new())).unwrap();
    router.subscribe(session, &["data".into()], SubscriptionFlags::default()).unwrap();
    let (fast, mut fast_rx, _) = connect(&router, "fast");
    router.subscribe(fast, &["data".into()], SubscriptionFlags::default()).unwrap();

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
    router.subscribe(responder, &["scripts.*".into()], SubscriptionFlags::default()).unwrap();
    let pending = router.request(msg, Duration::from_secs(5)).unwrap();
    let delivered = drain(&mut rx);
    let reply_to = delivered[0]["params"]["reply_to"].as_str().unwrap().to_owned();
    assert!(reply_to.starts_with(REPLY_PREFIX));
    assert_eq!(router.reply(&reply_to, &self::payload(json!({"running": true}))).recipients, 1);
    assert_eq!(router.reply(&reply_to, &self::payload(json!(2))).recipients, 0, "the first reply wins");
    assert_eq!(pending.wait().await.unwrap().get(), r#"{"running":true}"#);

    let pending = router.request(msg, Duration::from_millis(20)).unwrap();
    assert_eq!(pending.wait().await.unwrap_err().code, ErrorCode::Timeout);
    assert_eq!(router.counters.timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_responder_failure_is_the_requesters_error_and_the_first_answer() {
    let router = Router::new(BrokerConfig::default());
    let (responder, mut rx, _) = connect(&router, "svc");
    router.subscribe(responder, &["svc.*".into()], SubscriptionFlags::default()).unwrap();
    let payload = payload(json!(1));
    let pending =
        router.request(Publish::new("svc.divide", &payload, "req"), Duration::from_secs(5)).unwrap();
    let delivered = drain(&mut rx);
    let reply_to = delivered[0]["params"]["reply_to"].as_str().unwrap().to_owned();
    let failure = ResponderFailure {
        kind: "ZeroDivisionError".into(),
        message: "division by zero".into(),
        responder: "svc".into(),
    };
    assert_eq!(router.reply_failure(&reply_to, failure.clone()).recipients, 1);
    assert_eq!(router.reply(&reply_to, &self::payload(json!(2))).recipients, 0, "the failure came first");
    let error = pending.wait().await.unwrap_err();
    assert_eq!(error.code, ErrorCode::ResponderError);
    assert_eq!(error.failure.as_deref(), Some(&failure));
    assert!(error.message.contains("ZeroDivisionError: division by zero"), "{}", error.message);
}

#[test]
fn no_local_subscriptions_skip_their_own_connection() {
    let router = Router::new(BrokerConfig::default());
    let (me, mut mine, _) = connect(&router, "me");
    let (other, mut theirs, _) = connect(&router, "other");
    let flags = SubscriptionFlags { no_local: true, ..SubscriptionFlags::default() };
    router.subscribe(me, &["chat.*".into()], flags).unwrap();
    router.subscribe(other, &["chat.*".into()], flags).unwrap();
    let payload = payload(json!("hi"));
    let published =
        router.publish(Publish { origin: Some(me), ..Publish::new("chat.room", &payload, "me") }).unwrap();
    assert_eq!(published.recipients, 1);
    assert!(drain(&mut mine).is_empty());
    assert_eq!(drain(&mut theirs).len(), 1);
    // A plain subscription of the same connection that also matches still takes it.
    router.subscribe(me, &["chat.#".into()], SubscriptionFlags::default()).unwrap();
    router.publish(Publish { origin: Some(me), ..Publish::new("chat.room", &payload, "me") }).unwrap();
    assert_eq!(drain(&mut mine).len(), 1);
}

#[tokio::test]
async fn passive_subscribers_receive_requests_but_are_no_responders() {
    let router = Router::new(BrokerConfig::default());
    let (watcher, mut watched, _) = connect(&router, "watcher");
    let flags = SubscriptionFlags { passive: true, ..SubscriptionFlags::default() };
    router.subscribe(watcher, &["jobs.#".into()], flags).unwrap();
    let payload = payload(json!({"n": 1}));
    let error =
        router.request(Publish::new("jobs.run", &payload, "asker"), Duration::from_secs(5)).err().unwrap();
    assert_eq!(error.code, ErrorCode::NoResponders);
    assert_eq!(drain(&mut watched).len(), 1, "a passive subscriber still sees the request");
    // Subscribing again without the flag makes it a responder.
    router.subscribe(watcher, &["jobs.#".into()], SubscriptionFlags::default()).unwrap();
    assert!(router.request(Publish::new("jobs.run", &payload, "asker"), Duration::from_secs(5)).is_ok());
}

fn relay_flags() -> SubscriptionFlags {
    SubscriptionFlags { passive: true, no_local: true, relay: true }
}

fn gave_up(kind: &str) -> ResponderFailure {
    ResponderFailure { kind: kind.into(), message: "none there".into(), responder: "bridge".into() }
}

#[tokio::test]
async fn a_request_only_relays_take_waits_and_fails_once_every_relay_gave_up() {
    let router = Router::new(BrokerConfig::default());
    let (first, mut first_rx, _) = connect(&router, "bridge-a");
    let (second, mut second_rx, _) = connect(&router, "bridge-b");
    router.subscribe(first, &["svc.#".into()], relay_flags()).unwrap();
    router.subscribe(second, &["svc.#".into()], relay_flags()).unwrap();
    let payload = payload(json!({}));
    let pending = router.request(Publish::new("svc.x", &payload, "asker"), Duration::from_secs(5)).unwrap();
    let reply_to = |rx: &mut OutboxReceiver| drain(rx)[0]["params"]["reply_to"].as_str().unwrap().to_owned();
    let (address, same) = (reply_to(&mut first_rx), reply_to(&mut second_rx));
    assert_eq!(address, same);
    assert_eq!(
        router.reply_failure(&address, gave_up(RELAY_NO_RESPONDERS)).recipients,
        0,
        "one relay is left"
    );
    router.reply_failure(&address, gave_up(RELAY_NO_RESPONDERS));
    assert_eq!(pending.wait().await.unwrap_err().code, ErrorCode::NoResponders);

    // A relay's answer is an answer like any other.
    let pending = router.request(Publish::new("svc.x", &payload, "asker"), Duration::from_secs(5)).unwrap();
    let address = reply_to(&mut first_rx);
    drain(&mut second_rx);
    router.reply(&address, &payload);
    assert_eq!(pending.wait().await.unwrap().get(), "{}");
}

#[tokio::test]
async fn a_relay_giving_up_never_fails_a_request_a_subscriber_here_may_answer() {
    let router = Router::new(BrokerConfig::default());
    let (relay, mut relayed, _) = connect(&router, "bridge");
    let (responder, mut asked, _) = connect(&router, "service");
    router.subscribe(relay, &["svc.#".into()], relay_flags()).unwrap();
    router.subscribe(responder, &["svc.#".into()], SubscriptionFlags::default()).unwrap();
    let payload = payload(json!(1));
    let pending = router.request(Publish::new("svc.x", &payload, "asker"), Duration::from_secs(5)).unwrap();
    let address = drain(&mut relayed)[0]["params"]["reply_to"].as_str().unwrap().to_owned();
    drain(&mut asked);
    router.reply_failure(&address, gave_up(RELAY_NO_RESPONDERS));
    router.reply(&address, &payload);
    assert_eq!(pending.wait().await.unwrap().get(), "1");
}

#[test]
fn a_relay_is_no_responder_and_its_own_requests_skip_it() {
    let router = Router::new(BrokerConfig::default());
    let (relay, mut relayed, _) = connect(&router, "bridge");
    router.subscribe(relay, &["svc.#".into()], relay_flags()).unwrap();
    let payload = payload(json!(1));
    let own = Publish { origin: Some(relay), ..Publish::new("svc.x", &payload, "bridge") };
    let error = router.request(own, Duration::from_secs(5)).err().unwrap();
    assert_eq!(error.code, ErrorCode::NoResponders, "no_local: a bridge never relays its own request back");
    assert!(drain(&mut relayed).is_empty());
    let published = publish(&router, "svc.x", json!(2));
    assert_eq!((published.recipients, published.responders, published.relays), (1, 0, 1));
}
