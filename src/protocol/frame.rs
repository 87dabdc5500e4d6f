//! Framing: how JSON messages are cut out of a byte stream.
//!
//! The default is a 4-byte big-endian length followed by that many bytes of UTF-8
//! JSON. A connection whose first byte is `{`, `[` or whitespace speaks
//! newline-delimited JSON instead, so `nc` or a ten-line script can take part. Such a
//! first byte can never start a valid length prefix: it would announce a frame of more
//! than 150 MB.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// How many times `max_message_size` a length prefix may announce before the
/// connection is closed instead of the frame being skipped.
pub const SKIP_LIMIT_FACTOR: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    LengthPrefixed,
    Lines,
}

impl Framing {
    /// Chooses the framing from the first byte a client sends.
    pub fn detect(first: u8) -> Framing {
        match first {
            b'{' | b'[' | b' ' | b'\t' | b'\r' | b'\n' => Framing::Lines,
            _ => Framing::LengthPrefixed,
        }
    }

    /// Appends one framed message to `dst`.
    pub fn encode(self, body: &[u8], dst: &mut BytesMut) {
        match self {
            Framing::LengthPrefixed => {
                dst.reserve(4 + body.len());
                dst.put_u32(body.len() as u32);
                dst.put_slice(body);
            }
            Framing::Lines => {
                // Bodies the broker writes never hold a raw newline: JSON escapes them
                // inside strings and forwarded payloads have theirs replaced by spaces.
                dst.reserve(body.len() + 1);
                dst.put_slice(body);
                dst.put_u8(b'\n');
            }
        }
    }
}

/// What the decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// One complete message body.
    Frame(Bytes),
    /// A message longer than the limit. Its bytes are discarded as they arrive and the
    /// connection goes on with the next message.
    TooLarge { len: usize },
}

/// A framing error after which the stream cannot be trusted: the connection closes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {len} is far beyond max_message_size ({max} bytes); closing the connection")]
    FarTooLarge { len: usize, max: usize },
}

#[derive(Debug)]
pub struct FrameDecoder {
    framing: Option<Framing>,
    max: usize,
    /// Bytes of an oversized length-prefixed frame still to discard.
    skip_bytes: usize,
    /// Discarding an oversized line up to its newline.
    skip_line: bool,
    /// How much of the buffer is known to hold no newline: a long line arriving in many
    /// reads is searched once, not again from its start after every read.
    line_searched: usize,
}

impl FrameDecoder {
    pub fn new(max_message_size: usize) -> Self {
        FrameDecoder {
            framing: None,
            max: max_message_size,
            skip_bytes: 0,
            skip_line: false,
            line_searched: 0,
        }
    }

    /// The framing, once the first byte has been seen.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// True while part of a message has arrived (or is being discarded).
    pub fn is_mid_frame(&self, buf: &BytesMut) -> bool {
        self.skip_bytes > 0 || self.skip_line || !buf.is_empty()
    }

