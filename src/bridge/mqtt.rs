//! The MQTT side of a bridge, through `rumqttc`'s MQTT v5 client.
//!
//! Its subscriptions there are No Local, so what it publishes never comes back to it;
//! headers travel as user properties. Requests use MQTT v5's response topic and
//! correlation data: a request from here waits for its reply on a topic of the
//! bridge's own; a request from there is answered on the response topic it names.
//! MQTT has no "no responders": a request from here that no one there answers ends in
//! its own timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::BridgeSpec;
use super::local::{LocalMessage, Outgoing};
use super::stats::LinkState;
use super::{Bridge, HOPS_HEADER, ORIGIN_HEADER};

/// Requests of the client to its event loop waiting to be sent.
const CLIENT_CAPACITY: usize = 1024;

fn backoff(attempt: u32, max: Duration) -> Duration {
    Duration::from_millis(50u64 << attempt.min(16)).min(max)
}

fn qos(level: Option<u8>) -> QoS {
    if level == Some(1) { QoS::AtLeastOnce } else { QoS::AtMostOnce }
}

/// rustls with ring, trusting the given authorities or else the system's.
fn tls_config(spec: &BridgeSpec) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &spec.tls_ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    match (&spec.tls_cert_file, &spec.tls_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("tls_cert_file {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("tls_key_file {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn options(bridge: &Bridge) -> Result<MqttOptions, String> {
    let spec = &bridge.spec;
    let (host, port, tls) = spec.address()?;
    let client_id = spec.client_id.clone().unwrap_or_else(|| format!("message-broker-{}", spec.name));
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(spec.keep_alive());
    options.set_clean_start(true);
    options.set_max_packet_size(u32::try_from(bridge.router.config().max_message_size).ok());
    if let Some(user) = &spec.username {
        options.set_credentials(user.clone(), spec.password.clone().unwrap_or_default());
    }
    if tls || spec.tls_ca_file.is_some() {
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls_config(spec)?))));
    }
    Ok(options)
}

/// Requests from here waiting for their reply there, by correlation number.
type Waiting = Mutex<HashMap<u64, String>>;

struct MqttSide {
    bridge: Arc<Bridge>,
    client: AsyncClient,
    /// Where replies to the bridge's own requests come.
    reply_topic: String,
    waiting: Arc<Waiting>,
    next_request: AtomicU64,
}

/// Serves the bridge until `messages` ends (the broker closed the bridge's session).
pub(super) async fn run(
    bridge: Arc<Bridge>,
    mut messages: mpsc::Receiver<LocalMessage>,
) -> Result<(), String> {
    let (client, eventloop) = AsyncClient::new(options(&bridge)?, CLIENT_CAPACITY);
    let reply_topic = format!("message-broker/bridge/{}/{}/reply", bridge.spec.name, bridge.broker_id);
    let mut filters: Vec<Filter> = bridge
        .rules()
        .filter(|(rule, _)| rule.direction.imports())
        .flat_map(|(rule, mapping)| mapping.remote_filters().into_iter().map(move |path| (path, rule.qos)))
        .map(|(path, level)| Filter { nolocal: true, ..Filter::new(path, qos(level)) })
        .collect();
    filters.push(Filter { nolocal: true, ..Filter::new(reply_topic.clone(), QoS::AtMostOnce) });
    bridge.subscribe_locally().await.map_err(|e| e.to_string())?;

    let (stop, stopped) = watch::channel(false);
    let (incoming_tx, mut incoming) = mpsc::channel(CLIENT_CAPACITY);
    let events =
        tokio::spawn(drive(bridge.clone(), eventloop, client.clone(), filters, incoming_tx, stopped));
    let side = MqttSide {
        bridge,
        client: client.clone(),
        reply_topic,
        waiting: Arc::default(),
        next_request: AtomicU64::new(1),
    };
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(message) => side.export(message).await,
                None => break,
            },
            Some(publish) = incoming.recv() => side.import(publish).await,
        }
    }
    let _ = client.disconnect().await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), events).await;
    Ok(())
}

