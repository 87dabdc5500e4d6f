//! The settings of a bridge, as the config file's `[[bridges]]` tables give them,
//! and their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::mapping::{Mapping, Remote};

/// Which engine the far side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeKind {
    Nats,
    Mqtt,
}

impl BridgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeKind::Nats => "nats",
            BridgeKind::Mqtt => "mqtt",
        }
    }

    fn remote(self) -> Remote {
        match self {
            BridgeKind::Nats => Remote::Nats,
            BridgeKind::Mqtt => Remote::Mqtt,
        }
    }
}

/// Which way a rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the far side to this broker.
    In,
    /// From this broker to the far side.
    Out,
    Both,
}

impl Direction {
    pub fn exports(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn imports(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `[[bridges.rules]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Our pattern for the part of the name after the prefixes.
    pub pattern: String,
    pub direction: Direction,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
    /// NATS only: messages go out through this JetStream stream, each removed from
    /// the bridge's durable queue here only once JetStream has acknowledged it; a
    /// `qos=1` publish is confirmed only then.
    #[serde(default)]
    pub stream: Option<String>,
    /// MQTT only: the QoS of what the bridge publishes and subscribes there (0 or 1).
    #[serde(default)]
    pub qos: Option<u8>,
}

fn default_request_timeout() -> f64 {
    5.0
}

fn default_confirm_timeout() -> f64 {
    10.0
}

fn default_max_reconnect_delay() -> f64 {
    1.0
}

fn default_keep_alive() -> f64 {
    30.0
}

fn default_max_hops() -> u32 {
    4
}

/// One `[[bridges]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    /// Letters, digits, `-` and `_`; names the bridge's client id, its durable queues
    /// and its state topic `system.bridge.<name>.state`.
    pub name: String,
    pub kind: BridgeKind,
    /// `nats://host:4222` (or `tls://`), `mqtt://host:1883` (or `mqtts://`). A
    /// NATS URL may carry `user:password@`.
    pub url: String,
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// NATS: an authentication token.
    #[serde(default)]
    pub token: Option<String>,
    /// NATS: a `.creds` file (JWT and NKey seed), as `nats --creds` takes.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// NATS: a file holding an NKey seed (`SU...`).
    #[serde(default)]
    pub nkey_file: Option<PathBuf>,
    /// MQTT: the client id there (default `message-broker-<name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// PEM file of the certificate authorities to trust (else the system's).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for servers that ask for one.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Seconds a request carried across waits for its reply.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: f64,
    /// Seconds a `qos=1` publish to a stream rule's topic waits for JetStream's
    /// acknowledgement; past it the publisher hears that the message is not
    /// confirmed (it stays queued and is still carried).
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: f64,
    /// Longest pause, in seconds, between attempts to reach the far side again.
    #[serde(default = "default_max_reconnect_delay")]
    pub max_reconnect_delay: f64,
    /// MQTT: seconds between keep-alive pings.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: f64,
    /// Bridges a message may have crossed before it is no longer carried on (rings
    /// of brokers).
    #[serde(default = "default_max_hops")]
    pub max_hops: u32,
}

impl BridgeSpec {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout)
    }

    pub fn max_reconnect_delay(&self) -> Duration {
        Duration::from_secs_f64(self.max_reconnect_delay)
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs_f64(self.keep_alive)
    }

    /// The rules' mappings, in order (checked by [`validate`]).
    pub fn mappings(&self) -> Vec<Mapping> {
        self.rules
            .iter()
            .map(|rule| {
                Mapping::new(self.kind.remote(), &rule.pattern, &rule.local_prefix, &rule.remote_prefix)
                    .expect("rules are validated before the bridge starts")
            })
            .collect()
    }

    /// The URL without a password, for logs, `status` and the state topic.
    pub fn shown_url(&self) -> String {
        match (self.url.split_once("://"), self.url.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &self.url[at..]),
            _ => self.url.clone(),
        }
    }

