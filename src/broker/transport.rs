//! The seam between a session and what carries its messages.
//!
//! A session reads whole messages from an [`Inbound`] and queues whole messages in
//! its outbox; a transport's writer takes them from there. Two kinds exist:
//! - [`ByteStream`]: a TCP connection (a Unix socket or a named pipe alike), framed
//!   length-prefixed or newline-delimited as the client's first byte chooses;
//! - [`Messages`]: a carrier of whole messages, one JSON text each (an in-process
//!   channel; a WebSocket alike).
//!
//! Adding a transport is implementing [`Transport`]; the session does not change.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::access::Origin;
use super::connection::write_loop;
use super::outbox::OutboxReceiver;
use crate::protocol::frame::{Decoded, Framing};
use crate::protocol::reader::{FrameReader, ReadError};

/// What carries a connection, as logs and monitoring name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Tcp,
    /// The Unix socket, or on Windows the named pipe, that only the broker's user opens.
    Local,
    /// A connection within the broker's own process.
    InProcess,
    /// A WebSocket through the HTTP listener.
    WebSocket,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Local if cfg!(windows) => "pipe",
            TransportKind::Local => "unix",
            TransportKind::InProcess => "in-process",
            TransportKind::WebSocket => "websocket",
        }
    }

    /// Whether a connection that came this way may be anyone's.
    pub(crate) fn origin(self) -> Origin {
        match self {
            TransportKind::Tcp => Origin::Network,
            TransportKind::Local | TransportKind::InProcess => Origin::SameUser,
            TransportKind::WebSocket => Origin::Web,
        }
    }
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's address (`127.0.0.1:50112`), or what stands for it (`in-process`).
    pub address: Arc<str>,
    pub transport: TransportKind,
}

impl Peer {
    pub fn new(address: impl Into<Arc<str>>, transport: TransportKind) -> Peer {
        Peer { address: address.into(), transport }
    }

    /// A connection within the broker's own process.
    pub fn in_process() -> Peer {
        Peer::new("in-process", TransportKind::InProcess)
    }
}

/// What a transport needs to know of the broker's limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_message_size: usize,
    /// How long a started frame may take to arrive, and a write may stall.
    pub frame_timeout: Duration,
}

/// Writes what the session queues until every sender of the queue is gone.
pub(crate) type Writer = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// Something a session can run over.
pub(crate) trait Transport: Send + 'static {
    type Inbound: Inbound;

    /// Splits the transport into the reader the session polls and the writer that
    /// drains `queue`.
    fn open(self, queue: OutboxReceiver, limits: Limits) -> (Self::Inbound, Writer);
}

/// The reading side of a transport.
pub(crate) trait Inbound: Send {
    /// The next message; `None` when the peer closed between messages. Cancel-safe.
    fn next(&mut self) -> impl Future<Output = Result<Option<Decoded>, ReadError>> + Send;

    /// The next message if one is already at hand (it came with an earlier one),
    /// without waiting; `None` otherwise, a closed connection included (`next` tells).
    fn at_hand(&mut self) -> Option<Result<Decoded, ReadError>>;

    /// Called once the session has ended, before its closing notice is queued.
    fn ended(&mut self) {}
}

/// A byte stream framed as the client's first byte chooses.
pub(crate) struct ByteStream<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Send + 'static> Transport for ByteStream<S> {
    type Inbound = StreamInbound<ReadHalf<S>>;

    fn open(self, queue: OutboxReceiver, limits: Limits) -> (Self::Inbound, Writer) {
        let (read_half, write_half) = tokio::io::split(self.0);
        // Set by the reader on the client's first byte, before anything is answered.
        let framing = Arc::new(OnceLock::new());
        let writer = Box::pin(write_loop(write_half, queue, framing.clone(), limits.frame_timeout));
        let reader = FrameReader::new(read_half, limits.max_message_size, limits.frame_timeout);
        (StreamInbound { reader, framing }, writer)
    }
}

pub(crate) struct StreamInbound<R> {
    reader: FrameReader<R>,
    framing: Arc<OnceLock<Framing>>,
}

impl<R: AsyncRead + Unpin + Send> StreamInbound<R> {
    /// Tells the writer the framing once the client's first byte has shown it.
    fn share_framing(&self) {
        if self.framing.get().is_none()
            && let Some(detected) = self.reader.framing()
        {
            let _ = self.framing.set(detected);
        }
    }
}

impl<R: AsyncRead + Unpin + Send> Inbound for StreamInbound<R> {
    async fn next(&mut self) -> Result<Option<Decoded>, ReadError> {
        let read = self.reader.next().await;
        self.share_framing();
        read
    }

    fn at_hand(&mut self) -> Option<Result<Decoded, ReadError>> {
        self.reader.buffered().transpose()
    }

    /// A client cut off inside its first frame (a read that never returned) still
    /// gets its notice in its own framing.
    fn ended(&mut self) {
        self.share_framing();
    }
}

/// Whole messages over channels: one JSON text per item, in both directions.
pub(crate) struct Messages {
    pub incoming: mpsc::Receiver<Bytes>,
    pub outgoing: mpsc::Sender<Bytes>,
}

impl Transport for Messages {
    type Inbound = MessagesInbound;

    fn open(self, mut queue: OutboxReceiver, limits: Limits) -> (Self::Inbound, Writer) {
        let outgoing = self.outgoing;
        let writer = Box::pin(async move {
            let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the peer stopped receiving");
            let mut frames = Vec::new();
            while queue.recv_many(&mut frames, 256).await > 0 {
                for frame in frames.drain(..) {
                    // A peer that takes nothing for this long is gone or stuck.
                    timeout(limits.frame_timeout, outgoing.send(frame))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the peer received nothing"))?
                        .map_err(|_| gone())?;
                }
                queue.note_written();
            }
            Ok(())
        });
        (MessagesInbound { incoming: self.incoming, max_message_size: limits.max_message_size }, writer)
    }
}

pub(crate) struct MessagesInbound {
    incoming: mpsc::Receiver<Bytes>,
    max_message_size: usize,
}

impl MessagesInbound {
    fn decoded(&self, message: Bytes) -> Decoded {
        if message.len() > self.max_message_size {
            Decoded::TooLarge { len: message.len() }
        } else {
            Decoded::Frame(message)
        }
    }
}

impl Inbound for MessagesInbound {
    async fn next(&mut self) -> Result<Option<Decoded>, ReadError> {
        Ok(self.incoming.recv().await.map(|message| self.decoded(message)))
    }

    fn at_hand(&mut self) -> Option<Result<Decoded, ReadError>> {
        self.incoming.try_recv().ok().map(|message| Ok(self.decoded(message)))
    }
}
