//! The JSON-RPC 2.0 envelope: parsing requests, notifications and batches, and
//! encoding responses.
//!
//! Parsing borrows from the frame: `params` and `id` stay raw JSON text until a method
//! handler reads the fields it needs, and a published payload is never turned into a
//! tree, only checked and copied.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::json_value;
use super::method::{MethodName, PublishParams};
use crate::error::{ErrorCode, ResponderFailure, RpcError};

/// Deepest nesting of arrays and objects accepted in a frame. Parsing is iterative,
/// so this is not about the broker's stack: it protects clients whose JSON parsers
/// recurse.
pub const MAX_DEPTH: usize = 128;

/// One call: a request when `id` is present (even `null`), else a notification.
#[derive(Debug)]
pub struct Call<'a> {
    pub method: Cow<'a, str>,
    pub params: Option<&'a RawValue>,
    pub id: Option<&'a RawValue>,
    /// The params of a publish call read together with the envelope (then `params` is
    /// `None`): see [`parse`].
    pub publish: Option<PublishParams<'a>>,
}

impl Call<'_> {
    pub fn is_notification(&self) -> bool {
        self.id.is_none()
    }
}

/// A batch element or single message that is not a valid call. It is answered with
/// `id` when one could be read, else with `null`.
#[derive(Debug)]
pub struct Rejected<'a> {
    pub id: Option<&'a RawValue>,
    pub error: RpcError,
}

pub type Parsed<'a> = Result<Call<'a>, Rejected<'a>>;

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a single call is nearly every frame: kept inline, it costs no allocation"
)]
pub enum Incoming<'a> {
    Single(Parsed<'a>),
    Batch(Vec<Parsed<'a>>),
}

/// Parses one frame body. An `Err` is answered with a single error response whose id
/// is `null`: invalid JSON (`PARSE_ERROR`) or an empty batch (`INVALID_REQUEST`).
pub fn parse(body: &[u8]) -> Result<Incoming<'_>, RpcError> {
    let survey = Survey::of(body);
    let text = if survey.ascii {
        // SAFETY: every byte is below 0x80, and ASCII text is UTF-8.
        unsafe { std::str::from_utf8_unchecked(body) }
    } else {
        std::str::from_utf8(body)
            .map_err(|e| RpcError::new(ErrorCode::ParseError, format!("frame is not valid UTF-8: {e}")))?
    };
    if survey.nests_deeper_than(text.as_bytes(), MAX_DEPTH) {
        return Err(RpcError::new(
            ErrorCode::ParseError,
            format!("JSON is nested more than {MAX_DEPTH} levels deep"),
        ));
    }
    if let Some(call) = written_publish(text) {
        return Ok(Incoming::Single(Ok(call)));
    }
    // Almost every frame is one well-formed call: its envelope is read in one pass.
    // Anything else is read again below, which tells invalid JSON apart from a JSON
    // value that is not a valid call.
    if text.trim_start().starts_with('{')
        && let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text)
    {
        return Ok(Incoming::Single(check_envelope(envelope)));
    }
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| RpcError::new(ErrorCode::ParseError, format!("invalid JSON: {e}")))?;
    if raw.get().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(raw.get())
            .map_err(|e| RpcError::new(ErrorCode::ParseError, format!("invalid JSON: {e}")))?;
        if items.is_empty() {
            return Err(RpcError::new(ErrorCode::InvalidRequest, "empty batch"));
        }
        Ok(Incoming::Batch(items.into_iter().map(parse_call).collect()))
    } else {
        Ok(Incoming::Single(parse_call(raw)))
    }
}

/// Keeps `null` apart from a missing member: a present member is always `Some`.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

fn invalid<'a>(id: Option<&'a RawValue>, message: impl Into<String>) -> Rejected<'a> {
    Rejected { id, error: RpcError::new(ErrorCode::InvalidRequest, message) }
}

fn parse_call(raw: &RawValue) -> Parsed<'_> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(invalid(None, "a request must be a JSON object"));
    }
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| invalid(None, format!("malformed request: {e}")))?;
    check_envelope(envelope)
}

