//! How a client connects and retries: its settings and the back-off between attempts.

use std::time::Duration;

use serde_json::value::RawValue;

use super::Endpoint;

/// How a client connects. Not `Debug`: it holds the token.
#[derive(Clone)]
pub struct ClientConfig {
    pub client_id: String,
    pub endpoint: Endpoint,
    /// The broker's token. Without one, a TCP client sends `MESSAGE_BROKER_TOKEN` or
    /// the token in the runtime file of a broker on this machine (see [`runtime_file`]).
    ///
    /// [`runtime_file`]: crate::runtime_file
    pub token: Option<String>,
    pub client_type: String,
    pub version: String,
    /// Time allowed for one connection attempt, handshake included.
    pub connect_timeout: Duration,
    /// Attempts after the first failed one before `connect` gives up.
    pub connect_retries: u32,
    /// Instead of `connect_retries`: keep trying the first connection for this long
    /// (each attempt still bounded by `connect_timeout`). A refusal by the broker
    /// itself (a wrong token, say) ends it at once all the same.
    pub connect_wait: Option<Duration>,
    /// Reconnect after losing an established connection.
    pub reconnect: bool,
    /// First and largest pause between reconnection attempts (doubling in between).
    pub reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    /// Ping at the interval the broker asks for, and treat silence as a dead broker.
    pub heartbeat: bool,
    /// Frames waiting to be written, including publishes made while disconnected.
    pub max_pending: usize,
    /// Events waiting for the user before the client stops reading from the broker.
    pub inbox_limit: usize,
    /// The last will (the `will` object of `connect`, as JSON), published by the
    /// broker if this client goes away without disconnecting.
    pub will: Option<Box<RawValue>>,
}

impl ClientConfig {
    pub fn new(client_id: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        Self::to(client_id, Endpoint::Tcp { host: host.into(), port })
    }

    /// A client of the broker at `endpoint`, with the default settings.
    pub fn to(client_id: impl Into<String>, endpoint: Endpoint) -> Self {
        ClientConfig {
            client_id: client_id.into(),
            endpoint,
            token: None,
            client_type: "rust".into(),
            version: crate::VERSION.into(),
            connect_timeout: Duration::from_secs(5),
            connect_retries: 3,
            connect_wait: None,
            reconnect: true,
            reconnect_delay: Duration::from_millis(100),
            max_reconnect_delay: Duration::from_secs(5),
            heartbeat: true,
            max_pending: 100_000,
            inbox_limit: 100_000,
            will: None,
        }
    }
}

/// Back-off before reconnection attempt `n` (1-based): doubling from the first delay,
/// capped, with up to 25% jitter so that many clients do not return in step.
pub(super) fn backoff(config: &ClientConfig, attempt: u32) -> Duration {
    let doubled = config.reconnect_delay.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let base = doubled.min(config.max_reconnect_delay);
    let jitter = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), attempt) % 1000;
    base + base.mul_f64(jitter as f64 / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = ClientConfig::new("c", "localhost", 1);
        let first = backoff(&config, 1);
        assert!(first >= config.reconnect_delay && first <= config.reconnect_delay.mul_f64(1.25));
        let later = backoff(&config, 3);
        assert!(later >= config.reconnect_delay * 4);
        assert!(backoff(&config, 40) <= config.max_reconnect_delay.mul_f64(1.25));
    }
}
