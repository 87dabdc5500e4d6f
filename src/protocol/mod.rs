//! The wire protocol: framing, the JSON-RPC 2.0 envelope and delivered messages.

pub mod frame;
pub mod jsonrpc;
pub mod message;
