//! The methods behind a Django Channels layer, with their checked params: channels
//! that keep messages until one receiver takes each, and groups of channels.
//!
//! Every call names a `prefix`: the layer's namespace, so that layers of several
//! projects share one broker and `channel_flush` clears one of them only. Names follow
//! the Channels specification: a channel is `name` or `name!local` (a process-specific
//! channel, received through the part up to and including the `!`), a group `name`,
//! each shorter than [`rules::MAX_CHANNEL_NAME_LEN`] characters.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::jsonrpc;
use super::rules;
use crate::error::RpcError;

/// `channel_send`: one message for one channel, refused with `CHANNEL_FULL` when the
/// channel holds `capacity` messages already.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSend {
    pub prefix: String,
    pub channel: String,
    pub message: Box<RawValue>,
    /// Seconds the message is kept for a receiver.
    pub ttl: f64,
    pub capacity: usize,
}

impl ChannelSend {
    pub fn parse(params: Option<&RawValue>) -> Result<ChannelSend, RpcError> {
        let send: ChannelSend = jsonrpc::params(params)?;
        prefix(&send.prefix)?;
        channel_name(&send.channel)?;
        ttl(send.ttl)?;
        capacity(send.capacity)?;
        Ok(send)
    }
}

/// Channels one `channel_receive` may leave where they are, at most.
pub const MAX_RECEIVE_EXCLUDE: usize = 1000;

/// `channel_receive`: up to `max` messages from a channel, waiting up to `timeout`
/// seconds for the first. `channel` is a plain channel, or the part of
/// process-specific channels up to and including the `!` (their messages come with
/// the name each was sent to). Each message comes with a tag, and stays the
/// connection's until acknowledged (`channel_ack`, or the `ack` tags of the next
/// receive, acknowledged before it takes anything); `exclude` names channels whose
/// messages it leaves on the broker (the receiver holds all it can of them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelReceive {
    pub prefix: String,
    pub channel: String,
    #[serde(default = "one")]
    pub max: usize,
    #[serde(default)]
    pub timeout: f64,
    #[serde(default)]
    pub ack: Vec<u64>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn one() -> usize {
    1
}

impl ChannelReceive {
    pub fn parse(params: Option<&RawValue>) -> Result<ChannelReceive, RpcError> {
        let receive: ChannelReceive = jsonrpc::params(params)?;
        prefix(&receive.prefix)?;
        receive_key(&receive.channel)?;
        if !(1..=rules::MAX_RECEIVE_BATCH).contains(&receive.max) {
            return Err(RpcError::invalid_params(format!(
                "max must be 1 to {}, got {}",
                rules::MAX_RECEIVE_BATCH,
                receive.max
            )));
        }
        if !(receive.timeout >= 0.0 && receive.timeout <= rules::MAX_RECEIVE_TIMEOUT) {
            return Err(RpcError::invalid_params(format!(
                "timeout must be 0 to {} seconds, got {}",
                rules::MAX_RECEIVE_TIMEOUT,
                receive.timeout
            )));
        }
        if receive.exclude.len() > MAX_RECEIVE_EXCLUDE {
            return Err(RpcError::invalid_params(format!(
                "exclude names at most {MAX_RECEIVE_EXCLUDE} channels, got {}",
                receive.exclude.len()
            )));
        }
        for channel in &receive.exclude {
            channel_name(channel)?;
        }
        Ok(receive)
    }
}

/// `channel_ack` (received for good) and `channel_nack` (back to the front of their
/// channels): messages this connection received, by their tags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelTags {
    pub prefix: String,
    pub tags: Vec<u64>,
}

impl ChannelTags {
    pub fn parse(params: Option<&RawValue>) -> Result<ChannelTags, RpcError> {
        let tags: ChannelTags = jsonrpc::params(params)?;
        prefix(&tags.prefix)?;
        Ok(tags)
    }
}

/// `channel_cancel`: this connection's receives waiting on `channel` (as
/// `channel_receive` names it) are answered now, with no messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelCancel {
    pub prefix: String,
    pub channel: String,
}

impl ChannelCancel {
    pub fn parse(params: Option<&RawValue>) -> Result<ChannelCancel, RpcError> {
        let cancel: ChannelCancel = jsonrpc::params(params)?;
        prefix(&cancel.prefix)?;
        receive_key(&cancel.channel)?;
        Ok(cancel)
    }
}

