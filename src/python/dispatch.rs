//! `Client.dispatch`: a batch of events handled in one loop. Each delivery's `Message`
//! is built and handed to its subscriptions' callbacks right here, so that no Python
//! code runs per message but the callbacks themselves (and the front's
//! `_on_message`, for a front that has one). Every other event, and whatever a
//! callback does beyond handling its message and returning None, goes to the client
//! core: the `Dispatcher` of `_core.pyi`, whose rules this loop follows.

use pyo3::call::PyCallArgs;
use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::client::Client;
use super::events::{self, PyEvent};
use super::message::Message;
use crate::client::Event;

/// The client core, with what every delivery needs looked up once per batch.
struct Dispatcher<'py> {
    core: Bound<'py, PyAny>,
    /// Subscription -> callback, or None for a subscription acknowledged without one.
    /// The core's own dict: a callback that subscribes or unsubscribes changes it for
    /// the rest of the batch too.
    callbacks: Bound<'py, PyDict>,
    observer: Option<Bound<'py, PyAny>>,
}

impl<'py> Dispatcher<'py> {
    fn of(core: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = core.py();
        let callbacks = core.getattr(intern!(py, "callbacks"))?.cast_into::<PyDict>()?;
        let observer = core.getattr(intern!(py, "observer"))?;
        Ok(Dispatcher { core: core.clone(), callbacks, observer: (!observer.is_none()).then_some(observer) })
    }

    /// Calls a method of the core that answers yes or no.
    fn ask(&self, method: &Bound<'py, PyString>, args: impl PyCallArgs<'py>) -> PyResult<bool> {
        self.core.call_method1(method, args)?.is_truthy()
    }
}

/// Handles `events` in order for `core`; returns how many there were. An exception
/// (not a `BaseException` such as `KeyboardInterrupt`, which ends the loop) never
/// costs the other events: the core logs it.
pub fn run(client: &Bound<'_, Client>, core: &Bound<'_, PyAny>, events: Vec<Event>) -> PyResult<usize> {
    let py = client.py();
    let dispatcher = Dispatcher::of(core)?;
    let count = events.len();
    for event in events {
        match events::to_python(client, event)? {
            PyEvent::Delivery { message, subscriptions } => {
                if let Err(error) = deliver(&dispatcher, &message, &subscriptions) {
                    if !error.is_instance_of::<PyException>(py) {
                        return Err(error);
                    }
                    core.call_method1(intern!(py, "handling_failed"), (error.into_value(py),))?;
                }
            }
            PyEvent::Other(event) => {
                core.call_method1(intern!(py, "handle"), (event,))?;
            }
        }
    }
    Ok(count)
}

/// Hands one message to the callbacks of `subscriptions`, in order. A callback that
/// returns None has handled it; anything else it returns goes to the core's
/// `returned`, what it raises to `raised`. A message from a queue is then acknowledged
/// when a callback handled it and none failed, and given back to the queue otherwise,
/// unless it is settled later by whoever holds it.
fn deliver(dispatcher: &Dispatcher<'_>, message: &Bound<'_, Message>, subscriptions: &[u64]) -> PyResult<()> {
    let py = message.py();
    if let Some(observer) = &dispatcher.observer {
        observer.call1((message,))?;
    }
    let mut succeeded = false;
    // The first failure of a callback that answers requests: the requester hears it.
    let mut failure = None;
    for &subscription in subscriptions {
        let Some(callback) = dispatcher.callbacks.get_item(subscription)? else {
            continue; // ended meanwhile
        };
        if callback.is_none() {
            succeeded = true;
            continue;
        }
        match callback.call1((message,)) {
            Ok(result) if result.is_none() => succeeded = true,
            Ok(result) => {
                if dispatcher.ask(intern!(py, "returned"), (&callback, message, subscription, result))? {
                    return Ok(()); // settled later
                }
                succeeded = true;
            }
            Err(error) if error.is_instance_of::<PyException>(py) => {
                let error = error.into_value(py);
                if dispatcher.ask(intern!(py, "raised"), (&callback, message, subscription, &error))?
                    && failure.is_none()
                {
                    failure = Some(error);
                }
            }
            Err(error) => return Err(error),
        }
    }
    // The requester has its answer: a request from a queue is not given back for
    // another consumer to answer in vain.
    if let Some(error) = failure {
        succeeded |= dispatcher.ask(intern!(py, "answer_failure"), (message, error))?;
    }
    message.borrow_mut()._finish(succeeded, true)
}
