//! Writing to a byte-stream transport: a writer task that coalesces queued frames
//! into few large writes, in the framing the client chose.

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::outbox::OutboxReceiver;
use crate::protocol::frame::Framing;
use crate::protocol::reader::IDLE_BUFFER_LIMIT;

/// Writes are gathered up to about this many bytes before they go to the socket.
const WRITE_CHUNK: usize = 256 * 1024;
/// Frames taken from the queue per wake-up of the writer.
const WRITE_BATCH: usize = 256;

/// Aborts a task when dropped, so that a connection's writer never outlives it.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
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
        // A busy connection keeps its buffer from one batch to the next; an idle one
        // gives back what a burst made it grow.
        if queue.note_written() && buf.capacity() > IDLE_BUFFER_LIMIT {
            buf = BytesMut::new();
        }
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::outbox;
    use crate::protocol::frame::Decoded;
    use crate::protocol::reader::FrameReader;

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
}
