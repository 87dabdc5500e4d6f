//! The Channels layer methods over a real socket: channels that keep messages for one
//! receiver each, receives that wait, groups, and flush by prefix.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use message_broker::{BrokerConfig, BrokerHandle, ErrorCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Every wait in these tests is bounded by this.
const PATIENCE: Duration = Duration::from_secs(5);

fn runtime_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mb-channels-{}-{n}", std::process::id()))
}

async fn broker() -> BrokerHandle {
    let config = BrokerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        runtime_dir: Some(runtime_dir()),
        ..Default::default()
    };
    message_broker::start(config).await.expect("the broker starts")
}

async fn finish(broker: BrokerHandle) {
    let folder = broker.runtime_file().parent().unwrap().to_owned();
    broker.stop("test over").await;
    std::fs::remove_dir(&folder).unwrap();
}

/// A client speaking length-prefixed frames over TCP.
struct Framed(TcpStream, u64);

impl Framed {
    async fn connect(broker: &BrokerHandle, client_id: &str) -> Framed {
        let mut client = Framed(TcpStream::connect(broker.local_addr()).await.unwrap(), 0);
        let response = client.call("connect", json!({"client_id": client_id})).await;
        assert_eq!(response["result"]["client_id"], client_id, "{response}");
        client
    }

    /// Sends a call without waiting for its answer; returns its id.
    async fn send(&mut self, method: &str, params: Value) -> u64 {
        self.1 += 1;
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": self.1}).to_string();
        self.0.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
        self.0.write_all(body.as_bytes()).await.unwrap();
        self.1
    }

    async fn next(&mut self) -> Value {
        timeout(PATIENCE, async {
            let mut len = [0u8; 4];
            self.0.read_exact(&mut len).await.unwrap();
            let mut body = vec![0; u32::from_be_bytes(len) as usize];
            self.0.read_exact(&mut body).await.unwrap();
            serde_json::from_slice(&body).unwrap()
        })
        .await
        .expect("a frame in time")
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        let response = self.next().await;
        assert_eq!(response["id"], id, "{response}");
        response
    }

    async fn result(&mut self, method: &str, params: Value) -> Value {
        let response = self.call(method, params).await;
        assert!(response.get("error").is_none(), "{response}");
        response["result"].clone()
    }
}

fn error_code(response: &Value) -> i32 {
    response["error"]["code"].as_i64().unwrap_or_else(|| panic!("not an error: {response}")) as i32
}

fn send_params(channel: &str, message: Value, capacity: usize) -> Value {
    json!({"prefix": "asgi", "channel": channel, "message": message, "ttl": 60, "capacity": capacity})
}

