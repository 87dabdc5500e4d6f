use serde::Deserialize;
use serde_json::value::RawValue;

use super::*;
use crate::broker::outbox::{self, OutboxReceiver};
use crate::broker::permissions;

fn message(topic: &str, n: u64, ttl: Option<f64>) -> Arc<StoredMessage> {
    Arc::new(StoredMessage {
        topic: topic.into(),
        payload: RawValue::from_string(n.to_string()).unwrap(),
        sender: "test".into(),
        id: format!("m{n}"),
        timestamp: 100.0,
        reply_to: None,
        ttl,
        qos: 1,
        headers: None,
    })
}

fn consumer() -> (Outbox, OutboxReceiver) {
    outbox::channel(100, 1 << 20)
}

fn join(name: &str, patterns: &[&str], durable: bool, prefetch: usize) -> Join {
    Join {
        name: name.into(),
        patterns: patterns.iter().map(|p| Arc::from(*p)).collect(),
        durable,
        prefetch,
        max_length: None,
        max_bytes: None,
        max_deliveries: None,
        dead_letter_topic: None,
        confirm_on_ack: None,
        permissions: Arc::default(),
    }
}

/// `(payload, delivery tag, delivery count)` of each delivery waiting in `rx`.
fn received(rx: &mut OutboxReceiver) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    while let Some(frame) = rx.try_recv() {
        let v: Value = serde_json::from_slice(&frame).unwrap();
        let p = &v["params"];
        out.push((
            p["payload"].as_u64().unwrap(),
            p["delivery"].as_u64().unwrap(),
            p["delivery_count"].as_u64().unwrap(),
        ));
    }
    out
}

#[test]
fn each_message_goes_to_exactly_one_member_in_turn() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, mut a_rx) = consumer();
    let (b, mut b_rx) = consumer();
    queues.join(1, a, join("workers", &["jobs.*"], false, 100), 0.0).unwrap();
    queues.join(2, b, join("workers", &["jobs.*"], false, 100), 0.0).unwrap();
    for n in 0..10 {
        let (enqueued, _) = queues.enqueue("jobs.x", || message("jobs.x", n, None), None, 0.0);
        assert_eq!(enqueued.queued, 1);
    }
    let a_got: Vec<u64> = received(&mut a_rx).iter().map(|r| r.0).collect();
    let b_got: Vec<u64> = received(&mut b_rx).iter().map(|r| r.0).collect();
    assert_eq!(a_got, vec![0, 2, 4, 6, 8]);
    assert_eq!(b_got, vec![1, 3, 5, 7, 9]);
}

#[test]
fn prefetch_holds_back_until_acknowledged() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, mut rx) = consumer();
    queues.join(1, a, join("q", &["t"], true, 2), 0.0).unwrap();
    for n in 0..5 {
        queues.enqueue("t", || message("t", n, None), None, 0.0);
    }
    let first = received(&mut rx);
    assert_eq!(first.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1]);
    let (acked, _) = queues.settle(1, &[first[0].1], true, false, 0.0);
    assert_eq!(acked, 1);
    assert_eq!(received(&mut rx).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
    let (acked, _) = queues.settle(2, &[first[1].1], true, false, 0.0);
    assert_eq!(acked, 0, "another session cannot acknowledge it");
}

#[test]
fn a_lost_consumer_hands_back_its_messages_in_order_then_dead_letters() {
    let mut queues = Queues::new(None, usize::MAX);
    let mut spec = join("q", &["t"], true, 10);
    spec.max_deliveries = Some(2);
    let (a, mut a_rx) = consumer();
    queues.join(1, a, spec.clone(), 0.0).unwrap();
    for n in 0..3 {
        queues.enqueue("t", || message("t", n, None), None, 0.0);
    }
    assert_eq!(received(&mut a_rx).len(), 3);
    let (left, dead) = queues.leave(1, None, 0.0);
    assert_eq!((left.len(), dead.len()), (1, 0));

    let (b, mut b_rx) = consumer();
    queues.join(2, b, spec.clone(), 0.0).unwrap();
    let again = received(&mut b_rx);
    assert_eq!(again.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(), vec![(0, 2), (1, 2), (2, 2)]);
    let (_, dead) = queues.settle(2, &[again[1].1], false, true, 0.0);
    assert_eq!(dead.len(), 1, "the second delivery was the last");
    assert_eq!(dead[0].topic, "dead_letter.q");
    let letter: Value = serde_json::from_str(dead[0].payload.get()).unwrap();
    assert_eq!((letter["reason"].as_str(), letter["payload"].as_u64()), (Some("max_deliveries"), Some(1)));
    let (_, dead) = queues.settle(2, &[again[0].1], false, false, 0.0);
    assert_eq!(dead.len(), 1, "a rejection dead-letters at once");
    let status = &queues.status()[0];
    assert_eq!((status["depth"].as_u64(), status["in_flight"].as_u64()), (Some(0), Some(1)));
    assert_eq!(status["dead_lettered"], 2);
}

