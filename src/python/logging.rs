//! Forwards `tracing` events to Python's `logging`, under logger names that follow the
//! Rust module path (`message_broker.server`, `message_broker.session`,
//! `message_broker.messages`, ...), with the broker's own folder left out.
//!
//! Events are formatted where they happen and queued; a single thread takes the GIL
//! and hands them to `logging`. A broker thread therefore never waits for the GIL, and
//! at interpreter exit the thread is joined before finalization begins.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Records waiting for the logging thread; past this, records are counted and dropped.
/// The channel grows as records come (a bounded one would hold all its slots from the
/// start: half a megabyte of an idle broker), so the bound is kept by [`QUEUED`].
const QUEUE: usize = 8192;

enum Entry {
    Record { level: u8, logger: String, message: String },
    Stop,
}

/// The thread that hands records to Python and the queue to it, with the id of the
/// process that started them: a process forked from it has the queue but not the
/// thread, and starts a thread of its own at its first record.
struct Forwarder {
    pid: u32,
    queue: Sender<Entry>,
    thread: JoinHandle<()>,
}

impl Forwarder {
    fn start() -> Option<Forwarder> {
        let (queue, rx) = channel();
        let thread = std::thread::Builder::new().name("message-broker-log".into()).spawn(move || run(rx));
        QUEUED.store(0, Ordering::Relaxed);
        Some(Forwarder { pid: std::process::id(), queue, thread: thread.ok()? })
    }
}

static FORWARDER: Mutex<Option<Forwarder>> = Mutex::new(None);
static QUEUED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The lowest Python level forwarded (Python's numbering: DEBUG=10 ... ERROR=40).
static MIN_LEVEL: AtomicU8 = AtomicU8::new(20);

fn python_level(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG | Level::TRACE => 10,
    }
}

/// Sets the lowest level forwarded to Python; the package passes the effective level
/// of the `message_broker` logger when a broker starts.
#[pyfunction]
pub fn set_log_level(level: u8) {
    MIN_LEVEL.store(level, Ordering::Relaxed);
}

pub fn install() {
    *FORWARDER.lock() = Forwarder::start();
    // Fails only when the host process already installed a subscriber; theirs wins.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(PythonLogging));
}

/// Stops and joins the logging thread after it has written what is queued.
pub fn stop() {
    let Some(forwarder) = FORWARDER.lock().take() else { return };
    if forwarder.pid == std::process::id() {
        let _ = forwarder.queue.send(Entry::Stop);
        let _ = forwarder.thread.join();
    } else {
        // Forked, and no record since: the thread is the parent's, not ours to join.
        std::mem::forget(forwarder);
    }
}

fn run(rx: Receiver<Entry>) {
    while let Ok(Entry::Record { level, logger, message }) = rx.recv() {
        QUEUED.fetch_sub(1, Ordering::Relaxed);
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        // try_attach: never attach to an interpreter that is already finalizing.
        let attached = Python::try_attach(|py| {
            let result = (|| -> PyResult<()> {
                let logging = py.import("logging")?;
                if dropped > 0 {
                    logging.call_method1("getLogger", ("message_broker",))?.call_method1(
                        "warning",
                        (format!("{dropped} log records were dropped: the logging queue was full"),),
                    )?;
                }
                let logger = logging.call_method1("getLogger", (logger,))?;
                if logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
                    logger.call_method1("log", (level, message))?;
                }
                Ok(())
            })();
            if let Err(err) = result {
                err.print(py);
            }
        });
        if attached.is_none() {
            return;
        }
    }
}

struct PythonLogging;

impl<S: Subscriber> Layer<S> for PythonLogging {
    /// The level can change at run time (`set_log_level`), so no callsite's answer
    /// may be cached.
    fn register_callsite(&self, _: &'static tracing::Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        python_level(metadata.level()) >= MIN_LEVEL.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        let mut text = Message::default();
        event.record(&mut text);
        let entry = Entry::Record {
            level: python_level(metadata.level()),
            logger: logger_name(metadata.target()),
            message: text.finish(),
        };
        let mut forwarder = FORWARDER.lock();
        if forwarder.as_ref().is_some_and(|f| f.pid != std::process::id()) {
            // Forked: the parent's thread does not run here (and is not ours to join).
            std::mem::forget(forwarder.take());
            *forwarder = Forwarder::start();
        }
        let Some(Forwarder { queue: tx, .. }) = forwarder.as_ref() else { return };
        if QUEUED.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            QUEUED.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        } else if tx.send(entry).is_err() {
            QUEUED.fetch_sub(1, Ordering::Relaxed); // the logging thread has stopped
        }
    }
}

/// "message key=value key=value".
#[derive(Default)]
struct Message {
    message: String,
    fields: String,
}

impl Message {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else {
            format!("{} ({})", self.message, self.fields.trim_start())
        }
    }
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

/// The Python logger of a Rust module. The broker's modules live in `broker/`, but
/// their loggers keep the names users configure: `message_broker.server` for the
/// listener, `message_broker.session`, `message_broker.router`, ...
fn logger_name(target: &str) -> String {
    let name = target.replace("::", ".");
    match name.strip_prefix("message_broker.broker") {
        // The listeners, TCP and local, are the server.
        Some("" | ".listener") => "message_broker.server".to_owned(),
        Some(rest) if rest.starts_with(".local_socket") => "message_broker.server".to_owned(),
        Some(rest) if rest.starts_with('.') => format!("message_broker{rest}"),
        _ => name,
    }
}
