//! `Client`: the engine behind `message_broker.BrokerClient`.
//!
//! Runtime threads never call into Python. They queue events in the client's inbox
//! and write one byte to a socket whose other end the asyncio loop awaits (with
//! `loop.sock_recv`, which every event loop supports, Windows' Proactor included);
//! the loop then handles the whole batch with `dispatch()`.

use std::io::Write;
use std::time::Duration;

use pyo3::exceptions::{PyBlockingIOError, PyConnectionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::value::RawValue;

use super::options::ClientOptions;
use super::{dispatch, facts, json, runtime};
use crate::client::{self, ClientError};
use crate::protocol::method::{MethodName, SubscriptionFlags, Will};

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

/// The last will of `connect` as JSON text, checked by the broker's own rules so that a
/// mistake shows when connecting is asked for, not as a refused connection.
fn will_json(will: &Bound<'_, PyAny>) -> PyResult<Box<RawValue>> {
    if !will.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err(format!(
            "will must be a dict with topic and payload, got {}",
            will.repr()?
        )));
    }
    let text = encode(will)?;
    let parsed: Will = serde_json::from_str(&text).map_err(|e| {
        PyValueError::new_err(format!(
            "will is a dict with a topic (str) and optionally payload, qos, retain and ttl: {e}"
        ))
    })?;
    parsed.check().map_err(|e| PyValueError::new_err(format!("will: {}", e.message)))?;
    RawValue::from_string(text).map_err(|e| PyValueError::new_err(format!("will is not valid JSON: {e}")))
}

/// Events taken per dispatch: large enough to amortise the wake-up, small enough that
/// handing them to Python keeps one turn of the event loop short.
const DISPATCH_LIMIT: usize = 1000;

#[pyclass(module = "message_broker._core", frozen)]
pub struct Client {
    inner: client::Client,
}

impl Client {
    /// Acknowledges (`ack`) or rejects one delivery from a queue received on connection
    /// `generation`; nothing is sent for an older connection, whose deliveries the
    /// broker already gave back.
    pub fn settle(&self, generation: u64, tag: u64, ack: bool, requeue: bool) -> PyResult<()> {
        self.inner.settle(generation, &[tag], ack, requeue).map(drop).map_err(to_py_error)
    }

    /// Answers a request with `value`, published to its `reply_to`.
    pub fn reply(&self, reply_to: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let text = encode(value)?;
        self.inner
            .publish_with(reply_to, &text, &client::PublishOptions::default())
            .map(drop)
            .map_err(to_py_error)
    }

    /// Answers a request with a failure: the requester's request raises it.
    pub fn reply_error(&self, reply_to: &str, kind: &str, message: &str) -> PyResult<()> {
        self.inner.reply_error(reply_to, kind, message).map_err(to_py_error)
    }
}

