//! The runtime file: how programs of the broker's own user find a running broker's
//! token and local socket without configuration, the way Jupyter's clients find a
//! running kernel.
//!
//! At every start the broker writes `broker-<port>.json` into a per-user runtime
//! folder, readable by its owner alone, and removes it on a clean stop. A client
//! that connects to a loopback port reads the token from there; anyone else finds
//! neither the file (the folder is closed to them) nor the socket beside it.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A token the clients send when they are given none in code.
pub const TOKEN_ENV: &str = "MESSAGE_BROKER_TOKEN";
/// Overrides the per-user runtime folder, for broker and clients alike.
pub const RUNTIME_DIR_ENV: &str = "MESSAGE_BROKER_RUNTIME_DIR";

/// What a running broker tells the programs of its user.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub port: u16,
    /// The address the TCP listener is bound to.
    pub host: String,
    pub pid: u32,
    pub token: String,
    /// The Unix socket, when one is open.
    pub socket: Option<PathBuf>,
    /// The named pipe, when one is open.
    pub pipe: Option<String>,
    pub version: String,
    /// Whether a TCP client must send the token.
    pub require_token: bool,
}

/// Never printed by accident: the token is left out.
impl std::fmt::Debug for RuntimeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeInfo")
            .field("port", &self.port)
            .field("host", &self.host)
            .field("pid", &self.pid)
            .field("socket", &self.socket)
            .field("pipe", &self.pipe)
            .field("version", &self.version)
            .field("require_token", &self.require_token)
            .finish_non_exhaustive()
    }
}

/// Why the runtime folder or file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeFileError {
    #[error("no runtime folder: set {RUNTIME_DIR_ENV} or runtime_dir (no home folder found)")]
    NoHome,
    #[error(
        "{} is open to other users (mode {mode:o}); the broker keeps its token there and needs it \
         readable by its owner alone: run `chmod {wanted:o} {}` or remove it",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32, wanted: u32 },
    #[error("{} belongs to another user; the broker's runtime files must be its own", path.display())]
    NotOwned { path: PathBuf },
    #[cfg(windows)]
    #[error(
        "{} grants access to other users; the broker keeps its token there and needs it \
         open to its owner alone: remove it, and the broker creates it owner-only",
        path.display()
    )]
    SharedAcl { path: PathBuf },
    #[error("{} is not a {expected}", path.display())]
    WrongKind { path: PathBuf, expected: &'static str },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl RuntimeFileError {
    /// True when the folder or file is refused for its owner or mode, not for an I/O failure.
    pub fn is_insecure(&self) -> bool {
        match self {
            RuntimeFileError::TooOpen { .. } | RuntimeFileError::NotOwned { .. } => true,
            #[cfg(windows)]
            RuntimeFileError::SharedAcl { .. } => true,
            _ => false,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RuntimeFileError + '_ {
    move |source| RuntimeFileError::Io { path: path.to_owned(), source }
}

/// The runtime folder clients look in: `MESSAGE_BROKER_RUNTIME_DIR`, else the
/// platform's per-user place.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    platform_dir()
}

#[cfg(all(unix, not(target_os = "macos")))]
fn platform_dir() -> Option<PathBuf> {
    // XDG_RUNTIME_DIR is the user's own, cleared at logout: the right place for a
    // token that lives as long as the broker. Without it, Jupyter's fallback.
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(dir).join("message-broker"));
    }
    home().map(|home| home.join(".local/share/message-broker/runtime"))
}

#[cfg(target_os = "macos")]
fn platform_dir() -> Option<PathBuf> {
    home().map(|home| home.join("Library/Application Support/message-broker/runtime"))
}

#[cfg(windows)]
fn platform_dir() -> Option<PathBuf> {
    std::env::var_os("APPDATA")
        .filter(|dir| !dir.is_empty())
        .map(|dir| PathBuf::from(dir).join("message-broker").join("runtime"))
}

#[cfg(unix)]
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|dir| !dir.is_empty()).map(PathBuf::from)
}

/// The runtime file of the broker on `port`.
pub fn file_name(port: u16) -> String {
    format!("broker-{port}.json")
}

