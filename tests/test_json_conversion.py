"""The extension's JSON conversion behaves like the standard library's json module
(dumps with ensure_ascii=False and allow_nan=False; loads)."""

from __future__ import annotations

import enum
import json
import math
import random
from collections import OrderedDict

import pytest

from message_broker import _core


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


def stdlib_dumps(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64,
    2**70,
    -(2**100),
    1.0,
    -0.0,
    0.1,
    1e16,
    1e-7,
    123456.789e300,
    5e-324,
    "",
    "plain",
    'quotes " and \\ backslash',
    "control \x00 \x1f \n \t \u2028",
    "Grüße 日本語 🎉",
    [],
    {},
    [1, [2, [3, [4]]]],
    (1, 2, (3,)),
    {"nested": {"list": [1, 2.5, None, True, {"deep": ["x"]}]}},
    {1: "int key", 2.5: "float key", False: "bool key", None: "none key"},
    OrderedDict([("b", 1), ("a", 2)]),
    Color.RED,
    Name("a str subclass"),
    {"x": Color.RED, Name("k"): [Color.RED]},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_dumps_matches_the_standard_library(value):
    ours = _core.dumps(value)
    assert json.loads(ours) == json.loads(stdlib_dumps(value))
    # Floats stay floats and ints stay ints when read back.
    assert repr(json.loads(ours)) == repr(json.loads(stdlib_dumps(value)))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_loads_matches_the_standard_library(value):
    text = stdlib_dumps(value)
    ours = _core.loads(text)
    assert ours == json.loads(text)
    assert repr(ours) == repr(json.loads(text))


def test_random_documents_round_trip():
    rng = random.Random(7)

    def make(depth: int):
        kind = rng.randrange(8 if depth < 5 else 5)
        if kind == 0:
            return rng.randint(-(2**80), 2**80)
        if kind == 1:
            return rng.uniform(-1e6, 1e6)
        if kind == 2:
            return "".join(
                chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
                for _ in range(rng.randrange(10))
            )
        if kind == 3:
            return rng.choice([None, True, False])
        if kind == 4:
            return rng.randrange(-1000, 1000)
        if kind == 5:
            return [make(depth + 1) for _ in range(rng.randrange(5))]
        return {f"k{rng.randrange(100)}": make(depth + 1) for _ in range(rng.randrange(5))}

    for _ in range(500):
        value = make(0)
        text = _core.dumps(value)
        assert json.loads(text) == value
        assert _core.loads(text) == value
        assert _core.loads(stdlib_dumps(value)) == json.loads(stdlib_dumps(value))


@pytest.mark.parametrize(
    "value,error,needle",
    [
        ({1, 2}, TypeError, "set"),
        (object(), TypeError, "object"),
        (b"bytes", TypeError, "bytes"),
        (float("nan"), ValueError, "Out of range float"),
        ([float("inf")], ValueError, "Out of range float"),
        ({(1, 2): "tuple key"}, TypeError, "keys must be"),
        ("lone surrogate \ud800", ValueError, "surrogate"),
    ],
)
def test_dumps_refuses_what_json_cannot_carry(value, error, needle):
    with pytest.raises((error, UnicodeEncodeError)) as caught:
        _core.dumps(value)
    assert needle in str(caught.value)


def test_dumps_limits_nesting_and_self_reference():
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError, match="nested more than 128"):
        _core.dumps(deep)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        _core.dumps(loop)
    ok: list = []
    for _ in range(127):
        ok = [ok]
    assert json.loads(_core.dumps(ok)) == ok


def test_floats_are_written_as_the_standard_library_writes_them():
    # Keys are strings: there the text itself counts, exponent and all.
    for value in (1e16, 1e-7, 1.5e300, 2.5e-5, 1e-5, 1.2345678901234568e17, 0.0001, 1e15, -3e-10):
        assert _core.dumps(value) == stdlib_dumps(value)
        assert _core.dumps({value: 1}) == stdlib_dumps({value: 1})


def test_float_repr_survives():
    for value in (1.0, 3.0, 1e16, 1e22, 2.5e-5, math.pi, -123.0):
        assert isinstance(json.loads(_core.dumps(value)), float)
        assert json.loads(_core.dumps(value)) == value


# Texts a publisher may send that serde_json and Python read differently, or that
# Python reads and Rust strings cannot hold.
ODD_TEXTS = [
    "1e999",
    "-1e400",
    "1E+400",
    "1e-400",
    "-1e-400",
    "-0",
    "-0.0",
    '"\\ud800"',
    '"\\udfff"',
    '{"k": "x\\udc00y"}',
    '["\\udbff\\u0041", "\\ud83c\\udf89"]',
    '{"a": 1, "a": 2}',
    "-" + "9" * 30,
    "9" * 4300,
    '{"n": 123456789012345678901234567890.5e3}',
]


@pytest.mark.parametrize("text", ODD_TEXTS, ids=lambda t: t[:30])
def test_loads_reads_odd_texts_as_the_standard_library_does(text):
    ours, theirs = _core.loads(text), json.loads(text)
    assert json.dumps(ours) == json.dumps(theirs)
    assert type(ours) is type(theirs)
    if isinstance(theirs, float):
        assert math.copysign(1, ours) == math.copysign(1, theirs)


def test_loads_refuses_an_integer_python_cannot_hold_with_a_value_error():
    with pytest.raises(ValueError, match="4300 digits"):
        _core.loads("9" * 5000)


def test_loads_reads_common_payloads_without_the_standard_library(monkeypatch):
    # The standard library is the slow path for the few numbers serde_json reads
    # otherwise; text inside strings ("saw-01", ids written in digits) is no number.
    slow_path = []

    def counting_loads(text, *args, **kwargs):
        slow_path.append(text)
        return json_loads(text, *args, **kwargs)

    json_loads = json.loads
    monkeypatch.setattr(json, "loads", counting_loads)
    fast = [
        '{"worker": "saw-01", "status": "activated"}',
        '{"id": "12345678901234567890123", "n": -0.5, "m": -10, "e": -0e1}',
        r'["a \"-0\" in quotes", "\\", -1]',
    ]
    for text in fast:
        assert _core.loads(text) == json_loads(text)
    assert slow_path == []
    for text in ("-0", '{"worker": "saw", "n": -0}', '["-0", ' + "9" * 20 + "]"):
        assert json.dumps(_core.loads(text)) == json.dumps(json_loads(text))
    assert len(slow_path) == 3


def test_repeated_short_keys_are_made_once_and_shared():
    first, second = _core.loads('{"status": 1}'), _core.loads('{"status": 2}')
    assert next(iter(first)) is next(iter(second))
    long_key = "k" * 65
    a, b = _core.loads(json.dumps({long_key: 1})), _core.loads(json.dumps({long_key: 1}))
    assert next(iter(a)) == next(iter(b)) == long_key


def test_many_distinct_keys_decode_as_the_standard_library_does():
    # More keys than the cache has slots: each one replaces another, none is confused.
    document = {f"key{n}": n for n in range(5000)} | {"é": 1, "日本": 2, "a\\u0000b": 3}
    text = json.dumps(document)
    for _ in range(2):
        assert _core.loads(text) == json.loads(text)
