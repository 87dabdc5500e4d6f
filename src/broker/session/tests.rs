use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::broker::outbox::{self, OutboxReceiver};
use crate::broker::router::{ClientInfo, Router, SubscriptionFlags};
use crate::broker::shutdown::Shutdown;
use crate::broker::transport::{Messages, Peer};
use crate::config::BrokerConfig;

/// A session over in-process channels (up to `answers` frames from the broker
/// waiting to be read), connected as `client_id`; with the sender that stops it.
async fn connected(
    router: Arc<Router>,
    client_id: &str,
    answers: usize,
) -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>, JoinHandle<()>, broadcast::Sender<()>) {
    let (stop, stopping) = broadcast::channel(1);
    let (to_broker, incoming) = mpsc::channel(10_000);
    let (outgoing, mut from_broker) = mpsc::channel(answers);
    let session = tokio::spawn(super::run(
        Messages { incoming, outgoing },
        Peer::in_process(),
        router,
        Shutdown::new(stopping),
    ));
    let connect =
        format!(r#"{{"jsonrpc":"2.0","method":"connect","params":{{"client_id":"{client_id}"}},"id":0}}"#);
    to_broker.send(Bytes::from(connect)).await.unwrap();
    from_broker.recv().await.unwrap();
    (to_broker, from_broker, session, stop)
}

/// A client registered with the router directly, subscribed to `pattern`: its queue,
/// which nothing reads but the test.
fn subscribed(router: &Router, client_id: &str, pattern: &str) -> OutboxReceiver {
    let session = router.new_session_id();
    let (outbox, queue) = outbox::channel(1000, 1 << 24);
    let info = ClientInfo {
        client_id: client_id.into(),
        client_type: None,
        version: None,
        peer: Peer::in_process(),
    };
    router.register(session, info, outbox, Arc::new(tokio::sync::Notify::new())).unwrap();
    router.subscribe(session, &[pattern.into()], SubscriptionFlags::default()).unwrap();
    queue
}

fn ping(id: u64) -> Bytes {
    Bytes::from(format!(r#"{{"jsonrpc":"2.0","method":"ping","id":{id}}}"#))
}

/// A client that pings is held to the heartbeat timeout, but one that keeps sending
/// while the broker waits for room to answer it (its answers unread for longer than
/// the timeout) is alive all along.
#[tokio::test(start_paused = true)]
async fn a_client_that_keeps_sending_is_not_timed_out_while_its_answers_wait() {
    let config = BrokerConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(3),
        max_queue_size: 2,
        ..BrokerConfig::default()
    };
    let (to_broker, mut from_broker, session, _stop) = connected(Router::new(config), "c", 1).await;
    to_broker.send(ping(1)).await.unwrap();
    from_broker.recv().await.unwrap();
    // 2,000 pings at once, whose answers are not read for 5 s (the session waits for
    // room to answer them), while the client pings again every 500 ms.
    for id in 2..2002 {
        to_broker.send(ping(id)).await.unwrap();
    }
    for id in 5000..5010 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        to_broker.send(ping(id)).await.unwrap();
    }
    drop(to_broker);
    let mut answers = 0;
    while let Some(frame) = from_broker.recv().await {
        let text = String::from_utf8_lossy(&frame);
        assert!(!text.contains("error"), "{text}");
        answers += 1;
    }
    assert_eq!(answers, 2010, "every ping answered, then the connection closed by the client");
    session.await.unwrap();
}

/// A request's deadline is heard even when frames keep coming: a request that timed
/// out is answered before the frames already waiting are all handled.
#[tokio::test(start_paused = true)]
async fn a_request_times_out_while_its_client_keeps_sending() {
    let router = Router::new(BrokerConfig::default());
    // A responder that never answers.
    let mut responder_queue = subscribed(&router, "mute", "svc");

    let (to_broker, mut from_broker, session, _stop) = connected(router, "asker", 20_000).await;
    let request = r#"{"jsonrpc":"2.0","method":"request","params":{"topic":"svc","timeout":60},"id":"r"}"#;
    to_broker.send(Bytes::from(request)).await.unwrap();
    let mut delivered = Vec::new();
    responder_queue.recv_many(&mut delivered, 1).await;
    // 9,000 pings waiting to be read when the request's deadline passes.
    for id in 1..=9000 {
        to_broker.try_send(ping(id)).unwrap();
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    let mut answers_before_timeout = 0;
    loop {
        let frame = from_broker.recv().await.expect("the connection is open");
        let answer: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        if answer["id"] == "r" {
            assert_eq!(answer["error"]["data"]["name"], "TIMEOUT", "{answer}");
            break;
        }
        answers_before_timeout += 1;
    }
    assert!(
        answers_before_timeout <= super::FRAMES_PER_WAKE,
        "{answers_before_timeout} pings were answered before the timeout"
    );
    drop(to_broker);
    while from_broker.recv().await.is_some() {}
    session.await.unwrap();
}

/// A message that arrives while the session waits for room to answer earlier frames
/// carries the time it was read, not the time of the batch before the wait (its ttl
/// counts from then).
#[tokio::test]
async fn a_message_read_after_a_wait_carries_the_time_it_was_read() {
    let router = Router::new(BrokerConfig { max_queue_size: 2, ..BrokerConfig::default() });
    let mut subscriber_queue = subscribed(&router, "sub", "t");
    let (to_broker, mut from_broker, session, _stop) = connected(router, "pub", 1).await;
    // More pings than the connection's queue and its reserve hold: the session waits
    // for room to answer them until they are read.
    for id in 1..=1300 {
        to_broker.send(ping(id)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let publish = r#"{"jsonrpc":"2.0","method":"publish","params":{"topic":"t","payload":1}}"#;
    for _ in 0..10 {
        to_broker.send(Bytes::from(publish)).await.unwrap();
    }
    for _ in 1..=1300 {
        from_broker.recv().await.unwrap();
    }
    let mut delivered = Vec::new();
    while delivered.len() < 10 {
        subscriber_queue.recv_many(&mut delivered, 10).await;
    }
    for delivery in delivered {
        let delivery: serde_json::Value = serde_json::from_slice(&delivery).unwrap();
        let stamped = delivery["params"]["timestamp"].as_f64().unwrap();
        assert!(stamped >= sent, "published at {sent:.3}, stamped {stamped:.3}");
    }
    drop(to_broker);
    while from_broker.recv().await.is_some() {}
    session.await.unwrap();
}