#[test]
fn a_dead_letter_carries_any_payload_as_written() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, mut rx) = consumer();
    queues.join(1, a, join("q", &["t"], false, 10), 0.0).unwrap();
    let digits = "9".repeat(5000);
    for text in [digits.as_str(), "1e999", r#""\ud800""#] {
        let mut odd = Arc::into_inner(message("t", 0, None)).unwrap();
        odd.payload = RawValue::from_string(text.to_owned()).unwrap();
        queues.enqueue("t", || Arc::new(odd), None, 0.0);
        let frame = rx.try_recv().unwrap();
        // Read without a `Value`, which cannot hold every payload.
        #[derive(Deserialize)]
        struct Frame {
            params: Params,
        }
        #[derive(Deserialize)]
        struct Params {
            delivery: u64,
        }
        let tag = serde_json::from_slice::<Frame>(&frame).unwrap().params.delivery;
        let (_, dead) = queues.settle(1, &[tag], false, false, 0.0);
        assert!(dead[0].payload.get().contains(&format!(r#""payload":{text}"#)), "{}", dead[0].payload);
    }
}

#[test]
fn a_queue_group_goes_away_with_its_last_member_but_a_durable_queue_stays() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, _rx) = consumer();
    queues.join(1, a.clone(), join("group", &["t"], false, 10), 0.0).unwrap();
    queues.join(1, a, join("durable", &["t"], true, 10), 0.0).unwrap();
    queues.leave(1, None, 0.0);
    let (enqueued, _) = queues.enqueue("t", || message("t", 1, None), None, 0.0);
    assert_eq!(enqueued.queued, 1);
    assert_eq!(queues.status().len(), 1);
    assert_eq!(queues.status()[0]["depth"], 1);
}

#[test]
fn full_queues_refuse_and_expired_messages_are_never_delivered() {
    let mut queues = Queues::new(None, usize::MAX);
    let mut spec = join("q", &["t"], true, 10);
    spec.max_length = Some(2);
    let (a, _rx) = consumer();
    queues.join(1, a, spec, 0.0).unwrap();
    queues.leave(1, None, 0.0);
    queues.enqueue("t", || message("t", 1, Some(5.0)), None, 0.0);
    queues.enqueue("t", || message("t", 2, None), None, 0.0);
    let (enqueued, _) = queues.enqueue("t", || message("t", 3, None), None, 0.0);
    assert_eq!(enqueued.full.len(), 1);
    let dead = queues.tick(200.0);
    assert_eq!(dead.len(), 1);
    let (b, mut b_rx) = consumer();
    queues.join(2, b, join("q", &["t"], true, 10), 0.0).unwrap();
    assert_eq!(received(&mut b_rx).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
    let totals = queues.totals();
    assert_eq!((totals.expired, totals.dropped), (1, 1));
}

fn big(topic: &str, n: u64, size: usize) -> Arc<StoredMessage> {
    let mut m = Arc::into_inner(message(topic, n, None)).unwrap();
    m.payload = RawValue::from_string(format!("[{n},\"{}\"]", "x".repeat(size))).unwrap();
    Arc::new(m)
}

fn payload_number(frame: &[u8]) -> (u64, u64) {
    let v: Value = serde_json::from_slice(frame).unwrap();
    (v["params"]["payload"][0].as_u64().unwrap(), v["params"]["delivery"].as_u64().unwrap())
}

/// Consumes everything `queues` hands to session 1, acknowledging each, while
/// answering the store's reads; returns the payload numbers in arrival order.
async fn drain_with_loads(
    queues: &mut Queues,
    rx: &mut OutboxReceiver,
    loaded: &mut tokio::sync::mpsc::UnboundedReceiver<Loaded>,
    expected: usize,
) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < expected {
        let mut tags = Vec::new();
        while let Some(frame) = rx.try_recv() {
            let (n, tag) = payload_number(&frame);
            // Those past `expected` stay unacknowledged: still the queue's.
            if got.len() < expected {
                tags.push(tag);
            }
            got.push(n);
        }
        let status = &queues.status()[0];
        assert!(status["memory_bytes"].as_u64().unwrap() <= (WINDOW_BYTES + MAX_UNACKED_BYTES + 8192) as u64);
        if tags.is_empty() {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), loaded.recv()).await;
            queues.loaded(answer.expect("the store answers").unwrap(), 0.0);
        } else {
            queues.settle(1, &tags, true, false, 0.0);
        }
    }
    got
}