/// Polls the connection: (re)subscribes on every connection, hands on what arrives,
/// and reconnects with back-off.
async fn drive(
    bridge: Arc<Bridge>,
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<Filter>,
    incoming: mpsc::Sender<Publish>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut attempt = 0;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stopped.changed() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                attempt = 0;
                if let Err(error) = client.subscribe_many(filters.clone()).await {
                    tracing::warn!(bridge = %bridge.spec.name, %error, "MQTT subscribe failed");
                }
                bridge.set_state(LinkState::Connected, None);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if incoming.send(publish).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                if *stopped.borrow() {
                    return;
                }
                attempt += 1;
                bridge.set_state(LinkState::Disconnected, Some(error.to_string()));
                let pause = backoff(attempt, bridge.spec.max_reconnect_delay());
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

impl MqttSide {
    async fn export(&self, message: LocalMessage) {
        let bridge = &self.bridge;
        let Some((index, topic, hops)) = bridge.route_out(&message) else {
            return;
        };
        let mut properties = PublishProperties::default();
        for (name, value) in &message.headers {
            if name != ORIGIN_HEADER && name != HOPS_HEADER {
                properties.user_properties.push((name.clone(), value.clone()));
            }
        }
        let origin = message.headers.get(ORIGIN_HEADER).cloned().unwrap_or_else(|| bridge.broker_id.clone());
        properties.user_properties.push((ORIGIN_HEADER.into(), origin));
        properties.user_properties.push((HOPS_HEADER.into(), (hops + 1).to_string()));
        properties.payload_format_indicator = Some(1);
        properties.content_type = Some("application/json".into());
        if let Some(reply_to) = message.reply_to {
            bridge.stats.count(|c| &c.requests_out);
            let correlation = self.next_request.fetch_add(1, Ordering::Relaxed);
            self.waiting.lock().insert(correlation, reply_to);
            properties.response_topic = Some(self.reply_topic.clone());
            properties.correlation_data = Some(Bytes::from(correlation.to_string()));
            // A request no one there answers is forgotten after the bridge's timeout.
            let (waiting, timeout) = (self.waiting.clone(), bridge.spec.request_timeout());
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                waiting.lock().remove(&correlation);
            });
        }
        // A qos=1 message goes at QoS 1 whatever the rule says.
        let level = qos(bridge.spec.rules[index].qos.max(Some(message.qos)));
        match self.client.publish_with_properties(topic, level, false, message.payload, properties).await {
            Ok(()) => bridge.stats.count(|c| &c.sent),
            Err(error) => {
                tracing::debug!(bridge = %bridge.spec.name, %error, "MQTT publish failed");
                bridge.stats.count(|c| &c.errors);
            }
        }
    }

    async fn import(&self, publish: Publish) {
        let bridge = &self.bridge;
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            bridge.stats.count(|c| &c.unmappable);
            return;
        };
        let properties = publish.properties.unwrap_or_default();
        let property =
            |name: &str| properties.user_properties.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        if topic == self.reply_topic {
            self.reply_arrived(&properties, &publish.payload).await;
            return;
        }
        // Overlapping filters deliver a message once, so the first rule maps it.
        let Some(index) = bridge
            .rules()
            .position(|(rule, mapping)| rule.direction.imports() && mapping.to_local(topic).is_ok())
        else {
            bridge.stats.count(|c| &c.unmappable);
            return;
        };
        let Some(imported) =
            bridge.route_in(index, topic, property(ORIGIN_HEADER), property(HOPS_HEADER), &publish.payload)
        else {
            return;
        };
        let headers: Vec<(String, String)> =
            properties.user_properties.iter().filter(|(name, _)| name != HOPS_HEADER).cloned().collect();
        let hops = imported.hops.to_string();
        let mut outgoing = Outgoing {
            topic: &imported.topic,
            payload: Some(&imported.payload),
            headers: super::local_headers(&headers),
            ..Outgoing::default()
        };
        outgoing.headers.insert(HOPS_HEADER, &hops);
        let Some(response_topic) = properties.response_topic.clone() else {
            match bridge.link.notify("publish", &outgoing).await {
                Ok(()) => bridge.stats.count(|c| &c.received),
                Err(_) => bridge.stats.count(|c| &c.errors),
            }
            return;
        };
        bridge.stats.count(|c| &c.requests_in);
        let request =
            serde_json::to_value(&Outgoing { timeout: Some(bridge.spec.request_timeout), ..outgoing })
                .expect("serialisable");
        let (bridge, client) = (bridge.clone(), self.client.clone());
        let correlation = properties.correlation_data.clone();
        tokio::spawn(async move {
            let mut reply =
                PublishProperties { correlation_data: correlation, ..PublishProperties::default() };
            let payload = match bridge.link.call("request", &request).await {
                Ok(result) => Bytes::from(result.get().to_owned()),
                Err(error) => {
                    reply.user_properties.push(("mb-error-code".into(), error.code.to_string()));
                    reply.user_properties.push(("mb-error".into(), error.message.clone()));
                    Bytes::new()
                }
            };
            if client
                .publish_with_properties(response_topic, QoS::AtMostOnce, false, payload, reply)
                .await
                .is_err()
            {
                bridge.stats.count(|c| &c.errors);
            }
        });
    }

    /// A reply there to one of the bridge's requests: published to its reply address here.
    async fn reply_arrived(&self, properties: &PublishProperties, payload: &Bytes) {
        let bridge = &self.bridge;
        let correlation = properties
            .correlation_data
            .as_ref()
            .and_then(|data| std::str::from_utf8(data).ok())
            .and_then(|text| text.parse::<u64>().ok());
        let Some(reply_to) = correlation.and_then(|id| self.waiting.lock().remove(&id)) else {
            return;
        };
        let Some(payload) = super::json_payload(payload) else {
            bridge.stats.count(|c| &c.not_json);
            return;
        };
        let reply = Outgoing { topic: &reply_to, payload: Some(&payload), ..Outgoing::default() };
        if bridge.link.notify("publish", &reply).await.is_err() {
            bridge.stats.count(|c| &c.errors);
        }
    }
}
