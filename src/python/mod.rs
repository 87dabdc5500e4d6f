//! The Python extension `message_broker._core`: thin wrappers over the core.
//!
//! - [`runtime`]: the one tokio runtime the extension runs on, stopped from an
//!   `atexit` hook so no Rust thread is inside Python while the interpreter finalizes.
//! - [`logging`]: `tracing` events forwarded to Python's `logging` from one thread of
//!   its own, so broker threads never wait for the GIL.
//! - [`facts`]: error codes, defaults and validation rules, read by Python instead of
//!   restated there.
//! - [`options`]: the broker's configuration and a client's options, each crossing as
//!   one typed object.
//! - [`broker`]: `Broker`, the server behind `message_broker.MessageBroker`.
//! - [`client`]: `Client`, the engine behind both Python clients.
//! - [`dispatch`]: `Client.dispatch`, which calls the callbacks of a batch of
//!   deliveries from one loop; [`events`]: the typed events it hands the client core
//!   for the rest; [`message`]: `Message`, built as it goes.
//! - [`json`]: JSON straight between Python objects and bytes; [`strings`]: the
//!   short strings it and the deliveries make again and again, made once per thread.

/// The extension's own allocations (frames, deliveries, buffers) are made on one
/// thread and freed on another all the time: the engine's threads make what Python's
/// thread frees, and the other way round. mimalloc frees across threads without the
/// slow paths glibc's allocator takes for it. Python's objects keep Python's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod broker;
mod client;
mod dispatch;
mod events;
mod facts;
mod json;
mod logging;
mod message;
mod options;
mod runtime;
mod strings;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();
    m.add("__version__", crate::VERSION)?;
    facts::register(m)?;
    m.add_class::<broker::Broker>()?;
    m.add_class::<options::ClientOptions>()?;
    m.add_function(wrap_pyfunction!(options::client_url, m)?)?;
    m.add_class::<client::Client>()?;
    m.add_class::<message::Message>()?;
    events::register(m)?;
    m.add_function(wrap_pyfunction!(runtime::shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(logging::set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(json::dumps, m)?)?;
    m.add_function(wrap_pyfunction!(json::loads, m)?)?;
    Ok(())
}
