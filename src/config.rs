//! Broker configuration: `BrokerConfig` with its defaults, plus the
//! timeouts that protect the broker from clients that never finish a frame.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::bridge::config::BridgeSpec;
use crate::broker::permissions::PermissionRule;
use crate::broker::queue::QueueSpec;
use crate::error::BrokerError;

pub const DEFAULT_HOST: &str = "localhost";
pub const DEFAULT_PORT: u16 = 15234;
/// What queues kept in memory may hold together by default: a desktop machine
/// survives it.
pub const DEFAULT_MAX_MEMORY: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Interface to listen on. `localhost` listens on the loopback interface only.
    pub host: String,
    /// TCP port; 0 picks a free one (read it back from the running broker).
    pub port: u16,
    /// TCP connections served at once; one more gets `TOO_MANY_CONNECTIONS` and is
    /// closed. The same-user transports (local socket, in-process) have as many again
    /// of their own, so that no one on the machine can lock the owner out.
    pub max_connections: usize,
    /// How often clients are asked to ping (sent to them in the `connect` result).
    pub heartbeat_interval: Duration,
    /// A client that has pinged at least once is dropped after this much silence.
    pub heartbeat_timeout: Duration,
    /// Largest frame body accepted, in bytes.
    pub max_message_size: usize,
    /// Messages waiting to be written to one client before new ones are dropped for it.
    pub max_queue_size: usize,
    /// Bytes waiting to be written to one client before new messages are dropped for it.
    pub max_queue_bytes: usize,
    /// Log every published message at INFO level.
    pub log_messages: bool,
    /// A new connection must send `connect` within this time.
    pub handshake_timeout: Duration,
    /// Once a frame has started to arrive, all of it must arrive within this time.
    pub frame_timeout: Duration,
    /// Where durable queues and retained messages are kept; `None` keeps them in memory.
    pub data_dir: Option<PathBuf>,
    /// Sync every group commit to disk (survives power loss, not only a crash).
    pub fsync: bool,
    /// Durable queues that exist from the start.
    pub queues: Vec<QueueSpec>,
    /// Bytes the queues kept in memory (every queue but the durable ones of a
    /// `data_dir`) may hold together; past it they refuse new messages.
    pub max_memory: usize,
    /// TCP clients must send the broker's token in `connect`. Always the case when the
    /// broker listens on an address other than loopback, whatever this says.
    pub require_token: bool,
    /// Where the runtime file (token, socket path) and the Unix socket go; `None`
    /// takes `MESSAGE_BROKER_RUNTIME_DIR`, else the user's runtime folder.
    pub runtime_dir: Option<PathBuf>,
    /// Also listen on a transport only this user can open: a Unix socket beside the
    /// runtime file, or a named pipe on Windows. Its clients need no token.
    pub local_socket: bool,
    /// Which topics each client may publish to and subscribe to; none: all of them.
    pub permissions: Vec<PermissionRule>,
    /// Serve the monitoring page, the HTTP API and WebSocket access on 127.0.0.1 at
    /// this port (0 picks a free one); `None` serves no HTTP. Everything but the page
    /// itself and `/healthz` needs the token.
    pub http_port: Option<u16>,
    /// Links to NATS or MQTT servers that carry chosen topics and requests across
    /// machines; they start and stop with the broker.
    pub bridges: Vec<BridgeSpec>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            max_connections: 100,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            max_message_size: crate::protocol::rules::DEFAULT_MAX_MESSAGE_SIZE,
            max_queue_size: 10_000,
            max_queue_bytes: 64 * 1024 * 1024,
            log_messages: false,
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            data_dir: None,
            fsync: false,
            queues: Vec::new(),
            max_memory: DEFAULT_MAX_MEMORY,
            require_token: false,
            runtime_dir: None,
            local_socket: true,
            permissions: Vec::new(),
            http_port: None,
            bridges: Vec::new(),
        }
    }
}

impl BrokerConfig {
    /// Checks every field; the error names the field and what it must be.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let invalid = |msg: String| Err(BrokerError::InvalidConfig(msg));
        if self.host.trim().is_empty() {
            return invalid("host must not be empty".into());
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".into());
        }
        if self.max_message_size < 64 {
            return invalid(format!(
                "max_message_size must be at least 64 bytes, got {}",
                self.max_message_size
            ));
        }
        // The length prefix is 32 bits.
        if self.max_message_size > u32::MAX as usize {
            return invalid(format!(
                "max_message_size must be at most {} bytes, got {}",
                u32::MAX,
                self.max_message_size
            ));
        }
        if self.max_memory < self.max_message_size {
            return invalid(format!(
                "max_memory ({}) must be at least max_message_size ({})",
                self.max_memory, self.max_message_size
            ));
        }
        if self.max_queue_size == 0 {
            return invalid("max_queue_size must be at least 1".into());
        }
        if self.max_queue_bytes < self.max_message_size {
            return invalid(format!(
                "max_queue_bytes ({}) must be at least max_message_size ({})",
                self.max_queue_bytes, self.max_message_size
            ));
        }
        for (name, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("frame_timeout", self.frame_timeout),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be greater than 0"));
            }
        }
        let mut names = HashSet::new();
        for queue in &self.queues {
            queue.validate().map_err(|e| BrokerError::InvalidConfig(format!("queues: {}", e.message)))?;
            if !queue.durable {
                return invalid(format!(
                    "queues: queue {:?} must be durable (a queue group needs no configuration)",
                    queue.name
                ));
            }
            if !names.insert(&queue.name) {
                return invalid(format!("queues: queue {:?} is configured twice", queue.name));
            }
        }
        for rule in &self.permissions {
            rule.validate().map_err(|e| BrokerError::InvalidConfig(format!("permissions: {e}")))?;
        }
        crate::bridge::validate(&self.bridges).map_err(BrokerError::InvalidConfig)?;
        if self.runtime_dir.as_ref().is_some_and(|dir| dir.as_os_str().is_empty()) {
            return invalid(
                "runtime_dir must not be empty (leave it out for the user's runtime folder)".into(),
            );
        }
        if self.data_dir.as_ref().is_some_and(|dir| dir.as_os_str().is_empty()) {
            return invalid("data_dir must not be empty (leave it out to keep queues in memory)".into());
        }
        if self.http_port.is_some_and(|http| http != 0 && http == self.port) {
            return invalid(format!("http_port must differ from port (both are {})", self.port));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return invalid(format!(
                "heartbeat_timeout ({:?}) must be longer than heartbeat_interval ({:?})",
                self.heartbeat_timeout, self.heartbeat_interval
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let config = BrokerConfig::default();
        assert_eq!(config.host, "localhost");
        assert_eq!(config.port, 15234);
        assert_eq!(config.max_connections, 100);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(config.max_message_size, 1024 * 1024);
        assert_eq!(config.max_queue_size, 10_000);
        config.validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let config = BrokerConfig { max_queue_size: 0, ..Default::default() };
        assert!(config.validate().unwrap_err().to_string().contains("max_queue_size"));
        let config = BrokerConfig { heartbeat_timeout: Duration::from_secs(1), ..Default::default() };
        assert!(config.validate().unwrap_err().to_string().contains("heartbeat_timeout"));
    }
}
