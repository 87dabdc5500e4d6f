//! The client end of the broker's named pipe on Windows.
//!
//! Pipe names are machine-wide and anyone may create one, so while no broker holds
//! the name another user could, to receive what our clients send and answer in the
//! broker's place. A pipe's owner comes from its creator's token, so a pipe owned by
//! someone other than us (or SYSTEM, or Administrators) is refused. The client also
//! opens the pipe at the identification impersonation level (tokio's default): a
//! server may learn who we are but cannot act as us.

use std::io;
use std::os::windows::io::AsHandle;
use std::time::Duration;

use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeClient};
use tokio::time::{Instant, sleep};
use windows_sys::Win32::Foundation::ERROR_PIPE_BUSY;

use crate::windows_acl::has_trusted_owner;

/// How long a client waits for a free instance. The broker creates the next instance
/// right after a client connects, so the pipe is busy only for that moment.
const BUSY_WAIT: Duration = Duration::from_secs(2);
/// Pause between attempts while every instance is busy.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// Every instance of the pipe stayed busy.
#[derive(Debug, thiserror::Error)]
#[error("the named pipe {name} stayed busy for {BUSY_WAIT:?}")]
pub(crate) struct PipeBusy {
    name: String,
}

/// The pipe was created by another user: not our broker.
#[derive(Debug, thiserror::Error)]
#[error("the named pipe {name} belongs to another user, not to this user's broker")]
pub(crate) struct ForeignPipe {
    name: String,
}

/// Connects to the pipe `name`, waiting up to [`BUSY_WAIT`] while all its instances
/// are busy. [`io::ErrorKind::NotFound`] means no one serves the pipe; a pipe that
/// stayed busy gives [`io::ErrorKind::TimedOut`] ([`PipeBusy`] inside), and one owned
/// by another user [`io::ErrorKind::PermissionDenied`] ([`ForeignPipe`] inside).
pub(crate) async fn connect_pipe(name: &str) -> io::Result<NamedPipeClient> {
    let deadline = Instant::now() + BUSY_WAIT;
    let client = loop {
        match ClientOptions::new().open(name) {
            Ok(client) => break client,
            Err(error) if error.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, PipeBusy { name: name.to_owned() }));
                }
            }
            Err(error) => return Err(error),
        }
        sleep(BUSY_RETRY).await;
    };
    if !has_trusted_owner(client.as_handle())? {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, ForeignPipe { name: name.to_owned() }));
    }
    Ok(client)
}
