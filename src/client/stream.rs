//! Where the client connects and the two halves of the connection: TCP, or the
//! broker's local socket (a Unix socket; a named pipe on Windows) that only its own
//! user can open.
//!
//! The write half is shared: the task writes through it, and so do threads that
//! publish directly while nothing is queued, which is why it offers `try_write` and
//! `writable` on `&self` rather than `AsyncWrite`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
#[cfg(windows)]
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
#[cfg(windows)]
use tokio::net::windows::named_pipe::NamedPipeClient;
use tokio::net::{TcpStream, tcp};
#[cfg(unix)]
use tokio::net::{UnixStream, unix};

/// Where a client connects.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Tcp {
        host: String,
        port: u16,
    },
    /// The broker's Unix socket, or on Windows its named pipe (the path or name is in
    /// the runtime file and in `status`).
    Local(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Local(path) => write!(f, "{}", path.display()),
        }
    }
}

pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    #[cfg(unix)]
    Unix(unix::OwnedReadHalf),
    /// A pipe does not split: both halves share it, and it closes with the last.
    #[cfg(windows)]
    Pipe(Arc<NamedPipeClient>),
}

pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    #[cfg(unix)]
    Unix(unix::OwnedWriteHalf),
    #[cfg(windows)]
    Pipe(Arc<NamedPipeClient>),
}

/// Opens a connection to `endpoint`.
pub(crate) async fn connect(endpoint: &Endpoint) -> io::Result<(ReadHalf, WriteHalf)> {
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            Ok((ReadHalf::Tcp(read), WriteHalf::Tcp(write)))
        }
        #[cfg(unix)]
        Endpoint::Local(path) => {
            let (read, write) = UnixStream::connect(path).await?.into_split();
            Ok((ReadHalf::Unix(read), WriteHalf::Unix(write)))
        }
        #[cfg(windows)]
        Endpoint::Local(path) => {
            let pipe = Arc::new(super::pipe::connect_pipe(&path.to_string_lossy()).await?);
            Ok((ReadHalf::Pipe(pipe.clone()), WriteHalf::Pipe(pipe)))
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            #[cfg(unix)]
            ReadHalf::Unix(read) => Pin::new(read).poll_read(cx, buf),
            #[cfg(windows)]
            ReadHalf::Pipe(pipe) => loop {
                std::task::ready!(pipe.poll_read_ready(cx))?;
                match pipe.try_read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => return Poll::Ready(Err(error)),
                }
            },
        }
    }
}

impl WriteHalf {
    /// Writes what the socket takes now, without waiting.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(write) => write.try_write(buf),
            #[cfg(unix)]
            WriteHalf::Unix(write) => write.try_write(buf),
            #[cfg(windows)]
            WriteHalf::Pipe(pipe) => pipe.try_write(buf),
        }
    }

    /// Waits until the socket may take more.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(write) => write.writable().await,
            #[cfg(unix)]
            WriteHalf::Unix(write) => write.writable().await,
            #[cfg(windows)]
            WriteHalf::Pipe(pipe) => pipe.writable().await,
        }
    }

    /// Writes all of `buf`, sharing the half with threads that write directly.
    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.writable().await?;
            match self.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

impl Endpoint {
    /// Reads `tcp://host:port`, `host:port`, `unix:///path/to/broker.sock`, or a plain
    /// path to a local socket. The error says what was expected.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{url:?}: a unix:// URL takes an absolute path, as in unix:///run/broker.sock"
                ));
            }
            return Ok(Endpoint::Local(PathBuf::from(path)));
        }
        if let Some(address) = url.strip_prefix("tcp://") {
            let address = address.trim_end_matches('/');
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| format!("{url:?}: a tcp:// URL needs a port, as in tcp://127.0.0.1:15234"))?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&port| port > 0)
                .ok_or_else(|| format!("{url:?}: the port must be between 1 and 65535"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("{url:?}: the URL names no host"));
            }
            return Ok(Endpoint::Tcp { host: host.to_owned(), port });
        }
        if url.contains("://") {
            return Err(format!("{url:?}: the URL scheme must be tcp:// or unix://"));
        }
        let path = PathBuf::from(url);
        if path.is_absolute() {
            return Ok(Endpoint::Local(path));
        }
        // `host:port`, as nats and redis URLs leave the scheme out; an IPv6 host goes
        // in brackets, so that its own colons are not read as the port's.
        if let Some((host, port)) = url.rsplit_once(':')
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&port| port > 0)
                .ok_or_else(|| format!("{url:?}: the port must be between 1 and 65535"))?;
            let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(v6) => v6,
                None if host.contains(':') => {
                    return Err(format!("{url:?}: an IPv6 address goes in brackets, as in [::1]:15234"));
                }
                None => host,
            };
            if host.is_empty() || host.contains('/') {
                return Err(format!("{url:?}: expected host:port, as in localhost:15234"));
            }
            return Ok(Endpoint::Tcp { host: host.to_owned(), port });
        }
        Err(format!(
            "{url:?}: expected tcp://host:port, host:port, unix:///path, or the absolute path of a local socket"
        ))
    }

    /// The endpoint as a URL that [`Endpoint::parse`] reads back.
    pub fn url(&self) -> String {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => format!("tcp://[{host}]:{port}"),
            Endpoint::Tcp { host, port } => format!("tcp://{host}:{port}"),
            #[cfg(unix)]
            Endpoint::Local(path) => format!("unix://{}", path.display()),
            // A pipe name such as \\.\pipe\message-broker-15234 is its own address.
            #[cfg(windows)]
            Endpoint::Local(path) => path.display().to_string(),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_name_endpoints() {
        let local = Endpoint::Local("/run/user/1/message-broker/broker-1.sock".into());
        assert_eq!(Endpoint::parse("unix:///run/user/1/message-broker/broker-1.sock").unwrap(), local);
        assert_eq!(Endpoint::parse("/run/user/1/message-broker/broker-1.sock").unwrap(), local);
        let tcp = Endpoint::Tcp { host: "127.0.0.1".into(), port: 15234 };
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:15234").unwrap(), tcp);
        let v6 = Endpoint::Tcp { host: "::1".into(), port: 9 };
        assert_eq!(Endpoint::parse("tcp://[::1]:9").unwrap(), v6);
        for endpoint in [local, tcp.clone(), v6.clone()] {
            assert_eq!(Endpoint::parse(&endpoint.url()).unwrap(), endpoint);
        }
        assert_eq!(Endpoint::parse("127.0.0.1:15234").unwrap(), tcp, "the scheme may be left out");
        assert_eq!(Endpoint::parse("[::1]:9").unwrap(), v6);
        let named = Endpoint::Tcp { host: "broker.lan".into(), port: 1 };
        assert_eq!(Endpoint::parse("broker.lan:1").unwrap(), named);
        for bad in [
            "unix://relative.sock",
            "tcp://host",
            "tcp://host:0",
            "tcp://:1",
            "http://x:1",
            "broker.sock",
            "host:0",
            "host:70000",
            ":15234",
            "::1:9",
            "dir/broker.sock:1",
            "host:",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
