//! What the Python package reads instead of restating it: the wire error codes, the
//! defaults of the broker's configuration and of a client, and the rules the broker
//! applies to a client id and to a publish's options.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};
use serde_json::Value;

use crate::client::{ClientConfig, PublishOptions};
use crate::config::{BrokerConfig, DEFAULT_HOST, DEFAULT_PORT};
use crate::error::RpcError;
use crate::protocol::rules;
use crate::runtime_file;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("DEFAULT_HOST", DEFAULT_HOST)?;
    m.add("DEFAULT_PORT", DEFAULT_PORT)?;
    m.add("CONNECTION_LOST", crate::client::CONNECTION_LOST)?;
    m.add("BROKER_DEFAULTS", broker_defaults(py)?)?;
    m.add("CLIENT_DEFAULTS", client_defaults(py)?)?;
    m.add("TOKEN_ENV", runtime_file::TOKEN_ENV)?;
    m.add("RUNTIME_DIR_ENV", runtime_file::RUNTIME_DIR_ENV)?;
    m.add_function(wrap_pyfunction!(error_codes, m)?)?;
    m.add_function(wrap_pyfunction!(find_local_broker, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_dir, m)?)?;
    m.add_function(wrap_pyfunction!(validate_client_id, m)?)?;
    m.add_function(wrap_pyfunction!(validate_publish_options, m)?)?;
    Ok(())
}

/// The wire error codes as `(name, code)` pairs.
#[pyfunction]
fn error_codes() -> Vec<(&'static str, i32)> {
    crate::ErrorCode::ALL.iter().map(|c| (c.name(), c.code())).collect()
}

/// Where to connect and the token to send for the broker of this user on `port`
/// that `host` names, from its runtime file: `(address, token)`, or None.
#[pyfunction]
fn find_local_broker(host: &str, port: u16) -> Option<(String, String)> {
    runtime_file::find_local(host, port).map(|local| (local.address.to_string(), local.token))
}

/// The folder where brokers write their runtime files unless configured otherwise.
#[pyfunction]
fn runtime_dir() -> Option<std::path::PathBuf> {
    runtime_file::default_dir()
}

/// The default of every setting of `BrokerConfig` but the lists of tables, `queues`
/// and `permissions` (none by default).
fn broker_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let config = BrokerConfig::default();
    let defaults = PyDict::new(py);
    defaults.set_item("host", &config.host)?;
    defaults.set_item("port", config.port)?;
    defaults.set_item("max_connections", config.max_connections)?;
    defaults.set_item("heartbeat_interval", config.heartbeat_interval.as_secs_f64())?;
    defaults.set_item("heartbeat_timeout", config.heartbeat_timeout.as_secs_f64())?;
    defaults.set_item("max_message_size", config.max_message_size)?;
    defaults.set_item("max_queue_size", config.max_queue_size)?;
    defaults.set_item("max_queue_bytes", config.max_queue_bytes)?;
    defaults.set_item("log_messages", config.log_messages)?;
    defaults.set_item("handshake_timeout", config.handshake_timeout.as_secs_f64())?;
    defaults.set_item("frame_timeout", config.frame_timeout.as_secs_f64())?;
    defaults.set_item("data_dir", config.data_dir.as_ref().and_then(|dir| dir.to_str()))?;
    defaults.set_item("fsync", config.fsync)?;
    defaults.set_item("max_memory", config.max_memory)?;
    defaults.set_item("require_token", config.require_token)?;
    defaults.set_item("runtime_dir", config.runtime_dir.as_ref().and_then(|dir| dir.to_str()))?;
    defaults.set_item("local_socket", config.local_socket)?;
    defaults.set_item("http_port", config.http_port)?;
    // None: a broker bridges nothing unless told to.
    defaults.set_item("bridges", pyo3::types::PyList::empty(py))?;
    Ok(defaults)
}

/// The defaults of the options of a client (its type aside, which each front names).
fn client_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let config = ClientConfig::new("", DEFAULT_HOST, DEFAULT_PORT);
    let defaults = PyDict::new(py);
    defaults.set_item("connect_timeout", config.connect_timeout.as_secs_f64())?;
    defaults.set_item("connect_retries", config.connect_retries)?;
    defaults.set_item("reconnect", config.reconnect)?;
    defaults.set_item("reconnect_delay", config.reconnect_delay.as_secs_f64())?;
    defaults.set_item("max_reconnect_delay", config.max_reconnect_delay.as_secs_f64())?;
    defaults.set_item("heartbeat", config.heartbeat)?;
    defaults.set_item("max_pending", config.max_pending)?;
    Ok(defaults)
}

