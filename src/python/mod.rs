//! The Python extension `message_broker._core`: thin wrappers over the core.
//!
//! - [`runtime`]: the one tokio runtime the extension runs on, stopped from an
//!   `atexit` hook so no Rust thread is inside Python while the interpreter finalizes.
//! - [`logging`]: `tracing` events forwarded to Python's `logging` from one thread of
//!   its own, so broker threads never wait for the GIL.
//! - [`broker`]: `Broker`, the server behind `message_broker.MessageBroker`.
//! - [`client`]: `Client`, the engine behind `message_broker.BrokerClient`.
//! - [`json`]: JSON straight between Python objects and bytes.

mod broker;
mod client;
mod json;
mod logging;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();
    m.add("__version__", crate::VERSION)?;
    m.add("DEFAULT_PORT", crate::config::DEFAULT_PORT)?;
    m.add_class::<broker::Broker>()?;
    m.add_class::<client::Client>()?;
    m.add("CONNECTION_LOST", crate::client::CONNECTION_LOST)?;
    m.add_function(wrap_pyfunction!(runtime::shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(logging::set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(error_codes, m)?)?;
    m.add_function(wrap_pyfunction!(json::dumps, m)?)?;
    m.add_function(wrap_pyfunction!(json::loads, m)?)?;
    Ok(())
}

/// The wire error codes: `{name: code}`.
#[pyfunction]
fn error_codes() -> Vec<(&'static str, i32)> {
    crate::ErrorCode::ALL.iter().map(|c| (c.name(), c.code())).collect()
}
