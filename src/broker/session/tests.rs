use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use crate::broker::router::Router;
use crate::broker::shutdown::Shutdown;
use crate::broker::transport::{Messages, Peer};
use crate::config::BrokerConfig;

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
    let router = Router::new(config);
    let (_stop, stopping) = broadcast::channel(1);
    let (to_broker, incoming) = mpsc::channel(10_000);
    let (outgoing, mut from_broker) = mpsc::channel(1);
    let session = tokio::spawn(super::run(
        Messages { incoming, outgoing },
        Peer::in_process(),
        router,
        Shutdown::new(stopping),
    ));
    let connect = r#"{"jsonrpc":"2.0","method":"connect","params":{"client_id":"c"},"id":0}"#;
    to_broker.send(Bytes::from(connect)).await.unwrap();
    from_broker.recv().await.unwrap();
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