/// `group_add`: makes `channel` a member of `group` for `ttl` seconds (again, when it
/// is one already); `capacity` is the channel's, for messages sent to the group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupAdd {
    pub prefix: String,
    pub group: String,
    pub channel: String,
    pub ttl: f64,
    pub capacity: usize,
}

impl GroupAdd {
    pub fn parse(params: Option<&RawValue>) -> Result<GroupAdd, RpcError> {
        let add: GroupAdd = jsonrpc::params(params)?;
        prefix(&add.prefix)?;
        group_name(&add.group)?;
        channel_name(&add.channel)?;
        ttl(add.ttl)?;
        capacity(add.capacity)?;
        Ok(add)
    }
}

/// `group_discard`: `channel` leaves `group`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDiscard {
    pub prefix: String,
    pub group: String,
    pub channel: String,
}

impl GroupDiscard {
    pub fn parse(params: Option<&RawValue>) -> Result<GroupDiscard, RpcError> {
        let discard: GroupDiscard = jsonrpc::params(params)?;
        prefix(&discard.prefix)?;
        group_name(&discard.group)?;
        channel_name(&discard.channel)?;
        Ok(discard)
    }
}

/// `group_send`: the message for every member of `group`; never refused for a full
/// member, which is skipped and counted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSend {
    pub prefix: String,
    pub group: String,
    pub message: Box<RawValue>,
    pub ttl: f64,
}

impl GroupSend {
    pub fn parse(params: Option<&RawValue>) -> Result<GroupSend, RpcError> {
        let send: GroupSend = jsonrpc::params(params)?;
        prefix(&send.prefix)?;
        group_name(&send.group)?;
        ttl(send.ttl)?;
        Ok(send)
    }
}

/// `channel_flush`: drops every channel, message and group of one prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelFlush {
    pub prefix: String,
}

impl ChannelFlush {
    pub fn parse(params: Option<&RawValue>) -> Result<ChannelFlush, RpcError> {
        let flush: ChannelFlush = jsonrpc::params(params)?;
        prefix(&flush.prefix)?;
        Ok(flush)
    }
}

/// The part of a channel name its messages are kept under: up to and including the
/// `!` of a process-specific channel, else all of it.
pub fn queue_key(channel: &str) -> &str {
    match channel.find('!') {
        Some(at) => &channel[..=at],
        None => channel,
    }
}