#[tokio::test]
async fn a_stored_queue_keeps_a_window_in_memory_and_reads_the_rest_back_in_order() {
    let dir = std::env::temp_dir().join(format!("mb-queue-window-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let count = 3000u64;
    {
        let (store, _) = Store::open(&dir, false).unwrap();
        let mut queues = Queues::new(Some(Arc::new(store)), usize::MAX);
        let (a, _rx) = consumer();
        queues.join(1, a, join("q", &["t"], true, 10), 0.0).unwrap();
        queues.leave(1, None, 0.0);
        for n in 0..count {
            let (enqueued, _) = queues.enqueue("t", || big("t", n, 20_000), None, 0.0);
            assert_eq!(enqueued.queued, 1);
        }
        let status = &queues.status()[0];
        assert_eq!(status["depth"], count);
        assert!(status["memory_bytes"].as_u64().unwrap() <= WINDOW_BYTES as u64, "{status}");
        assert!(status["bytes"].as_u64().unwrap() > count * 20_000);
        // Half of it consumed before a restart.
        let mut loaded = queues.store().unwrap().take_loaded().unwrap();
        let (b, mut rx) = outbox::channel(100, 1 << 30);
        queues.join(1, b, join("q", &["t"], true, 1000), 0.0).unwrap();
        let got = drain_with_loads(&mut queues, &mut rx, &mut loaded, 1500).await;
        assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
        queues.store().unwrap().flush().await.unwrap().unwrap();
    }
    let (store, restored) = Store::open(&dir, false).unwrap();
    let mut loaded = store.take_loaded().unwrap();
    let mut queues = Queues::new(Some(Arc::new(store)), usize::MAX);
    queues.restore(restored, &[], "test").unwrap();
    let status = &queues.status()[0];
    assert_eq!((status["depth"].as_u64(), status["memory_bytes"].as_u64()), (Some(count - 1500), Some(0)));
    let (b, mut rx) = outbox::channel(100, 1 << 30);
    queues.join(1, b, join("q", &["t"], true, 1000), 0.0).unwrap();
    let rest = drain_with_loads(&mut queues, &mut rx, &mut loaded, (count - 1500) as usize).await;
    assert_eq!(rest, (1500..count).collect::<Vec<_>>(), "the unacknowledged ones come back first");
    assert_eq!(queues.status()[0]["depth"], 0);
    drop(queues);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn byte_bounds_refuse_with_their_reason() {
    let mut queues = Queues::new(None, 200_000);
    let mut spec = join("small", &["s"], true, 10);
    spec.max_bytes = Some(50_000);
    let (a, _rx) = consumer();
    queues.join(1, a.clone(), spec, 0.0).unwrap();
    queues.join(1, a, join("big", &["b"], true, 10), 0.0).unwrap();
    queues.leave(1, None, 0.0);
    let refusals = |queues: &mut Queues, topic: &str, n| {
        (0..n).filter_map(|i| queues.enqueue(topic, || big(topic, i, 10_000), None, 0.0).0.full.pop()).count()
    };
    assert_eq!(refusals(&mut queues, "s", 10), 6, "4 fit in 50,000 bytes");
    let (enqueued, _) = queues.enqueue("s", || big("s", 0, 10_000), None, 0.0);
    assert!(matches!(enqueued.full[0].1, Refusal::MaxBytes(50_000)));
    assert_eq!(refusals(&mut queues, "b", 30), 15, "the broker's max_memory is shared");
    let (enqueued, _) = queues.enqueue("b", || big("b", 0, 10_000), None, 0.0);
    assert!(matches!(enqueued.full[0].1, Refusal::Memory(200_000)));
    assert!(queues.memory().0 <= 200_000);
    queues.delete("big", &ClientPermissions::default()).unwrap().unwrap();
    assert!(queues.memory().0 < 50_000, "a deleted queue gives its memory back");
    let (a, _rx) = consumer();
    queues.join(1, a, join("big", &["b"], true, 10), 0.0).unwrap();
    queues.leave(1, None, 0.0);
    assert_eq!(refusals(&mut queues, "b", 10), 0, "room again");
}

#[test]
fn a_consumer_holds_a_bounded_number_of_bytes_unacknowledged() {
    let mut queues = Queues::new(None, usize::MAX);
    let mut spec = join("q", &["t"], true, 1000);
    spec.max_bytes = Some(1 << 30);
    let (a, mut rx) = outbox::channel(100, 1 << 30);
    queues.join(1, a, spec, 0.0).unwrap();
    for n in 0..100 {
        queues.enqueue("t", || big("t", n, 1 << 20), None, 0.0);
    }
    let mut held = 0;
    while rx.try_recv().is_some() {
        held += 1;
    }
    let size = big("t", 0, 1 << 20).size();
    assert_eq!(held, MAX_UNACKED_BYTES.div_ceil(size), "prefetch 1000, but bytes bound it");
}

#[test]
fn purging_drops_ready_messages_and_keeps_bindings_consumers_and_deliveries_in_flight() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, mut rx) = consumer();
    queues.join(1, a, join("q", &["t"], true, 2), 0.0).unwrap();
    for n in 0..5 {
        queues.enqueue("t", || message("t", n, None), None, 0.0);
    }
    let held = received(&mut rx);
    assert_eq!(held.len(), 2, "prefetch 2: three stay ready");
    let memory_before = queues.memory().0;

    assert_eq!(queues.purge("q", &ClientPermissions::default(), 0.0).unwrap(), Some(3));
    let status = &queues.status()[0];
    assert_eq!(
        (status["depth"].as_u64(), status["in_flight"].as_u64(), status["consumers"].as_u64()),
        (Some(0), Some(2), Some(1))
    );
    assert!(queues.memory().0 < memory_before, "the dropped messages give their memory back");
    assert_eq!(queues.purge("q", &ClientPermissions::default(), 0.0).unwrap(), Some(0));
    assert_eq!(queues.purge("none", &ClientPermissions::default(), 0.0).unwrap(), None);

    // The binding and the consumer are still there: a new message is delivered once
    // the consumer has room, after what it held.
    queues.enqueue("t", || message("t", 9, None), None, 0.0);
    queues.settle(1, &[held[0].1], true, false, 0.0);
    assert_eq!(received(&mut rx).iter().map(|r| r.0).collect::<Vec<_>>(), vec![9]);
}

#[test]
fn purging_needs_leave_to_read_what_the_queue_is_bound_to() {
    let rule: permissions::PermissionRule = serde_json::from_value(serde_json::json!(
        {"client": "spy", "subscribe": {"deny": ["secret.#"]}}
    ))
    .unwrap();
    let spy = permissions::Permissions::new(vec![rule]).for_client("spy");
    let mut queues = Queues::new(None, usize::MAX);
    let (a, _rx) = consumer();
    queues.join(1, a, join("vault", &["secret.x"], true, 10), 0.0).unwrap();
    queues.leave(1, None, 0.0);
    queues.enqueue("secret.x", || message("secret.x", 1, None), None, 0.0);
    let error = queues.purge("vault", &spy, 0.0).unwrap_err();
    assert_eq!(error.code, ErrorCode::PermissionDenied);
    assert_eq!(queues.status()[0]["depth"], 1, "nothing was dropped");
}

#[tokio::test]
async fn purging_a_stored_queue_deletes_its_messages_on_disk_but_not_those_in_flight() {
    let dir = std::env::temp_dir().join(format!("mb-queue-purge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // More than the window holds, so that most are only on disk.
    let count = 1000u64;
    let in_flight = {
        let (store, _) = Store::open(&dir, false).unwrap();
        let mut queues = Queues::new(Some(Arc::new(store)), usize::MAX);
        let mut loaded = queues.store().unwrap().take_loaded().unwrap();
        let (a, _rx) = consumer();
        queues.join(1, a, join("q", &["t"], true, 1), 0.0).unwrap();
        queues.leave(1, None, 0.0);
        for n in 0..count {
            queues.enqueue("t", || big("t", n, 20_000), None, 0.0);
        }
        // The consumer takes the whole window, so the queue asks the store for more.
        let (b, mut rx) = outbox::channel(1000, 1 << 30);
        queues.join(2, b, join("q", &["t"], true, 1000), 0.0).unwrap();
        let mut in_flight = 0;
        while rx.try_recv().is_some() {
            in_flight += 1;
        }
        assert!(in_flight > 0 && in_flight < count as usize / 2, "{in_flight}");

        let purged = queues.purge("q", &ClientPermissions::default(), 0.0).unwrap();
        assert_eq!(purged, Some(count as usize - in_flight));
        // The read asked for before the purge brings back messages it dropped.
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), loaded.recv()).await;
        let answer = answer.expect("the store answers").unwrap();
        assert!(!answer.rows.as_ref().unwrap().is_empty());
        queues.loaded(answer, 0.0);
        assert_eq!(queues.status()[0]["depth"], 0, "what was purged stays purged");
        assert!(rx.try_recv().is_none());

        queues.enqueue("t", || big("t", count, 20_000), None, 0.0);
        queues.store().unwrap().flush().await.unwrap().unwrap();
        in_flight
    };
    let (store, restored) = Store::open(&dir, false).unwrap();
    assert_eq!(restored.queues.len(), 1, "the queue stays");
    assert_eq!(restored.queues[0].count, in_flight + 1, "those in flight and the one queued after");
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn joining_with_other_limits_is_refused() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, _rx) = consumer();
    queues.join(1, a.clone(), join("q", &["t"], true, 10), 0.0).unwrap();
    let error = queues.join(2, a.clone(), join("q", &["t"], false, 10), 0.0).unwrap_err();
    assert!(error.message.contains("durable"), "{}", error.message);
    let mut other = join("q", &["t"], true, 10);
    other.max_length = Some(5);
    assert!(queues.join(2, a.clone(), other, 0.0).unwrap_err().message.contains("max_length"));
    assert!(queues.join(2, a, join("bad name", &["t"], true, 10), 0.0).is_err());
}

