//! The wire protocol, shared by the broker and the client engine: framing and the
//! reader that cuts frames out of a byte stream, the JSON-RPC 2.0 envelope, the
//! one-pass check of a JSON value (a plain publish's payload), the
//! methods and their checked params, the encoding of delivered messages, topics with
//! their reserved and system names, and the limits every field is held to. The
//! methods of the Channels layer have their params in [`channels`].

pub mod channels;
pub mod frame;
pub mod json_value;
pub mod jsonrpc;
pub mod message;
pub mod method;
pub mod reader;
pub mod rules;
pub mod topic;
