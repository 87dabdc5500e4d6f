//! `Broker`: the server behind `message_broker.MessageBroker`. It runs on the
//! extension's runtime, so it needs no asyncio loop: a Qt app or a plain thread can
//! host it.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use pyo3::exceptions::{PyOSError, PyPermissionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use super::{options, runtime};
use crate::broker::{self, BrokerHandle};
use crate::config::BrokerConfig;
use crate::error::BrokerError;

#[pyclass(module = "message_broker._core", frozen)]
pub struct Broker {
    config: BrokerConfig,
    running: Mutex<Option<BrokerHandle>>,
    /// Set while `start` waits without the GIL (and without the `running` lock: a
    /// thread holding the GIL may be waiting for that lock).
    starting: AtomicBool,
}

fn to_py_error(error: BrokerError) -> PyErr {
    match error {
        BrokerError::InvalidConfig(_) => PyValueError::new_err(error.to_string()),
        BrokerError::Bind { ref source, .. } | BrokerError::Resolve { ref source, .. } => {
            PyOSError::new_err((source.raw_os_error().unwrap_or(0), error.to_string()))
        }
        BrokerError::RuntimeFile(ref refused) if refused.is_insecure() => {
            PyPermissionError::new_err(error.to_string())
        }
        BrokerError::Io(_) | BrokerError::Store(_) | BrokerError::RuntimeFile(_) => {
            PyOSError::new_err(error.to_string())
        }
    }
}

#[pymethods]
impl Broker {
    /// Reads and checks `config`, a `message_broker.BrokerConfig`.
    #[new]
    fn new(config: &Bound<'_, PyAny>) -> PyResult<Self> {
        let config = options::broker_config(config)?;
        Ok(Broker { config, running: Mutex::new(None), starting: AtomicBool::new(false) })
    }

    /// Binds and starts serving; returns the bound port.
    fn start(&self, py: Python<'_>) -> PyResult<u16> {
        if self.is_running() || self.starting.swap(true, Ordering::AcqRel) {
            return Err(PyRuntimeError::new_err("the broker is already running"));
        }
        let started = runtime::handle().and_then(|handle| {
            let config = self.config.clone();
            py.detach(|| handle.block_on(broker::start(config))).map_err(to_py_error)
        });
        self.starting.store(false, Ordering::Release);
        let started = started?;
        let port = started.local_addr().port();
        *self.running.lock() = Some(started);
        Ok(port)
    }

    /// Stops gracefully (announcing `reason` on `system.broker.shutdown`) and waits
    /// until every connection is closed. Does nothing when not running.
    #[pyo3(signature = (reason = "broker stopped"))]
    fn stop(&self, py: Python<'_>, reason: &str) -> PyResult<()> {
        let Some(running) = self.running.lock().take() else {
            return Ok(());
        };
        let handle = runtime::handle()?;
        py.detach(|| handle.block_on(running.stop(reason)));
        Ok(())
    }

    #[getter]
    fn is_running(&self) -> bool {
        self.running.lock().as_ref().is_some_and(|h| !h.is_finished())
    }

    /// The bound port while running, else None.
    #[getter]
    fn port(&self) -> Option<u16> {
        self.running.lock().as_ref().map(|h| h.local_addr().port())
    }

    /// The bound address while running, else None.
    #[getter]
    fn bound_host(&self) -> Option<String> {
        self.running.lock().as_ref().map(|h| h.local_addr().ip().to_string())
    }

    /// The HTTP listener's port while running, when `http_port` is set.
    #[getter]
    fn http_port(&self) -> Option<u16> {
        self.running.lock().as_ref().and_then(|h| h.http_addr()).map(|addr| addr.port())
    }

    /// The token of this start while running, else None.
    #[getter]
    fn token(&self) -> Option<String> {
        self.running.lock().as_ref().map(|h| h.token().to_owned())
    }

    /// The runtime file while running, else None.
    #[getter]
    fn runtime_file(&self) -> Option<String> {
        self.running.lock().as_ref().map(|h| h.runtime_file().display().to_string())
    }

    /// The local socket (Unix socket or named pipe) while running, if one is open.
    #[getter]
    fn local_socket(&self) -> Option<String> {
        self.running.lock().as_ref().and_then(|h| h.local_socket())
    }

    /// The broker's status as JSON text (the same document as the `status` method).
    fn status_json(&self) -> PyResult<String> {
        let running = self.running.lock();
        let handle = running.as_ref().ok_or_else(|| PyRuntimeError::new_err("the broker is not running"))?;
        Ok(handle.router().status().to_string())
    }
}
