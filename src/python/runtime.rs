//! The extension's tokio runtime: created on first use, stopped once at interpreter
//! exit.
//!
//! Python 3.11 aborts when a foreign thread is inside a Python call while the
//! interpreter finalizes. The package registers [`shutdown`] with `atexit`, which runs
//! before finalization: it stops every broker task and joins the runtime's threads
//! and the logging thread, and later use raises instead of starting threads again.
//!
//! A process forked from one that used the runtime (a server that forks its workers)
//! inherits the runtime without its threads: the child starts a runtime of its own on
//! first use, and leaves the parent's alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::{Handle, Runtime};

/// The runtime, with the id of the process that started it.
static RUNTIME: Mutex<Option<(u32, Runtime)>> = Mutex::new(None);
static CLOSED: AtomicBool = AtomicBool::new(false);

/// How long interpreter exit waits for broker tasks to finish.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Sets the runtime's worker threads (brokers and clients of the process share them).
pub const WORKER_THREADS_ENV: &str = "MESSAGE_BROKER_WORKER_THREADS";
/// More threads than this only cost memory and wake-ups.
const MAX_WORKER_THREADS: usize = 64;

/// The runtime's worker threads: `MESSAGE_BROKER_WORKER_THREADS` when set, else one per
/// core, from 2 to 4. Measured on 2 cores, 1, 2 and 4 workers serve a broker and its
/// clients alike within the noise (docs/performance.md); past 4, threads mostly wait.
fn worker_threads() -> PyResult<usize> {
    let Ok(text) = std::env::var(WORKER_THREADS_ENV) else {
        return Ok(std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4));
    };
    text.trim().parse().ok().filter(|n| (1..=MAX_WORKER_THREADS).contains(n)).ok_or_else(|| {
        PyRuntimeError::new_err(format!(
            "{WORKER_THREADS_ENV} must be a whole number from 1 to {MAX_WORKER_THREADS}, got {text:?}"
        ))
    })
}

/// A handle to the runtime, creating it on first use.
pub fn handle() -> PyResult<Handle> {
    if CLOSED.load(Ordering::Acquire) {
        return Err(PyRuntimeError::new_err("message_broker has shut down: the interpreter is exiting"));
    }
    let mut runtime = RUNTIME.lock();
    let pid = std::process::id();
    match runtime.take() {
        Some((started_by, existing)) if started_by == pid => {
            let handle = existing.handle().clone();
            *runtime = Some((started_by, existing));
            return Ok(handle);
        }
        // Forked: its threads exist in the parent only, and dropping it would wait for them.
        Some((_, inherited)) => std::mem::forget(inherited),
        None => {}
    }
    let created = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads()?)
        .thread_name("message-broker")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the broker runtime: {e}")))?;
    let handle = created.handle().clone();
    *runtime = Some((pid, created));
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
        match runtime {
            Some((started_by, runtime)) if started_by == std::process::id() => {
                runtime.shutdown_timeout(EXIT_GRACE);
            }
            Some((_, inherited)) => std::mem::forget(inherited),
            None => {}
        }
        super::logging::stop();
    });
}