/// A `qos=1` publish into a `confirm_on_ack` queue, and what its publisher hears.
fn publish_awaiting(queues: &mut Queues, n: u64) -> AwaitedAck {
    let (mut enqueued, _) = queues.enqueue("t", || message("t", n, None), None, 0.0);
    assert_eq!(enqueued.awaiting_ack.len(), 1);
    enqueued.awaiting_ack.pop().unwrap()
}

#[test]
fn confirm_on_ack_answers_the_publisher_when_the_consumer_settles() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, mut rx) = consumer();
    let mut spec = join("q", &["t"], true, 10);
    spec.confirm_on_ack = Some(2.5);
    queues.join(1, a, spec, 0.0).unwrap();
    let mut acked = publish_awaiting(&mut queues, 0);
    let mut rejected = publish_awaiting(&mut queues, 1);
    assert_eq!((&*acked.queue, acked.within), ("q", Duration::from_millis(2500)));
    let tags: Vec<u64> = received(&mut rx).iter().map(|r| r.1).collect();
    assert!(acked.outcome.try_recv().is_err(), "not answered before the acknowledgement");

    queues.settle(1, &[tags[0]], true, false, 0.0);
    assert_eq!(acked.outcome.try_recv().unwrap(), Ok(()));
    queues.settle(1, &[tags[1]], false, false, 0.0);
    let why = rejected.outcome.try_recv().unwrap().unwrap_err();
    assert!(why.contains("left queue \"q\" unacknowledged (rejected)"), "{why}");

    // Handed back by a consumer that left, it still waits; the next one settles it.
    let mut handed_back = publish_awaiting(&mut queues, 2);
    queues.leave(1, None, 0.0);
    let (b, mut b_rx) = consumer();
    queues.join(2, b, join("q", &["t"], true, 10), 0.0).unwrap();
    assert!(handed_back.outcome.try_recv().is_err());
    let tag = received(&mut b_rx)[0].1;
    queues.settle(2, &[tag], true, false, 0.0);
    assert_eq!(handed_back.outcome.try_recv().unwrap(), Ok(()));
}

