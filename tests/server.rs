//! The broker's methods driven over a real socket with raw frames, and over an
//! in-process connection, as a client in any language would see them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use message_broker::{BrokerConfig, BrokerHandle, ErrorCode, InProcessConnection};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Every wait in these tests is bounded by this.
const PATIENCE: Duration = Duration::from_secs(5);

/// A runtime folder of this test's own, short enough for a socket path.
fn runtime_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mb-test-{}-{n}", std::process::id()))
}

fn config() -> BrokerConfig {
    BrokerConfig { host: "127.0.0.1".into(), port: 0, runtime_dir: Some(runtime_dir()), ..Default::default() }
}

async fn broker() -> BrokerHandle {
    message_broker::start(config()).await.expect("the broker starts")
}

/// Stops the broker and removes its runtime folder (emptied by the stop).
async fn finish(broker: BrokerHandle) {
    let folder = broker.runtime_file().parent().unwrap().to_owned();
    broker.stop("test over").await;
    std::fs::remove_dir(&folder).unwrap();
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// A client speaking length-prefixed frames, over TCP or the Unix socket.
struct Framed(Box<dyn Stream>);

impl Framed {
    async fn open(broker: &BrokerHandle) -> Framed {
        Framed(Box::new(TcpStream::connect(broker.local_addr()).await.unwrap()))
    }

    #[cfg(unix)]
    async fn open_unix(broker: &BrokerHandle) -> Framed {
        let path = broker.local_socket().expect("a Unix socket");
        Framed(Box::new(tokio::net::UnixStream::connect(path).await.unwrap()))
    }

    /// Reads until the broker closes the connection, within the test's patience.
    async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        timeout(PATIENCE, self.0.read_to_end(&mut rest)).await.expect("closed in time").unwrap();
        assert!(rest.is_empty(), "nothing more before the close: {rest:?}");
    }

    async fn send(&mut self, message: Value) {
        let body = message.to_string();
        self.0.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
        self.0.write_all(body.as_bytes()).await.unwrap();
    }

    /// The next frame's text, exactly as the broker wrote it.
    async fn next_text(&mut self) -> String {
        timeout(PATIENCE, async {
            let mut len = [0u8; 4];
            self.0.read_exact(&mut len).await.unwrap();
            let mut body = vec![0; u32::from_be_bytes(len) as usize];
            self.0.read_exact(&mut body).await.unwrap();
            String::from_utf8(body).unwrap()
        })
        .await
        .expect("a frame in time")
    }

    async fn next(&mut self) -> Value {
        serde_json::from_str(&self.next_text().await).unwrap()
    }

    /// Sends a call and returns its response.
    async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id})).await;
        let response = self.next().await;
        assert_eq!(response["id"], id, "{response}");
        response
    }

    async fn connect(broker: &BrokerHandle, client_id: &str) -> Framed {
        let mut client = Framed::open(broker).await;
        let response = client.call(0, "connect", json!({"client_id": client_id})).await;
        assert_eq!(response["result"]["client_id"], client_id, "{response}");
        client
    }
}

fn error_code(response: &Value) -> i64 {
    response["error"]["code"].as_i64().unwrap_or_else(|| panic!("not an error: {response}"))
}

