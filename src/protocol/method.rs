//! The methods of the protocol and their parameters, parsed once from a call and
//! matched exhaustively by the session.
//!
//! A call is read in two steps: its name into a [`MethodName`] (so that a known
//! method called before `connect` is refused as such, whatever its params), then its
//! params into a [`Method`], with the fields of messages (topic, qos, ttl, ids,
//! headers, timeouts, the will) checked against [`super::rules`]. Patterns and queue
//! options are checked by the session's subscribe handler, against the index and
//! the queues' own limits.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

mod publish;

pub use self::publish::{Publish, PublishCall, PublishParams, ReplyError};
use super::channels;
use super::jsonrpc;
use super::rules;
use super::topic::validate_topic;
use crate::error::{ErrorCode, RpcError};

/// The name of a method of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodName {
    Connect,
    Disconnect,
    Subscribe,
    Unsubscribe,
    Publish,
    Request,
    Ping,
    Status,
    Ack,
    Nack,
    DeleteQueue,
    PurgeQueue,
    ChannelSend,
    ChannelReceive,
    GroupAdd,
    GroupDiscard,
    GroupSend,
    ChannelFlush,
    ChannelAck,
    ChannelNack,
    ChannelCancel,
}

impl MethodName {
    pub const ALL: [MethodName; 21] = [
        MethodName::Connect,
        MethodName::Disconnect,
        MethodName::Subscribe,
        MethodName::Unsubscribe,
        MethodName::Publish,
        MethodName::Request,
        MethodName::Ping,
        MethodName::Status,
        MethodName::Ack,
        MethodName::Nack,
        MethodName::DeleteQueue,
        MethodName::PurgeQueue,
        MethodName::ChannelSend,
        MethodName::ChannelReceive,
        MethodName::GroupAdd,
        MethodName::GroupDiscard,
        MethodName::GroupSend,
        MethodName::ChannelFlush,
        MethodName::ChannelAck,
        MethodName::ChannelNack,
        MethodName::ChannelCancel,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            MethodName::Connect => "connect",
            MethodName::Disconnect => "disconnect",
            MethodName::Subscribe => "subscribe",
            MethodName::Unsubscribe => "unsubscribe",
            MethodName::Publish => "publish",
            MethodName::Request => "request",
            MethodName::Ping => "ping",
            MethodName::Status => "status",
            MethodName::Ack => "ack",
            MethodName::Nack => "nack",
            MethodName::DeleteQueue => "delete_queue",
            MethodName::PurgeQueue => "purge_queue",
            MethodName::ChannelSend => "channel_send",
            MethodName::ChannelReceive => "channel_receive",
            MethodName::GroupAdd => "group_add",
            MethodName::GroupDiscard => "group_discard",
            MethodName::GroupSend => "group_send",
            MethodName::ChannelFlush => "channel_flush",
            MethodName::ChannelAck => "channel_ack",
            MethodName::ChannelNack => "channel_nack",
            MethodName::ChannelCancel => "channel_cancel",
        }
    }

    /// The method called `name`, or the error that lists the methods there are.
    pub fn find(name: &str) -> Result<MethodName, RpcError> {
        Self::ALL.into_iter().find(|method| method.as_str() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|method| method.as_str()).collect();
            RpcError::new(
                ErrorCode::MethodNotFound,
                format!("unknown method {name:?}; the methods are {}", names.join(", ")),
            )
        })
    }

    /// Everything but `connect` and `ping` needs a connected client.
    pub fn needs_connect(self) -> bool {
        !matches!(self, MethodName::Connect | MethodName::Ping)
    }
}