/// The Unix socket of the broker on `port`, beside its runtime file.
pub fn socket_name(port: u16) -> String {
    format!("broker-{port}.sock")
}

/// Reads the runtime file of the broker on `port` from the default folder.
pub fn read(port: u16) -> Option<RuntimeInfo> {
    let path = default_dir()?.join(file_name(port));
    let text = fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// `MESSAGE_BROKER_TOKEN`, when set.
pub fn env_token() -> Option<String> {
    std::env::var(TOKEN_ENV).ok().filter(|token| !token.is_empty())
}

/// A broker of this user on this machine, as its runtime file tells it.
#[derive(Clone, PartialEq)]
pub struct LocalBroker {
    /// Where it listens: the address to connect to, so that the token goes to it and
    /// to nobody else.
    pub address: IpAddr,
    pub token: String,
}

/// Never printed by accident: logs show that a token was found, not what it is.
impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker").field("address", &self.address).field("token", &"..").finish()
    }
}

/// The broker of this user on `port` that `host` names, from its runtime file: for
/// `localhost` the loopback address the broker is bound to, for a loopback address
/// only when the broker is bound to it. Another user may listen on the other loopback
/// address of the same port (`::1` beside `127.0.0.1`), so the token is only ever
/// sent to the address the broker itself wrote down. A broker elsewhere is never
/// sent the local broker's token.
pub fn find_local(host: &str, port: u16) -> Option<LocalBroker> {
    if !is_loopback(host) {
        return None;
    }
    let info = read(port)?;
    let bound: IpAddr = info.host.parse().ok()?;
    let named = host.trim_start_matches('[').trim_end_matches(']');
    let address = match named.parse::<IpAddr>() {
        Ok(asked) if asked == bound => asked,
        // Bound to every address of a family: this loopback address reaches it.
        Ok(asked) if bound.is_unspecified() && asked.is_ipv4() == bound.is_ipv4() => asked,
        Ok(_) => return None,
        // `localhost`: where the broker listens, in the family it listens in.
        Err(_) if bound.is_loopback() => bound,
        Err(_) if bound.is_unspecified() && bound.is_ipv4() => IpAddr::from([127, 0, 0, 1]),
        Err(_) if bound.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        Err(_) => return None,
    };
    Some(LocalBroker { address, token: info.token })
}

/// True for `localhost` and loopback addresses: hosts that are this machine.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The broker's runtime folder, checked or created owner-only.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Uses `configured`, else [`default_dir`]. Creates the folder for its owner alone;
    /// an existing one that others may enter, or that belongs to another user, is refused.
    pub fn prepare(configured: Option<&Path>) -> Result<RuntimeDir, RuntimeFileError> {
        let path = match configured {
            Some(path) => path.to_owned(),
            None => default_dir().ok_or(RuntimeFileError::NoHome)?,
        };
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_error(parent))?;
                }
                create_private_dir(&path)?;
            }
            Err(error) => return Err(io_error(&path)(error)),
        }
        check_private(&path, Kind::Folder)?;
        Ok(RuntimeDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `info` as the runtime file of its port, readable by its owner alone. An
    /// existing file others could read is refused and left as it is.
    pub fn write(&self, info: &RuntimeInfo) -> Result<PathBuf, RuntimeFileError> {
        let path = self.path.join(file_name(info.port));
        if fs::symlink_metadata(&path).is_ok() {
            check_private(&path, Kind::File)?;
        }
        // Written in full under another name, then renamed: a client never reads half.
        let staging = self.path.join(format!(".{}.{}", file_name(info.port), std::process::id()));
        let text = serde_json::to_vec_pretty(info).expect("runtime info is JSON");
        let written = write_private(&staging, &text).and_then(|()| fs::rename(&staging, &path));
        if let Err(error) = written {
            let _ = fs::remove_file(&staging);
            return Err(io_error(&path)(error));
        }
        Ok(path)
    }
}