#[tokio::test]
async fn publish_reaches_a_subscriber_with_everything_it_was_sent_with() {
    let broker = broker().await;
    let mut subscriber = Framed::connect(&broker, "sub").await;
    let mut publisher = Framed::connect(&broker, "pub").await;
    subscriber.call(1, "subscribe", json!({"patterns": ["jobs.*"]})).await;
    let response = publisher
        .call(
            2,
            "publish",
            json!({"topic": "jobs.run", "payload": {"n": [1, 2.5, "é"]}, "headers": {"trace": "t-1"}}),
        )
        .await;
    assert_eq!(response["result"]["recipients"], 1, "{response}");
    let text = subscriber.next_text().await;
    assert!(text.contains(r#""headers":{"trace":"t-1"}"#), "headers as sent: {text}");
    let message: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(message["method"], "message");
    assert_eq!(message["params"]["topic"], "jobs.run");
    assert_eq!(message["params"]["payload"], json!({"n": [1, 2.5, "é"]}));
    assert_eq!(message["params"]["sender"], "pub");
    finish(broker).await;
}

#[tokio::test]
async fn calls_before_connect_and_unknown_methods_get_their_errors() {
    let broker = broker().await;
    let mut client = Framed::open(&broker).await;
    let early = client.call(1, "subscribe", json!({"patterns": ["a"]})).await;
    assert_eq!(error_code(&early), i64::from(ErrorCode::NotConnected.code()));
    let unknown = client.call(2, "publsh", json!({})).await;
    assert_eq!(error_code(&unknown), i64::from(ErrorCode::MethodNotFound.code()));
    assert!(unknown["error"]["message"].as_str().unwrap().contains("delete_queue"));
    client.call(3, "connect", json!({"client_id": "late"})).await;
    let bad = client.call(4, "publish", json!({"topic": "a", "headers": {"n": 1}})).await;
    assert_eq!(error_code(&bad), i64::from(ErrorCode::InvalidParams.code()));
    finish(broker).await;
}

#[tokio::test]
async fn a_request_only_passive_subscribers_hear_has_no_responders() {
    let broker = broker().await;
    let mut watcher = Framed::connect(&broker, "watcher").await;
    let mut asker = Framed::connect(&broker, "asker").await;
    watcher.call(1, "subscribe", json!({"patterns": ["svc.#"], "passive": true})).await;
    let response = asker.call(2, "request", json!({"topic": "svc.add", "payload": [1, 2]})).await;
    assert_eq!(error_code(&response), i64::from(ErrorCode::NoResponders.code()), "{response}");
    // The passive subscriber saw the request all the same.
    let seen = watcher.next().await;
    assert_eq!(seen["params"]["topic"], "svc.add", "{seen}");
    finish(broker).await;
}

#[tokio::test]
async fn no_local_subscriptions_never_hear_their_own_connection() {
    let broker = broker().await;
    let mut me = Framed::connect(&broker, "me").await;
    let mut other = Framed::connect(&broker, "other").await;
    me.call(1, "subscribe", json!({"patterns": ["chat.*"], "no_local": true})).await;
    me.call(2, "publish", json!({"topic": "chat.room", "payload": "mine"})).await;
    // A marker from another connection, after: the first thing heard must be it.
    other.call(3, "publish", json!({"topic": "chat.room", "payload": "marker"})).await;
    let heard = me.next().await;
    assert_eq!(heard["params"]["payload"], "marker", "{heard}");
    finish(broker).await;
}

#[tokio::test]
async fn queue_deliveries_are_acknowledged_or_redelivered() {
    let broker = broker().await;
    let mut worker = Framed::connect(&broker, "worker").await;
    let mut producer = Framed::connect(&broker, "producer").await;
    worker.call(1, "subscribe", json!({"patterns": ["work"], "queue": "jobs", "prefetch": 1})).await;
    producer.call(2, "publish", json!({"topic": "work", "payload": 1, "qos": 1})).await;
    let first = worker.next().await;
    let tag = first["params"]["delivery"].as_u64().expect("a delivery tag");
    // The redelivery may come before the answer to the nack: it is queued while the
    // nack is carried out.
    worker.send(json!({"jsonrpc": "2.0", "method": "nack", "params": {"deliveries": [tag]}, "id": 3})).await;
    let (one, two) = (worker.next().await, worker.next().await);
    let (nacked, again) = if one.get("id").is_some() { (one, two) } else { (two, one) };
    assert_eq!(nacked["result"]["nacked"], 1, "{nacked}");
    assert_eq!(
        (again["params"]["payload"].as_i64(), again["params"]["delivery_count"].as_i64()),
        (Some(1), Some(2))
    );
    let tag = again["params"]["delivery"].as_u64().unwrap();
    let acked = worker.call(4, "ack", json!({"deliveries": [tag]})).await;
    assert_eq!(acked["result"]["acked"], 1, "{acked}");
    let refused = worker.call(5, "ack", json!({"deliveries": [tag], "requeue": true})).await;
    assert_eq!(error_code(&refused), i64::from(ErrorCode::InvalidParams.code()));
    finish(broker).await;
}

#[tokio::test]
async fn newline_delimited_clients_get_lines_with_headers_kept_on_one_line() {
    let broker = broker().await;
    let stream = TcpStream::connect(broker.local_addr()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut next = async || -> Value {
        let line = timeout(PATIENCE, lines.next_line()).await.expect("a line in time").unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    };
    write
        .write_all(
            b"{\"jsonrpc\":\"2.0\",\"method\":\"connect\",\"params\":{\"client_id\":\"line\"},\"id\":1}\n",
        )
        .await
        .unwrap();
    assert_eq!(next().await["result"]["client_id"], "line");
    write
        .write_all(
            b"{\"jsonrpc\":\"2.0\",\"method\":\"subscribe\",\"params\":{\"patterns\":[\"t\"]},\"id\":2}\n",
        )
        .await
        .unwrap();
    next().await;
    let mut publisher = Framed::connect(&broker, "framed").await;
    // Headers written over several lines by a length-prefixed client.
    let body = "{\"jsonrpc\":\"2.0\",\"method\":\"publish\",\"params\":{\"topic\":\"t\",\"payload\":1,\n\"headers\":{\n\"k\":\"v\"}},\"id\":3}";
    publisher.0.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
    publisher.0.write_all(body.as_bytes()).await.unwrap();
    publisher.next().await;
    let message = next().await;
    assert_eq!(message["params"]["headers"], json!({"k": "v"}), "{message}");
    finish(broker).await;
}

/// An in-process connection runs the same session over a message channel.
struct InProcess(InProcessConnection);

impl InProcess {
    async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        let call = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.0.to_broker.send(Bytes::from(call.to_string())).await.unwrap();
        let response = self.next().await;
        assert_eq!(response["id"], id, "{response}");
        response
    }

    async fn next(&mut self) -> Value {
        let message = timeout(PATIENCE, self.0.from_broker.recv()).await.expect("a message in time");
        serde_json::from_slice(&message.expect("the session is open")).unwrap()
    }
}

#[tokio::test]
async fn a_session_runs_over_an_in_process_message_channel() {
    let broker = broker().await;
    let mut inside = InProcess(broker.connect_in_process().await.unwrap());
    let accepted = inside.call(1, "connect", json!({"client_id": "inside"})).await;
    assert_eq!(accepted["result"]["client_id"], "inside");
    inside.call(2, "subscribe", json!({"patterns": ["news.#"]})).await;
    let mut outside = Framed::connect(&broker, "outside").await;
    outside
        .call(1, "publish", json!({"topic": "news.today", "payload": "hello", "headers": {"lang": "en"}}))
        .await;
    let message = inside.next().await;
    assert_eq!(
        (message["params"]["payload"].as_str(), message["params"]["headers"]["lang"].as_str()),
        (Some("hello"), Some("en"))
    );
    // Batches, errors and status behave as on a socket.
    let status = inside.call(3, "status", json!({})).await;
    assert_eq!(status["result"]["client_count"], 2, "{status}");
    inside.0.to_broker.send(Bytes::from_static(b"not json")).await.unwrap();
    assert_eq!(error_code(&inside.next().await), i64::from(ErrorCode::ParseError.code()));
    let bye = inside.call(4, "disconnect", json!({})).await;
    assert_eq!(bye["result"]["disconnected"], true);
    assert!(timeout(PATIENCE, inside.0.from_broker.recv()).await.unwrap().is_none(), "the session ended");
    finish(broker).await;
}

#[tokio::test]
async fn in_process_connections_hear_the_shutdown_like_any_other() {
    let broker = broker().await;
    let mut inside = InProcess(broker.connect_in_process().await.unwrap());
    inside.call(1, "connect", json!({"client_id": "inside"})).await;
    inside.call(2, "subscribe", json!({"patterns": ["system.broker.*"]})).await;
    let folder = broker.runtime_file().parent().unwrap().to_owned();
    let stopping = tokio::spawn(broker.stop("maintenance"));
    let announced = inside.next().await;
    assert_eq!(announced["params"]["topic"], "system.broker.shutdown", "{announced}");
    let notice = inside.next().await;
    assert_eq!(error_code(&notice), i64::from(ErrorCode::ShuttingDown.code()));
    timeout(PATIENCE, stopping).await.expect("the broker stops in time").unwrap();
    std::fs::remove_dir(&folder).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn the_protocol_runs_over_the_unix_socket_and_needs_no_token_there() {
    let broker = message_broker::start(BrokerConfig { require_token: true, ..config() }).await.unwrap();
    let mut local = Framed::open_unix(&broker).await;
    let accepted = local.call(1, "connect", json!({"client_id": "local"})).await;
    assert_eq!(accepted["result"]["client_id"], "local", "{accepted}");
    local.call(2, "subscribe", json!({"patterns": ["news.*"]})).await;
    let mut remote = Framed::open(&broker).await;
    let token = broker.token().to_owned();
    remote.call(1, "connect", json!({"client_id": "remote", "token": token})).await;
    remote.call(2, "publish", json!({"topic": "news.today", "payload": "hello"})).await;
    let message = local.next().await;
    assert_eq!(
        (message["params"]["payload"].as_str(), message["params"]["sender"].as_str()),
        (Some("hello"), Some("remote"))
    );
    let status = local.call(3, "status", json!({})).await;
    let transports = &status["result"]["security"]["transports"];
    assert_eq!(transports[0]["kind"], "tcp", "{status}");
    assert_eq!(transports[0]["token_required"], true, "{status}");
    assert_eq!(transports[1]["kind"], "unix", "{status}");
    assert_eq!(transports[1]["address"], broker.local_socket().unwrap().as_str(), "{status}");
    finish(broker).await;
}

#[tokio::test]
async fn a_tcp_client_without_the_right_token_is_refused_and_closed() {
    let broker = message_broker::start(BrokerConfig { require_token: true, ..config() }).await.unwrap();
    let unauthorized = i64::from(ErrorCode::Unauthorized.code());
    let mut client = Framed::open(&broker).await;
    for (id, method) in [(1, "ping"), (2, "status"), (3, "subscribe"), (4, "publish")] {
        let refused = client.call(id, method, json!({"patterns": ["a"], "topic": "a"})).await;
        assert_eq!(error_code(&refused), unauthorized, "{method} before connect: {refused}");
    }
    let refused = client.call(5, "connect", json!({"client_id": "nobody"})).await;
    assert_eq!(error_code(&refused), unauthorized, "{refused}");
    client.expect_closed().await;

    let mut wrong = broker.token().to_owned();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    let mut guesser = Framed::open(&broker).await;
    let refused = guesser.call(1, "connect", json!({"client_id": "guesser", "token": wrong})).await;
    assert_eq!(error_code(&refused), unauthorized, "{refused}");
    guesser.expect_closed().await;

    let mut owner = Framed::open(&broker).await;
    let accepted = owner.call(1, "connect", json!({"client_id": "owner", "token": broker.token()})).await;
    assert_eq!(accepted["result"]["client_id"], "owner", "{accepted}");
    finish(broker).await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_runtime_file_tells_the_token_and_socket_until_the_broker_stops() {
    use std::os::unix::fs::PermissionsExt;
    let broker = broker().await;
    let path = broker.runtime_file().to_owned();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(info["token"], broker.token());
    assert_eq!(info["port"], broker.local_addr().port());
    assert_eq!(info["socket"], broker.local_socket().unwrap().as_str());
    assert_eq!(info["require_token"], false);
    // Loopback without require_token: today's clients that send no token still connect.
    let mut plain = Framed::connect(&broker, "plain").await;
    plain.call(1, "ping", json!({})).await;
    let socket = broker.local_socket().unwrap();
    broker.stop("test over").await;
    assert!(!path.exists(), "the runtime file is removed at a clean stop");
    assert!(!std::path::Path::new(&socket).exists(), "and so is the socket");
    std::fs::remove_dir(path.parent().unwrap()).unwrap();
}

/// Publishes written all at once, so that the session finds far more than one batch
/// of them already read (a large message first makes the socket's read buffer
/// large): every one is routed, in order, over a socket and over the in-process
/// channel.
#[tokio::test]
async fn frames_read_together_are_all_handled_in_order() {
    const COUNT: usize = 2_000;
    let broker = broker().await;
    let mut subscriber = Framed::connect(&broker, "subscriber").await;
    subscriber.call(1, "subscribe", json!({"patterns": ["burst.*"]})).await;

    let publish = |topic: &str, payload: Value| {
        json!({"jsonrpc": "2.0", "method": "publish", "params": {"topic": topic, "payload": payload}})
            .to_string()
    };
    let mut socket = Framed::connect(&broker, "socket").await;
    let mut burst = Vec::new();
    let large = std::iter::once(publish("burst.large", json!("x".repeat(600_000))));
    for body in large.chain((0..COUNT).map(|n| publish("burst.tcp", json!(n)))) {
        burst.extend_from_slice(&(body.len() as u32).to_be_bytes());
        burst.extend_from_slice(body.as_bytes());
    }
    socket.0.write_all(&burst).await.unwrap();

    let mut inside = InProcess(broker.connect_in_process().await.unwrap());
    inside.call(1, "connect", json!({"client_id": "inside"})).await;
    let to_broker = inside.0.to_broker.clone();
    let inside_calls: Vec<String> = (0..COUNT).map(|n| publish("burst.inside", json!(n))).collect();
    let sending = tokio::spawn(async move {
        for call in inside_calls {
            to_broker.send(Bytes::from(call)).await.unwrap();
        }
    });
    let mut next =
        std::collections::HashMap::from([("burst.tcp".to_owned(), 0), ("burst.inside".to_owned(), 0)]);
    for _ in 0..=2 * COUNT {
        let message = subscriber.next().await;
        let topic = message["params"]["topic"].as_str().unwrap().to_owned();
        if topic == "burst.large" {
            assert_eq!(next["burst.tcp"], 0, "the large message first on its connection");
            continue;
        }
        let expected = next.get_mut(&topic).unwrap();
        assert_eq!(message["params"]["payload"], *expected, "{topic} in order, none missing");
        *expected += 1;
    }
    sending.await.unwrap();
    finish(broker).await;
}