/// The call an envelope holds, when it is a valid one.
fn check_envelope(envelope: Envelope<'_>) -> Parsed<'_> {
    let id = envelope.id;
    if let Some(id) = id {
        let first = id.get().as_bytes()[0];
        if !(first == b'"' || first == b'-' || first.is_ascii_digit() || id.get() == "null") {
            return Err(invalid(None, "id must be a string, a number or null"));
        }
    }
    // Compared as a JSON string, so that an escaped spelling ("2\u002e0") counts too.
    let version = envelope.jsonrpc.map(|v| serde_json::from_str::<Cow<'_, str>>(v.get()));
    if !matches!(version, Some(Ok(v)) if v == "2.0") {
        return Err(invalid(id, "\"jsonrpc\" must be exactly \"2.0\""));
    }
    let method = match envelope.method {
        None => return Err(invalid(id, "missing \"method\"")),
        Some(method) => serde_json::from_str::<Cow<'_, str>>(method.get())
            .map_err(|_| invalid(id, "\"method\" must be a string"))?,
    };
    if let Some(params) = envelope.params
        && !(params.get().starts_with('{') || params.get().starts_with('['))
    {
        return Err(invalid(id, "\"params\" must be an object or an array"));
    }
    Ok(Call { method, params: envelope.params, id, publish: None })
}

/// How the clients of this crate begin a publish call ([`super::method::PublishCall`]).
const PUBLISH_START: &str = r#"{"jsonrpc":"2.0","method":"publish","params":"#;

/// A publish call written as this crate's clients write it, the most common frame
/// by far, read in one pass: the envelope is matched as text and the params are
/// read once, where the general reading skips them first and reads them again.
/// `None` for any other text (any other order, spacing, id or member), which the
/// general reading then takes, with its errors.
fn written_publish(text: &str) -> Option<Call<'_>> {
    let rest = text.strip_prefix(PUBLISH_START)?;
    if !rest.starts_with('{') {
        return None;
    }
    let (params, read) = match PublishParams::read_written(rest) {
        Some(read) => read,
        None => {
            let mut values = serde_json::Deserializer::from_str(rest).into_iter::<PublishParams<'_>>();
            let params = values.next()?.ok()?;
            (params, values.byte_offset())
        }
    };
    let id = match &rest[read..] {
        "}" => None,
        after => {
            let id = after.strip_prefix(r#","id":"#)?.strip_suffix('}')?;
            // A number, or a string with nothing escaped in it.
            let plain = match id.strip_prefix('"').and_then(|inner| inner.strip_suffix('"')) {
                Some(inner) => json_value::plain_len(inner.as_bytes()) == inner.len(),
                None => !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
            };
            if !plain {
                return None;
            }
            match json_value::split_raw(id)? {
                (id, "") => Some(id),
                _ => return None,
            }
        }
    };
    Some(Call { method: Cow::Borrowed("publish"), params: None, id, publish: Some(params) })
}

/// Reads a method's parameters into `T`. Missing params read as `{}`; positional
/// (array) params are refused because every method takes named ones.
pub fn params<'a, T: Deserialize<'a>>(params: Option<&'a RawValue>) -> Result<T, RpcError> {
    let text = params.map_or("{}", RawValue::get);
    if text.starts_with('[') {
        return Err(RpcError::invalid_params("params must be an object with named members"));
    }
    serde_json::from_str(text).map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")))
}

/// What one pass over a frame's bytes tells before anything is parsed.
struct Survey {
    /// Opening brackets (`[` and `{`), in strings or not: nesting deeper than a limit
    /// needs more of them than the limit, so almost every frame is known shallow here.
    opening: usize,
    /// Every byte is ASCII, so the frame is UTF-8 without a closer look.
    ascii: bool,
}

impl Survey {
    fn of(json: &[u8]) -> Survey {
        // A loop the compiler vectorises: a byte a lane for the count (a count per
        // chunk of at most 255 bytes cannot overflow it), the bytes or-ed together
        // for their high bit.
        let (mut opening, mut bits) = (0usize, 0u8);
        for chunk in json.chunks(255) {
            let (count, or) = chunk
                .iter()
                .fold((0u8, 0u8), |(count, or), &b| (count + u8::from(b == b'[' || b == b'{'), or | b));
            opening += usize::from(count);
            bits |= or;
        }
        Survey { opening, ascii: bits < 0x80 }
    }

    /// True when `json`, the frame surveyed, nests arrays or objects deeper than
    /// `limit`: walked only when it has more opening brackets than that.
    fn nests_deeper_than(&self, json: &[u8], limit: usize) -> bool {
        self.opening > limit && exceeds_depth(json, limit)
    }
}

/// True when `json` nests arrays or objects deeper than `limit`: a walk byte by byte,
/// strings and all.
fn exceeds_depth(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

const NULL_ID: &str = "null";

/// A success response: `{"jsonrpc":"2.0","result":<result>,"id":<id>}`.
pub fn success(id: &RawValue, result: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + result.get().len() + id.get().len());
    out.extend_from_slice(br#"{"jsonrpc":"2.0","result":"#);
    out.extend_from_slice(result.get().as_bytes());
    out.extend_from_slice(br#","id":"#);
    out.extend_from_slice(id.get().as_bytes());
    out.push(b'}');
    out
}

/// An error response; `id` is `null` when the request's id could not be read. Its
/// `data` holds the code's name, and for a responder's failure what the responder said
/// (`type`, `message`) and who it was (`responder`).
pub fn failure(id: Option<&RawValue>, error: &RpcError) -> Vec<u8> {
    #[derive(Serialize)]
    struct Data<'a> {
        name: &'static str,
        #[serde(flatten)]
        failure: Option<&'a ResponderFailure>,
    }
    let message = serde_json::to_string(&error.message).expect("a string always serialises");
    let data = Data { name: error.code.name(), failure: error.failure.as_deref() };
    let data = serde_json::to_string(&data).expect("error data always serialises");
    let id = id.map_or(NULL_ID, RawValue::get);
    format!(
        r#"{{"jsonrpc":"2.0","error":{{"code":{},"message":{message},"data":{data}}},"id":{id}}}"#,
        error.code.code(),
    )
    .into_bytes()
}

/// The id of a call a client makes: a number for the user's calls, a name for the
/// client's own (`connect`, `heartbeat`, ...), which can never collide with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CallId<'a> {
    Number(u64),
    Name(&'a str),
}

#[derive(Serialize)]
struct CallEnvelope<'a, P: Serialize> {
    jsonrpc: &'static str,
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a P>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<CallId<'a>>,
}

/// A call: a request with `id`, a notification without; `params` may be left out.
pub fn call<P: Serialize>(method: MethodName, params: Option<&P>, id: Option<CallId<'_>>) -> Vec<u8> {
    serde_json::to_vec(&CallEnvelope { jsonrpc: "2.0", method: method.as_str(), params, id })
        .expect("call params always serialise")
}

/// Joins encoded responses into one batch response.
pub fn batch(responses: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(responses.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, response) in responses.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(response);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn single(body: &str) -> Parsed<'_> {
        match parse(body.as_bytes()).unwrap() {
            Incoming::Single(call) => call,
            Incoming::Batch(_) => panic!("expected a single call"),
        }
    }

    #[test]
    fn request_and_notification() {
        let call = single(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).unwrap();
        assert_eq!(call.method, "ping");
        assert_eq!(call.id.unwrap().get(), "1");
        assert!(!call.is_notification());

        let escaped = single(r#"{"jsonrpc":"2\u002e0","method":"ping","id":1}"#).unwrap();
        assert_eq!(escaped.method, "ping", "an escaped version is the same string");

        let call = single(r#"{"jsonrpc":"2.0","method":"ping","id":null}"#).unwrap();
        assert_eq!(call.id.unwrap().get(), "null", "a null id is a request, not a notification");

        let call = single(r#"{"jsonrpc":"2.0","method":"subscribe","params":{"patterns":["a"]}}"#).unwrap();
        assert!(call.is_notification());
        assert_eq!(call.params.unwrap().get(), r#"{"patterns":["a"]}"#);
    }

    /// The method a frame holds, read as a session reads it, or the error code.
    fn publish_of(body: &str) -> Result<(String, Option<String>, Option<String>), ErrorCode> {
        use super::super::method::Method;
        let call = single(body).map_err(|rejected| rejected.error.code)?;
        match Method::of(MethodName::Publish, &call).map_err(|error| error.code)? {
            Method::Publish(p) => Ok((
                p.topic.into_owned(),
                p.message_id.map(Cow::into_owned),
                call.id.map(|id| id.get().to_owned()),
            )),
            _ => unreachable!("a publish"),
        }
    }

    #[test]
    fn a_publish_as_clients_write_it_is_read_in_one_pass_to_the_same_call() {
        let params = r#"{"topic":"a.b","payload":{"k":[1,"}"]},"message_id":"m-1"}"#;
        for (fast, general) in [
            (format!(r#"{{"jsonrpc":"2.0","method":"publish","params":{params}}}"#), None),
            (format!(r#"{{"jsonrpc":"2.0","method":"publish","params":{params},"id":7}}"#), Some("7")),
            (
                format!(r#"{{"jsonrpc":"2.0","method":"publish","params":{params},"id":"r-1"}}"#),
                Some(r#""r-1""#),
            ),
        ] {
            assert!(single(&fast).unwrap().publish.is_some(), "{fast}");
            // The same call in another order or spacing takes the general reading.
            let id = general.map_or(String::new(), |id| format!(r#""id":{id},"#));
            let other = format!(r#"{{{id}"params": {params}, "method":"publish","jsonrpc":"2.0"}}"#);
            assert!(single(&other).unwrap().publish.is_none(), "{other}");
            assert_eq!(publish_of(&fast), publish_of(&other));
            let expected = ("a.b".to_owned(), Some("m-1".to_owned()), general.map(str::to_owned));
            assert_eq!(publish_of(&fast), Ok(expected));
        }
        // Whatever the one pass cannot take gets the general reading and its errors.
        let start = r#"{"jsonrpc":"2.0","method":"publish","params":"#;
        for (rest, code) in [
            (r#"{"topic":"a","colour":1}}"#, ErrorCode::InvalidParams),
            (r#"["a"]}"#, ErrorCode::InvalidParams),
            (r#"{"topic":"a","topic":"b"}}"#, ErrorCode::InvalidParams),
            (r#"{"topic":"a"},"id":{}}"#, ErrorCode::InvalidRequest),
            (r#"{"topic":"a"}} x"#, ErrorCode::ParseError),
            (r#"{"topic":"a"}"#, ErrorCode::ParseError),
        ] {
            let body = format!("{start}{rest}");
            let code_of = |body: &str| match parse(body.as_bytes()) {
                Err(error) => Err(error.code),
                Ok(_) => publish_of(body).map(|_| ()),
            };
            assert_eq!(code_of(&body), Err(code), "{body}");
        }
        let escaped_id = format!(r#"{start}{{"topic":"a"}},"id":"a\"b"}}"#);
        assert_eq!(publish_of(&escaped_id).unwrap().2.as_deref(), Some(r#""a\"b""#));
    }

    #[test]
    fn invalid_requests_keep_their_id_when_readable() {
        let rejected = single(r#"{"jsonrpc":"1.0","method":"ping","id":"a"}"#).unwrap_err();
        assert_eq!(rejected.error.code, ErrorCode::InvalidRequest);
        assert_eq!(rejected.id.unwrap().get(), r#""a""#);

        for body in [
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","method":5,"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"x","params":"s","id":1}"#,
            r#"{"method":"x","id":1}"#,
        ] {
            let rejected = single(body).unwrap_err();
            assert_eq!(rejected.error.code, ErrorCode::InvalidRequest, "{body}");
            assert_eq!(rejected.id.unwrap().get(), "1", "{body}");
        }
        for body in [r#"{"jsonrpc":"2.0","method":"x","id":{}}"#, "42", r#""text""#] {
            let rejected = single(body).unwrap_err();
            assert_eq!(rejected.error.code, ErrorCode::InvalidRequest, "{body}");
            assert!(rejected.id.is_none(), "{body}");
        }
    }

    #[test]
    fn parse_errors() {
        for body in [&b"{"[..], b"not json", b"\xff\xfe", b"", b"{} {}"] {
            assert_eq!(parse(body).unwrap_err().code, ErrorCode::ParseError, "{body:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).unwrap_err().message.contains("nested"));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let in_string = format!(r#"{{"jsonrpc":"2.0","method":"{}","id":1}}"#, "[".repeat(500));
        assert!(parse(in_string.as_bytes()).is_ok());
    }

    #[test]
    fn brackets_are_counted_past_one_chunk() {
        let deep = |text: &str| Survey::of(text.as_bytes()).nests_deeper_than(text.as_bytes(), MAX_DEPTH);
        // More opening brackets than one counting chunk holds, none of them deep.
        let shallow = format!("[{}[]]", "[],".repeat(400));
        assert_eq!(Survey::of(shallow.as_bytes()).opening, 402);
        assert!(!deep(&shallow));
        // A chunk made of opening brackets only, then deep nesting after shallow.
        let full_chunk = "[".repeat(300) + &"]".repeat(300);
        assert_eq!(Survey::of(full_chunk.as_bytes()).opening, 300);
        assert!(deep(&full_chunk));
        let deep_after = format!("[{}{}{}]", "[],".repeat(400), "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(deep(&deep_after));
    }

    #[test]
    fn a_byte_past_ascii_anywhere_has_the_frame_checked_as_utf8() {
        let call =
            |name: &str| format!(r#"{{"jsonrpc":"2.0","method":"ping","params":{{"n":"{name}"}},"id":1}}"#);
        for filler in [0, 250, 254, 255, 256, 600] {
            let name = "a".repeat(filler);
            assert!(Survey::of(call(&name).as_bytes()).ascii);
            let accented = call(&(name.clone() + "é"));
            assert!(!Survey::of(accented.as_bytes()).ascii, "at {filler}");
            assert!(parse(accented.as_bytes()).is_ok());
            let mut invalid = call(&(name + "x")).into_bytes();
            let at = invalid.iter().rposition(|&b| b == b'x').unwrap();
            invalid[at] = 0xff;
            let error = parse(&invalid).unwrap_err();
            assert_eq!(error.code, ErrorCode::ParseError, "at {filler}");
            assert!(error.message.contains("UTF-8"), "{}", error.message);
        }
    }

    #[test]
    fn batches() {
        assert_eq!(parse(b"[]").unwrap_err().code, ErrorCode::InvalidRequest);
        let Incoming::Batch(calls) =
            parse(br#"[{"jsonrpc":"2.0","method":"ping","id":1}, 5, {"jsonrpc":"2.0","method":"ping"}]"#)
                .unwrap()
        else {
            panic!("expected a batch")
        };
        assert_eq!(calls.len(), 3);
        assert!(calls[0].is_ok());
        assert!(calls[1].is_err());
        assert!(calls[2].as_ref().unwrap().is_notification());
    }

    #[test]
    fn responses_are_valid_json() {
        let id = RawValue::from_string("7".into()).unwrap();
        let result = RawValue::from_string(r#"{"pong":true}"#.into()).unwrap();
        let ok: Value = serde_json::from_slice(&success(&id, &result)).unwrap();
        assert_eq!(ok, json!({"jsonrpc": "2.0", "result": {"pong": true}, "id": 7}));

        let error = RpcError::new(ErrorCode::NotConnected, "say \"connect\" first");
        let err: Value = serde_json::from_slice(&failure(None, &error)).unwrap();
        assert_eq!(err["error"]["code"], -32001);
        assert_eq!(err["error"]["message"], "say \"connect\" first");
        assert_eq!(err["error"]["data"]["name"], "NOT_CONNECTED");
        assert_eq!(err["id"], Value::Null);

        let both: Value =
            serde_json::from_slice(&batch(&[success(&id, &result), failure(None, &error)])).unwrap();
        assert_eq!(both.as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_responder_failure_travels_in_data() {
        let error = RpcError::responder_failed(ResponderFailure {
            kind: "ValueError".into(),
            message: "bad \"input\"".into(),
            responder: "svc".into(),
        });
        let id = RawValue::from_string("3".into()).unwrap();
        let err: Value = serde_json::from_slice(&failure(Some(&id), &error)).unwrap();
        assert_eq!(err["error"]["code"], -32015);
        assert_eq!(
            err["error"]["data"],
            json!({"name": "RESPONDER_ERROR", "type": "ValueError", "message": "bad \"input\"", "responder": "svc"})
        );
        assert_eq!(err["error"]["message"], "the responder \"svc\" failed: ValueError: bad \"input\"");
    }

    #[test]
    fn params_are_named() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct P {
            topic: String,
        }
        let raw = RawValue::from_string(r#"{"topic":"a"}"#.into()).unwrap();
        assert_eq!(params::<P>(Some(&raw)).unwrap().topic, "a");
        let raw = RawValue::from_string(r#"["a"]"#.into()).unwrap();
        assert!(params::<P>(Some(&raw)).unwrap_err().message.contains("named"));
        let raw = RawValue::from_string(r#"{"topik":"a"}"#.into()).unwrap();
        assert!(params::<P>(Some(&raw)).unwrap_err().message.contains("topik"));
        assert!(params::<P>(None).unwrap_err().message.contains("topic"));
    }
}