/// Removes the runtime file at `path` if it still holds `token` (it is this broker's).
pub fn remove(path: &Path, token: &str) {
    let ours = fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<RuntimeInfo>(&text).ok())
        .is_some_and(|info| info.token == token);
    if ours && let Err(error) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), %error, "could not remove the runtime file");
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Folder,
    File,
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> Result<(), RuntimeFileError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        // Another broker starting at the same moment made it: checked next like any.
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => Err(io_error(path)(error)),
        _ => Ok(()),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The folder or file must be what it should, belong to this user and be closed to
/// everyone else.
#[cfg(unix)]
fn check_private(path: &Path, kind: Kind) -> Result<(), RuntimeFileError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let metadata = fs::symlink_metadata(path).map_err(io_error(path))?;
    let (right_kind, expected, wanted) = match kind {
        Kind::Folder => (metadata.is_dir(), "folder", 0o700),
        Kind::File => (metadata.is_file(), "regular file", 0o600),
    };
    if !right_kind {
        return Err(RuntimeFileError::WrongKind { path: path.to_owned(), expected });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if metadata.uid() != unsafe { libc::geteuid() } {
        return Err(RuntimeFileError::NotOwned { path: path.to_owned() });
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(RuntimeFileError::TooOpen { path: path.to_owned(), mode, wanted });
    }
    Ok(())
}

#[cfg(windows)]
fn create_private_dir(path: &Path) -> Result<(), RuntimeFileError> {
    match fs::create_dir(path) {
        // Made by someone else meanwhile: checked next, never taken over.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(io_error(path)(error)),
        Ok(()) => crate::windows_acl::restrict_to_owner(path).map_err(io_error(path)),
    }
}

#[cfg(windows)]
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    // Closed to others before the token is written into it.
    crate::windows_acl::restrict_to_owner(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(windows)]
fn check_private(path: &Path, kind: Kind) -> Result<(), RuntimeFileError> {
    let metadata = fs::symlink_metadata(path).map_err(io_error(path))?;
    let (right_kind, expected) = match kind {
        Kind::Folder => (metadata.is_dir(), "folder"),
        Kind::File => (metadata.is_file(), "regular file"),
    };
    if !right_kind {
        return Err(RuntimeFileError::WrongKind { path: path.to_owned(), expected });
    }
    if !crate::windows_acl::is_owner_only(path).map_err(io_error(path))? {
        return Err(RuntimeFileError::SharedAcl { path: path.to_owned() });
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn info(port: u16) -> RuntimeInfo {
        RuntimeInfo {
            port,
            host: "127.0.0.1".into(),
            pid: std::process::id(),
            token: "ab".repeat(32),
            socket: None,
            pipe: None,
            version: crate::VERSION.into(),
            require_token: false,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mb-runtime-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folder_and_file_are_owner_only_and_removed_by_their_broker() {
        let dir = scratch("modes");
        let runtime = RuntimeDir::prepare(Some(&dir)).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let written = runtime.write(&info(4000)).unwrap();
        assert_eq!(written, dir.join("broker-4000.json"));
        assert_eq!(mode(&written), 0o600);
        let read: RuntimeInfo = serde_json::from_str(&fs::read_to_string(&written).unwrap()).unwrap();
        assert_eq!(read, info(4000));
        remove(&written, "another broker's token");
        assert!(written.exists(), "a file holding another token is not this broker's");
        remove(&written, &info(4000).token);
        assert!(!written.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_folders_and_files_are_refused_and_left_alone() {
        let dir = scratch("open");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let error = RuntimeDir::prepare(Some(&dir)).unwrap_err();
        assert!(error.is_insecure() && error.to_string().contains("755"), "{error}");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let premade = dir.join("broker-4001.json");
        fs::write(&premade, "{}").unwrap();
        fs::set_permissions(&premade, fs::Permissions::from_mode(0o644)).unwrap();
        let error = RuntimeDir::prepare(Some(&dir)).unwrap().write(&info(4001)).unwrap_err();
        assert!(error.is_insecure() && error.to_string().contains("644"), "{error}");
        assert_eq!(fs::read_to_string(&premade).unwrap(), "{}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_hosts_are_this_machine() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["0.0.0.0", "192.168.1.2", "example.com", "::"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