    /// Takes the next message out of `buf`, if a whole one is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        let framing = match self.framing {
            Some(framing) => framing,
            None => match buf.first() {
                Some(&first) => *self.framing.insert(Framing::detect(first)),
                None => return Ok(None),
            },
        };
        match framing {
            Framing::LengthPrefixed => self.decode_length_prefixed(buf),
            Framing::Lines => Ok(self.decode_line(buf)),
        }
    }

    fn decode_length_prefixed(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        if self.skip_bytes > 0 {
            let n = self.skip_bytes.min(buf.len());
            buf.advance(n);
            self.skip_bytes -= n;
            if self.skip_bytes > 0 {
                return Ok(None);
            }
        }
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max {
            if len > self.max.saturating_mul(SKIP_LIMIT_FACTOR) {
                return Err(FrameError::FarTooLarge { len, max: self.max });
            }
            buf.advance(4);
            let n = len.min(buf.len());
            buf.advance(n);
            self.skip_bytes = len - n;
            return Ok(Some(Decoded::TooLarge { len }));
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        Ok(Some(Decoded::Frame(buf.split_to(len).freeze())))
    }

    fn decode_line(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        loop {
            let searched = self.line_searched.min(buf.len());
            let newline = memchr::memchr(b'\n', &buf[searched..]).map(|i| searched + i);
            self.line_searched = if newline.is_some() { 0 } else { buf.len() };
            if self.skip_line {
                match newline {
                    Some(i) => {
                        buf.advance(i + 1);
                        self.skip_line = false;
                        continue;
                    }
                    None => {
                        buf.clear();
                        self.line_searched = 0;
                        return None;
                    }
                }
            }
            let Some(i) = newline else {
                if buf.len() > self.max {
                    let len = buf.len();
                    buf.clear();
                    self.line_searched = 0;
                    self.skip_line = true;
                    return Some(Decoded::TooLarge { len });
                }
                return None;
            };
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line.len() > self.max {
                return Some(Decoded::TooLarge { len: line.len() });
            }
            return Some(Decoded::Frame(line.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Framing::LengthPrefixed.encode(body, &mut buf);
        buf.to_vec()
    }

    fn frame(bytes: &[u8]) -> Decoded {
        Decoded::Frame(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn length_prefixed_round_trip() {
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&framed(br#"{"a":1}"#)[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(br#"{"a":1}"#)));
        assert_eq!(decoder.framing(), Some(Framing::LengthPrefixed));
        assert!(buf.is_empty());
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn partial_reads_byte_by_byte() {
        let wire = [framed("{\"x\":\"é\"}".as_bytes()), framed(b"[]")].concat();
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(decoded) = decoder.decode(&mut buf).unwrap() {
                out.push(decoded);
            }
        }
        assert_eq!(out, vec![frame("{\"x\":\"é\"}".as_bytes()), frame(b"[]")]);
        assert!(!decoder.is_mid_frame(&buf));
    }

    #[test]
    fn several_frames_in_one_read() {
        let wire = [framed(b"1"), framed(b"2"), framed(b"3")].concat();
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&wire[..]);
        for expected in [b"1", b"2", b"3"] {
            assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(expected)));
        }
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn zero_length_frame_is_a_frame() {
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&framed(b"")[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(b"")));
    }

    #[test]
    fn oversized_frame_is_reported_skipped_and_the_stream_goes_on() {
        let mut decoder = FrameDecoder::new(64);
        let big = vec![b'x'; 100];
        let wire = [framed(&big), framed(b"ok")].concat();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in wire.chunks(7) {
            buf.put_slice(chunk);
            while let Some(decoded) = decoder.decode(&mut buf).unwrap() {
                out.push(decoded);
            }
        }
        assert_eq!(out, vec![Decoded::TooLarge { len: 100 }, frame(b"ok")]);
    }

    #[test]
    fn far_too_large_is_fatal() {
        let mut decoder = FrameDecoder::new(64);
        let mut buf = BytesMut::from(&(64 * SKIP_LIMIT_FACTOR as u32 + 1).to_be_bytes()[..]);
        assert!(matches!(decoder.decode(&mut buf), Err(FrameError::FarTooLarge { .. })));
    }

    #[test]
    fn lines_are_detected_and_split() {
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&b"{\"a\":1}\r\n\n  \n[1,2]\n{\"partial\""[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(b"{\"a\":1}")));
        assert_eq!(decoder.framing(), Some(Framing::Lines));
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(b"[1,2]")));
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert!(decoder.is_mid_frame(&buf));
        buf.put_slice(b":true}\n");
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(b"{\"partial\":true}")));
    }

    #[test]
    fn a_line_arriving_in_pieces_is_cut_where_its_newline_is() {
        let mut decoder = FrameDecoder::new(1 << 20);
        let line: Vec<u8> = format!("{{\"data\":\"{}\"}}", "x".repeat(10_000)).into_bytes();
        let mut buf = BytesMut::new();
        for piece in line.chunks(333) {
            buf.put_slice(piece);
            assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        }
        buf.put_slice(b"\n[1]");
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(&line)));
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        buf.put_slice(b"\n");
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(b"[1]")));
    }

    #[test]
    fn overlong_line_is_skipped_to_its_newline() {
        let mut decoder = FrameDecoder::new(64);
        let mut buf = BytesMut::from(&b"{"[..]);
        buf.put_slice(&[b'x'; 100]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Decoded::TooLarge { len: 101 }));
        buf.put_slice(b"still the long line\n{\"next\":1}\n");
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame(b"{\"next\":1}")));
    }

    #[test]
    fn encode_lines() {
        let mut buf = BytesMut::new();
        Framing::Lines.encode(b"{}", &mut buf);
        assert_eq!(&buf[..], b"{}\n");
    }
}
