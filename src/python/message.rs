//! `Message`: what a subscriber's callback receives, built by `Client.dispatch` as it
//! hands a delivery over (no Python code runs per message to make it).
//!
//! It keeps the interface the package's dataclass had: the same constructor, public
//! attributes that can be read and set, equality over the public attributes (and so no
//! hash), a dataclass-like `repr`, `ack`/`nack` for deliveries from queues, and
//! `respond` for requests.

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyString, PyTuple, PyType};

use super::client::Client;

/// A delivery from a queue: how to acknowledge or reject it.
pub struct QueueSettle {
    pub client: Py<Client>,
    pub generation: u64,
    pub tag: u64,
}

impl QueueSettle {
    pub fn send(&self, ack: bool, requeue: bool) -> PyResult<()> {
        self.client.get().settle(self.generation, self.tag, ack, requeue)
    }
}

/// A delivered message.
///
/// `payload` is the plain value that was published (dict, list, str, number, bool or
/// None). `id` is the id `publish` returned to the publisher.
///
/// A message from a queue (`queue` is set) is acknowledged automatically when the
/// callback returns without raising, and rejected with requeue when it raises. Call
/// `ack()` or `nack()` to settle it yourself, earlier or differently.
#[pyclass(module = "message_broker", subclass)]
pub struct Message {
    #[pyo3(get, set)]
    topic: Py<PyString>,
    #[pyo3(get, set)]
    payload: Py<PyAny>,
    #[pyo3(get, set)]
    sender: Py<PyString>,
    #[pyo3(get, set)]
    id: Py<PyString>,
    /// Seconds since the Unix epoch when the broker accepted the message.
    #[pyo3(get, set)]
    timestamp: f64,
    /// Where the answer to a request goes; None for plain messages. A callback answers
    /// by returning a value other than None, or with `respond`.
    #[pyo3(get, set)]
    reply_to: Option<Py<PyString>>,
    /// Seconds the publisher gave the message to live, when it gave any.
    #[pyo3(get, set)]
    ttl: Option<f64>,
    /// 1 when it was published at least once (`qos=1`).
    #[pyo3(get, set)]
    qos: u8,
    /// True when it comes from the retained store: the topic's last known state,
    /// delivered when the subscription was made.
    #[pyo3(get, set)]
    retained: bool,
    /// The queue it was delivered from, for queue and durable subscriptions.
    #[pyo3(get, set)]
    queue: Option<Py<PyString>>,
    /// How many times the queue has delivered it, this time included (0 when not from
    /// a queue).
    #[pyo3(get, set)]
    delivery_count: u32,
    /// The publisher's headers (a dict of strings), or None when it gave none.
    #[pyo3(get, set)]
    headers: Option<Py<PyAny>>,
    settle: Option<QueueSettle>,
    settled: bool,
    /// The client a request was delivered to, which answers it.
    replier: Option<Py<Client>>,
    responded: bool,
}

/// The fields of a delivered message, as the dispatch has them.
pub struct Fields {
    pub topic: Py<PyString>,
    pub payload: Py<PyAny>,
    pub sender: Py<PyString>,
    pub id: Py<PyString>,
    pub timestamp: f64,
    pub reply_to: Option<Py<PyString>>,
    pub ttl: Option<f64>,
    pub qos: u8,
    pub retained: bool,
    pub headers: Option<Py<PyAny>>,
}

impl Message {
    /// A message as delivered to `replier`'s client (given for requests only).
    pub fn delivered(
        fields: Fields,
        from_queue: Option<(Py<PyString>, u32, QueueSettle)>,
        replier: Option<Py<Client>>,
    ) -> Message {
        match from_queue {
            Some((queue, count, settle)) => {
                Self::from_parts(fields, Some(queue), count, Some(settle), replier)
            }
            None => Self::from_parts(fields, None, 0, None, replier),
        }
    }

    fn from_parts(
        fields: Fields,
        queue: Option<Py<PyString>>,
        delivery_count: u32,
        settle: Option<QueueSettle>,
        replier: Option<Py<Client>>,
    ) -> Message {
        let Fields { topic, payload, sender, id, timestamp, reply_to, ttl, qos, retained, headers } = fields;
        Message {
            topic,
            payload,
            sender,
            id,
            timestamp,
            reply_to,
            ttl,
            qos,
            retained,
            queue,
            delivery_count,
            headers,
            settle,
            settled: false,
            replier,
            responded: false,
        }
    }

    /// The client and the reply address through which this request is answered, once.
    fn answerable(&self, py: Python<'_>) -> PyResult<(&Py<Client>, String)> {
        let topic = self.topic.bind(py).to_str()?;
        let Some(reply_to) = &self.reply_to else {
            return Err(PyRuntimeError::new_err(format!(
                "the message on {topic:?} is not a request (it has no reply_to): there is nobody to respond to"
            )));
        };
        if self.responded {
            return Err(PyRuntimeError::new_err(format!(
                "the request on {topic:?} was answered already: a request gets one reply"
            )));
        }
        let Some(replier) = &self.replier else {
            return Err(PyRuntimeError::new_err(format!(
                "the message on {topic:?} was not delivered by a client, so it cannot be answered"
            )));
        };
        Ok((replier, reply_to.bind(py).to_str()?.to_owned()))
    }

    /// The public attributes, in order: what equality and `repr` look at.
    fn public<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        (
            &self.topic,
            &self.payload,
            &self.sender,
            &self.id,
            PyFloat::new(py, self.timestamp),
            &self.reply_to,
            self.ttl,
            self.qos,
            self.retained,
            &self.queue,
            self.delivery_count,
            &self.headers,
        )
            .into_pyobject(py)
    }
}