/// A call's method with its checked parameters.
#[derive(Debug)]
pub enum Method<'a> {
    Connect(Connect),
    Disconnect,
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Publish(Publish<'a>),
    Request(Request<'a>),
    Ping,
    Status,
    /// `ack` (`requeue` is `None`) or `nack`.
    Settle(Settle),
    DeleteQueue(DeleteQueue),
    PurgeQueue(PurgeQueue),
    ChannelSend(channels::ChannelSend),
    ChannelReceive(channels::ChannelReceive),
    GroupAdd(channels::GroupAdd),
    GroupDiscard(channels::GroupDiscard),
    GroupSend(channels::GroupSend),
    ChannelFlush(channels::ChannelFlush),
    ChannelAck(channels::ChannelTags),
    ChannelNack(channels::ChannelTags),
    ChannelCancel(channels::ChannelCancel),
}

impl<'a> Method<'a> {
    /// The method of `call`, named `name`, with its checked params (those of a
    /// publish read together with the envelope, or else read now).
    pub fn of(name: MethodName, call: &jsonrpc::Call<'a>) -> Result<Method<'a>, RpcError> {
        match &call.publish {
            Some(given) => Publish::check(given.clone()).map(Method::Publish),
            None => Method::parse(name, call.params),
        }
    }

    /// Reads the params of `name` (missing params read as `{}`).
    pub fn parse(name: MethodName, params: Option<&'a RawValue>) -> Result<Method<'a>, RpcError> {
        Ok(match name {
            MethodName::Connect => Method::Connect(Connect::parse(params)?),
            MethodName::Disconnect => Method::Disconnect,
            MethodName::Subscribe => Method::Subscribe(Subscribe::parse(params)?),
            MethodName::Unsubscribe => Method::Unsubscribe(jsonrpc::params(params)?),
            MethodName::Publish => Method::Publish(Publish::parse(params)?),
            MethodName::Request => Method::Request(Request::parse(params)?),
            MethodName::Ping => Method::Ping,
            MethodName::Status => Method::Status,
            MethodName::Ack | MethodName::Nack => Method::Settle(Settle::parse(params, name)?),
            MethodName::DeleteQueue => Method::DeleteQueue(jsonrpc::params(params)?),
            MethodName::PurgeQueue => Method::PurgeQueue(jsonrpc::params(params)?),
            MethodName::ChannelSend => Method::ChannelSend(channels::ChannelSend::parse(params)?),
            MethodName::ChannelReceive => Method::ChannelReceive(channels::ChannelReceive::parse(params)?),
            MethodName::GroupAdd => Method::GroupAdd(channels::GroupAdd::parse(params)?),
            MethodName::GroupDiscard => Method::GroupDiscard(channels::GroupDiscard::parse(params)?),
            MethodName::GroupSend => Method::GroupSend(channels::GroupSend::parse(params)?),
            MethodName::ChannelFlush => Method::ChannelFlush(channels::ChannelFlush::parse(params)?),
            MethodName::ChannelAck => Method::ChannelAck(channels::ChannelTags::parse(params)?),
            MethodName::ChannelNack => Method::ChannelNack(channels::ChannelTags::parse(params)?),
            MethodName::ChannelCancel => Method::ChannelCancel(channels::ChannelCancel::parse(params)?),
        })
    }
}

/// `connect`: who the client is, and its last will.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_type: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub will: Option<Will>,
    /// The broker's token (see the runtime file); needed over TCP when the broker
    /// requires it, checked whenever given.
    #[serde(default)]
    pub token: Option<String>,
}

/// Written out by hand so that logs never show the token.
impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("client_id", &self.client_id)
            .field("client_type", &self.client_type)
            .field("version", &self.version)
            .field("will", &self.will)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Connect {
    fn parse(params: Option<&RawValue>) -> Result<Connect, RpcError> {
        let connect: Connect = jsonrpc::params(params)?;
        if let Some(will) = &connect.will {
            will.check()?;
        }
        if let Some(client_id) = &connect.client_id {
            rules::client_id(client_id)?;
        }
        Ok(connect)
    }
}

/// A client's last will, given at `connect`: published by the broker if the
/// connection ends without `disconnect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Will {
    pub topic: String,
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    #[serde(default)]
    pub qos: Option<Value>,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub ttl: f64,
    #[serde(default)]
    pub headers: Option<Box<RawValue>>,
}

impl Will {
    /// A will the broker accepts: what `publish` would accept.
    pub fn check(&self) -> Result<(), RpcError> {
        validate_topic(&self.topic)?;
        rules::publishable(&self.topic)?;
        rules::qos(self.qos.as_ref())?;
        rules::ttl(self.ttl)?;
        if let Some(headers) = &self.headers {
            rules::headers(headers)?;
        }
        Ok(())
    }
}

/// `subscribe`: patterns, and with `queue` or `durable` a queue to consume from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    pub patterns: Vec<String>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub prefetch: Option<usize>,
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub max_deliveries: Option<u32>,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Seconds a `qos=1` publish into the queue waits for a consumer's
    /// acknowledgement before it is confirmed.
    #[serde(default)]
    pub confirm_on_ack: Option<f64>,
    /// Receives messages but never counts as a responder to a request.
    #[serde(default)]
    pub passive: bool,
    /// Never receives what its own connection publishes.
    #[serde(default)]
    pub no_local: bool,
    /// A passive subscription that carries requests on elsewhere (a bridge): a request
    /// that only relays match waits for them instead of failing at once.
    #[serde(default)]
    pub relay: bool,
}

