//! What a queue is: its definition, its limits and their defaults.

use serde::{Deserialize, Serialize};

use crate::error::RpcError;
use crate::protocol::topic::parse_pattern;

/// Default bound on the messages a queue holds (ready and in flight).
pub const DEFAULT_MAX_LENGTH: usize = 100_000;
/// Default bound on the bytes a durable queue keeps in the store.
pub const DEFAULT_MAX_BYTES_STORED: u64 = 4 << 30;
/// Default bound on the bytes a queue kept in memory holds.
pub const DEFAULT_MAX_BYTES_IN_MEMORY: u64 = 64 << 20;
/// The most messages, and bytes, of a stored queue held in memory, ready to go.
pub const WINDOW_COUNT: usize = 10_000;
pub const WINDOW_BYTES: usize = 8 << 20;
/// Bytes one consumer may hold unacknowledged (its first delivery always goes).
pub const MAX_UNACKED_BYTES: usize = 16 << 20;
/// Default number of deliveries before a message is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = 10;
/// Default and largest number of unacknowledged deliveries per consumer.
pub const DEFAULT_PREFETCH: usize = 100;
pub const MAX_PREFETCH: usize = 1000;
/// Dead letters go to `dead_letter.<queue>` unless the queue names another topic.
pub const DEAD_LETTER_PREFIX: &str = "dead_letter.";
const MAX_QUEUE_NAME_LEN: usize = 128;

/// What a queue is: its name, bindings and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub name: String,
    pub patterns: Vec<String>,
    #[serde(default = "durable_default")]
    pub durable: bool,
    #[serde(default = "max_length_default")]
    pub max_length: usize,
    /// Bytes the queue may hold; `None` for the default of where it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// 0 means no limit.
    #[serde(default = "max_deliveries_default")]
    pub max_deliveries: u32,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Seconds a `qos=1` publish waits for a consumer to acknowledge the message: its
    /// confirmation then means "taken care of" (a bridge: the far side has it), not
    /// only "kept here". `None`: confirmed once the queue keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_on_ack: Option<f64>,
}

fn durable_default() -> bool {
    true
}
fn max_length_default() -> usize {
    DEFAULT_MAX_LENGTH
}
fn max_deliveries_default() -> u32 {
    DEFAULT_MAX_DELIVERIES
}

impl QueueSpec {
    pub fn new(name: impl Into<String>, patterns: Vec<String>, durable: bool) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            patterns,
            durable,
            max_length: DEFAULT_MAX_LENGTH,
            max_bytes: None,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            dead_letter_topic: None,
            confirm_on_ack: None,
        }
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{DEAD_LETTER_PREFIX}{}", self.name))
    }

    pub fn validate(&self) -> Result<(), RpcError> {
        validate_queue_name(&self.name)?;
        for pattern in &self.patterns {
            parse_pattern(pattern)?;
        }
        if self.max_length == 0 {
            return Err(RpcError::invalid_params(format!(
                "queue {:?}: max_length must be at least 1",
                self.name
            )));
        }
        if self.max_bytes == Some(0) {
            return Err(RpcError::invalid_params(format!(
                "queue {:?}: max_bytes must be at least 1",
                self.name
            )));
        }
        if let Some(topic) = &self.dead_letter_topic {
            crate::protocol::topic::validate_topic(topic)?;
        }
        if let Some(seconds) = self.confirm_on_ack {
            validate_confirm_on_ack(seconds)?;
        }
        Ok(())
    }

    /// The byte bound in force, for a queue kept in the store or in memory.
    pub fn max_bytes(&self, stored: bool) -> u64 {
        self.max_bytes.unwrap_or(if stored { DEFAULT_MAX_BYTES_STORED } else { DEFAULT_MAX_BYTES_IN_MEMORY })
    }
}

/// The longest a `qos=1` publish may be kept waiting for a consumer's acknowledgement.
pub const MAX_CONFIRM_ON_ACK: f64 = 3600.0;

pub fn validate_confirm_on_ack(seconds: f64) -> Result<(), RpcError> {
    if seconds > 0.0 && seconds <= MAX_CONFIRM_ON_ACK {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!(
            "confirm_on_ack must be more than 0 and at most {MAX_CONFIRM_ON_ACK} seconds, got {seconds}"
        )))
    }
}

pub fn validate_queue_name(name: &str) -> Result<(), RpcError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_QUEUE_NAME_LEN
        && !name.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '*' | '+' | '#'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!(
            "queue name {name:?} must be 1 to {MAX_QUEUE_NAME_LEN} bytes without spaces, wildcards or empty segments"
        )))
    }
}
