//! `Client`: the engine behind `message_broker.BrokerClient`.
//!
//! Runtime threads never call into Python. They queue events in the client's inbox
//! and write one byte to a socket whose other end the asyncio loop awaits (with
//! `loop.sock_recv`, which every event loop supports, Windows' Proactor included);
//! the loop then takes the whole batch with `drain()`.

use std::io::Write;
use std::time::Duration;

use pyo3::exceptions::{PyBlockingIOError, PyConnectionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use serde_json::value::RawValue;

use super::{json, runtime};
use crate::client::{self, ClientConfig, ClientError, Event, PublishOptions};
use crate::protocol::method::MethodName;

#[cfg(unix)]
type WakeSocket = std::os::unix::net::UnixStream;
#[cfg(windows)]
type WakeSocket = std::net::TcpStream;

/// Wakes the event loop by writing to the socket it awaits.
struct SocketWaker(WakeSocket);

impl client::Waker for SocketWaker {
    fn wake(&self) {
        // A full socket buffer means a wake-up is already pending.
        let _ = (&self.0).write(&[1]);
    }
}

/// Takes ownership of the write end of a `socket.socketpair()` (after `detach()`).
fn wake_socket(handle: i64) -> PyResult<WakeSocket> {
    #[cfg(unix)]
    let socket = {
        use std::os::fd::FromRawFd;
        let fd = i32::try_from(handle).map_err(|_| PyValueError::new_err("invalid socket handle"))?;
        // SAFETY: Python detached the socket, handing its only owner over to us.
        unsafe { WakeSocket::from_raw_fd(fd) }
    };
    #[cfg(windows)]
    let socket = {
        use std::os::windows::io::FromRawSocket;
        let raw = u64::try_from(handle).map_err(|_| PyValueError::new_err("invalid socket handle"))?;
        // SAFETY: Python detached the socket, handing its only owner over to us.
        unsafe { WakeSocket::from_raw_socket(raw) }
    };
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn to_py_error(error: ClientError) -> PyErr {
    match error {
        ClientError::InvalidTopic(_) | ClientError::InvalidPattern(_) | ClientError::TooLarge { .. } => {
            PyValueError::new_err(error.to_string())
        }
        ClientError::QueueFull => PyBlockingIOError::new_err(error.to_string()),
        ClientError::NotConnected | ClientError::BufferFull(_) | ClientError::Closed => {
            PyConnectionError::new_err(error.to_string())
        }
    }
}

fn encode(payload: &Bound<'_, PyAny>) -> PyResult<String> {
    let mut text = Vec::with_capacity(128);
    json::encode(payload, &mut text).map_err(|error| {
        PyValueError::new_err(format!("payload cannot be sent as JSON: {}", error.value(payload.py())))
    })?;
    Ok(String::from_utf8(text).expect("JSON text is UTF-8"))
}

fn seconds(value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("expected a positive number of seconds, got {value}")))
}

// Event kinds as they reach Python (see message_broker/client.py).
const MESSAGE: u8 = 0;
const RESPONSE: u8 = 1;
const PUBLISH_FAILED: u8 = 2;
const CONNECTED: u8 = 3;
const DISCONNECTED: u8 = 4;
const CONNECT_FAILED: u8 = 5;
const WRITABLE: u8 = 6;
const CLOSED: u8 = 7;
const UNDECODABLE: u8 = 8;

#[pyclass(module = "message_broker._core", frozen)]
pub struct Client {
    inner: client::Client,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (
        client_id, host, port, wake_socket_handle, *, client_type, version, connect_timeout,
        connect_retries, reconnect, reconnect_delay, max_reconnect_delay, heartbeat, max_pending,
        will = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        client_id: String,
        host: String,
        port: u16,
        wake_socket_handle: i64,
        client_type: String,
        version: String,
        connect_timeout: f64,
        connect_retries: u32,
        reconnect: bool,
        reconnect_delay: f64,
        max_reconnect_delay: f64,
        heartbeat: bool,
        max_pending: usize,
        will: Option<String>,
    ) -> PyResult<Self> {
        let waker = SocketWaker(wake_socket(wake_socket_handle)?);
        let mut config = ClientConfig::new(client_id, host, port);
        config.client_type = client_type;
        config.version = version;
        config.connect_timeout = seconds(connect_timeout)?;
        config.connect_retries = connect_retries;
        config.reconnect = reconnect;
        config.reconnect_delay = seconds(reconnect_delay)?;
        config.max_reconnect_delay = seconds(max_reconnect_delay)?;
        config.heartbeat = heartbeat;
        config.max_pending = max_pending.max(1);
        config.will = will
            .map(RawValue::from_string)
            .transpose()
            .map_err(|e| PyValueError::new_err(format!("will is not valid JSON: {e}")))?;
        let inner = client::Client::start(config, Box::new(waker), &runtime::handle()?);
        Ok(Client { inner })
    }

    #[getter]
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    #[getter]
    fn max_message_size(&self) -> usize {
        self.inner.max_message_size()
    }

    /// Queues a publish of `payload` (any value JSON can carry); returns the message
    /// id. Raises ValueError for a bad topic, an oversized message or a payload JSON
    /// cannot carry.
    #[pyo3(signature = (topic, payload, ttl = None))]
    fn publish(&self, topic: &str, payload: &Bound<'_, PyAny>, ttl: Option<f64>) -> PyResult<String> {
        let text = encode(payload)?;
        self.inner.publish(topic, &text, ttl).map_err(to_py_error)
    }

