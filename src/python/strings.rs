//! Short strings that come back message after message (object keys, topics, client
//! ids) made into Python strings once per thread and shared, as CPython shares
//! interned names: a cached string is handed out with a new reference and its hash
//! already known to Python, instead of being decoded, allocated and hashed again.
//! Strings are immutable, so sharing one is invisible but to `is`.

use std::cell::RefCell;

use pyo3::prelude::*;
use pyo3::types::PyString;

/// Slots of the cache: a string takes the slot its hash picks, replacing what was
/// there, so the cache never grows past them.
const SLOTS: usize = 1024;
/// Longer strings are seldom repeated keys, and cost more to compare than to make.
const MAX_CACHED_LEN: usize = 64;

struct Slot {
    text: Box<str>,
    string: Py<PyString>,
}

thread_local! {
    // Filled on first use, by the threads that decode (the Python threads).
    static CACHE: RefCell<Vec<Option<Slot>>> = const { RefCell::new(Vec::new()) };
}

/// `text` as a Python string: the cached one when `text` is short and was made on this
/// thread before.
pub fn string<'py>(py: Python<'py>, text: &str) -> Bound<'py, PyString> {
    if text.is_empty() || text.len() > MAX_CACHED_LEN {
        return PyString::new(py, text);
    }
    let slot = (fnv1a(text.as_bytes()) % SLOTS as u64) as usize;
    CACHE.with(|cache| {
        // Nothing here calls back into Python code that could decode meanwhile; a
        // cache in use all the same is merely passed by.
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return PyString::new(py, text);
        };
        if cache.is_empty() {
            cache.resize_with(SLOTS, || None);
        }
        if let Some(entry) = &cache[slot]
            && *entry.text == *text
        {
            return entry.string.bind(py).clone();
        }
        let string = PyString::new(py, text);
        cache[slot] = Some(Slot { text: text.into(), string: string.clone().unbind() });
        string
    })
}

/// FNV-1a: short keys hash in a few cycles, well enough spread for picking a slot.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