fn invalid(error: RpcError) -> PyErr {
    PyValueError::new_err(error.message)
}

/// A client id the broker accepts, as a Rust string.
pub fn client_id(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let Ok(text) = value.cast::<PyString>() else {
        return Err(PyValueError::new_err(format!(
            "client_id must be a string, got {}",
            value.get_type().name()?
        )));
    };
    let text = text.to_str()?;
    rules::client_id(text).map_err(invalid)?;
    Ok(text.to_owned())
}

/// Raises ValueError when the broker would refuse `client_id`.
#[pyfunction]
fn validate_client_id(client_id: &Bound<'_, PyAny>) -> PyResult<()> {
    self::client_id(client_id).map(drop)
}

/// `qos`, `ttl` (seconds, 0 for none) and `retain` as the broker reads them.
pub fn publish_options(
    qos: &Bound<'_, PyAny>,
    ttl: &Bound<'_, PyAny>,
    retain: &Bound<'_, PyAny>,
) -> PyResult<PublishOptions> {
    let Ok(retain) = retain.cast::<PyBool>() else {
        return Err(PyValueError::new_err(format!("retain must be True or False, got {}", retain.repr()?)));
    };
    let retain = retain.is_true();
    Ok(PublishOptions { qos: qos_level(qos)?, ttl: time_to_live(ttl)?, retain, headers: None })
}

/// Headers as the broker reads them: None, or a dict of strings within the limits
/// (an empty dict is no headers), as JSON text.
pub fn headers(value: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    if value.is_none() {
        return Ok(None);
    }
    let Ok(map) = value.cast::<PyDict>() else {
        return Err(PyValueError::new_err(format!(
            "headers must be a dict of strings, got {}",
            value.get_type().name()?
        )));
    };
    if map.is_empty() {
        return Ok(None);
    }
    for (name, text) in map.iter() {
        if !name.is_instance_of::<PyString>() || !text.is_instance_of::<PyString>() {
            return Err(PyValueError::new_err(format!(
                "headers must map strings to strings, got {}: {}",
                name.repr()?,
                text.repr()?
            )));
        }
    }
    let mut text = Vec::new();
    super::json::encode(map.as_any(), &mut text).map_err(|error| {
        PyValueError::new_err(format!("headers cannot be sent as JSON: {}", error.value(value.py())))
    })?;
    let text = String::from_utf8(text).expect("JSON text is UTF-8");
    let raw = serde_json::value::RawValue::from_string(text).expect("the encoder writes JSON");
    rules::headers(&raw).map_err(invalid)?;
    Ok(Some(Box::<str>::from(raw).into()))
}

/// Raises ValueError when the broker would refuse these options of a publish.
#[pyfunction]
fn validate_publish_options(
    qos: &Bound<'_, PyAny>,
    ttl: &Bound<'_, PyAny>,
    retain: &Bound<'_, PyAny>,
) -> PyResult<()> {
    publish_options(qos, ttl, retain).map(drop)
}

/// The broker reads `qos` from JSON: the Python value goes through the same rule, so
/// that `True` or `1.0` are refused here as they are on the wire.
fn qos_level(qos: &Bound<'_, PyAny>) -> PyResult<u8> {
    let given = if let Ok(flag) = qos.cast::<PyBool>() {
        Value::Bool(flag.is_true())
    } else if let Some(level) = qos.cast::<PyInt>().ok().and_then(|n| n.extract::<i64>().ok()) {
        Value::from(level)
    } else if let Ok(number) = qos.cast::<PyFloat>() {
        Value::from(number.value())
    } else {
        Value::String(qos.str()?.to_str()?.to_owned())
    };
    rules::qos(Some(&given)).map_err(invalid)
}

fn time_to_live(ttl: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    if ttl.is_instance_of::<PyBool>() || !(ttl.is_instance_of::<PyInt>() || ttl.is_instance_of::<PyFloat>()) {
        return Err(PyValueError::new_err(format!("ttl must be a number of seconds, got {}", ttl.repr()?)));
    }
    // An integer beyond float range is as far beyond the rule.
    rules::ttl(ttl.extract::<f64>().unwrap_or(f64::INFINITY)).map_err(invalid)
}
