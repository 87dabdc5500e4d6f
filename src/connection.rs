//! Moving frames between a socket and the session: a reader that cuts frames out of
//! the byte stream (with a deadline once a frame has started, against slow-loris
//! clients) and a writer task that coalesces queued frames into few large writes.

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

use crate::outbox::OutboxReceiver;
use crate::protocol::frame::{Decoded, FrameDecoder, FrameError, Framing};

/// Writes are gathered up to about this many bytes before they go to the socket.
const WRITE_CHUNK: usize = 256 * 1024;
/// Frames taken from the queue per wake-up of the writer.
const WRITE_BATCH: usize = 256;
/// Buffers that grew past this for a large message are released after use, so idle
/// connections stay small.
const IDLE_BUFFER_LIMIT: usize = 64 * 1024;
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

/// Aborts a task when dropped, so that a connection's writer never outlives it.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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

    /// The next frame; `None` when the client closed the connection between frames.
    /// Cancel-safe: bytes already read stay in the buffer.
    pub async fn next(&mut self) -> Result<Option<Decoded>, ReadError> {
        loop {
            if let Some(decoded) = self.decoder.decode(&mut self.buf)? {
                self.partial_since = self.decoder.is_mid_frame(&self.buf).then(Instant::now);
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

/// Writes queued frames until every sender of the queue is gone, then closes the
/// write side. The framing is read per batch: it is set once the client's first byte
/// has arrived, before any response can be queued.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut stream: W,
    mut queue: OutboxReceiver,
    framing: Arc<OnceLock<Framing>>,
    stall_timeout: Duration,
) -> io::Result<()> {
    // A client that reads nothing for this long is gone or stuck: give up on it.
    let stalled =
        || io::Error::new(io::ErrorKind::TimedOut, format!("the client read nothing for {stall_timeout:?}"));
    let mut frames: Vec<Bytes> = Vec::new();
    let mut buf = BytesMut::new();
    while queue.recv_many(&mut frames, WRITE_BATCH).await > 0 {
        let framing = framing.get().copied().unwrap_or(Framing::LengthPrefixed);
        for frame in frames.drain(..) {
            framing.encode(&frame, &mut buf);
            if buf.len() >= WRITE_CHUNK {
                timeout(stall_timeout, stream.write_all(&buf)).await.map_err(|_| stalled())??;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            timeout(stall_timeout, stream.write_all(&buf)).await.map_err(|_| stalled())??;
            buf.clear();
        }
        queue.note_written();
        if buf.capacity() > IDLE_BUFFER_LIMIT {
            buf = BytesMut::new();
        }
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox;

    #[tokio::test]
    async fn reader_and_writer_round_trip_over_a_pipe() {
        let (client, server) = tokio::io::duplex(64);
        let (outbox, queue) = outbox::channel(16, 1 << 20);
        let framing = Arc::new(OnceLock::from(Framing::LengthPrefixed));
        let writer = tokio::spawn(write_loop(server, queue, framing, Duration::from_secs(5)));
        for body in [&b"{\"a\":1}"[..], b"[1,2,3]", b""] {
            assert!(outbox.send(Bytes::copy_from_slice(body)).await);
        }
        drop(outbox);
        let mut reader = FrameReader::new(client, 1024, Duration::from_secs(5));
        let mut got = Vec::new();
        while let Some(decoded) = reader.next().await.unwrap() {
            got.push(decoded);
        }
        writer.await.unwrap().unwrap();
        assert_eq!(
            got,
            vec![
                Decoded::Frame(Bytes::from_static(b"{\"a\":1}")),
                Decoded::Frame(Bytes::from_static(b"[1,2,3]")),
                Decoded::Frame(Bytes::new()),
            ]
        );
    }

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
