//! JSON straight between Python objects and bytes, with the standard library's
//! rules (`json.dumps(ensure_ascii=False, allow_nan=False)` and `json.loads`), and no
//! intermediate string or tree: encoding and decoding are most of what a message
//! costs in Python.

use std::fmt::Write as _;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::protocol::message::write_str;

/// Same as the broker's limit: deeper payloads would be refused there.
const MAX_DEPTH: usize = crate::protocol::jsonrpc::MAX_DEPTH;

/// Appends `value` as JSON to `out`.
pub fn encode(value: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    encode_at(value, out, 0)
}

fn encode_at(value: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> PyResult<()> {
    if value.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(b) = value.cast::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
    } else if let Ok(s) = value.cast::<PyString>() {
        write_str(out, s.to_str()?);
    } else if value.is_instance_of::<PyInt>() {
        match value.extract::<i64>() {
            Ok(n) => out.extend_from_slice(n.to_string().as_bytes()),
            // Beyond 64 bits: Python's own digits, as json.dumps writes them.
            Err(_) => out.extend_from_slice(value.call_method0("__index__")?.str()?.to_str()?.as_bytes()),
        }
    } else if let Ok(f) = value.cast::<PyFloat>() {
        write_float(f.value(), out)?;
    } else if let Ok(dict) = value.cast::<PyDict>() {
        deeper(depth)?;
        out.push(b'{');
        for (i, (key, item)) in dict.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(&key, out)?;
            out.push(b':');
            encode_at(&item, out, depth + 1)?;
        }
        out.push(b'}');
    } else if let Ok(list) = value.cast::<PyList>() {
        encode_array(list.iter(), out, depth)?;
    } else if let Ok(tuple) = value.cast::<PyTuple>() {
        encode_array(tuple.iter(), out, depth)?;
    } else {
        let kind = value.get_type().name()?;
        return Err(PyTypeError::new_err(format!("Object of type {kind} is not JSON serializable")));
    }
    Ok(())
}

fn encode_array<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    out: &mut Vec<u8>,
    depth: usize,
) -> PyResult<()> {
    deeper(depth)?;
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_at(&item, out, depth + 1)?;
    }
    out.push(b']');
    Ok(())
}

fn deeper(depth: usize) -> PyResult<()> {
    if depth >= MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "nested more than {MAX_DEPTH} levels deep (or it contains itself)"
        )));
    }
    Ok(())
}

/// Python's float repr, which always shows a float as one (`1.0`, `1e+16`): JSON
/// readers then give back a float, not an int.
fn write_float(f: f64, out: &mut Vec<u8>) -> PyResult<()> {
    if !f.is_finite() {
        return Err(PyValueError::new_err(format!("Out of range float values are not JSON compliant: {f}")));
    }
    let mut text = String::new();
    write!(text, "{f:?}").expect("formatting a float cannot fail");
    // Rust writes the exponent as `e16` and `e-7`, Python as `e+16` and `e-07`: the
    // same value, but a float used as a key must read as json.dumps writes it.
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = exponent.strip_prefix('-').map_or(('+', exponent), |digits| ('-', digits));
            out.extend_from_slice(format!("{mantissa}e{sign}{digits:0>2}").as_bytes());
        }
        None => out.extend_from_slice(text.as_bytes()),
    }
    Ok(())
}

/// Object keys as json.dumps writes them: strings as they are; numbers, booleans
/// and None as their JSON text in quotes.
fn write_key(key: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    if let Ok(s) = key.cast::<PyString>() {
        write_str(out, s.to_str()?);
        return Ok(());
    }
    let mut text = Vec::new();
    if key.is_none() || key.is_instance_of::<PyBool>() || key.is_instance_of::<PyInt>() {
        encode_at(key, &mut text, 0)?;
    } else if let Ok(f) = key.cast::<PyFloat>() {
        write_float(f.value(), &mut text)?;
    } else {
        let kind = key.get_type().name()?;
        return Err(PyTypeError::new_err(format!("keys must be str, int, float, bool or None, not {kind}")));
    }
    write_str(out, std::str::from_utf8(&text).expect("JSON text is UTF-8"));
    Ok(())
}

/// Parses JSON text (already validated by the broker) into Python objects, with the
/// results `json.loads` gives. The fast path covers what serde_json reads the same
/// way; the rest (integers beyond 64 bits, numbers beyond float range, lone
/// surrogates) goes to `json.loads` itself, whose error is the one raised when
/// Python cannot hold the value either (an integer past its digit limit).
pub fn decode<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    if !read_differently(text) {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let parsed = PyValueSeed { py }.deserialize(&mut deserializer);
        if let (Ok(value), Ok(())) = (parsed, deserializer.end()) {
            return Ok(value);
        }
    }
    py.import("json")?
        .call_method1("loads", (text,))
        .map_err(|error| PyValueError::new_err(format!("invalid JSON: {}", error.value(py))))
}

/// Whether `text` may hold a number serde_json reads otherwise than Python: an
/// integer beyond 64 bits (a float to serde_json, exact in Python) or `-0` (the
/// float -0.0 to serde_json, the int 0 in Python). Strings are skipped, so that text
/// such as `"saw-01"` or a long id in digits keeps the fast path; a long fraction
/// merely takes the slower one.
fn read_differently(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut run = 0;
    while let Some(&b) = bytes.get(at) {
        if b == b'"' {
            at = after_string(bytes, at + 1);
            run = 0;
            continue;
        }
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        let negative_zero = b == b'-'
            && bytes.get(at + 1) == Some(&b'0')
            && !matches!(bytes.get(at + 2), Some(b'.' | b'e' | b'E'));
        if run >= 19 || negative_zero {
            return true;
        }
        at += 1;
    }
    false
}

/// Where the string whose contents start at `at` ends (just past its closing quote),
/// or the end of the text when it is not closed (serde_json then refuses the text).
fn after_string(bytes: &[u8], mut at: usize) -> usize {
    while let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[at.min(bytes.len())..]) {
        let found = at + found;
        if bytes[found] == b'"' {
            return found + 1;
        }
        // An escape: the next character is taken as it is, a quote included.
        at = found + 2;
    }
    bytes.len()
}

/// Builds Python objects as the parser walks the text (serde_json bounds the depth).
#[derive(Clone, Copy)]
struct PyValueSeed<'py> {
    py: Python<'py>,
}

impl<'de, 'py> DeserializeSeed<'de> for PyValueSeed<'py> {
    type Value = Bound<'py, PyAny>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn py_error<E: de::Error>(error: PyErr) -> E {
    E::custom(error.to_string())
}

impl<'de, 'py> Visitor<'de> for PyValueSeed<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.py.None().into_bound(self.py))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.py, v).to_owned().into_any())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        let Ok(int) = v.into_pyobject(self.py);
        Ok(int.into_any())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let Ok(int) = v.into_pyobject(self.py);
        Ok(int.into_any())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(PyFloat::new(self.py, v).into_any())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.py, v).into_any())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.py);
        while let Some(item) = seq.next_element_seed(self)? {
            list.append(item).map_err(py_error)?;
        }
        Ok(list.into_any())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.py);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = map.next_value_seed(self)?;
            dict.set_item(super::strings::string(self.py, &key), value).map_err(py_error)?;
        }
        Ok(dict.into_any())
    }
}

/// `json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)`,
/// faster.
#[pyfunction]
pub fn dumps(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let mut out = Vec::new();
    encode(value, &mut out)?;
    Ok(String::from_utf8(out).expect("JSON text is UTF-8"))
}

/// `json.loads(text)`, faster.
#[pyfunction]
pub fn loads<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    decode(py, text)
}