#[test]
fn confirm_on_ack_waits_only_for_qos1_messages_of_queues_that_ask() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, _a_rx) = consumer();
    let (b, _b_rx) = consumer();
    let mut confirming = join("confirming", &["t"], true, 10);
    confirming.confirm_on_ack = Some(1.0);
    queues.join(1, a, confirming, 0.0).unwrap();
    queues.join(2, b, join("plain", &["t"], true, 10), 0.0).unwrap();
    let (enqueued, _) = queues.enqueue("t", || message("t", 0, None), None, 0.0);
    assert_eq!(enqueued.queued, 2);
    assert_eq!(enqueued.awaiting_ack.iter().map(|a| &*a.queue).collect::<Vec<_>>(), vec!["confirming"]);
    let at_most_once = || {
        let mut m = Arc::into_inner(message("t", 1, None)).unwrap();
        m.qos = 0;
        Arc::new(m)
    };
    let (enqueued, _) = queues.enqueue("t", at_most_once, None, 0.0);
    assert!(enqueued.awaiting_ack.is_empty());
}

#[test]
fn confirm_on_ack_tells_the_publisher_when_its_message_is_purged_or_deleted() {
    let mut queues = Queues::new(None, usize::MAX);
    let mut spec = join("q", &["t"], true, 1);
    spec.confirm_on_ack = Some(1.0);
    let (a, _rx) = consumer();
    queues.join(1, a, spec, 0.0).unwrap();
    let mut in_flight = publish_awaiting(&mut queues, 0);
    let mut ready = publish_awaiting(&mut queues, 1);
    assert_eq!(queues.purge("q", &ClientPermissions::default(), 0.0).unwrap(), Some(1));
    let why = ready.outcome.try_recv().unwrap().unwrap_err();
    assert!(why.contains("queue \"q\" was purged"), "{why}");
    assert!(in_flight.outcome.try_recv().is_err(), "a delivery in flight can still be acknowledged");
    queues.delete("q", &ClientPermissions::default()).unwrap();
    let why = in_flight.outcome.try_recv().unwrap().unwrap_err();
    assert!(why.contains("queue \"q\" was removed"), "{why}");
}