    /// `host:port` and whether TLS is asked for by the scheme.
    pub fn address(&self) -> Result<(String, u16, bool), String> {
        let (scheme, rest) =
            self.url.split_once("://").ok_or_else(|| format!("url {:?} has no scheme", self.shown_url()))?;
        let (tls, default_port) = match (self.kind, scheme) {
            (BridgeKind::Nats, "nats") => (false, 4222),
            (BridgeKind::Nats, "tls") => (true, 4222),
            (BridgeKind::Mqtt, "mqtt" | "tcp") => (false, 1883),
            (BridgeKind::Mqtt, "mqtts" | "ssl") => (true, 8883),
            (BridgeKind::Nats, _) => {
                return Err(format!("url {:?}: a NATS url starts with nats:// or tls://", self.shown_url()));
            }
            (BridgeKind::Mqtt, _) => {
                return Err(format!(
                    "url {:?}: an MQTT url starts with mqtt:// or mqtts://",
                    self.shown_url()
                ));
            }
        };
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, after)| after).trim_end_matches('/');
        if host_port.contains(',') {
            return Err(format!("url {:?}: give one server", self.shown_url()));
        }
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("url {:?}: bad port {port:?}", self.shown_url()))?;
                (host, port)
            }
            _ => (host_port, default_port),
        };
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(format!("url {:?}: no host", self.shown_url()));
        }
        Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port, tls))
    }

    fn validate(&self) -> Result<(), String> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(format!("name {:?} must be 1 to 64 letters, digits, '-' or '_'", self.name));
        }
        self.address()?;
        if self.rules.is_empty() {
            return Err("rules must not be empty: give at least one {pattern, direction}".into());
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let at = |message: String| format!("rules[{index}] (pattern {:?}): {message}", rule.pattern);
            Mapping::new(self.kind.remote(), &rule.pattern, &rule.local_prefix, &rule.remote_prefix)
                .map_err(at)?;
            if let Some(stream) = &rule.stream {
                if self.kind != BridgeKind::Nats {
                    return Err(at("stream is for NATS bridges (JetStream)".into()));
                }
                if !rule.direction.exports() {
                    return Err(at(
                        "stream needs direction \"out\" or \"both\": messages go out through it".into()
                    ));
                }
                if stream.is_empty()
                    || stream.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
                {
                    return Err(at(format!("stream {stream:?} is not a JetStream stream name")));
                }
            }
            match (self.kind, rule.qos) {
                (_, None) | (BridgeKind::Mqtt, Some(0 | 1)) => {}
                (BridgeKind::Mqtt, Some(qos)) => return Err(at(format!("qos must be 0 or 1, got {qos}"))),
                (BridgeKind::Nats, Some(_)) => {
                    return Err(at("qos is for MQTT bridges; a NATS rule names a stream for qos=1".into()));
                }
            }
        }
        let nats_only = [
            ("token", self.token.is_some()),
            ("credentials_file", self.credentials_file.is_some()),
            ("nkey_file", self.nkey_file.is_some()),
        ];
        let mqtt_only = [("client_id", self.client_id.is_some())];
        let (foreign, kind) = match self.kind {
            BridgeKind::Nats => (&mqtt_only[..], "MQTT"),
            BridgeKind::Mqtt => (&nats_only[..], "NATS"),
        };
        if let Some((field, _)) = foreign.iter().find(|(_, given)| *given) {
            return Err(format!("{field} is for {kind} bridges"));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err("password needs username".into());
        }
        let ways = [
            self.username.is_some(),
            self.token.is_some(),
            self.credentials_file.is_some(),
            self.nkey_file.is_some(),
        ];
        if ways.iter().filter(|given| **given).count() > 1 {
            return Err("give one of username, token, credentials_file and nkey_file".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("tls_cert_file and tls_key_file go together".into());
        }
        if let Some(client_id) = &self.client_id
            && (client_id.is_empty() || client_id.len() > 256)
        {
            return Err("client_id must be 1 to 256 bytes".into());
        }
        for (field, value) in [
            ("request_timeout", self.request_timeout),
            ("confirm_timeout", self.confirm_timeout),
            ("max_reconnect_delay", self.max_reconnect_delay),
            ("keep_alive", self.keep_alive),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 3600.0) {
                return Err(format!("{field} must be more than 0 and at most 3600 seconds, got {value}"));
            }
        }
        if self.kind == BridgeKind::Mqtt && self.keep_alive < 1.0 {
            return Err("keep_alive must be at least 1 second".into());
        }
        if self.max_hops == 0 {
            return Err("max_hops must be at least 1".into());
        }
        Ok(())
    }
}

