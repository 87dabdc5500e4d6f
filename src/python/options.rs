//! The two configurations that cross from Python, each as one typed object: the
//! package's `BrokerConfig` dataclass, read here by attribute, and `ClientOptions`,
//! which the clients build once from their keyword arguments.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::{facts, json};
use crate::client::{ClientConfig, Endpoint};
use crate::config::BrokerConfig;

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!("{name} must be a positive number of seconds, got {value}"))
    })
}

/// An error about setting `name`, of the same Python type, saying which it is.
fn about(py: Python<'_>, name: &str, error: PyErr) -> PyErr {
    let message = format!("{name}: {}", error.value(py));
    if error.is_instance_of::<PyTypeError>(py) {
        PyTypeError::new_err(message)
    } else {
        PyValueError::new_err(message)
    }
}

fn setting<'py, T>(config: &Bound<'py, PyAny>, name: &str) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
{
    config.getattr(name)?.extract().map_err(|error| about(config.py(), name, error))
}

fn duration(config: &Bound<'_, PyAny>, name: &str) -> PyResult<Duration> {
    seconds(name, setting(config, name)?)
}

/// Reads a `BrokerConfig` (any object with its attributes) and validates it.
pub fn broker_config(config: &Bound<'_, PyAny>) -> PyResult<BrokerConfig> {
    let port: i64 = setting(config, "port")?;
    let broker = BrokerConfig {
        host: setting(config, "host")?,
        port: u16::try_from(port)
            .map_err(|_| PyValueError::new_err(format!("port must be between 0 and 65535, got {port}")))?,
        max_connections: setting(config, "max_connections")?,
        heartbeat_interval: duration(config, "heartbeat_interval")?,
        heartbeat_timeout: duration(config, "heartbeat_timeout")?,
        max_message_size: setting(config, "max_message_size")?,
        max_queue_size: setting(config, "max_queue_size")?,
        max_queue_bytes: setting(config, "max_queue_bytes")?,
        log_messages: setting(config, "log_messages")?,
        handshake_timeout: duration(config, "handshake_timeout")?,
        frame_timeout: duration(config, "frame_timeout")?,
        data_dir: setting::<Option<PathBuf>>(config, "data_dir")?,
        fsync: setting(config, "fsync")?,
        queues: tables(&config.getattr("queues")?, "queues", QUEUE_FIELDS)?,
        max_memory: setting(config, "max_memory")?,
        require_token: setting(config, "require_token")?,
        runtime_dir: setting::<Option<PathBuf>>(config, "runtime_dir")?,
        local_socket: setting(config, "local_socket")?,
        permissions: tables(&config.getattr("permissions")?, "permissions", PERMISSION_FIELDS)?,
        http_port: setting(config, "http_port")?,
        bridges: tables(&config.getattr("bridges")?, "bridges", BRIDGE_FIELDS)?,
    };
    broker.validate().map_err(|error| PyValueError::new_err(error.to_string()))?;
    Ok(broker)
}

const QUEUE_FIELDS: &str = "each queue is a table with name, patterns and optionally max_length, max_bytes, max_deliveries, dead_letter_topic, confirm_on_ack";
const BRIDGE_FIELDS: &str = "each bridge is a table with name, kind (nats or mqtt), url and rules \
     (tables with pattern, direction and optionally local_prefix, remote_prefix, stream, qos), and optionally \
     username, password, token, credentials_file, nkey_file, client_id, tls_ca_file, tls_cert_file, \
     tls_key_file, request_timeout, max_reconnect_delay, keep_alive, max_hops";
const PERMISSION_FIELDS: &str = "each rule is a table with client (a glob on client ids) and optionally \
     publish and subscribe, each a table with allow and deny lists of patterns";