/// A refusal of the engine as the package's own exception: `InvalidMessageError` for
/// what cannot be sent, `NotConnectedError` when nothing can be sent any more.
fn as_broker_error(py: Python<'_>, error: PyErr) -> PyErr {
    let kind = if error.is_instance_of::<PyValueError>(py) {
        "InvalidMessageError"
    } else if error.is_instance_of::<PyConnectionError>(py) {
        "NotConnectedError"
    } else {
        return error;
    };
    let converted = py
        .import("message_broker.errors")
        .and_then(|errors| errors.getattr(kind))
        .and_then(|class| class.call1((error.value(py).to_string(),)));
    match converted {
        Ok(exception) => PyErr::from_value(exception),
        Err(_) => error,
    }
}

const FIELDS: [&str; 12] = [
    "topic",
    "payload",
    "sender",
    "id",
    "timestamp",
    "reply_to",
    "ttl",
    "qos",
    "retained",
    "queue",
    "delivery_count",
    "headers",
];

#[pymethods]
impl Message {
    #[new]
    #[pyo3(signature = (
        topic, payload, sender, id, timestamp = 0.0, reply_to = None, ttl = None, qos = 0,
        retained = false, queue = None, delivery_count = 0, headers = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        topic: Py<PyString>,
        payload: Py<PyAny>,
        sender: Py<PyString>,
        id: Py<PyString>,
        timestamp: f64,
        reply_to: Option<Py<PyString>>,
        ttl: Option<f64>,
        qos: u8,
        retained: bool,
        queue: Option<Py<PyString>>,
        delivery_count: u32,
        headers: Option<Py<PyAny>>,
    ) -> Message {
        let fields = Fields { topic, payload, sender, id, timestamp, reply_to, ttl, qos, retained, headers };
        Self::from_parts(fields, queue, delivery_count, None, None)
    }

    #[classattr]
    fn __match_args__(py: Python<'_>) -> PyResult<Py<PyTuple>> {
        Ok(PyTuple::new(py, FIELDS)?.unbind())
    }

    /// Equal messages have equal attributes, like the dataclass it replaces: so it has
    /// no hash either.
    #[classattr]
    const __hash__: Option<Py<PyAny>> = None;

    fn __eq__(&self, py: Python<'_>, other: &Self) -> PyResult<bool> {
        self.public(py)?.eq(other.public(py)?)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let values = slf.borrow().public(slf.py())?;
        let mut text = format!("{}(", slf.get_type().name()?);
        for (i, (name, value)) in FIELDS.iter().zip(values.iter()).enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(name);
            text.push('=');
            text.push_str(value.repr()?.to_str()?);
        }
        text.push(')');
        Ok(text)
    }

    /// Pickled and copied by its public attributes (a copy is never settled with the
    /// broker: only the delivered message is).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyType>, Bound<'py, PyTuple>)> {
        Ok((slf.get_type(), slf.borrow().public(slf.py())?))
    }

    #[getter]
    fn is_request(&self) -> bool {
        self.reply_to.is_some()
    }

    /// True when a queue delivered it before (to a consumer that did not acknowledge it).
    #[getter]
    fn redelivered(&self) -> bool {
        self.delivery_count > 1
    }

    /// True once acknowledged or rejected (always for messages not from a queue).
    #[getter]
    fn settled(&self) -> bool {
        self.settle.is_none() || self.settled
    }

    /// True once the request has been answered, by `respond` or by a callback.
    #[getter]
    fn responded(&self) -> bool {
        self.responded
    }

    /// Answers this request with `value` (any value JSON can carry, None included).
    /// A request gets one reply: what a callback returns after this sends nothing
    /// more. Raises RuntimeError for a message that is not a request or was answered
    /// already, InvalidMessageError for a value JSON cannot carry.
    fn respond(&mut self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let (replier, reply_to) = self.answerable(py)?;
        replier.get().reply(&reply_to, value).map_err(|error| as_broker_error(py, error))?;
        self.responded = true;
        Ok(())
    }

    /// Answers this request with a failure (what the client does when a callback
    /// raises `kind` with `message`): the requester's request raises ResponderError.
    fn _respond_error(&mut self, py: Python<'_>, kind: &str, message: &str) -> PyResult<()> {
        let (replier, reply_to) = self.answerable(py)?;
        replier.get().reply_error(&reply_to, kind, message).map_err(|error| as_broker_error(py, error))?;
        self.responded = true;
        Ok(())
    }

    /// Acknowledges a message from a queue: the queue forgets it. Does nothing for
    /// other messages, or when already settled.
    fn ack(&mut self) -> PyResult<()> {
        self._finish(true, false)
    }

    /// Rejects a message from a queue: `requeue=True` gives it back to the queue for
    /// another delivery (until `max_deliveries`), False sends it to the queue's
    /// dead-letter topic.
    #[pyo3(signature = (requeue = true))]
    fn nack(&mut self, requeue: bool) -> PyResult<()> {
        self._finish(false, requeue)
    }

    /// Settles it unless it is settled already: what the client does once the callback
    /// is done with it.
    pub fn _finish(&mut self, ack: bool, requeue: bool) -> PyResult<()> {
        match &self.settle {
            Some(settle) if !self.settled => {
                self.settled = true;
                settle.send(ack, requeue)
            }
            _ => Ok(()),
        }
    }
}