impl Subscribe {
    fn parse(params: Option<&RawValue>) -> Result<Subscribe, RpcError> {
        let subscribe: Subscribe = jsonrpc::params(params)?;
        if subscribe.queue.is_none() && !subscribe.durable {
            if subscribe.prefetch.is_some()
                || subscribe.max_length.is_some()
                || subscribe.max_bytes.is_some()
                || subscribe.max_deliveries.is_some()
                || subscribe.dead_letter_topic.is_some()
                || subscribe.confirm_on_ack.is_some()
            {
                return Err(RpcError::invalid_params(
                    "prefetch, max_length, max_bytes, max_deliveries, dead_letter_topic and confirm_on_ack apply to queues: give \"queue\" or \"durable\"",
                ));
            }
        } else if subscribe.passive || subscribe.no_local || subscribe.relay {
            return Err(RpcError::invalid_params(
                "passive, no_local and relay apply to plain subscriptions, not to queues",
            ));
        }
        Ok(subscribe)
    }
}

/// How a plain subscription takes messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct SubscriptionFlags {
    /// Receives messages but never counts as a responder to a request.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub passive: bool,
    /// Never receives what its own connection publishes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_local: bool,
    /// Passive, but a request that only relays match waits for their answer: a relay
    /// carries it on elsewhere (a bridge to another broker) and says when no one
    /// there answers.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
}

impl SubscriptionFlags {
    /// What the broker must hold for a pattern that several subscriptions of one
    /// client share: a responder if any is, its own messages if any wants them.
    pub fn shared_with(self, other: SubscriptionFlags) -> SubscriptionFlags {
        SubscriptionFlags {
            passive: self.passive && other.passive,
            no_local: self.no_local && other.no_local,
            relay: self.relay || other.relay,
        }
    }
}

/// `unsubscribe`: patterns, or a queue to stop consuming from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    #[serde(default)]
    pub patterns: Option<Vec<String>>,
    #[serde(default)]
    pub queue: Option<String>,
}

/// `request`: a message that expects one reply within `timeout` seconds.
#[derive(Debug)]
pub struct Request<'a> {
    pub topic: Cow<'a, str>,
    pub payload: Option<&'a RawValue>,
    pub timeout: f64,
    pub headers: Option<&'a RawValue>,
}

impl<'a> Request<'a> {
    fn parse(params: Option<&'a RawValue>) -> Result<Request<'a>, RpcError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Given<'a> {
            #[serde(borrow)]
            topic: Cow<'a, str>,
            #[serde(borrow, default)]
            payload: Option<&'a RawValue>,
            #[serde(default)]
            timeout: Option<f64>,
            #[serde(borrow, default)]
            headers: Option<&'a RawValue>,
        }
        let given: Given<'a> = jsonrpc::params(params)?;
        validate_topic(&given.topic)?;
        let timeout = rules::request_timeout(given.timeout)?;
        if let Some(headers) = given.headers {
            rules::headers(headers)?;
        }
        Ok(Request {
            topic: given.topic,
            payload: given.payload,
            timeout,
            headers: given.headers.filter(|headers| !rules::is_empty_object(headers)),
        })
    }
}

/// `ack` or `nack` of queue deliveries by tag.
#[derive(Debug)]
pub struct Settle {
    pub deliveries: Vec<u64>,
    /// `None` for `ack`; for `nack`, whether the messages go back to their queue
    /// (default) or to its dead letters.
    pub requeue: Option<bool>,
}

impl Settle {
    fn parse(params: Option<&RawValue>, name: MethodName) -> Result<Settle, RpcError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Given {
            deliveries: Vec<u64>,
            #[serde(default)]
            requeue: Option<bool>,
        }
        let given: Given = jsonrpc::params(params)?;
        if given.deliveries.len() > rules::MAX_SETTLE {
            return Err(RpcError::invalid_params(format!(
                "at most {} deliveries per call",
                rules::MAX_SETTLE
            )));
        }
        let requeue = match (name, given.requeue) {
            (MethodName::Ack, Some(_)) => {
                return Err(RpcError::invalid_params("\"requeue\" belongs to nack"));
            }
            (MethodName::Ack, None) => None,
            (_, requeue) => Some(requeue.unwrap_or(true)),
        };
        Ok(Settle { deliveries: given.deliveries, requeue })
    }
}

/// `delete_queue`: a queue to delete with its messages.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQueue {
    pub name: String,
}