/// A setting that is a list of tables (the durable queues, the permission rules),
/// read as the TOML file's would be. Each table is read on its own, so that an error
/// names the entry (`queues[1] (name "orders")`), not a place in a JSON text.
fn tables<T: serde::de::DeserializeOwned>(
    value: &Bound<'_, PyAny>,
    name: &str,
    fields: &str,
) -> PyResult<Vec<T>> {
    if value.is_none() {
        return Ok(Vec::new());
    }
    let mut text = Vec::new();
    json::encode(value, &mut text).map_err(|error| {
        PyValueError::new_err(format!("{name} cannot be read: {}", error.value(value.py())))
    })?;
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&text).map_err(|_| {
        PyValueError::new_err(format!("invalid configuration: {name} must be a list ({fields})"))
    })?;
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let label = entry_label(name, index, &entry);
            // Read from a `Value`, a serde_json error carries no line and column.
            serde_json::from_value(entry)
                .map_err(|e| PyValueError::new_err(format!("invalid configuration: {label}: {e} ({fields})")))
        })
        .collect()
}

/// `queues[1] (name "orders")`: which entry of a list of tables, by its index and,
/// when it has one, the key that names it.
fn entry_label(list: &str, index: usize, entry: &serde_json::Value) -> String {
    let named = ["name", "client"].into_iter().find_map(|key| Some((key, entry.get(key)?.as_str()?)));
    match named {
        Some((key, value)) => format!("{list}[{index}] ({key} {value:?})"),
        None => format!("{list}[{index}]"),
    }
}

/// A host name or address: a non-empty string without spaces or control characters
/// (and not a URL, which goes to `url`).
fn host_name(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let host = argument::text(value, "host")?;
    if host.is_empty() {
        return Err(PyValueError::new_err("host must not be empty: give a host name or an address"));
    }
    if host.contains("://") {
        return Err(PyValueError::new_err(format!(
            "host must be a host name or an address, got the URL {host:?}: pass it as url="
        )));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PyValueError::new_err(format!(
            "host must be a host name or an address without spaces, got {host:?}"
        )));
    }
    Ok(host)
}

/// The checks of single arguments, each error naming the argument and saying what was
/// given, of the Python type a Python function would raise: TypeError for a value of
/// the wrong type, ValueError for one out of range.
mod argument {
    use std::time::Duration;

