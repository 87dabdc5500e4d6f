//! A delivery read as the broker writes it (`protocol::message::Delivery::encode`):
//! the envelope and the keys matched as text, in their order, the strings and the
//! payload cut out of the frame in one pass. The broker checked the payload when it
//! was published, so the payload is only walked to find its end; the client decodes
//! it (and refuses it, if it must) when it hands it over. Whatever this reader does not
//! expect (a string with escapes, headers, another order, anything malformed) makes
//! it give up, and the frame is read by serde instead.

use std::borrow::Cow;

use super::DeliveryFields;
use crate::protocol::json_value;

/// A delivery as read from its frame.
#[derive(Debug)]
pub(super) struct WrittenDelivery<'a> {
    pub fields: DeliveryFields<'a>,
    /// From a queue: its name, the delivery's tag and how many times it was delivered.
    pub from_queue: Option<(Cow<'a, str>, u64, u32)>,
}

/// The delivery in `frame`, when it is written as the broker writes it.
pub(super) fn read(frame: &[u8]) -> Option<WrittenDelivery<'_>> {
    let mut at = Cursor { text: frame, at: 0 };
    at.literal(br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"#)?;
    let topic = at.string()?;
    at.literal(br#","payload":"#)?;
    let payload = at.value()?;
    at.literal(br#","sender":"#)?;
    let sender = at.string()?;
    at.literal(br#","id":"#)?;
    let id = at.string()?;
    at.literal(br#","timestamp":"#)?;
    let timestamp = at.number()?;
    let reply_to = at.eat(br#","reply_to":"#).then(|| at.string()).map_or(Some(None), |s| s.map(Some))?;
    let ttl = at.eat(br#","ttl":"#).then(|| at.number()).map_or(Some(None), |n| n.map(Some))?;
    let qos = at.eat(br#","qos":"#).then(|| at.number()).map_or(Some(0), |n| n)?;
    if at.eat(br#","headers":"#) {
        return None; // rare: read (and checked) by serde
    }
    let retained = at.eat(br#","retained":true"#);
    let from_queue = if at.eat(br#","queue":"#) {
        let queue = at.string()?;
        at.literal(br#","delivery":"#)?;
        let tag = at.number()?;
        at.literal(br#","delivery_count":"#)?;
        Some((queue, tag, at.number()?))
    } else {
        None
    };
    at.literal(b"}}")?;
    if at.at != frame.len() {
        return None;
    }
    let fields =
        DeliveryFields { topic, payload, sender, id, reply_to, headers: None, timestamp, ttl, qos, retained };
    Some(WrittenDelivery { fields, from_queue })
}

struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Steps over `expected`, or fails.
    fn literal(&mut self, expected: &[u8]) -> Option<()> {
        self.eat(expected).then_some(())
    }

    /// Steps over `expected` when it comes next; says whether it did.
    fn eat(&mut self, expected: &[u8]) -> bool {
        let found = self.text[self.at..].starts_with(expected);
        if found {
            self.at += expected.len();
        }
        found
    }

    /// A string without escapes or control characters, borrowed from the frame.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.literal(b"\"")?;
        let start = self.at;
        let len = json_value::plain_len(&self.text[start..]);
        if self.text.get(start + len) != Some(&b'"') {
            return None;
        }
        self.at = start + len + 1;
        std::str::from_utf8(&self.text[start..start + len]).ok().map(Cow::Borrowed)
    }

    /// The text of a JSON value, found by walking its strings and brackets.
    fn value(&mut self) -> Option<&'a str> {
        let start = self.at;
        let mut depth = 0usize;
        loop {
            match *self.text.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    self.skip_string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.at += 1;
                }
                b'}' | b']' if depth == 0 => break, // the end of the params: a scalar ended
                b'}' | b']' => {
                    depth -= 1;
                    self.at += 1;
                }
                b',' if depth == 0 => break,
                _ => self.at += 1,
            }
            if depth == 0 && matches!(self.text[self.at - 1], b'"' | b'}' | b']') {
                break;
            }
        }
        let text = &self.text[start..self.at];
        if text.is_empty() {
            return None;
        }
        std::str::from_utf8(text).ok()
    }

    /// Steps past the closing quote of the string whose contents start here.
    fn skip_string(&mut self) -> Option<()> {
        loop {
            let found = self.at + memchr::memchr2(b'"', b'\\', &self.text[self.at..])?;
            if self.text[found] == b'"' {
                self.at = found + 1;
                return Some(());
            }
            self.at = found + 2; // an escape: the next character is taken as it is
            if self.at > self.text.len() {
                return None;
            }
        }
    }

    /// A number up to the next comma or brace, written as JSON writes numbers (no
    /// `inf`, `nan` or other spellings Rust would read).
    fn number<T: std::str::FromStr>(&mut self) -> Option<T> {
        let rest = &self.text[self.at..];
        let len = rest.iter().position(|&b| b == b',' || b == b'}')?;
        let digits = &rest[..len];
        let unsigned = digits.strip_prefix(b"-").unwrap_or(digits);
        let json_number = unsigned.first().is_some_and(u8::is_ascii_digit)
            && unsigned.last().is_some_and(u8::is_ascii_digit)
            && unsigned.iter().all(|&b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
        if !json_number {
            return None;
        }
        self.at += len;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}
