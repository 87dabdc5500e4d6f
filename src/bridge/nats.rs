//! The NATS side of a bridge, through `async-nats`.
//!
//! One NATS connection per bridge, with `no_echo` so that what the bridge publishes
//! there never comes back to it. Core NATS carries messages at most once; a rule that
//! names a JetStream stream takes its messages from a durable queue here and removes
//! each one only once JetStream has acknowledged it (with the message id as
//! `Nats-Msg-Id`, so that a retry after a lost acknowledgement is not stored twice).

use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, HeaderMap, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, select_all};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use super::local::{LocalError, LocalMessage, Outgoing};
use super::stats::LinkState;
use super::{Bridge, HOPS_HEADER, ORIGIN_HEADER};
use crate::error::ErrorCode;

/// The NATS convention (its services framework) for an error reply.
const SERVICE_ERROR: &str = "Nats-Service-Error";
const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// How long a stopping bridge waits for what it published to reach the server.
const FLUSH_PATIENCE: Duration = Duration::from_secs(1);

/// Deliveries of a stream rule's queue that JetStream has not yet acknowledged.
const JETSTREAM_WINDOW: usize = 64;

fn backoff(attempt: usize, max: Duration) -> Duration {
    let shift = u32::try_from(attempt.min(16)).unwrap_or(16);
    Duration::from_millis(50u64 << shift).min(max)
}

/// Connects in the background; each connection and loss of it is sent to `links`,
/// for the bridge to announce once its subscriptions there are in place.
async fn connect(
    bridge: &Arc<Bridge>,
    links: mpsc::UnboundedSender<LinkState>,
) -> Result<async_nats::Client, String> {
    let spec = &bridge.spec;
    let max_delay = spec.max_reconnect_delay();
    let events = bridge.clone();
    let mut options = ConnectOptions::new()
        .name(format!("message-broker bridge {}", spec.name))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(spec.request_timeout().min(Duration::from_secs(5)))
        .request_timeout(Some(spec.request_timeout()))
        .reconnect_delay_callback(move |attempt| backoff(attempt, max_delay))
        .event_callback(move |event| {
            let bridge = events.clone();
            let links = links.clone();
            async move {
                match event {
                    Event::Connected => {
                        let _ = links.send(LinkState::Connected);
                    }
                    Event::Disconnected => {
                        let _ = links.send(LinkState::Disconnected);
                    }
                    Event::ServerError(error) => {
                        tracing::warn!(bridge = %bridge.spec.name, %error, "NATS server error");
                        bridge.set_state(bridge.stats.state(), Some(error.to_string()));
                    }
                    // Repeated at every failed attempt while the server is away; the
                    // state change says it once.
                    Event::ClientError(error) => {
                        tracing::debug!(bridge = %bridge.spec.name, %error, "NATS client error")
                    }
                    other => tracing::debug!(bridge = %bridge.spec.name, event = %other, "NATS event"),
                }
            }
        });
    if let Some(user) = &spec.username {
        options = options.user_and_password(user.clone(), spec.password.clone().unwrap_or_default());
    }
    if let Some(token) = &spec.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &spec.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("credentials_file {}: {e}", path.display()))?;
    }
    if let Some(path) = &spec.nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|e| format!("nkey_file {}: {e}", path.display()))?;
        options = options.nkey(seed.trim().to_owned());
    }
    let (_, _, tls) = spec.address()?;
    if tls || spec.tls_ca_file.is_some() {
        options = options.require_tls(true);
    }
    if let Some(ca) = &spec.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&spec.tls_cert_file, &spec.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options.connect(spec.url.as_str()).await.map_err(|e| e.to_string())
}

/// Serves the bridge until `messages` ends (the broker closed the bridge's session).
pub(super) async fn run(
    bridge: Arc<Bridge>,
    mut messages: mpsc::Receiver<LocalMessage>,
) -> Result<(), String> {
    let (links, mut link_changes) = mpsc::unbounded_channel();
    let client = connect(&bridge, links).await?;
    let mut incoming: Vec<BoxStream<'static, (usize, async_nats::Message)>> = Vec::new();
    for (index, (rule, mapping)) in bridge.rules().enumerate() {
        if !rule.direction.imports() {
            continue;
        }
        for filter in mapping.remote_filters() {
            let subscriber =
                client.subscribe(filter.clone()).await.map_err(|e| format!("subscribe {filter}: {e}"))?;
            incoming.push(subscriber.map(move |message| (index, message)).boxed());
        }
    }
    let mut incoming = select_all(incoming);
    bridge.subscribe_locally().await.map_err(|e| e.to_string())?;

    let (stop, stopped) = watch::channel(false);
    let (to_jetstream, jetstream_queue) = mpsc::channel(JETSTREAM_WINDOW);
    let jetstream =
        tokio::spawn(confirm_in_jetstream(bridge.clone(), client.clone(), jetstream_queue, stopped));
    let side = NatsSide { bridge: bridge.clone(), client: client.clone() };
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(message) => side.export(message, &to_jetstream).await,
                None => break,
            },
            Some((rule, message)) = incoming.next() => side.import(rule, message).await,
            Some(state) = link_changes.recv() => {
                if state == LinkState::Connected {
                    // A round trip: the server has the bridge's subscriptions when it
                    // is announced as connected.
                    let _ = tokio::time::timeout(FLUSH_PATIENCE, client.flush()).await;
                }
                bridge.set_state(state, None);
            }
        }
    }
    let _ = stop.send(true);
    drop(to_jetstream);
    let _ = jetstream.await;
    // What was published goes out before the connection closes, unless the server is away.
    if client.connection_state() == async_nats::connection::State::Connected {
        let _ = tokio::time::timeout(FLUSH_PATIENCE, client.flush()).await;
    }
    Ok(())
}