#[pymethods]
impl Client {
    /// Starts connecting in the background; takes ownership of the socket handle.
    /// With `wait` (seconds), the first connection is tried until then instead of
    /// `connect_retries` times.
    #[new]
    #[pyo3(signature = (options, wake_socket_handle, will = None, wait = None))]
    fn new(
        options: &ClientOptions,
        wake_socket_handle: i64,
        will: Option<&Bound<'_, PyAny>>,
        wait: Option<f64>,
    ) -> PyResult<Self> {
        // First, so that the socket is closed whatever fails next.
        let waker = SocketWaker(wake_socket(wake_socket_handle)?);
        let mut config = options.config.clone();
        config.will = will.map(will_json).transpose()?;
        config.connect_wait = wait
            .map(|wait| {
                Duration::try_from_secs_f64(wait).ok().filter(|wait| !wait.is_zero()).ok_or_else(|| {
                    PyValueError::new_err(format!("wait must be a positive number of seconds, got {wait}"))
                })
            })
            .transpose()?;
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

    /// Why the client stopped by itself (the first connection failed, the session was
    /// taken over, the connection was lost with reconnect off); None otherwise.
    #[getter]
    fn stop_reason(&self) -> Option<String> {
        self.inner.stop_reason()
    }

    /// Queues a message; returns (message id, call id or None). With qos=1 the call's
    /// answer is the broker's confirmation.
    fn publish(
        &self,
        topic: &str,
        payload: &Bound<'_, PyAny>,
        qos: &Bound<'_, PyAny>,
        ttl: &Bound<'_, PyAny>,
        retain: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<(String, Option<u64>)> {
        let mut options = facts::publish_options(qos, ttl, retain)?;
        options.headers = facts::headers(headers)?;
        let text = encode(payload)?;
        self.inner.publish_with(topic, &text, &options).map_err(to_py_error)
    }

    /// Consumes from queue `name`; `params` are the `subscribe` params.
    fn subscribe_queue(
        &self,
        subscription: u64,
        name: &str,
        patterns: Vec<String>,
        params: &Bound<'_, PyAny>,
    ) -> PyResult<Option<u64>> {
        let params: serde_json::Value = serde_json::from_str(&encode(params)?)
            .map_err(|e| PyValueError::new_err(format!("params are not valid JSON: {e}")))?;
        self.inner.subscribe_queue(subscription, name, &patterns, params).map_err(to_py_error)
    }

    /// Stops consuming from a queue; returns (its subscription or None, call id or None).
    fn unsubscribe_queue(&self, name: &str) -> PyResult<(Option<u64>, Option<u64>)> {
        self.inner.unsubscribe_queue(name).map_err(to_py_error)
    }

    /// Sends a call with `params` (any value JSON can carry); returns its call id.
    fn call(&self, method: &str, params: &Bound<'_, PyAny>) -> PyResult<u64> {
        let params = RawValue::from_string(encode(params)?)
            .map_err(|e| PyValueError::new_err(format!("params are not valid JSON: {e}")))?;
        let method = MethodName::find(method).map_err(|e| PyValueError::new_err(e.message))?;
        self.inner.call(method, params).map_err(to_py_error)
    }

    /// Subscribes `patterns` for `subscription`; `passive` and `no_local` are its flags.
    fn subscribe(
        &self,
        subscription: u64,
        patterns: Vec<String>,
        passive: bool,
        no_local: bool,
    ) -> PyResult<Option<u64>> {
        let flags = SubscriptionFlags { passive, no_local, relay: false };
        self.inner.subscribe(subscription, &patterns, flags).map_err(to_py_error)
    }

    /// Returns (patterns removed, subscriptions left empty, call id or None).
    fn unsubscribe(&self, patterns: Vec<String>) -> PyResult<(Vec<String>, Vec<u64>, Option<u64>)> {
        let done = self.inner.unsubscribe(&patterns).map_err(to_py_error)?;
        Ok((done.removed, done.emptied, done.call))
    }

    /// Ends one subscription (plain or from a queue) and nothing else: returns (what
    /// the broker was told to drop: patterns, or the queue's name; call id or None).
    fn release(&self, subscription: u64) -> PyResult<(Vec<String>, Option<u64>)> {
        let done = self.inner.release(subscription).map_err(to_py_error)?;
        Ok((done.removed, done.call))
    }

    fn close(&self) {
        self.inner.close();
    }

    /// Handles up to `limit` queued events, oldest first, for `core` (the client core:
    /// see `Dispatcher` in `_core.pyi`): each delivery's callbacks are called from
    /// this loop, every other event goes to `core.handle`. Returns how many were
    /// handled. When more remain, the wake socket is written again.
    #[pyo3(signature = (core, limit = DISPATCH_LIMIT))]
    fn dispatch(slf: &Bound<'_, Self>, core: &Bound<'_, PyAny>, limit: usize) -> PyResult<usize> {
        dispatch::run(slf, core, slf.get().inner.drain(limit))
    }
}