fn messages(result: &Value) -> Vec<(String, Value)> {
    result["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["channel"].as_str().unwrap().to_owned(), m["message"].clone()))
        .collect()
}

#[tokio::test]
async fn a_full_channel_refuses_the_sender_at_once_and_each_message_goes_to_one_receiver() {
    let broker = broker().await;
    let mut sender = Framed::connect(&broker, "sender").await;
    let (mut first, mut second) = (Framed::connect(&broker, "a").await, Framed::connect(&broker, "b").await);
    for n in 0..2 {
        sender
            .result("channel_send", send_params("work", json!({"n": n, "bytes": {"$bytes": "AAE="}}), 2))
            .await;
    }
    let refused = sender.call("channel_send", send_params("work", json!({"n": 2}), 2)).await;
    assert_eq!(error_code(&refused), ErrorCode::ChannelFull.code());
    assert_eq!(refused["error"]["data"]["name"], "CHANNEL_FULL", "{refused}");
    let one = first.result("channel_receive", json!({"prefix": "asgi", "channel": "work"})).await;
    let two = second.result("channel_receive", json!({"prefix": "asgi", "channel": "work", "max": 10})).await;
    assert_eq!(messages(&one), vec![("work".to_owned(), json!({"n": 0, "bytes": {"$bytes": "AAE="}}))]);
    assert_eq!(messages(&two).len(), 1);
    assert_eq!(messages(&two)[0].1["n"], 1);
    let expires_in = one["messages"][0]["expires_in"].as_f64().unwrap();
    assert!(expires_in > 50.0 && expires_in <= 60.0, "{expires_in}");
    finish(broker).await;
}

#[tokio::test]
async fn a_waiting_receive_is_answered_by_the_next_send_or_empty_at_its_timeout() {
    let broker = broker().await;
    let mut receiver = Framed::connect(&broker, "receiver").await;
    let mut sender = Framed::connect(&broker, "sender").await;
    let empty = receiver
        .result("channel_receive", json!({"prefix": "asgi", "channel": "p.x!", "timeout": 0.2}))
        .await;
    assert!(messages(&empty).is_empty());
    let id = receiver
        .send("channel_receive", json!({"prefix": "asgi", "channel": "p.x!", "max": 100, "timeout": 5}))
        .await;
    // The receive is registered before the send is read: a ping answered proves it.
    receiver.result("ping", json!({})).await;
    sender.result("channel_send", send_params("p.x!one", json!("hello"), 10)).await;
    let answer = receiver.next().await;
    assert_eq!(answer["id"], id);
    assert_eq!(messages(&answer["result"]), vec![("p.x!one".to_owned(), json!("hello"))]);
    finish(broker).await;
}

/// Receives on `channel` until `count` messages came (each receive waits up to a
/// second, five at most); their values.
async fn receive_all(client: &mut Framed, channel: &str, count: usize) -> Vec<i64> {
    let mut got = Vec::new();
    for _ in 0..5 {
        let result = client
            .result("channel_receive", json!({"prefix": "asgi", "channel": channel, "max": 10, "timeout": 1}))
            .await;
        got.extend(messages(&result).into_iter().map(|(_, m)| m.as_i64().unwrap()));
        if got.len() >= count {
            break;
        }
    }
    got
}

fn tags(result: &Value) -> Vec<u64> {
    result["messages"].as_array().unwrap().iter().map(|m| m["tag"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn what_a_connection_received_and_did_not_acknowledge_goes_back_in_order_when_it_ends() {
    let broker = broker().await;
    let mut sender = Framed::connect(&broker, "sender").await;
    for n in 0..3 {
        sender.result("channel_send", send_params("c", json!(n), 10)).await;
    }
    {
        let mut gone = Framed::connect(&broker, "gone").await;
        let first = gone.result("channel_receive", json!({"prefix": "asgi", "channel": "c", "max": 2})).await;
        let last = gone.result("channel_receive", json!({"prefix": "asgi", "channel": "c"})).await;
        assert_eq!(messages(&last), vec![("c".to_owned(), json!(2))]);
        assert_eq!(
            gone.result("channel_ack", json!({"prefix": "asgi", "tags": tags(&last)})).await,
            json!({"acked": 1})
        );
        // Answered, on the wire, and never read: the connection ends first.
        gone.send("channel_receive", json!({"prefix": "asgi", "channel": "c", "timeout": 5})).await;
        gone.result("ping", json!({})).await;
        sender.result("channel_send", send_params("c", json!(3), 10)).await;
        assert_eq!(tags(&first).len(), 2);
    }
    let mut next = Framed::connect(&broker, "next").await;
    assert_eq!(receive_all(&mut next, "c", 3).await, vec![0, 1, 3]);
    finish(broker).await;
}

#[tokio::test]
async fn a_receive_without_an_id_is_refused_before_it_takes_anything() {
    let broker = broker().await;
    let mut client = Framed::connect(&broker, "layer").await;
    client.result("channel_send", send_params("c", json!(1), 10)).await;
    let body =
        json!({"jsonrpc": "2.0", "method": "channel_receive", "params": {"prefix": "asgi", "channel": "c"}})
            .to_string();
    client.0.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
    client.0.write_all(body.as_bytes()).await.unwrap();
    let kept = client.result("channel_receive", json!({"prefix": "asgi", "channel": "c"})).await;
    assert_eq!(messages(&kept), vec![("c".to_owned(), json!(1))]);
    finish(broker).await;
}

#[tokio::test]
async fn given_back_messages_lead_their_channel_and_excluded_channels_stay_on_the_broker() {
    let broker = broker().await;
    let mut client = Framed::connect(&broker, "layer").await;
    for (channel, n) in [("p!full", 1), ("p!room", 2), ("p!full", 3)] {
        client.result("channel_send", send_params(channel, json!(n), 10)).await;
    }
    let receive = json!({"prefix": "asgi", "channel": "p!", "max": 10, "exclude": ["p!full"]});
    let room = client.result("channel_receive", receive).await;
    assert_eq!(messages(&room), vec![("p!room".to_owned(), json!(2))]);
    let back = json!({"prefix": "asgi", "tags": tags(&room)});
    assert_eq!(client.result("channel_nack", back).await, json!({"returned": 1}));
    let all = client.result("channel_receive", json!({"prefix": "asgi", "channel": "p!", "max": 10})).await;
    let values: Vec<Value> = messages(&all).into_iter().map(|(_, m)| m).collect();
    assert_eq!(values, vec![json!(1), json!(2), json!(3)], "back where it was, by when it was sent");

    let wait = client.send("channel_receive", json!({"prefix": "asgi", "channel": "p!", "timeout": 5})).await;
    client.result("ping", json!({})).await;
    let cancel = client.send("channel_cancel", json!({"prefix": "asgi", "channel": "p!"})).await;
    let mut answers = [client.next().await, client.next().await];
    answers.sort_by_key(|answer| answer["id"].as_u64());
    assert_eq!((answers[0]["id"].as_u64(), answers[1]["id"].as_u64()), (Some(wait), Some(cancel)));
    assert!(messages(&answers[0]["result"]).is_empty(), "{}", answers[0]);
    assert_eq!(answers[1]["result"], json!({"cancelled": 1}));
    finish(broker).await;
}

#[tokio::test]
async fn groups_fan_out_skip_full_members_and_flush_clears_one_prefix() {
    let broker = broker().await;
    let mut client = Framed::connect(&broker, "layer").await;
    for (channel, capacity) in [("a", 10), ("b", 1)] {
        let add =
            json!({"prefix": "asgi", "group": "room", "channel": channel, "ttl": 100, "capacity": capacity});
        client.result("group_add", add).await;
    }
    let message = json!({"prefix": "asgi", "group": "room", "message": {"text": "hi"}, "ttl": 60});
    assert_eq!(
        client.result("group_send", message.clone()).await,
        json!({"members": 2, "sent": 2, "full": 0})
    );
    assert_eq!(client.result("group_send", message).await, json!({"members": 2, "sent": 1, "full": 1}));
    let discard = json!({"prefix": "asgi", "group": "room", "channel": "a"});
    assert_eq!(client.result("group_discard", discard).await, json!({"removed": true}));
    client
        .result(
            "channel_send",
            json!({"prefix": "other", "channel": "a", "message": 1, "ttl": 60, "capacity": 1}),
        )
        .await;

    let status = client.result("status", json!({})).await;
    let channels = &status["channels"];
    assert_eq!(
        (channels["groups"].as_u64(), channels["memberships"].as_u64()),
        (Some(1), Some(1)),
        "{channels}"
    );
    assert_eq!((channels["messages"].as_u64(), channels["group_dropped_full"].as_u64()), (Some(4), Some(1)));

    assert_eq!(
        client.result("channel_flush", json!({"prefix": "asgi"})).await,
        json!({"channels": 2, "groups": 1})
    );
    let kept = client.result("channel_receive", json!({"prefix": "other", "channel": "a"})).await;
    assert_eq!(messages(&kept), vec![("a".to_owned(), json!(1))]);
    let bad = client.call("channel_send", send_params("=+135!", json!(1), 1)).await;
    assert_eq!(error_code(&bad), ErrorCode::InvalidParams.code());
    let bad = client.call("channel_receive", json!({"prefix": "asgi", "channel": "p!local"})).await;
    assert_eq!(error_code(&bad), ErrorCode::InvalidParams.code());
    finish(broker).await;
}
