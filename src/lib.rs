//! message_broker: a local-first pub/sub and request/response broker.
//!
//! Clients speak JSON-RPC 2.0, one message per frame: over TCP a 4-byte big-endian
//! length followed by UTF-8 JSON, or newline-delimited JSON when the first byte a
//! client sends is `{` or `[`; within the process, whole messages over a channel.
//! The folders show the architecture:
//!
//! - [`protocol`]: what travels on the wire, shared by broker and client: framing,
//!   the JSON-RPC envelope, the methods and their checked params, delivered messages,
//!   topics and reserved names, limits.
//! - [`broker`]: the listener, transports, sessions, the router, queues and store.
//! - [`bridge`]: topics and requests carried to NATS or an MQTT server, for apps that
//!   span machines; it talks to the broker as an in-process client.
//! - [`client`]: the engine behind the Python clients; it depends on [`protocol`]
//!   (and the shared [`index`], [`ids`] and [`error`]), never on the broker.
//! - [`index`]: the subscription trie shared by the router and the client; a publish
//!   costs the depth of the topic, not the number of unrelated subscriptions.
//! - [`config`], [`error`], [`ids`]: the broker's settings, the error codes and
//!   types, message ids.
//! - `web`: the optional HTTP listener: monitoring, the explorer page, HTTP access
//!   to messages and WebSocket sessions, on 127.0.0.1 only.
//! - [`runtime_file`]: where a running broker tells its user's programs its token
//!   and local socket, read by broker and client alike.
//! - `windows_acl` (Windows only): owner-only access control for the runtime folder
//!   and file, and the ownership check behind the named pipe's client end.
//!
//! The Python bindings live in `python` behind the `python` cargo feature, the only
//! place PyO3 appears, so the core builds and tests without it.

pub mod bridge;
pub mod broker;
pub mod client;
pub mod config;
pub mod error;
pub mod ids;
pub mod index;
pub mod protocol;
pub mod runtime_file;
mod web;
#[cfg(windows)]
mod windows_acl;

#[cfg(feature = "python")]
mod python;

pub use broker::{BrokerHandle, InProcessConnection, start};
pub use config::BrokerConfig;
pub use error::{BrokerError, ErrorCode};

/// The broker's version, reported by `connect` and `status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
