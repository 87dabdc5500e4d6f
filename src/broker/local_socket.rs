//! The same-user transport: a Unix socket (a named pipe on Windows) that only the
//! broker's own user can open. Its clients need no token: the operating system has
//! already told who they are. It carries the same framing and the same session as TCP.

use std::io;
use std::path::PathBuf;

use crate::error::BrokerError;
use crate::runtime_file::RuntimeDir;

/// Where the same-user transport can be reached.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LocalAddress {
    #[cfg_attr(not(unix), allow(dead_code))]
    UnixSocket(PathBuf),
    #[cfg_attr(not(windows), allow(dead_code))]
    NamedPipe(String),
}

#[cfg(unix)]
pub(crate) use self::unix::LocalListener;
#[cfg(windows)]
pub(crate) use self::windows::LocalListener;

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use tokio::net::{UnixListener, UnixStream};

    use super::*;
    use crate::runtime_file;

    pub(crate) type LocalStream = UnixStream;

    /// Longest socket path the kernel takes (`sun_path` holds 108 bytes with the NUL).
    const MAX_SOCKET_PATH: usize = 107;

    pub(crate) struct LocalListener {
        listener: UnixListener,
        path: PathBuf,
        /// This user: a peer with another uid is turned away.
        uid: u32,
    }

    impl LocalListener {
        /// Binds `broker-<port>.sock` in the runtime folder, readable and writable by
        /// its owner alone. A socket left behind by a broker that was killed is replaced.
        pub(crate) fn bind(runtime: &RuntimeDir, port: u16) -> Result<LocalListener, BrokerError> {
            let path = runtime.path().join(runtime_file::socket_name(port));
            let bind_error = |source| BrokerError::Bind { addr: path.display().to_string(), source };
            let length = path.as_os_str().len();
            if length > MAX_SOCKET_PATH {
                return Err(BrokerError::InvalidConfig(format!(
                    "the Unix socket path {} is {length} bytes, longer than the {MAX_SOCKET_PATH} a socket \
                     path may have: choose a shorter runtime_dir, or set local_socket = false",
                    path.display()
                )));
            }
            match std::fs::symlink_metadata(&path) {
                // Another broker of this user on the same port at another address
                // (127.0.0.1 and ::1) would answer: that one keeps its socket.
                Ok(metadata) if metadata.file_type().is_socket() => {
                    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                        return Err(bind_error(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "another broker of this user serves this socket (the same port on another address?)",
                        )));
                    }
                    // Nobody answers: left behind by a broker that was killed.
                    std::fs::remove_file(&path).map_err(bind_error)?
                }
                Ok(_) => {
                    return Err(bind_error(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a file that is not a socket is in the way",
                    )));
                }
                Err(_) => {}
            }
            let listener = UnixListener::bind(&path).map_err(bind_error)?;
            // The folder is closed to others already; the socket's own mode says so too.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            Ok(LocalListener { listener, path, uid })
        }

        pub(crate) fn address(&self) -> LocalAddress {
            LocalAddress::UnixSocket(self.path.clone())
        }

        /// The next client of this user, with a name for logs. A client of another
        /// user (possible only if someone opened the folder's mode) is closed at once.
        pub(crate) async fn accept(&mut self) -> io::Result<(LocalStream, String)> {
            loop {
                let (stream, _) = self.listener.accept().await?;
                match stream.peer_cred() {
                    Ok(peer) if peer.uid() == self.uid => {
                        let name = match peer.pid() {
                            Some(pid) => format!("unix socket, pid {pid}"),
                            None => "unix socket".to_owned(),
                        };
                        return Ok((stream, name));
                    }
                    Ok(peer) => tracing::warn!(
                        uid = peer.uid(),
                        pid = peer.pid(),
                        "refused a Unix socket client of another user"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "refused a Unix socket client whose user is unknown")
                    }
                }
            }
        }

        /// Removes the socket file, at a clean stop.
        pub(crate) fn remove(&self) {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), %error, "could not remove the Unix socket");
            }
        }
    }
}

#[cfg(windows)]
mod windows {
    use tokio::net::windows::named_pipe::NamedPipeServer;

    use super::*;
    use crate::broker::named_pipe::{PipeAcceptor, pipe_name};

    /// The broker's named pipe: its DACL admits this user alone (see [`PipeAcceptor`]).
    pub(crate) struct LocalListener {
        acceptor: PipeAcceptor,
        name: String,
    }

    impl LocalListener {
        /// Opens `\\.\pipe\message-broker-<port>`; the runtime folder holds no file
        /// for it. A name someone else holds stops the start.
        pub(crate) fn bind(_runtime: &RuntimeDir, port: u16) -> Result<LocalListener, BrokerError> {
            let name = pipe_name(port);
            let acceptor = PipeAcceptor::bind(&name)
                .map_err(|source| BrokerError::Bind { addr: name.clone(), source })?;
            Ok(LocalListener { acceptor, name })
        }

        pub(crate) fn address(&self) -> LocalAddress {
            LocalAddress::NamedPipe(self.name.clone())
        }

        pub(crate) async fn accept(&mut self) -> io::Result<(NamedPipeServer, String)> {
            Ok((self.acceptor.accept().await?, "named pipe".to_owned()))
        }

        /// A pipe leaves nothing behind once its last instance is closed.
        pub(crate) fn remove(&self) {}
    }
}
