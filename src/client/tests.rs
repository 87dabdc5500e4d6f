//! The engine against a real broker on 127.0.0.1.

use std::time::Duration;

use super::*;
use crate::config::BrokerConfig;
use tokio::sync::Notify as TokioNotify;

struct NotifyWaker(Arc<TokioNotify>);

impl Waker for NotifyWaker {
    fn wake(&self) {
        self.0.notify_one();
    }
}

struct Harness {
    client: Client,
    woken: Arc<TokioNotify>,
    seen: Vec<Event>,
}

impl Harness {
    fn start(port: u16, id: &str) -> Harness {
        let woken = Arc::new(TokioNotify::new());
        let mut config = ClientConfig::new(id, "127.0.0.1", port);
        config.reconnect_delay = Duration::from_millis(20);
        let client = Client::start(config, Box::new(NotifyWaker(woken.clone())), &Handle::current());
        Harness { client, woken, seen: Vec::new() }
    }

    /// Waits for the first event that `want` picks out, keeping the others.
    async fn wait<T>(&mut self, mut want: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self.seen.iter().position(|e| want(e).is_some()) {
                return want(&self.seen.remove(at)).unwrap();
            }
            self.seen.extend(self.client.drain(usize::MAX));
            if self.seen.iter().any(|e| want(e).is_some()) {
                continue;
            }
            tokio::time::timeout_at(deadline, self.woken.notified()).await.expect("event in time");
        }
    }
}

async fn broker(port: u16) -> crate::BrokerHandle {
    crate::start(BrokerConfig { host: "127.0.0.1".into(), port, ..Default::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_request_and_reconnect() {
    let server = broker(0).await;
    let port = server.local_addr().port();
    let mut sub = Harness::start(port, "sub");
    let mut publisher = Harness::start(port, "pub");
    sub.wait(|e| matches!(e, Event::Connected).then_some(())).await;
    publisher.wait(|e| matches!(e, Event::Connected).then_some(())).await;

    let call =
        sub.client.subscribe(1, &["jobs.*".into()], SubscriptionFlags::default()).unwrap().expect("sent now");
    sub.wait(|e| matches!(e, Event::Response { call: c, result: Ok(_) } if *c == call).then_some(())).await;
    let id = publisher.client.publish("jobs.done", r#"{"n":1}"#, None).unwrap();
    let message = sub.wait(|e| if let Event::Message(m) = e { Some(m.clone()) } else { None }).await;
    assert_eq!((message.id(), message.payload()), (id.as_str(), r#"{"n":1}"#));
    assert_eq!(message.subscriptions, vec![1]);

    // Request / reply through the broker.
    let call = publisher
        .client
        .call(MethodName::Request, serde_json::json!({"topic": "jobs.ask", "payload": 2}))
        .unwrap();
    let request = sub.wait(|e| if let Event::Message(m) = e { Some(m.clone()) } else { None }).await;
    sub.client.publish(request.reply_to().unwrap(), "4", None).unwrap();
    let answer = publisher
        .wait(|e| match e {
            Event::Response { call: c, result } if *c == call => Some(result.clone()),
            _ => None,
        })
        .await;
    assert_eq!(answer, Ok("4".to_owned()));

    // The broker restarts on the same port: both reconnect, the subscription returns.
    server.stop("restart").await;
    sub.wait(|e| matches!(e, Event::Disconnected { reconnecting: true, .. }).then_some(())).await;
    let _server = broker(port).await;
    sub.wait(|e| matches!(e, Event::Connected).then_some(())).await;
    publisher.wait(|e| matches!(e, Event::Connected).then_some(())).await;
    publisher.client.publish("jobs.again", "true", None).unwrap();
    let message = sub.wait(|e| if let Event::Message(m) = e { Some(m.clone()) } else { None }).await;
    assert_eq!(message.topic(), "jobs.again");

    sub.client.close();
    sub.wait(|e| matches!(e, Event::Closed).then_some(())).await;
}

#[tokio::test]
async fn nobody_listening_fails_after_the_retries() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut client = Harness::start(port, "lonely");
    let reason = client
        .wait(|e| if let Event::ConnectFailed { reason, .. } = e { Some(reason.clone()) } else { None })
        .await;
    assert!(reason.contains("cannot connect"), "{reason}");
    client.wait(|e| matches!(e, Event::Closed).then_some(())).await;
    assert_eq!(client.client.publish("a", "1", None), Err(ClientError::Closed), "nothing is queued in vain");
}