#[test]
fn confirm_on_ack_is_set_by_the_joining_consumer_and_checked() {
    let mut queues = Queues::new(None, usize::MAX);
    let (a, _rx) = consumer();
    queues.join(1, a.clone(), join("q", &["t"], true, 10), 0.0).unwrap();
    let (enqueued, _) = queues.enqueue("t", || message("t", 0, None), None, 0.0);
    assert!(enqueued.awaiting_ack.is_empty());
    let mut spec = join("q", &["t"], true, 10);
    spec.confirm_on_ack = Some(3.0);
    queues.join(1, a.clone(), spec.clone(), 0.0).unwrap();
    assert_eq!(queues.status()[0]["confirm_on_ack"], 3.0);
    publish_awaiting(&mut queues, 1);
    spec.confirm_on_ack = Some(0.0);
    let error = queues.join(1, a, spec, 0.0).unwrap_err();
    assert!(error.message.contains("confirm_on_ack must be more than 0"), "{}", error.message);
}

#[test]
fn confirm_on_ack_tells_the_publisher_when_the_store_cannot_give_its_message_back() {
    use super::dispatch::{Context, Memory, Queue};
    use crate::broker::store::StoredRow;
    let mut spec = QueueSpec::new("q", vec!["t".into()], true);
    spec.confirm_on_ack = Some(1.0);
    let (mut tags, mut next_tag, mut dead) = (HashMap::new(), 0, Vec::new());
    let mut memory = Memory { used: 0, limit: usize::MAX };
    let mut ctx = Context {
        store: None,
        tags: &mut tags,
        next_tag: &mut next_tag,
        dead: &mut dead,
        memory: &mut memory,
        now: 0.0,
    };
    let mut queue = Queue::new(spec, 1, true);
    // Taken into the window, then only on disk, as after a restart.
    let only_on_disk = |queue: &mut Queue, n: u64, ctx: &mut Context<'_>| {
        let awaited = queue.enqueue(&message("t", n, None), ctx).unwrap().expect("a qos=1 publisher waits");
        let item = queue.ready.pop_front().unwrap();
        queue.ready_bytes -= item.size;
        queue.on_disk.count += 1;
        queue.on_disk.bytes += item.size;
        queue.on_disk.after = item.seq - 1;
        (item.seq, awaited)
    };
    let (seq, mut unreadable) = only_on_disk(&mut queue, 0, &mut ctx);
    let row = StoredRow { seq, delivery_count: 0, record: b"not a record".to_vec() };
    queue.loaded(Ok(vec![row]), &mut ctx);
    let why = unreadable.try_recv().unwrap().unwrap_err();
    assert!(why.contains("could not be read back from queue \"q\"'s store"), "{why}");

    let (_, mut missing) = only_on_disk(&mut queue, 1, &mut ctx);
    queue.loaded(Ok(Vec::new()), &mut ctx);
    let why = missing.try_recv().unwrap().unwrap_err();
    assert!(why.contains("lost from queue \"q\"'s store"), "{why}");
    assert!(queue.awaiting_ack.is_empty());
}
