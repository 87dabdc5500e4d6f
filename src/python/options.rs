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
    };
    broker.validate().map_err(|error| PyValueError::new_err(error.to_string()))?;
    Ok(broker)
}

const QUEUE_FIELDS: &str = "each queue is a table with name, patterns and optionally max_length, max_bytes, max_deliveries, dead_letter_topic";
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

/// How a client connects: checked once, when it is made.
#[pyclass(module = "message_broker._core", frozen)]
pub struct ClientOptions {
    pub config: ClientConfig,
}

#[pymethods]
impl ClientOptions {
    /// Raises ValueError naming the first option that is not valid.
    #[new]
    #[pyo3(signature = (
        client_id, host, port, *, url = None, token = None, client_type, connect_timeout,
        connect_retries, reconnect, reconnect_delay, max_reconnect_delay, heartbeat, max_pending
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        client_id: &Bound<'_, PyAny>,
        host: String,
        port: i64,
        url: Option<&str>,
        token: Option<String>,
        client_type: String,
        connect_timeout: f64,
        connect_retries: i64,
        reconnect: bool,
        reconnect_delay: f64,
        max_reconnect_delay: f64,
        heartbeat: bool,
        max_pending: i64,
    ) -> PyResult<Self> {
        let endpoint = match url {
            Some(url) => Endpoint::parse(url).map_err(PyValueError::new_err)?,
            None => {
                let port = u16::try_from(port).ok().filter(|&port| port > 0).ok_or_else(|| {
                    PyValueError::new_err(format!("port must be between 1 and 65535, got {port}"))
                })?;
                Endpoint::Tcp { host, port }
            }
        };
        if token.as_deref().is_some_and(str::is_empty) {
            return Err(PyValueError::new_err("token must not be empty (leave it out to find it)"));
        }
        let mut config = ClientConfig::to(facts::client_id(client_id)?, endpoint);
        config.token = token;
        config.client_type = client_type;
        config.connect_timeout = seconds("connect_timeout", connect_timeout)?;
        config.connect_retries = u32::try_from(connect_retries).map_err(|_| {
            PyValueError::new_err(format!("connect_retries must be 0 or more, got {connect_retries}"))
        })?;
        config.reconnect = reconnect;
        config.reconnect_delay = seconds("reconnect_delay", reconnect_delay)?;
        config.max_reconnect_delay = seconds("max_reconnect_delay", max_reconnect_delay)?;
        config.heartbeat = heartbeat;
        config.max_pending =
            usize::try_from(max_pending).ok().filter(|&pending| pending > 0).ok_or_else(|| {
                PyValueError::new_err(format!("max_pending must be 1 or more, got {max_pending}"))
            })?;
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