    use pyo3::exceptions::{PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

    fn wrong_type(value: &Bound<'_, PyAny>, name: &str, wanted: &str) -> PyErr {
        let given = value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
        PyTypeError::new_err(format!("{name} must be {wanted}, got {shown} of type {given}"))
    }

    pub fn text(value: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
        match value.cast::<PyString>() {
            Ok(text) => Ok(text.to_str()?.to_owned()),
            Err(_) => Err(wrong_type(value, name, "a string")),
        }
    }

    /// None (or an argument left out) or a string.
    pub fn optional_text(value: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<String>> {
        match value {
            Some(value) if !value.is_none() => text(value, name).map(Some),
            _ => Ok(None),
        }
    }

    pub fn flag(value: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
        match value.cast::<PyBool>() {
            Ok(flag) => Ok(flag.is_true()),
            Err(_) => Err(wrong_type(value, name, "True or False")),
        }
    }

    /// An int (not a bool, which Python counts as one) from `min` to `max`.
    pub fn integer(value: &Bound<'_, PyAny>, name: &str, min: i64, max: i64, range: &str) -> PyResult<i64> {
        if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
            return Err(wrong_type(value, name, &format!("an integer {range}")));
        }
        match value.extract::<i64>() {
            Ok(number) if (min..=max).contains(&number) => Ok(number),
            _ => Err(PyValueError::new_err(format!("{name} must be {range}, got {}", value.repr()?))),
        }
    }

    /// A positive, finite number of seconds (an int or a float, not a bool).
    pub fn seconds(value: &Bound<'_, PyAny>, name: &str) -> PyResult<Duration> {
        if value.is_instance_of::<PyBool>()
            || !(value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
        {
            return Err(wrong_type(value, name, "a number of seconds"));
        }
        let seconds: f64 = value.extract()?;
        Duration::try_from_secs_f64(seconds).ok().filter(|duration| !duration.is_zero()).ok_or_else(|| {
            PyValueError::new_err(format!("{name} must be a positive number of seconds, got {seconds}"))
        })
    }
}

/// Where a client connects: `url` when given, else `host` and `port`.
fn endpoint(url: Option<&str>, host: String, port: i64) -> PyResult<Endpoint> {
    match url {
        Some(url) => Endpoint::parse(url).map_err(PyValueError::new_err),
        None => {
            let port = u16::try_from(port).ok().filter(|&port| port > 0).ok_or_else(|| {
                PyValueError::new_err(format!("port must be between 1 and 65535, got {port}"))
            })?;
            Ok(Endpoint::Tcp { host, port })
        }
    }
}

/// The URL a client given `url`, or else `host` and `port`, connects to (as
/// `ClientOptions.url` says it); raises ValueError saying what was expected.
#[pyfunction]
#[pyo3(signature = (url, host, port))]
pub fn client_url(url: Option<&str>, host: String, port: i64) -> PyResult<String> {
    Ok(endpoint(url, host, port)?.url())
}

/// How a client connects: checked once, when it is made.
#[pyclass(module = "message_broker._core", frozen)]
pub struct ClientOptions {
    pub config: ClientConfig,
}

#[pymethods]
impl ClientOptions {
    /// Raises TypeError or ValueError naming the first option that is not valid.
    #[new]
    #[pyo3(signature = (
        client_id, host, port, *, url = None, token = None, client_type, connect_timeout,
        connect_retries, reconnect, reconnect_delay, max_reconnect_delay, heartbeat, max_pending
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        client_id: &Bound<'_, PyAny>,
        host: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        url: Option<&Bound<'_, PyAny>>,
        token: Option<&Bound<'_, PyAny>>,
        client_type: &Bound<'_, PyAny>,
        connect_timeout: &Bound<'_, PyAny>,
        connect_retries: &Bound<'_, PyAny>,
        reconnect: &Bound<'_, PyAny>,
        reconnect_delay: &Bound<'_, PyAny>,
        max_reconnect_delay: &Bound<'_, PyAny>,
        heartbeat: &Bound<'_, PyAny>,
        max_pending: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let client_id = facts::client_id(client_id)?;
        // Checked even when `url` is given: a wrong host is a mistake either way.
        let host = host_name(host)?;
        let port = argument::integer(port, "port", 1, u16::MAX.into(), "from 1 to 65535")?;
        let endpoint = match argument::optional_text(url, "url")? {
            Some(url) => Endpoint::parse(&url).map_err(PyValueError::new_err)?,
            None => Endpoint::Tcp { host, port: u16::try_from(port).expect("checked range") },
        };
        let token = argument::optional_text(token, "token")?;
        if token.as_deref().is_some_and(str::is_empty) {
            return Err(PyValueError::new_err("token must not be empty (leave it out to find it)"));
        }
        let client_type = argument::text(client_type, "client_type")?;
        if client_type.is_empty() {
            return Err(PyValueError::new_err("client_type must not be empty"));
        }
        let mut config = ClientConfig::to(client_id, endpoint);
        config.token = token;
        config.client_type = client_type;
        config.connect_timeout = argument::seconds(connect_timeout, "connect_timeout")?;
        config.connect_retries =
            argument::integer(connect_retries, "connect_retries", 0, u32::MAX.into(), "0 or more")?
                .try_into()
                .expect("checked range");
        config.reconnect = argument::flag(reconnect, "reconnect")?;
        config.reconnect_delay = argument::seconds(reconnect_delay, "reconnect_delay")?;
        config.max_reconnect_delay = argument::seconds(max_reconnect_delay, "max_reconnect_delay")?;
        config.heartbeat = argument::flag(heartbeat, "heartbeat")?;
        config.max_pending = argument::integer(max_pending, "max_pending", 1, i64::MAX, "1 or more")?
            .try_into()
            .map_err(|_| PyValueError::new_err("max_pending is too large for this machine"))?;
        Ok(ClientOptions { config })
    }

    #[getter]
    fn client_id(&self) -> &str {
        &self.config.client_id
    }

    /// The host of a TCP client; the socket path of a local one.
    #[getter]
    fn host(&self) -> String {
        match &self.config.endpoint {
            Endpoint::Tcp { host, .. } => host.clone(),
            Endpoint::Local(path) => path.display().to_string(),
        }
    }

    /// The port of a TCP client; 0 for a local one.
    #[getter]
    fn port(&self) -> u16 {
        match &self.config.endpoint {
            Endpoint::Tcp { port, .. } => *port,
            Endpoint::Local(_) => 0,
        }
    }

    /// Where the client connects, as `tcp://host:port` or `unix:///path`.
    #[getter]
    fn url(&self) -> String {
        self.config.endpoint.url()
    }
}
