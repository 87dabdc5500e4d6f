//! Cutting frames out of a byte stream, for the broker and the client alike: a
//! reader with a deadline once a frame has started (against slow-loris peers) that
//! keeps its buffer small while idle.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, timeout_at};

use super::frame::{Decoded, FrameDecoder, FrameError, Framing};

/// Buffers that grew past this for a large message are released after use, so idle
/// connections stay small.
pub(crate) const IDLE_BUFFER_LIMIT: usize = 64 * 1024;
const READ_RESERVE: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Framing(#[from] FrameError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("a frame took longer than {0:?} to arrive")]
    FrameTimeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads frames from one connection.
pub struct FrameReader<R> {
    stream: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    frame_timeout: Duration,
    /// When the frame now in progress started to arrive.
    partial_since: Option<Instant>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R, max_message_size: usize, frame_timeout: Duration) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_message_size),
            frame_timeout,
            partial_since: None,
        }
    }

    /// The framing the client chose with its first byte.
    pub fn framing(&self) -> Option<Framing> {
        self.decoder.framing()
    }

    /// The next frame if a whole one is already in the buffer (read with earlier
    /// ones); never reads.
    pub fn buffered(&mut self) -> Result<Option<Decoded>, ReadError> {
        let decoded = self.decoder.decode(&mut self.buf)?;
        if decoded.is_some() {
            // What follows in the buffer is timed from the next wait for the rest of it.
            self.partial_since = None;
        }
        Ok(decoded)
    }

    /// The next frame; `None` when the client closed the connection between frames.
    /// Cancel-safe: bytes already read stay in the buffer.
    pub async fn next(&mut self) -> Result<Option<Decoded>, ReadError> {
        loop {
            if let Some(decoded) = self.buffered()? {
                return Ok(Some(decoded));
            }
            if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER_LIMIT {
                self.buf = BytesMut::new();
            }
            if self.buf.capacity() - self.buf.len() < READ_RESERVE {
                self.buf.reserve(READ_RESERVE);
            }
            let read = if self.decoder.is_mid_frame(&self.buf) {
                let since = *self.partial_since.get_or_insert_with(Instant::now);
                timeout_at(since + self.frame_timeout, self.stream.read_buf(&mut self.buf))
                    .await
                    .map_err(|_| ReadError::FrameTimeout(self.frame_timeout))??
            } else {
                self.partial_since = None;
                self.stream.read_buf(&mut self.buf).await?
            };
            if read == 0 {
                return if self.decoder.is_mid_frame(&self.buf) {
                    Err(ReadError::Truncated)
                } else {
                    Ok(None)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stalls_times_out() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, 1024, Duration::from_secs(2));
        client.write_all(&[0, 0, 0, 10, b'{']).await.unwrap();
        let err = reader.next().await.unwrap_err();
        assert!(matches!(err, ReadError::FrameTimeout(_)), "{err}");
    }

    #[tokio::test]
    async fn eof_mid_frame_is_truncation() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, 1024, Duration::from_secs(2));
        client.write_all(&[0, 0, 0, 10, b'{']).await.unwrap();
        drop(client);
        assert!(matches!(reader.next().await, Err(ReadError::Truncated)));
    }
}
