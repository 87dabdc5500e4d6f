"""Typed messages: dataclasses and pydantic models as payloads.

A payload that is a dataclass instance or a pydantic model is sent as the JSON object
of its fields (:func:`encode`); ``subscribe(..., type=Model)``, ``request(...,
response_type=Model)`` and the actions turn a received payload back into the type
(:func:`decode`), or report a :class:`~message_broker.PayloadValidationError` saying
which field is wrong. pydantic is optional: this module never imports it, it only
recognises models of a pydantic the program has imported itself.

>>> @dataclasses.dataclass
... class Sonar:
...     distance: float
>>> await client.publish("sensors.sonar", Sonar(2.0))          # {"distance": 2.0}
>>> await client.subscribe("sensors.*", on_sonar, type=Sonar)  # msg.payload is a Sonar
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from message_broker.errors import BrokerError, PayloadValidationError
from message_broker.message import Message

__all__ = ["TypedMessage", "decode", "encode"]

logger = logging.getLogger("message_broker.client")

T = TypeVar("T")

# Payloads published as they are: checked first, so that plain payloads pay one lookup.
# Payloads of these types are sent as they are (the extension writes them as JSON).
PLAIN_TYPES = frozenset({dict, list, str, int, float, bool, type(None)})


def _pydantic_model_class() -> type | None:
    """pydantic's ``BaseModel`` when the program has imported pydantic, else ``None``:
    a model can only exist once pydantic is imported, so it is never imported here."""
    pydantic = sys.modules.get("pydantic")
    return getattr(pydantic, "BaseModel", None) if pydantic is not None else None


def encode(value: Any) -> Any:
    """The JSON value of a payload: a dataclass instance becomes the dict of its fields
    (nested dataclasses, enums and models in them too), a pydantic model
    ``model.model_dump(mode="json")``; any other value is returned as it is (a plain
    dict or list is not searched for dataclasses: the payload itself is the model)."""
    if type(value) in PLAIN_TYPES:
        return value
    return _encode_deep(value)


def _encode_deep(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _encode_deep(item) for name, item in _fields_of(value).items()}
    model = _pydantic_model_class()
    if model is not None and isinstance(value, model):
        return value.model_dump(mode="json")  # type: ignore[attr-defined]
    if isinstance(value, (list, tuple)):
        return [_encode_deep(item) for item in value]
    if isinstance(value, dict):
        return {key: _encode_deep(item) for key, item in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _fields_of(instance: Any) -> dict[str, Any]:
    # Not dataclasses.asdict: that deep-copies every value, and would not encode a
    # pydantic model or an enum inside the dataclass.
    return {field.name: getattr(instance, field.name) for field in dataclasses.fields(instance)}


def decode(payload: Any, expected: type[T] | Any, topic: str = "") -> T:
    """``payload`` (a JSON value) as an instance of ``expected``: a pydantic model
    (``model_validate``), a dataclass (its fields checked against their annotations,
    nested dataclasses, lists, dicts, ``Optional``, unions, enums and literals
    included; keys it does not declare are ignored, as pydantic does), or a plain
    annotation such as ``int`` or ``list[str]``. Raises
    :class:`~message_broker.PayloadValidationError` naming ``topic`` and what is wrong."""
    try:
        return _convert(payload, expected, "")  # type: ignore[no-any-return]
    except _Invalid as invalid:
        raise PayloadValidationError(
            f"the payload on {topic!r} is not a valid {_name(expected)}: {invalid}",
            topic=topic,
            expected=expected,
            payload=payload,
        ) from None


class _Invalid(Exception):
    """Why a value does not fit its annotation, with the path to it."""


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)


def _at(path: str) -> str:
    return f" at {path}" if path else ""


def _convert(value: Any, annotation: Any, path: str) -> Any:
    if annotation is Any or annotation is object:
        return value
    if annotation is None or annotation is type(None):
        if value is None:
            return None
        raise _Invalid(f"expected null{_at(path)}, got {value!r}")
    origin = typing.get_origin(annotation)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        reasons = []
        for option in typing.get_args(annotation):
            try:
                return _convert(value, option, path)
            except _Invalid as invalid:
                reasons.append(str(invalid))
        raise _Invalid("; or ".join(reasons))
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise _Invalid(f"expected one of {typing.get_args(annotation)}{_at(path)}, got {value!r}")
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            raise _Invalid(f"expected a list{_at(path)}, got {value!r}")
        arguments = typing.get_args(annotation)
        kind = origin or annotation
        if kind is tuple and arguments and arguments[-1] is not Ellipsis:
            if len(arguments) != len(value):
                raise _Invalid(f"expected {len(arguments)} items{_at(path)}, got {len(value)}")
            return tuple(
                _convert(item, argument, f"{path}[{index}]")
                for index, (item, argument) in enumerate(zip(arguments, value, strict=True))
            )
        item_type = arguments[0] if arguments else Any
        items = [_convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
        return items if kind is list else kind(items)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _Invalid(f"expected an object{_at(path)}, got {value!r}")
        arguments = typing.get_args(annotation)
        value_type = arguments[1] if len(arguments) == 2 else Any
        return {key: _convert(item, value_type, f"{path}.{key}") for key, item in value.items()}
    if not isinstance(annotation, type):
        return value  # an annotation this module does not check (a TypeVar, a NewType)
    model = _pydantic_model_class()
    if model is not None and issubclass(annotation, model):
        return _validate_model(annotation, value, path)
    if dataclasses.is_dataclass(annotation):
        return _dataclass(annotation, value, path)
    if issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            raise _Invalid(f"{value!r}{_at(path)} is not a {annotation.__name__}") from None
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, annotation):
        return value
    raise _Invalid(f"expected {annotation.__name__}{_at(path)}, got {value!r}")


def _validate_model(model: Any, value: Any, path: str) -> Any:
    try:
        return model.model_validate(value)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        problems = getattr(error, "errors", None)
        if problems is None:
            raise _Invalid(f"{error}{_at(path)}") from None
        # One line per message: pydantic's own text spans several, with a web link.
        described = [
            f"{'.'.join(str(part) for part in (path, *problem['loc']) if part != '')}: "
            f"{problem['msg']}"
            for problem in problems()
        ]
        raise _Invalid("; ".join(described)) from None


def _dataclass(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise _Invalid(f"expected an object{_at(path)}, got {value!r}")
    hints = typing.get_type_hints(cls)
    arguments = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        where = f"{path}.{field.name}" if path else field.name
        if field.name in value:
            arguments[field.name] = _convert(value[field.name], hints[field.name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _Invalid(f"the field {where} is missing")
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:  # what the class's __post_init__ refuses
        raise _Invalid(f"{error}{_at(path)}") from None


class TypedMessage:
    """What a callback subscribed with ``type=`` receives: the :class:`Message`, with
    ``payload`` decoded into the type. Every other attribute and method (``topic``,
    ``headers``, ``ack()``, ``respond()``...) is the message's own; ``raw_payload`` is
    the payload as it came and ``message`` the :class:`Message` itself."""

    __slots__ = ("message", "payload")

    def __init__(self, message: Message, payload: Any) -> None:
        self.message = message
        self.payload = payload

    @property
    def raw_payload(self) -> Any:
        """The payload as it came, before decoding."""
        return self.message.payload

    def respond(self, value: Any) -> None:
        """Answers the request with ``value``, a dataclass or pydantic model included
        (see :meth:`Message.respond`)."""
        self.message.respond(encode(value))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)

    def __repr__(self) -> str:
        return f"<TypedMessage {self.message.topic!r} {self.payload!r}>"


def decoding(
    callback: Callable[[Any], Any],
    expected: Any,
    report: Callable[[PayloadValidationError], None],
) -> Callable[[Message], Any]:
    """``callback`` called with a :class:`TypedMessage` whose payload is decoded into
    ``expected``. A message whose payload does not validate never reaches it: the error
    goes to ``report`` (which logs it); a request is answered with it, so its requester
    fails at once with ``ResponderError``; one from a queue goes to the queue's
    dead-letter topic, since every consumer would refuse it again."""

    def deliver(message: Message) -> Any:
        try:
            value = decode(message.payload, expected, message.topic)
        except PayloadValidationError as error:
            error.sender = message.sender
            report(error)
            if message.reply_to is not None and not message.responded:
                with contextlib.suppress(BrokerError, ValueError, ConnectionError, BlockingIOError):
                    message._respond_error(type(error).__name__, str(error))
            message.nack(requeue=False)
            return None
        return callback(TypedMessage(message, value))

    return deliver