/// `purge_queue`: a queue whose ready messages to drop, keeping the queue.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQueue {
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn every_name_is_found_and_unknown_ones_list_the_methods() {
        for name in MethodName::ALL {
            assert_eq!(MethodName::find(name.as_str()).unwrap(), name);
        }
        let error = MethodName::find("publsh").unwrap_err();
        assert_eq!(error.code, ErrorCode::MethodNotFound);
        assert!(error.message.contains("delete_queue"), "{}", error.message);
    }

    #[test]
    fn publish_params_are_checked_once() {
        let params = raw(r#"{"topic":"a.b","payload":{"x":1},"qos":1,"ttl":2.5,"headers":{"k":"v"}}"#);
        let Method::Publish(publish) = Method::parse(MethodName::Publish, Some(&params)).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!((publish.qos, publish.ttl), (1, Some(2.5)));
        assert_eq!(publish.headers.map(RawValue::get), Some(r#"{"k":"v"}"#));
        for bad in [
            r#"{"topic":"a..b"}"#,
            r#"{"topic":"a","qos":2}"#,
            r#"{"topic":"a","ttl":-1}"#,
            r#"{"topic":"a","headers":{"k":1}}"#,
            r#"{"topic":"a","headers":[]}"#,
            r#"{"topic":"a","message_id":""}"#,
            r#"{"topic":"a","extra":1}"#,
        ] {
            let error = Method::parse(MethodName::Publish, Some(&raw(bad))).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidParams, "{bad}");
        }
    }

    #[test]
    fn a_publish_call_reads_back_as_it_was_written() {
        let call = PublishCall {
            topic: "a.b",
            payload: r#"{"x":[1,"é"]}"#,
            message_id: "abc-1",
            ttl: Some(2.5),
            qos: 0,
            retain: false,
            headers: Some(r#"{"trace":"t"}"#),
        };
        let frame = call.encode(None);
        let value: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(value["method"], "publish");
        assert_eq!(value["params"]["payload"]["x"][1], "é");
        assert_eq!(value["params"]["headers"]["trace"], "t");
        assert!(value.get("id").is_none(), "sent as a notification");
        let parsed = jsonrpc::parse(&frame).unwrap();
        let jsonrpc::Incoming::Single(Ok(parsed)) = parsed else { panic!("not one call") };
        assert!(parsed.publish.is_some(), "read in one pass");
        let Method::Publish(publish) = Method::of(MethodName::Publish, &parsed).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(
            (&*publish.topic, publish.ttl, publish.message_id.as_deref()),
            ("a.b", Some(2.5), Some("abc-1"))
        );

        let confirmed = PublishCall { qos: 1, retain: true, headers: None, ..call }.encode(Some(7));
        let value: Value = serde_json::from_slice(&confirmed).unwrap();
        assert_eq!(
            (value["params"]["qos"].as_u64(), value["params"]["retain"].as_bool()),
            (Some(1), Some(true))
        );
        assert_eq!(value["id"], 7, "qos=1 is a call, answered once stored");
    }

    #[test]
    fn an_error_reply_goes_to_a_reply_address_only_and_without_a_payload() {
        let params = raw(r#"{"topic":"_internal.reply.1.ab","error":{"type":"ValueError","message":"no"}}"#);
        let Method::Publish(publish) = Method::parse(MethodName::Publish, Some(&params)).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(publish.error, Some(ReplyError { kind: "ValueError".into(), message: "no".into() }));
        for bad in [
            r#"{"topic":"jobs.x","error":{"type":"E","message":"m"}}"#,
            r#"{"topic":"_internal.reply.1.ab","payload":1,"error":{"type":"E","message":"m"}}"#,
            r#"{"topic":"_internal.reply.1.ab","error":{"type":"","message":"m"}}"#,
            r#"{"topic":"_internal.reply.1.ab","error":{"message":"m"}}"#,
            r#"{"topic":"_internal.reply.1.ab","error":{"type":"E","message":"m","trace":"t"}}"#,
        ] {
            let error = Method::parse(MethodName::Publish, Some(&raw(bad))).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidParams, "{bad}");
        }
    }

    #[test]
    fn empty_headers_are_no_headers() {
        let params = raw(r#"{"topic":"a","headers":{}}"#);
        let Method::Publish(publish) = Method::parse(MethodName::Publish, Some(&params)).unwrap() else {
            panic!("not a publish");
        };
        assert!(publish.headers.is_none());
    }

    #[test]
    fn ack_refuses_requeue_and_nack_requeues_by_default() {
        let ack = raw(r#"{"deliveries":[1],"requeue":false}"#);
        assert!(Method::parse(MethodName::Ack, Some(&ack)).is_err());
        let nack = raw(r#"{"deliveries":[1,2]}"#);
        let Method::Settle(settle) = Method::parse(MethodName::Nack, Some(&nack)).unwrap() else {
            panic!("not a settle");
        };
        assert_eq!((settle.deliveries, settle.requeue), (vec![1, 2], Some(true)));
    }

    #[test]
    fn queue_options_need_a_queue_and_flags_need_a_plain_subscription() {
        let options = raw(r#"{"patterns":["a"],"prefetch":5}"#);
        assert!(Method::parse(MethodName::Subscribe, Some(&options)).is_err());
        let flags = raw(r#"{"patterns":["a"],"queue":"q","passive":true}"#);
        assert!(Method::parse(MethodName::Subscribe, Some(&flags)).is_err());
        let plain = raw(r#"{"patterns":["a"],"passive":true,"no_local":true}"#);
        assert!(Method::parse(MethodName::Subscribe, Some(&plain)).is_ok());
    }
}
