//! The events `Client.dispatch` hands to the client core, one frozen class per kind,
//! so that it reads named attributes and dispatches on the class; and the `Message`
//! of each delivery, which goes to its callbacks instead.

use pyo3::prelude::*;
use pyo3::types::PyString;

use super::client::Client;
use super::message::{Fields, Message, QueueSettle};
use super::{json, strings};
use crate::client::{Delivered, Event, QueueDelivery};

/// A message whose payload Python cannot hold (an integer past Python's digit limit),
/// handed over as text instead of the message, so the rest of the batch is not lost.
#[pyclass(module = "message_broker._core", frozen)]
pub struct Undecodable {
    #[pyo3(get)]
    topic: String,
    /// The payload as JSON text, as the broker sent it.
    #[pyo3(get)]
    payload_text: String,
    #[pyo3(get)]
    sender: String,
    #[pyo3(get)]
    id: String,
    /// Why Python cannot hold it.
    #[pyo3(get)]
    reason: String,
    /// The queue it came from, if any.
    #[pyo3(get)]
    queue: Option<String>,
    settle: Option<QueueSettle>,
}

#[pymethods]
impl Undecodable {
    /// Rejects it, without requeue, when it came from a queue: it goes to the queue's
    /// dead-letter topic instead of coming back to the next consumer. Returns whether
    /// it came from a queue.
    fn reject(&self) -> PyResult<bool> {
        match &self.settle {
            Some(settle) => settle.send(false, false).map(|()| true),
            None => Ok(false),
        }
    }
}

/// The broker's answer to call `call`: its result as JSON text.
#[pyclass(module = "message_broker._core", frozen, get_all)]
pub struct Answer {
    call: u64,
    result: String,
}

/// The broker refused call `call` (or the connection was lost before it answered:
/// `code` is then `CONNECTION_LOST`).
#[pyclass(module = "message_broker._core", frozen, get_all)]
pub struct CallFailed {
    call: u64,
    code: i32,
    message: String,
    /// The error's `data` (a dict), when the broker sent any.
    data: Option<Py<PyAny>>,
}

/// The broker refused a message published without confirmation (`qos=0`).
#[pyclass(module = "message_broker._core", frozen, get_all)]
pub struct PublishFailed {
    message_id: String,
    code: i32,
    message: String,
}

/// Connected (or reconnected), with every subscription restored.
#[pyclass(module = "message_broker._core", frozen)]
pub struct Connected {}

/// The connection was lost; `reconnecting` when the client tries again.
#[pyclass(module = "message_broker._core", frozen, get_all)]
pub struct Disconnected {
    reason: String,
    reconnecting: bool,
}

/// The first connection could not be made; the client has stopped.
#[pyclass(module = "message_broker._core", frozen, get_all)]
pub struct ConnectFailed {
    reason: String,
    /// The error code when the broker refused the connect itself, else None.
    code: Option<i32>,
}

/// Room in the outgoing queue again, after a publish found it full.
#[pyclass(module = "message_broker._core", frozen)]
pub struct Writable {}

/// The client has stopped for good: nothing follows.
#[pyclass(module = "message_broker._core", frozen)]
pub struct Closed {}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Undecodable>()?;
    m.add_class::<Answer>()?;
    m.add_class::<CallFailed>()?;
    m.add_class::<PublishFailed>()?;
    m.add_class::<Connected>()?;
    m.add_class::<Disconnected>()?;
    m.add_class::<ConnectFailed>()?;
    m.add_class::<Writable>()?;
    m.add_class::<Closed>()?;
    Ok(())
}

/// One event of a client as Python has it.
pub enum PyEvent<'py> {
    /// A message for this client, for those of its subscriptions whose patterns match
    /// the topic (one, for a delivery from a queue).
    Delivery { message: Bound<'py, Message>, subscriptions: Vec<u64> },
    /// Any other event (an `Undecodable` delivery included), for the client core.
    Other(Bound<'py, PyAny>),
}

/// The Python objects for one event of `client`.
pub fn to_python<'py>(client: &Bound<'py, Client>, event: Event) -> PyResult<PyEvent<'py>> {
    let py = client.py();
    Ok(PyEvent::Other(match event {
        Event::Message(delivered) => return delivery(client, delivered),
        Event::Response { call, result: Ok(result) } => Bound::new(py, Answer { call, result })?.into_any(),
        Event::Response { call, result: Err(error) } => {
            // Data Python cannot read costs only the data, never the error itself.
            let data = error.data.and_then(|text| json::decode(py, &text).ok()).map(Bound::unbind);
            Bound::new(py, CallFailed { call, code: error.code, message: error.message, data })?.into_any()
        }
        Event::PublishFailed { message_id, error } => {
            Bound::new(py, PublishFailed { message_id, code: error.code, message: error.message })?.into_any()
        }
        Event::Connected => Bound::new(py, Connected {})?.into_any(),
        Event::Disconnected { reason, reconnecting } => {
            Bound::new(py, Disconnected { reason, reconnecting })?.into_any()
        }
        Event::ConnectFailed { reason, code } => Bound::new(py, ConnectFailed { reason, code })?.into_any(),
        Event::Writable => Bound::new(py, Writable {})?.into_any(),
        Event::Closed => Bound::new(py, Closed {})?.into_any(),
    }))
}

fn settle_of(client: &Bound<'_, Client>, delivery: &QueueDelivery) -> QueueSettle {
    QueueSettle { client: client.clone().unbind(), generation: delivery.generation, tag: delivery.tag }
}

fn delivery<'py>(client: &Bound<'py, Client>, m: Delivered) -> PyResult<PyEvent<'py>> {
    let py = client.py();
    let payload = match json::decode(py, m.payload()) {
        Ok(payload) => payload,
        // One payload Python cannot hold must not cost the other events of the batch:
        // it is handed over as text with the reason.
        Err(error) => {
            let settle = m.from_queue.as_ref().map(|q| settle_of(client, q));
            let undecodable = Undecodable {
                topic: m.topic().to_owned(),
                payload_text: m.payload().to_owned(),
                sender: m.sender().to_owned(),
                id: m.id().to_owned(),
                reason: error.value(py).to_string(),
                queue: m.from_queue.map(|q| q.queue),
                settle,
            };
            return Ok(PyEvent::Other(Bound::new(py, undecodable)?.into_any()));
        }
    };
    // Checked by the broker: an object of strings, which json.loads always reads.
    let headers = match m.headers() {
        Some(text) => Some(json::decode(py, text)?.unbind()),
        None => None,
    };
    let fields = Fields {
        headers,
        topic: strings::string(py, m.topic()).unbind(),
        payload: payload.unbind(),
        sender: strings::string(py, m.sender()).unbind(),
        id: PyString::new(py, m.id()).unbind(),
        timestamp: m.timestamp,
        reply_to: m.reply_to().map(|to| PyString::new(py, to).unbind()),
        ttl: m.ttl,
        qos: m.qos,
        retained: m.retained,
    };
    let from_queue = m.from_queue.map(|q| {
        let settle = settle_of(client, &q);
        (strings::string(py, &q.queue).unbind(), q.delivery_count, settle)
    });
    // A request keeps its client, through which it is answered.
    let replier = fields.reply_to.is_some().then(|| client.clone().unbind());
    let message = Bound::new(py, Message::delivered(fields, from_queue, replier))?;
    Ok(PyEvent::Delivery { message, subscriptions: m.subscriptions })
}
