//! The broker's named pipe on Windows, `\\.\pipe\message-broker-<port>`: the local
//! transport that needs no token, because only the broker's own user can open it.
//!
//! What keeps others out:
//! - the first instance is created with FILE_FLAG_FIRST_PIPE_INSTANCE, so when another
//!   process already holds the name (a second broker, or a program squatting it to
//!   catch our clients) the broker's start fails instead of joining that pipe;
//! - a DACL granting the current user alone (see [`SecurityDescriptor::for_pipe`]):
//!   no one else can connect, nor create an instance of their own under our name;
//! - PIPE_REJECT_REMOTE_CLIENTS: connections over the network (SMB) are refused.
//!
//! A named pipe instance serves one client, so one instance is always left waiting:
//! the next is created before a connected one is handed out.

use std::io;

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};
use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;

use crate::windows_acl::SecurityDescriptor;

/// The name of the broker's pipe for `port`. Pipe names are machine-wide, like ports.
pub(crate) fn pipe_name(port: u16) -> String {
    format!(r"\\.\pipe\message-broker-{port}")
}

/// The broker's pipe name was taken when it started. Carrying on would leave the
/// broker unreachable by pipe, and its clients talking to whoever holds the name.
#[derive(Debug, thiserror::Error)]
#[error(
    "the named pipe {name} is already open in another process (another broker, or a program holding the name)"
)]
pub(crate) struct PipeInUse {
    name: String,
    #[source]
    source: io::Error,
}

/// Accepts connections on the broker's named pipe, keeping one instance listening.
pub(crate) struct PipeAcceptor {
    name: String,
    security: SecurityDescriptor,
    /// The instance clients connect to next.
    listening: NamedPipeServer,
}

impl PipeAcceptor {
    /// Creates the pipe's first instance. Fails with [`io::ErrorKind::AddrInUse`] (a
    /// [`PipeInUse`] inside) when the name is taken. Must run within a tokio runtime.
    pub(crate) fn bind(name: &str) -> io::Result<PipeAcceptor> {
        let security = SecurityDescriptor::for_pipe()?;
        let listening = create_instance(name, &security, true).map_err(|source| {
            // FILE_FLAG_FIRST_PIPE_INSTANCE on a name that exists gives ACCESS_DENIED;
            // an existing pipe out of instances gives PIPE_BUSY.
            let code = source.raw_os_error();
            if code == Some(ERROR_ACCESS_DENIED as i32) || code == Some(ERROR_PIPE_BUSY as i32) {
                io::Error::new(io::ErrorKind::AddrInUse, PipeInUse { name: name.to_owned(), source })
            } else {
                source
            }
        })?;
        Ok(PipeAcceptor { name: name.to_owned(), security, listening })
    }

    /// Waits for a client and returns its connected instance, once the next instance
    /// is listening in its place.
    ///
    /// Cancel-safe: dropping the future leaves the instance waiting, and a client that
    /// connected meanwhile is returned by the next call. After an error the acceptor
    /// stays usable: when the next instance cannot be created, the connected one is kept
    /// (its client waiting) and handed out by a later call that manages to create it.
    pub(crate) async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        if let Err(error) = self.listening.connect().await {
            // The instance may be broken for good: listen on a fresh one from now on.
            self.listening = create_instance(&self.name, &self.security, false)?;
            return Err(error);
        }
        let next = create_instance(&self.name, &self.security, false)?;
        Ok(std::mem::replace(&mut self.listening, next))
    }
}

/// Creates one server instance of the pipe `name` with the broker's security.
fn create_instance(name: &str, security: &SecurityDescriptor, first: bool) -> io::Result<NamedPipeServer> {
    let mut attributes = SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: security.as_ptr(),
        // The handle is not passed on to child processes the broker might start.
        bInheritHandle: 0,
    };
    // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES for the whole call, and the
    // descriptor it points to is kept alive by `security`. CreateNamedPipeW copies the
    // descriptor into the pipe and keeps no pointer to either.
    unsafe {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create_with_security_attributes_raw(name, (&raw mut attributes).cast())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::client::pipe::connect_pipe;

    /// A pipe name no other test (or run) uses.
    fn test_pipe_name(test: &str) -> String {
        format!(r"\\.\pipe\message-broker-test-{test}-{}", std::process::id())
    }

    #[test]
    fn the_pipe_is_named_after_the_port() {
        assert_eq!(pipe_name(9000), r"\\.\pipe\message-broker-9000");
    }

    #[tokio::test]
    async fn clients_connect_one_after_another() {
        let name = test_pipe_name("accept");
        let mut acceptor = PipeAcceptor::bind(&name).unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..3 {
                let mut connection = acceptor.accept().await.unwrap();
                let mut byte = [0u8; 1];
                connection.read_exact(&mut byte).await.unwrap();
                connection.write_all(&byte).await.unwrap();
            }
        });
        for byte in [1u8, 2, 3] {
            let mut client = connect_pipe(&name).await.unwrap();
            client.write_all(&[byte]).await.unwrap();
            let mut echoed = [0u8; 1];
            client.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed, [byte]);
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_taken_name_fails_the_bind() {
        let name = test_pipe_name("taken");
        let _first = PipeAcceptor::bind(&name).unwrap();
        let error = PipeAcceptor::bind(&name).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
        assert!(error.to_string().contains(&name), "{error}");
    }
}
