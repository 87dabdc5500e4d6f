//! Who may use the broker: the token of this start, whether TCP clients must send
//! it, the runtime file that hands it to the owner's programs, and the same-user
//! transport that needs none.
//!
//! The model: the broker belongs to the user who started it. Programs of that user
//! read the token from the runtime file (closed to everyone else) or connect over
//! the local socket (which the operating system lets no one else open). Others on
//! the machine can reach a TCP port, so a TCP client proves itself with the token
//! when `require_token` is set, and always when the port is open beyond loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::local_socket::{LocalAddress, LocalListener};
use super::permissions::{ClientPermissions, Denied, Permissions};
use super::token::Token;
use crate::config::BrokerConfig;
use crate::error::{BrokerError, ErrorCode, RpcError};
use crate::protocol::rules;
use crate::runtime_file::{self, RuntimeDir, RuntimeInfo};

/// How a connection reached the broker, which decides whether it needs the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// TCP: anyone on the machine (or the network) may have opened it.
    Network,
    /// The local socket, whose peer's user was checked, or a connection within the
    /// broker's own process.
    SameUser,
    /// A WebSocket through the HTTP listener: any web page the user visits can open
    /// one to 127.0.0.1, so it always proves itself with the token.
    Web,
}

pub(crate) struct Access {
    token: Token,
    require_token: bool,
    tcp: SocketAddr,
    local: Option<LocalAddress>,
    runtime_file: PathBuf,
    permissions: Permissions,
}

impl Access {
    /// Draws the token, opens the local socket (when configured) and writes the
    /// runtime file. Fails, leaving nothing behind, when the runtime folder or an old
    /// runtime file is open to others.
    pub(crate) fn open(
        config: &BrokerConfig,
        tcp: SocketAddr,
    ) -> Result<(Access, Option<LocalListener>), BrokerError> {
        let runtime = RuntimeDir::prepare(config.runtime_dir.as_deref())?;
        if config.runtime_dir.is_some() && runtime_file::default_dir().as_deref() != Some(runtime.path()) {
            tracing::warn!(
                runtime_dir = %runtime.path().display(),
                "clients look for the token elsewhere: give them {}={} (or the token)",
                runtime_file::RUNTIME_DIR_ENV,
                runtime.path().display()
            );
        }
        let local = if config.local_socket { Some(LocalListener::bind(&runtime, tcp.port())?) } else { None };
        let token = Token::generate()?;
        let require_token = config.require_token || !tcp.ip().is_loopback();
        let address = local.as_ref().map(LocalListener::address);
        let (socket, pipe) = match &address {
            Some(LocalAddress::UnixSocket(path)) => (Some(path.clone()), None),
            Some(LocalAddress::NamedPipe(name)) => (None, Some(name.clone())),
            None => (None, None),
        };
        let info = RuntimeInfo {
            port: tcp.port(),
            host: tcp.ip().to_string(),
            pid: std::process::id(),
            token: token.as_str().to_owned(),
            socket,
            pipe,
            version: crate::VERSION.to_owned(),
            require_token,
        };
        let runtime_file = match runtime.write(&info) {
            Ok(path) => path,
            Err(error) => {
                if let Some(local) = &local {
                    local.remove();
                }
                return Err(error.into());
            }
        };
        let permissions = Permissions::new(config.permissions.clone());
        let access = Access { token, require_token, tcp, local: address, runtime_file, permissions };
        Ok((access, local))
    }

    pub(crate) fn token(&self) -> &str {
        self.token.as_str()
    }

    /// Whether `offered` is this start's token (compared in constant time).
    pub(crate) fn token_matches(&self, offered: &str) -> bool {
        self.token.matches(offered)
    }

    pub(crate) fn runtime_file(&self) -> &Path {
        &self.runtime_file
    }

    pub(crate) fn local_address(&self) -> Option<&LocalAddress> {
        self.local.as_ref()
    }

    pub(crate) fn tcp(&self) -> SocketAddr {
        self.tcp
    }

    /// Whether a connection that came this way must send the token.
    pub(crate) fn needs_token(&self, origin: Origin) -> bool {
        match origin {
            Origin::Network => self.require_token,
            Origin::Web => true,
            Origin::SameUser => false,
        }
    }

    /// Checks the token a `connect` carried. A token given is always checked, even
    /// where none is needed: a wrong one means the client is talking to a broker it
    /// did not mean to reach.
    pub(crate) fn check_token(&self, origin: Origin, offered: Option<&str>) -> Result<(), RpcError> {
        match offered {
            Some(offered) if self.token.matches(offered) => Ok(()),
            Some(_) => Err(RpcError::new(
                ErrorCode::Unauthorized,
                "wrong token: it is not this broker's (a token from an earlier start, or another broker's?)",
            )),
            None if self.needs_token(origin) => Err(unauthorized()),
            None => Ok(()),
        }
    }

    /// What the client `client_id` may publish and subscribe to, resolved once when it
    /// connects. A client id must then be one topic segment (see
    /// [`rules::segment_client_id`]).
    pub(crate) fn permissions_for(&self, client_id: &str) -> Result<ClientPermissions, RpcError> {
        if self.permissions.is_empty() {
            return Ok(ClientPermissions::default());
        }
        rules::segment_client_id(client_id)?;
        Ok(self.permissions.for_client(client_id))
    }

    /// The broker's transports and whether they need the token, for `status`.
    pub(crate) fn status(&self) -> Value {
        let mut transports = vec![json!({
            "kind": "tcp",
            "address": self.tcp.to_string(),
            "token_required": self.require_token,
        })];
        match &self.local {
            Some(LocalAddress::UnixSocket(path)) => transports.push(json!({
                "kind": "unix",
                "address": path.display().to_string(),
                "token_required": false,
            })),
            Some(LocalAddress::NamedPipe(name)) => transports.push(json!({
                "kind": "pipe",
                "address": name,
                "token_required": false,
            })),
            None => {}
        }
        json!({
            "require_token": self.require_token,
            "runtime_file": self.runtime_file.display().to_string(),
            "transports": transports,
            "permission_rules": self.permissions.len(),
        })
    }

    /// Removes the runtime file and the socket, at a clean stop.
    pub(crate) fn close(&self, local: Option<&LocalListener>) {
        runtime_file::remove(&self.runtime_file, self.token.as_str());
        if let Some(local) = local {
            local.remove();
        }
    }
}

/// The answer to a call the permission rules refuse.
pub(crate) fn denied(denied: Denied) -> RpcError {
    RpcError::new(ErrorCode::PermissionDenied, denied.to_string())
}

/// The answer to calls on a connection that still owes the token.
pub(crate) fn unauthorized() -> RpcError {
    RpcError::new(
        ErrorCode::Unauthorized,
        format!(
            "this broker requires its token: send it as \"token\" in \"connect\" (programs of the \
             broker's user find it in the runtime file, or take {})",
            runtime_file::TOKEN_ENV
        ),
    )
}