/// A message bound for a JetStream stream, and the delivery to acknowledge here
/// once the stream has it.
struct ForStream {
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
    delivery: u64,
}

struct NatsSide {
    bridge: Arc<Bridge>,
    client: async_nats::Client,
}

impl NatsSide {
    async fn export(&self, message: LocalMessage, to_jetstream: &mpsc::Sender<ForStream>) {
        let bridge = &self.bridge;
        let Some((index, subject, hops)) = bridge.route_out(&message) else {
            return bridge.not_carried(&message).await;
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            if name != ORIGIN_HEADER && name != HOPS_HEADER {
                headers.insert(name.as_str(), value.as_str());
            }
        }
        let origin = message.headers.get(ORIGIN_HEADER).cloned().unwrap_or_else(|| bridge.broker_id.clone());
        headers.insert(ORIGIN_HEADER, origin.as_str());
        headers.insert(HOPS_HEADER, (hops + 1).to_string().as_str());
        if message.payload.len() > self.client.server_info().max_payload
            && self.client.server_info().max_payload > 0
        {
            bridge.stats.count(|c| &c.oversize);
            return bridge.not_carried(&message).await;
        }
        let subject = Subject::from(subject);
        if let Some(reply_to) = message.reply_to {
            bridge.stats.count(|c| &c.requests_out);
            let (bridge, client) = (bridge.clone(), self.client.clone());
            let payload = message.payload;
            tokio::spawn(async move {
                let answer = client.request_with_headers(subject, headers, payload).await;
                relay_answer(&bridge, &reply_to, answer).await;
                if let Some(delivery) = message.delivery {
                    let _ = bridge.link.ack(delivery).await;
                }
            });
            return;
        }
        match (message.delivery, bridge.spec.rules[index].stream.is_some()) {
            (Some(delivery), true) => {
                headers.insert("Nats-Msg-Id", message.id.as_str());
                if let Some(stream) = &bridge.spec.rules[index].stream {
                    headers.insert("Nats-Expected-Stream", stream.as_str());
                }
                let _ = to_jetstream
                    .send(ForStream { subject, headers, payload: message.payload, delivery })
                    .await;
            }
            (delivery, _) => {
                match self.client.publish_with_headers(subject, headers, message.payload).await {
                    Ok(()) => bridge.stats.count(|c| &c.sent),
                    Err(error) => {
                        tracing::debug!(bridge = %bridge.spec.name, %error, "NATS publish failed");
                        bridge.stats.count(|c| &c.errors);
                    }
                }
                if let Some(delivery) = delivery {
                    let _ = bridge.link.ack(delivery).await;
                }
            }
        }
    }