    /// Like `publish`, with `qos` and `retain`; returns (message id, call id or None).
    /// With qos=1 the call's response is the broker's confirmation.
    #[pyo3(signature = (topic, payload, ttl = None, qos = 0, retain = false))]
    fn publish_with(
        &self,
        topic: &str,
        payload: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        qos: u8,
        retain: bool,
    ) -> PyResult<(String, Option<u64>)> {
        let text = encode(payload)?;
        let options = PublishOptions { ttl, qos, retain, headers: None };
        self.inner.publish_with(topic, &text, &options).map_err(to_py_error)
    }

    /// Acknowledges (ack=True) or rejects deliveries from queues received on
    /// connection `generation`; returns how many were sent.
    #[pyo3(signature = (generation, tags, ack, requeue = true))]
    fn settle(&self, generation: u64, tags: Vec<u64>, ack: bool, requeue: bool) -> PyResult<usize> {
        self.inner.settle(generation, &tags, ack, requeue).map_err(to_py_error)
    }

    /// Consumes from a queue; `params` are the subscribe params as JSON text.
    fn subscribe_queue(
        &self,
        subscription: u64,
        name: &str,
        patterns: Vec<String>,
        params: &str,
    ) -> PyResult<Option<u64>> {
        let params: serde_json::Value = serde_json::from_str(params)
            .map_err(|e| PyValueError::new_err(format!("params are not valid JSON: {e}")))?;
        self.inner.subscribe_queue(subscription, name, &patterns, params).map_err(to_py_error)
    }

    /// Stops consuming from a queue; returns (its subscription or None, call id or None).
    fn unsubscribe_queue(&self, name: &str) -> PyResult<(Option<u64>, Option<u64>)> {
        self.inner.unsubscribe_queue(name).map_err(to_py_error)
    }

    /// Sends a call with `params` given as JSON text; returns its call id.
    fn call(&self, method: &str, params: &str) -> PyResult<u64> {
        let params = RawValue::from_string(params.to_owned())
            .map_err(|e| PyValueError::new_err(format!("params are not valid JSON: {e}")))?;
        let method = MethodName::find(method).map_err(|e| PyValueError::new_err(e.message))?;
        self.inner.call(method, params).map_err(to_py_error)
    }

    fn subscribe(&self, subscription: u64, patterns: Vec<String>) -> PyResult<Option<u64>> {
        self.inner.subscribe(subscription, &patterns).map_err(to_py_error)
    }

    /// Returns (patterns removed, subscriptions left empty, call id or None).
    fn unsubscribe(&self, patterns: Vec<String>) -> PyResult<(Vec<String>, Vec<u64>, Option<u64>)> {
        let done = self.inner.unsubscribe(&patterns).map_err(to_py_error)?;
        Ok((done.removed, done.emptied, done.call))
    }

    fn close(&self) {
        self.inner.close();
    }

    /// Up to `limit` queued events, oldest first, as tuples whose first item is the
    /// kind. When more remain, the wake socket is written again.
    #[pyo3(signature = (limit = 1000))]
    fn drain<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for event in self.inner.drain(limit) {
            let item: Bound<'py, PyTuple> = match event {
                Event::Message(m) => match json::decode(py, &m.payload) {
                    Ok(payload) => (
                        MESSAGE,
                        PyTuple::new(py, m.subscriptions)?,
                        m.topic,
                        payload,
                        m.sender,
                        m.id,
                        m.timestamp,
                        m.reply_to,
                        m.ttl,
                        m.qos,
                        m.retained,
                        m.from_queue.map(|q| (q.queue, q.tag, q.delivery_count, q.generation)),
                    )
                        .into_pyobject(py)?,
                    // One payload Python cannot hold must not cost the other events
                    // of the batch: it is handed over as text with the reason.
                    Err(error) => (
                        UNDECODABLE,
                        m.topic,
                        m.payload,
                        m.sender,
                        m.id,
                        error.value(py).to_string(),
                        m.from_queue.map(|q| (q.queue, q.tag, q.delivery_count, q.generation)),
                    )
                        .into_pyobject(py)?,
                },
                Event::Response { call, result: Ok(json) } => {
                    (RESPONSE, call, true, json).into_pyobject(py)?
                }
                Event::Response { call, result: Err(e) } => {
                    (RESPONSE, call, false, (e.code, e.message)).into_pyobject(py)?
                }
                Event::PublishFailed { message_id, error } => {
                    (PUBLISH_FAILED, message_id, error.code, error.message).into_pyobject(py)?
                }
                Event::Connected => (CONNECTED,).into_pyobject(py)?,
                Event::Disconnected { reason, reconnecting } => {
                    (DISCONNECTED, reason, reconnecting).into_pyobject(py)?
                }
                Event::ConnectFailed { reason } => (CONNECT_FAILED, reason).into_pyobject(py)?,
                Event::Writable => (WRITABLE,).into_pyobject(py)?,
                Event::Closed => (CLOSED,).into_pyobject(py)?,
            };
            list.append(item)?;
        }
        Ok(list)
    }
}