/// Checks every bridge; the error names it (`bridges[0] (name "hub"): ...`).
pub fn validate(bridges: &[BridgeSpec]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for (index, bridge) in bridges.iter().enumerate() {
        bridge
            .validate()
            .map_err(|message| format!("bridges[{index}] (name {:?}): {message}", bridge.name))?;
        if !names.insert(&bridge.name) {
            return Err(format!("bridges[{index}]: bridge {:?} is configured twice", bridge.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bridge(value: serde_json::Value) -> Result<BridgeSpec, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    fn nats_bridge() -> serde_json::Value {
        json!({"name": "hub", "kind": "nats", "url": "nats://127.0.0.1:4222",
               "rules": [{"pattern": "jobs.#", "direction": "both"}]})
    }

    #[test]
    fn a_plain_bridge_is_valid_with_its_defaults() {
        let spec = bridge(nats_bridge()).unwrap();
        validate(std::slice::from_ref(&spec)).unwrap();
        assert_eq!(spec.request_timeout(), Duration::from_secs(5));
        assert_eq!(spec.max_reconnect_delay(), Duration::from_secs(1));
        assert_eq!(spec.address().unwrap(), ("127.0.0.1".into(), 4222, false));
        assert_eq!(spec.mappings()[0].remote_filters(), vec!["jobs", "jobs.>"]);
    }

    #[test]
    fn urls_are_read_and_passwords_never_shown() {
        let mut value = nats_bridge();
        value["url"] = json!("tls://me:secret@nats.example.com");
        let spec = bridge(value).unwrap();
        assert_eq!(spec.address().unwrap(), ("nats.example.com".into(), 4222, true));
        assert_eq!(spec.shown_url(), "tls://***@nats.example.com");
        let mut value = nats_bridge();
        value["kind"] = json!("mqtt");
        value["url"] = json!("mqtts://[::1]:8884");
        assert_eq!(bridge(value).unwrap().address().unwrap(), ("::1".into(), 8884, true));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (json!({"name": "a.b"}), "name \"a.b\""),
            (json!({"url": "http://x"}), "nats:// or tls://"),
            (json!({"url": "nats://x:port"}), "bad port"),
            (json!({"rules": []}), "rules must not be empty"),
            (
                json!({"rules": [{"pattern": "a..b", "direction": "in"}]}),
                "rules[0] (pattern \"a..b\"): pattern",
            ),
            (
                json!({"rules": [{"pattern": "a", "direction": "in", "stream": "S"}]}),
                "stream needs direction",
            ),
            (json!({"rules": [{"pattern": "a", "direction": "out", "qos": 1}]}), "qos is for MQTT"),
            (json!({"client_id": "x"}), "client_id is for MQTT"),
            (json!({"password": "x"}), "password needs username"),
            (json!({"username": "u", "token": "t"}), "give one of"),
            (json!({"tls_cert_file": "c.pem"}), "go together"),
            (json!({"request_timeout": 0}), "request_timeout"),
            (json!({"confirm_timeout": 3601}), "confirm_timeout"),
            (json!({"max_hops": 0}), "max_hops"),
        ];
        for (change, expected) in cases {
            let mut value = nats_bridge();
            for (key, field) in change.as_object().unwrap() {
                value[key] = field.clone();
            }
            let error = validate(&[bridge(value).unwrap()]).unwrap_err();
            assert!(error.starts_with("bridges[0]") && error.contains(expected), "{error} lacks {expected}");
        }
        let twice = [bridge(nats_bridge()).unwrap(), bridge(nats_bridge()).unwrap()];
        assert!(validate(&twice).unwrap_err().contains("configured twice"));
        let unknown =
            bridge(json!({"name": "a", "kind": "nats", "url": "nats://x", "rules": [], "tsl_ca_file": "x"}));
        assert!(unknown.unwrap_err().contains("unknown field `tsl_ca_file`"));
        let kind = bridge(json!({"name": "a", "kind": "amqp", "url": "x", "rules": []}));
        assert!(kind.unwrap_err().contains("unknown variant `amqp`"));
    }
}