    async fn import(&self, index: usize, message: async_nats::Message) {
        let bridge = &self.bridge;
        if message.status.is_some() {
            return;
        }
        let header =
            |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let imported = bridge.route_in(
            index,
            message.subject.as_str(),
            header(ORIGIN_HEADER).as_deref(),
            header(HOPS_HEADER).as_deref(),
            &message.payload,
        );
        let Some(imported) = imported else {
            return;
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(map) = &message.headers {
            for (name, values) in map.iter() {
                let name: &str = name.as_ref();
                if name == HOPS_HEADER || name.starts_with("Nats-") {
                    continue;
                }
                if let Some(value) = values.first() {
                    headers.push((name.to_owned(), value.as_str().to_owned()));
                }
            }
        }
        let hops = imported.hops.to_string();
        let mut outgoing = Outgoing {
            topic: &imported.topic,
            payload: Some(&imported.payload),
            headers: super::local_headers(&headers),
            ..Outgoing::default()
        };
        outgoing.headers.insert(HOPS_HEADER, &hops);
        let Some(reply) = message.reply else {
            match bridge.link.notify("publish", &outgoing).await {
                Ok(()) => bridge.stats.count(|c| &c.received),
                Err(_) => bridge.stats.count(|c| &c.errors),
            }
            return;
        };
        bridge.stats.count(|c| &c.requests_in);
        let timeout = bridge.spec.request_timeout;
        let request =
            serde_json::to_value(&Outgoing { timeout: Some(timeout), ..outgoing }).expect("serialisable");
        let (bridge, client) = (bridge.clone(), self.client.clone());
        tokio::spawn(async move {
            let answer = bridge.link.call("request", &request).await;
            let published = match answer {
                Ok(result) => client.publish(reply, Bytes::from(result.get().to_owned())).await,
                Err(error) => {
                    let (code, text) = service_error(&error);
                    let mut headers = HeaderMap::new();
                    headers.insert(SERVICE_ERROR, text.as_str());
                    headers.insert(SERVICE_ERROR_CODE, code);
                    client.publish_with_headers(reply, headers, Bytes::new()).await
                }
            };
            if published.is_err() {
                bridge.stats.count(|c| &c.errors);
            }
        });
    }
}

/// The NATS services framework's code and text for our error.
fn service_error(error: &LocalError) -> (&'static str, String) {
    let code = if error.is(ErrorCode::NoResponders) {
        "503"
    } else if error.is(ErrorCode::Timeout) {
        "408"
    } else {
        "500"
    };
    (code, error.message.clone())
}

/// Publishes what NATS answered to a local request to its reply address here.
async fn relay_answer(
    bridge: &Bridge,
    reply_to: &str,
    answer: Result<async_nats::Message, async_nats::RequestError>,
) {
    use async_nats::RequestErrorKind;
    let failure = |kind: &str, message: String| serde_json::json!({"type": kind, "message": message});
    let reply = match answer {
        Ok(reply) => {
            let service_error = reply.headers.as_ref().and_then(|h| {
                let code = h.get(SERVICE_ERROR_CODE).map(|v| v.as_str().to_owned());
                let text = h.get(SERVICE_ERROR).map(|v| v.as_str().to_owned());
                (code.is_some() || text.is_some())
                    .then(|| (code.unwrap_or_default(), text.unwrap_or_default()))
            });
            match service_error {
                Some((code, _)) if code == "503" => {
                    bridge.stats.count(|c| &c.no_responders);
                    Outgoing {
                        error: Some(failure(super::RELAY_NO_RESPONDERS, "no responders".into())),
                        ..reply_to_only(reply_to)
                    }
                }
                Some((code, text)) => Outgoing {
                    error: Some(failure("NatsServiceError", format!("{code} {text}").trim().to_owned())),
                    ..reply_to_only(reply_to)
                },
                None => {
                    let payload = if reply.payload.is_empty() {
                        Ok(RawValue::NULL.to_owned())
                    } else {
                        parse_json(&reply.payload)
                    };
                    match payload {
                        Ok(payload) => {
                            let sent = bridge
                                .link
                                .notify(
                                    "publish",
                                    &Outgoing { payload: Some(&payload), ..reply_to_only(reply_to) },
                                )
                                .await;
                            if sent.is_err() {
                                bridge.stats.count(|c| &c.errors);
                            }
                            return;
                        }
                        Err(_) => {
                            bridge.stats.count(|c| &c.not_json);
                            Outgoing {
                                error: Some(failure("NotJson", "the NATS reply is not JSON".into())),
                                ..reply_to_only(reply_to)
                            }
                        }
                    }
                }
            }
        }
        Err(error) => match error.kind() {
            RequestErrorKind::NoResponders => {
                bridge.stats.count(|c| &c.no_responders);
                Outgoing {
                    error: Some(failure(super::RELAY_NO_RESPONDERS, "no responders on NATS".into())),
                    ..reply_to_only(reply_to)
                }
            }
            // The requester's own timeout says it.
            RequestErrorKind::TimedOut => return,
            RequestErrorKind::Other => {
                bridge.stats.count(|c| &c.errors);
                return;
            }
        },
    };
    if bridge.link.notify("publish", &reply).await.is_err() {
        bridge.stats.count(|c| &c.errors);
    }
}

fn reply_to_only(reply_to: &str) -> Outgoing<'_> {
    Outgoing { topic: reply_to, ..Outgoing::default() }
}

fn parse_json(payload: &[u8]) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::from_slice::<&RawValue>(payload).map(RawValue::to_owned)
}

/// Publishes each message of a stream rule to JetStream, retrying with back-off
/// until the stream acknowledges it, and only then acknowledges it here.
async fn confirm_in_jetstream(
    bridge: Arc<Bridge>,
    client: async_nats::Client,
    mut queue: mpsc::Receiver<ForStream>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut context = async_nats::jetstream::new(client);
    context.set_timeout(bridge.spec.request_timeout());
    while let Some(message) = queue.recv().await {
        let mut attempt = 0;
        loop {
            let acknowledged = match context
                .publish_with_headers(
                    message.subject.clone(),
                    message.headers.clone(),
                    message.payload.clone(),
                )
                .await
            {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match acknowledged {
                Ok(_) => {
                    bridge.stats.count(|c| &c.sent);
                    bridge.stats.count(|c| &c.confirmed);
                    let _ = bridge.link.ack(message.delivery).await;
                    break;
                }
                Err(error) => {
                    attempt += 1;
                    if attempt == 1 {
                        tracing::warn!(bridge = %bridge.spec.name, %error, "JetStream did not acknowledge; retrying");
                        bridge.stats.count(|c| &c.errors);
                    }
                    let pause = backoff(attempt, bridge.spec.max_reconnect_delay());
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped.changed() => return,
                    }
                }
            }
        }
    }
}
