"""Typed messages: dataclasses and pydantic models as payloads, decoded at the receiver."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import subprocess
import sys

import pydantic
import pytest

from message_broker import (
    BrokerError,
    InvalidMessageError,
    Message,
    PayloadValidationError,
    ResponderError,
    TypedMessage,
)
from message_broker.sync import SyncBrokerClient
from message_broker.typed import decode, encode


@dataclasses.dataclass
class Sonar:
    distance: float = 0.001
    horizontal_fov: float = 30.0
    vertical_fov: float = 14.0


class Reading(pydantic.BaseModel):
    sensor: str
    values: list[float]


@dataclasses.dataclass
class AddTwoInts:
    a: int
    b: int


@dataclasses.dataclass
class Sum:
    c: int


class Side(enum.Enum):
    LEFT = "left"
    RIGHT = "right"


@dataclasses.dataclass
class Wheel:
    side: Side
    sonar: Sonar
    readings: list[Reading] = dataclasses.field(default_factory=list)
    label: str | None = None


async def test_a_dataclass_round_trip(make_client):
    client = await make_client("sonar")
    received: asyncio.Queue[TypedMessage] = asyncio.Queue()
    await client.subscribe("sensors.*", received.put_nowait, type=Sonar)
    await client.publish("sensors.sonar", Sonar(distance=2.0), headers={"unit": "m"})
    message = await asyncio.wait_for(received.get(), 10)
    assert isinstance(message, TypedMessage)
    assert message.payload == Sonar(distance=2.0)
    assert message.raw_payload == {"distance": 2.0, "horizontal_fov": 30.0, "vertical_fov": 14.0}
    assert (message.topic, message.sender, message.headers) == (
        "sensors.sonar",
        "sonar",
        {"unit": "m"},
    )
    assert isinstance(message.message, Message)


async def test_a_pydantic_model_round_trip_and_plain_subscribers_see_json(make_client):
    client = await make_client("readings")
    typed: asyncio.Queue[TypedMessage] = asyncio.Queue()
    plain: asyncio.Queue[Message] = asyncio.Queue()
    await client.subscribe("readings.*", typed.put_nowait, type=Reading)
    await client.subscribe("readings.*", plain.put_nowait)
    await client.publish("readings.ir", Reading(sensor="ir", values=[1, 2.5]))
    assert (await asyncio.wait_for(typed.get(), 10)).payload == Reading(
        sensor="ir", values=[1, 2.5]
    )
    assert (await asyncio.wait_for(plain.get(), 10)).payload == {
        "sensor": "ir",
        "values": [1.0, 2.5],
    }


async def test_a_typed_request_and_reply(make_client):
    service = await make_client("adder")
    client = await make_client("caller")
    await service.subscribe(
        "math.add", lambda msg: Sum(msg.payload.a + msg.payload.b), type=AddTwoInts
    )
    assert await client.request("math.add", AddTwoInts(2, 3), response_type=Sum) == Sum(5)

    async def add_async(msg: TypedMessage) -> None:
        msg.respond(Sum(msg.payload.a * 10))  # respond() encodes a dataclass too

    await service.subscribe("math.tens", add_async, type=AddTwoInts)
    assert await client.request("math.tens", AddTwoInts(4, 0), response_type=Sum) == Sum(40)


async def test_a_payload_that_does_not_validate_is_reported_and_never_reaches_the_callback(
    make_client,
):
    errors: list[BrokerError] = []
    client = await make_client("strict", on_error=errors.append)
    received: list[TypedMessage] = []
    marker = asyncio.Event()

    def on_sonar(msg: TypedMessage) -> None:
        received.append(msg)
        if msg.payload.distance == 9.0:
            marker.set()

    subscription = await client.subscribe("sensors.*", on_sonar, type=Sonar)
    await client.publish("sensors.sonar", {"distance": "far"})
    await client.publish("sensors.sonar", [1, 2])
    await client.publish("sensors.sonar", Sonar(9.0))  # the marker, after the bad ones
    await asyncio.wait_for(marker.wait(), 10)
    assert [msg.payload for msg in received] == [Sonar(9.0)]
    assert subscription.active
    assert [type(error) for error in errors] == [PayloadValidationError] * 2
    first = errors[0]
    assert isinstance(first, PayloadValidationError)
    assert "distance" in str(first) and "'sensors.sonar'" in str(first)
    assert (first.topic, first.sender, first.expected, first.payload) == (
        "sensors.sonar",
        "strict",
        Sonar,
        {"distance": "far"},
    )


async def test_the_failure_is_logged_at_the_receiver(make_client, caplog):
    client = await make_client("logged")
    marker = asyncio.Event()
    await client.subscribe("sensors.*", lambda msg: marker.set(), type=Sonar)
    await client.publish("sensors.sonar", {"distance": None})
    await client.publish("sensors.sonar", {})
    await asyncio.wait_for(marker.wait(), 10)
    (record,) = [r for r in caplog.records if "not a valid Sonar" in r.getMessage()]
    assert record.name == "message_broker.client" and record.levelname == "WARNING"
    assert "from 'logged'" in record.getMessage()


async def test_a_request_that_does_not_validate_fails_at_once_for_its_requester(make_client):
    service = await make_client("adder")
    client = await make_client("caller")
    await service.subscribe(
        "math.add", lambda msg: Sum(msg.payload.a + msg.payload.b), type=AddTwoInts
    )
    with pytest.raises(ResponderError) as failed:
        await client.request("math.add", {"a": 1}, timeout=10)
    assert failed.value.error_type == "PayloadValidationError"
    assert "the field b is missing" in failed.value.error_message


async def test_a_reply_that_does_not_validate_raises_at_the_requester(make_client):
    service = await make_client("liar")
    client = await make_client("caller")
    await service.subscribe("math.add", lambda msg: {"c": "five"})
    with pytest.raises(PayloadValidationError, match="expected int at c"):
        await client.request("math.add", AddTwoInts(2, 3), response_type=Sum)


async def test_typed_subscriptions_without_a_callback_and_from_queues(make_client):
    client = await make_client("taker")
    inbox = await client.subscribe("sensors.*", type=Sonar)
    await client.publish("sensors.sonar", Sonar(3.0))
    assert (await inbox.next_msg(timeout=10)).payload == Sonar(3.0)

    # A queue's message that does not validate goes to the dead-letter topic at once:
    # every consumer would refuse it again.
    dead: asyncio.Queue[Message] = asyncio.Queue()
    await client.subscribe("dead_letter.sonars", dead.put_nowait)
    taken: asyncio.Queue[TypedMessage] = asyncio.Queue()
    await client.subscribe("sonars.*", taken.put_nowait, queue="sonars", type=Sonar)
    await client.publish("sonars.front", {"distance": "far"})
    await client.publish("sonars.front", Sonar(4.0))
    assert (await asyncio.wait_for(taken.get(), 10)).payload == Sonar(4.0)
    dead_letter = (await asyncio.wait_for(dead.get(), 10)).payload
    assert (dead_letter["payload"], dead_letter["reason"]) == ({"distance": "far"}, "rejected")
    assert dead_letter["delivery_count"] == 1


def test_the_synchronous_client_decodes_too(broker):
    with SyncBrokerClient("sync-typed", "127.0.0.1", broker.port) as client:
        client.subscribe(
            "math.add", lambda msg: Sum(msg.payload.a + msg.payload.b), type=AddTwoInts
        )
        assert client.request("math.add", AddTwoInts(20, 22), response_type=Sum) == Sum(42)
        inbox = client.subscribe("sensors.*", type=Sonar)
        client.publish("sensors.sonar", Sonar(5.0))
        assert inbox.next_msg(timeout=10).payload == Sonar(5.0)


def test_nested_dataclasses_enums_models_and_optionals_encode_and_decode():
    wheel = Wheel(Side.LEFT, Sonar(1.0), [Reading(sensor="ir", values=[0.5])])
    encoded = encode(wheel)
    assert encoded == {
        "side": "left",
        "sonar": {"distance": 1.0, "horizontal_fov": 30.0, "vertical_fov": 14.0},
        "readings": [{"sensor": "ir", "values": [0.5]}],
        "label": None,
    }
    assert decode(encoded, Wheel) == wheel
    assert decode([1, 2], list[int]) == [1, 2]
    assert decode({"sonar": {}, "side": "right"}, Wheel) == Wheel(Side.RIGHT, Sonar())
    assert encode({"plain": 1}) == {"plain": 1}


@pytest.mark.parametrize(
    "payload,complaint",
    [
        ({"side": "up", "sonar": {}}, "'up' at side is not a Side"),
        ({"side": "left"}, "the field sonar is missing"),
        ({"side": "left", "sonar": {"distance": True}}, "expected float at sonar.distance"),
        ({"side": "left", "sonar": {}, "label": 7}, "expected str at label, got 7"),
        (
            {"side": "left", "sonar": {}, "readings": [{"sensor": "ir"}]},
            "readings[0].values: Field required",
        ),
        ("wheel", "expected an object, got 'wheel'"),
    ],
)
def test_what_does_not_validate_is_said_precisely(payload, complaint):
    with pytest.raises(PayloadValidationError) as invalid:
        decode(payload, Wheel, "wheels.front")
    assert str(invalid.value).startswith("the payload on 'wheels.front' is not a valid Wheel: ")
    assert complaint in str(invalid.value)


def test_pydantic_stays_optional():
    program = (
        "import sys, dataclasses\n"
        "import message_broker, message_broker.typed, message_broker.actions\n"
        "from message_broker.typed import decode, encode\n"
        "P = dataclasses.make_dataclass('P', [('x', int)])\n"
        "assert decode(encode(P(1)), P) == P(1)\n"
        "assert 'pydantic' not in sys.modules, 'pydantic was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


class Opaque(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    thing: object


async def test_a_model_that_cannot_be_dumped_is_an_invalid_message(make_client):
    client = await make_client("p")
    unserializable = Opaque(thing=object())
    with pytest.raises(InvalidMessageError):
        await client.publish("readings", unserializable)
    with pytest.raises(InvalidMessageError):
        client.publish_nowait("readings", unserializable)
    with pytest.raises(InvalidMessageError):
        await client.publish("readings", unserializable, qos=1)
