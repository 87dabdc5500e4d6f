//! The extension's tokio runtime: created on first use, stopped once at interpreter
//! exit.
//!
//! Python 3.11 aborts when a foreign thread is inside a Python call while the
//! interpreter finalizes. The package registers [`shutdown`] with `atexit`, which runs
//! before finalization: it stops every broker task and joins the runtime's threads
//! and the logging thread, and later use raises instead of starting threads again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::{Handle, Runtime};

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
static CLOSED: AtomicBool = AtomicBool::new(false);

/// How long interpreter exit waits for broker tasks to finish.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A handle to the runtime, creating it on first use.
pub fn handle() -> PyResult<Handle> {
    if CLOSED.load(Ordering::Acquire) {
        return Err(PyRuntimeError::new_err("message_broker has shut down: the interpreter is exiting"));
    }
    let mut runtime = RUNTIME.lock();
    if let Some(runtime) = runtime.as_ref() {
        return Ok(runtime.handle().clone());
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
    let created = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("message-broker")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the broker runtime: {e}")))?;
    let handle = created.handle().clone();
    *runtime = Some(created);
    Ok(handle)
}

/// Stops the runtime and the logging thread. Registered with `atexit` by the package;
/// safe to call more than once.
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    let runtime = {
        let mut runtime = RUNTIME.lock();
        CLOSED.store(true, Ordering::Release);
        runtime.take()
    };
    // Without the GIL: runtime threads and the logging thread may be waiting for it.
    py.detach(|| {
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(EXIT_GRACE);
        }
        super::logging::stop();
    });
}
