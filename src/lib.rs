//! message_broker: a local-first pub/sub and request/response broker.
//!
//! Clients speak JSON-RPC 2.0 over TCP, one message per frame (a 4-byte big-endian
//! length followed by UTF-8 JSON), or newline-delimited JSON when the first byte a
//! client sends is `{` or `[`. The crate is organised one concern per module:
//!
//! - [`client`]: a client on the same runtime, the engine of the Python `BrokerClient`.
//! - [`config`]: [`BrokerConfig`], its defaults and validation.
//! - [`error`]: the wire error codes and the error types of the core.
//! - [`protocol`]: framing ([`protocol::frame`]), the JSON-RPC envelope
//!   ([`protocol::jsonrpc`]) and the encoding of delivered messages ([`protocol::message`]).
//! - [`topic`]: topic and pattern validation and the reference matcher.
//! - [`index`]: the subscription trie; a publish costs the depth of the topic, not the
//!   number of unrelated subscriptions.
//! - [`outbox`]: the bounded per-client queue of frames to write.
//! - [`queue`]: queue groups and durable queues: competing consumers, acknowledgements,
//!   redelivery, dead letters and expiry.
//! - [`store`]: the SQLite store behind durable queues and retained messages.
//! - [`router`]: the registry of connected clients, fan-out with per-client bounded
//!   queues, queues and retained messages, request/reply tracking, counters and system
//!   topics.
//! - [`session`]: what one connected client may do: the methods of the protocol.
//! - [`connection`]: reading frames from and writing coalesced frames to one socket.
//! - [`server`]: the accept loop, connection limits and graceful shutdown.
//! - [`shutdown`]: the broadcast signal every task listens to for shutdown.
//!
//! The Python bindings live in `python` behind the `python` cargo feature, so the
//! core builds and tests without PyO3.

pub mod client;
pub mod config;
pub mod connection;
pub mod error;
pub mod ids;
pub mod index;
pub mod outbox;
pub mod protocol;
pub mod queue;
pub mod router;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod store;
pub mod topic;

#[cfg(feature = "python")]
mod python;

pub use config::BrokerConfig;
pub use error::{BrokerError, ErrorCode};
pub use server::{BrokerHandle, start};

/// The broker's version, reported by `connect` and `status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