fn is_base_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// As the specification's `^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$`, where `\w` is any
/// Unicode word character (Python's reading of it).
fn is_channel_name(name: &str) -> bool {
    let (base, local) = match name.find('!') {
        Some(at) => (&name[..at], Some(&name[at + 1..])),
        None => (name, None),
    };
    !base.is_empty()
        && base.chars().all(is_base_char)
        && local
            .is_none_or(|local| local.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

fn short(name: &str) -> bool {
    name.chars().count() < rules::MAX_CHANNEL_NAME_LEN
}

pub fn channel_name(name: &str) -> Result<(), RpcError> {
    if short(name) && is_channel_name(name) {
        return Ok(());
    }
    Err(RpcError::invalid_params(format!(
        "channel name {name:?} must be shorter than {} characters of ASCII letters, digits, '-', '_' or '.', \
         with at most one '!' (a process-specific channel)",
        rules::MAX_CHANNEL_NAME_LEN
    )))
}

/// What `channel_receive` takes: a plain channel, or the part of process-specific
/// ones up to and including the `!`.
pub fn receive_key(name: &str) -> Result<(), RpcError> {
    channel_name(name)?;
    if queue_key(name) != name {
        return Err(RpcError::invalid_params(format!(
            "receive process-specific channels through {:?}, the part up to and including the '!'",
            queue_key(name)
        )));
    }
    Ok(())
}

pub fn group_name(name: &str) -> Result<(), RpcError> {
    if short(name) && !name.is_empty() && name.chars().all(is_base_char) {
        return Ok(());
    }
    Err(RpcError::invalid_params(format!(
        "group name {name:?} must be shorter than {} characters of ASCII letters, digits, '-', '_' or '.'",
        rules::MAX_CHANNEL_NAME_LEN
    )))
}

/// A layer's namespace: 1 to 100 characters, no spaces or control characters.
pub fn prefix(prefix: &str) -> Result<(), RpcError> {
    let count = prefix.chars().count();
    if (1..=rules::MAX_CHANNEL_NAME_LEN).contains(&count)
        && !prefix.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Ok(());
    }
    Err(RpcError::invalid_params(format!(
        "prefix must be 1 to {} characters without spaces or control characters, got {prefix:?}",
        rules::MAX_CHANNEL_NAME_LEN
    )))
}

fn ttl(ttl: f64) -> Result<(), RpcError> {
    if ttl > 0.0 && ttl <= rules::MAX_CHANNEL_TTL {
        return Ok(());
    }
    Err(RpcError::invalid_params(format!(
        "ttl must be more than 0 and at most {} seconds, got {ttl}",
        rules::MAX_CHANNEL_TTL
    )))
}

fn capacity(capacity: usize) -> Result<(), RpcError> {
    if (1..=rules::MAX_CHANNEL_CAPACITY).contains(&capacity) {
        return Ok(());
    }
    Err(RpcError::invalid_params(format!(
        "capacity must be 1 to {}, got {capacity}",
        rules::MAX_CHANNEL_CAPACITY
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_channels_specification() {
        for good in ["a", "test-channel-1", "specific.abc!", "specific.abc!def_1", "x!é"] {
            assert!(channel_name(good).is_ok(), "{good}");
        }
        for bad in ["", "=+135!", "!x", "a b", "a!b!c", "é", &"a".repeat(100)] {
            assert!(channel_name(bad).is_err(), "{bad}");
        }
        assert!(channel_name(&"a".repeat(99)).is_ok());
        assert!(group_name("test-group").is_ok() && group_name("g!").is_err() && group_name("").is_err());
        assert!(receive_key("a.b!").is_ok() && receive_key("a.b!c").is_err() && receive_key("plain").is_ok());
        assert_eq!((queue_key("a.b!c"), queue_key("a.b")), ("a.b!", "a.b"));
        assert!(prefix("asgi").is_ok() && prefix("").is_err() && prefix("a b").is_err());
    }

    #[test]
    fn params_are_checked() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let ok = raw(r#"{"prefix":"asgi","channel":"c","message":{"type":"x"},"ttl":60,"capacity":100}"#);
        let send = ChannelSend::parse(Some(&ok)).unwrap();
        assert_eq!((send.capacity, send.message.get()), (100, r#"{"type":"x"}"#));
        for bad in [
            r#"{"prefix":"asgi","channel":"c","message":1,"ttl":0,"capacity":100}"#,
            r#"{"prefix":"asgi","channel":"c","message":1,"ttl":60,"capacity":0}"#,
            r#"{"prefix":"asgi","channel":"c d","message":1,"ttl":60,"capacity":1}"#,
            r#"{"prefix":"asgi","channel":"c","ttl":60,"capacity":1}"#,
        ] {
            assert!(ChannelSend::parse(Some(&raw(bad))).is_err(), "{bad}");
        }
        let receive = ChannelReceive::parse(Some(&raw(r#"{"prefix":"p","channel":"a!"}"#))).unwrap();
        assert_eq!((receive.max, receive.timeout), (1, 0.0));
        assert!(ChannelReceive::parse(Some(&raw(r#"{"prefix":"p","channel":"a","timeout":61}"#))).is_err());
        assert!(ChannelReceive::parse(Some(&raw(r#"{"prefix":"p","channel":"a","max":0}"#))).is_err());
        let acking =
            ChannelReceive::parse(Some(&raw(r#"{"prefix":"p","channel":"a!","ack":[3],"exclude":["a!x"]}"#)));
        assert_eq!(acking.map(|r| (r.ack, r.exclude)).unwrap(), (vec![3], vec!["a!x".to_owned()]));
        assert!(
            ChannelReceive::parse(Some(&raw(r#"{"prefix":"p","channel":"a!","exclude":["a b"]}"#))).is_err()
        );
        assert_eq!(
            ChannelTags::parse(Some(&raw(r#"{"prefix":"p","tags":[1,2]}"#))).unwrap().tags,
            vec![1, 2]
        );
        assert!(ChannelCancel::parse(Some(&raw(r#"{"prefix":"p","channel":"a!b"}"#))).is_err());
    }
}
