"""Delivery guarantees: queue groups, durable queues, acknowledgements, redelivery,
dead letters, ttl, retained messages, last will and persistence across restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from message_broker import (
    BrokerClient,
    BrokerConfig,
    ConfigError,
    InvalidMessageError,
    Message,
    MessageBroker,
    QueueFullError,
    StorageError,
)

from support import SUPPORT
from support.readme import readme_blocks
from support.waiting import eventually

CHILD = str(SUPPORT / "delivery_child.py")


@pytest.fixture
def connect(start_broker):
    """Connects clients to a broker (the first one started unless given)."""
    clients: list[BrokerClient] = []
    brokers: list[MessageBroker] = []

    async def make(client_id: str, broker: MessageBroker | None = None, **options):
        if broker is None:
            if not brokers:
                brokers.append(start_broker())
            broker = brokers[0]
        client = BrokerClient(client_id, host="127.0.0.1", port=broker.port, **options)
        assert await client.connect()
        clients.append(client)
        return client

    yield make


async def status(client: BrokerClient) -> dict:
    return await client.request("status", {})


async def queue_status(client: BrokerClient, name: str) -> dict:
    queues = {q["name"]: q for q in (await status(client))["queues"]}
    return queues[name]


async def settled_queue(client: BrokerClient, name: str, timeout: float = 10.0) -> dict:
    """The queue's status once nothing is in flight (acknowledgements travel on the
    consumer's connection, not on the one asking)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        queue = await queue_status(client, name)
        if queue["in_flight"] == 0:
            return queue
        assert asyncio.get_running_loop().time() < deadline, queue
        await asyncio.sleep(0.01)


class Child:
    """A client process (tests/support/delivery_child.py) whose output lines are read here."""

    def __init__(self, *args: object) -> None:
        self.process = subprocess.Popen(
            [sys.executable, CHILD, *map(str, args)],
            stdout=subprocess.PIPE,
            text=True,
        )

    async def line(self, timeout: float = 20.0) -> str:
        assert self.process.stdout is not None
        read = asyncio.to_thread(self.process.stdout.readline)
        line = await asyncio.wait_for(read, timeout)
        assert line, f"the child exited with {self.process.poll()}"
        return line.strip()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def child():
    children: list[Child] = []

    def start(*args: object) -> Child:
        children.append(Child(*args))
        return children[-1]

    yield start
    for c in children:
        c.close()


# -- queue groups -----------------------------------------------------------------------


async def test_queue_group_gives_each_message_to_exactly_one_member_fairly(connect):
    members = [await connect(f"worker{i}") for i in range(3)]
    watcher = await connect("watcher")
    pub = await connect("pub")
    got: dict[str, list[int]] = {m.client_id: [] for m in members}
    watched: list[int] = []
    for member in members:
        sink = got[member.client_id]
        await member.subscribe("jobs.*", lambda m, sink=sink: sink.append(m.payload), queue="w")
    await watcher.subscribe("jobs.*", lambda m: watched.append(m.payload))

    for n in range(300):
        await pub.publish("jobs.new", n)
    await eventually(lambda: sum(map(len, got.values())) == 300 and len(watched) == 300)

    everything = sorted(n for sink in got.values() for n in sink)
    assert everything == list(range(300)), "each message exactly once across the group"
    assert watched == list(range(300)), "a plain subscriber still gets its own copy"
    assert all(len(sink) == 100 for sink in got.values()), {k: len(v) for k, v in got.items()}
    group = await settled_queue(pub, "w")
    assert (group["durable"], group["consumers"], group["acked"]) == (False, 3, 300)


async def test_a_queue_group_goes_away_with_its_last_member(connect):
    member = await connect("member")
    pub = await connect("pub")
    await member.subscribe("jobs.*", lambda m: None, queue="w")
    assert [q["name"] for q in (await status(pub))["queues"]] == ["w"]
    assert await member.unsubscribe(queue="w") == ["w"]
    assert (await status(pub))["queues"] == []
    assert await member.unsubscribe(queue="w") == []


async def test_queue_options_are_checked(connect):
    client = await connect("c")
    with pytest.raises(ValueError, match="queue"):
        await client.subscribe("a", print, prefetch=5)
    with pytest.raises(InvalidMessageError, match="prefetch"):
        await client.subscribe("a", print, queue="q", prefetch=0)
    with pytest.raises(InvalidMessageError, match="queue name"):
        await client.subscribe("a", print, queue="bad name")
    await client.subscribe("a", print, queue="q", durable=True)
    other = await connect("other")
    with pytest.raises(InvalidMessageError, match="durable"):
        await other.subscribe("a", print, queue="q")
    with pytest.raises(InvalidMessageError, match="max_length"):
        await other.subscribe("a", print, queue="q", durable=True, max_length=3)
    with pytest.raises(InvalidMessageError, match="already consumes"):
        await client.subscribe("b", print, queue="q", durable=True)


# -- durable queues, acknowledgements, redelivery, dead letters ------------------------


async def test_durable_queue_keeps_messages_while_nobody_consumes_then_drains_in_order(connect):
    consumer = await connect("consumer")
    pub = await connect("pub")
    await consumer.subscribe("orders.*", print, queue="orders", durable=True)
    await consumer.unsubscribe(queue="orders")
    for n in range(50):
        await pub.publish("orders.new", n, qos=1)
    held = await queue_status(pub, "orders")
    assert (held["depth"], held["consumers"], held["in_flight"]) == (50, 0, 0)

    got: list[Message] = []
    await consumer.subscribe("orders.*", got.append, queue="orders", durable=True)
    await eventually(lambda: len(got) == 50)
    assert [m.payload for m in got] == list(range(50))
    assert {(m.queue, m.delivery_count, m.qos) for m in got} == {("orders", 1, 1)}
    drained = await settled_queue(pub, "orders")
    assert (drained["depth"], drained["acked"]) == (0, 50)


async def test_a_durable_subscription_without_a_name_belongs_to_the_client(connect):
    app = await connect("app7")
    pub = await connect("pub")
    got: list[int] = []
    await app.subscribe("alerts.#", lambda m: got.append(m.payload), durable=True)
    await app.disconnect()
    await pub.publish("alerts.disk", 1, qos=1)
    assert (await queue_status(pub, "app7"))["depth"] == 1
    back = await connect("app7")
    await back.subscribe("alerts.#", lambda m: got.append(m.payload), durable=True)
    await eventually(lambda: got == [1])


async def test_ack_and_nack_by_hand(connect):
    consumer = await connect("consumer")
    pub = await connect("pub")
    got: list[Message] = []
    await consumer.subscribe("t", got.append, queue="q", durable=True)
    # Settled by hand inside the callback: the automatic ack leaves it alone.
    await pub.publish("t", "first", qos=1)
    await eventually(lambda: len(got) == 1)

    async def handle(message: Message) -> None:
        got.append(message)
        if message.delivery_count == 1:
            message.nack(requeue=True)
        else:
            message.ack()

    await consumer.unsubscribe(queue="q")
    await consumer.subscribe("t", handle, queue="q", durable=True)
    await pub.publish("t", "second", qos=1)
    await eventually(lambda: len(got) == 3)
    first, second = got[1], got[2]
    assert (first.payload, first.delivery_count, first.redelivered) == ("second", 1, False)
    assert (second.payload, second.delivery_count, second.redelivered) == ("second", 2, True)
    q = await settled_queue(pub, "q")
    assert (q["depth"], q["in_flight"], q["acked"], q["redelivered"]) == (0, 0, 2, 1)


async def test_a_failing_callback_leads_to_redelivery_then_the_dead_letter_topic(connect):
    consumer = await connect("consumer")
    pub = await connect("pub")
    watcher = await connect("watcher")
    letters: list[Message] = []
    await watcher.subscribe("dead_letter.#", letters.append)
    attempts: list[int] = []

    def fail(message: Message) -> None:
        attempts.append(message.delivery_count)
        raise RuntimeError("cannot handle this")

    await consumer.subscribe("jobs.*", fail, queue="jobs", durable=True, max_deliveries=3)
    await pub.publish("jobs.bad", {"n": 1}, qos=1)
    await eventually(lambda: letters)
    assert attempts == [1, 2, 3]
    letter = letters[0]
    assert letter.topic == "dead_letter.jobs"
    assert letter.payload["reason"] == "max_deliveries"
    assert (letter.payload["payload"], letter.payload["topic"]) == ({"n": 1}, "jobs.bad")
    assert letter.payload["delivery_count"] == 3
    q = await settled_queue(pub, "jobs")
    assert (q["depth"], q["in_flight"], q["dead_lettered"]) == (0, 0, 1)


async def test_nack_without_requeue_dead_letters_to_a_chosen_topic(connect):
    consumer = await connect("consumer")
    pub = await connect("pub")
    letters: list[Message] = []
    await pub.subscribe("rejected.jobs", letters.append)
    await consumer.subscribe(
        "jobs.*",
        lambda m: m.nack(requeue=False),
        queue="jobs",
        durable=True,
        dead_letter_topic="rejected.jobs",
    )
    await pub.publish("jobs.x", 5, qos=1)
    await eventually(lambda: letters)
    assert (letters[0].payload["reason"], letters[0].payload["payload"]) == ("rejected", 5)


async def test_messages_of_a_killed_consumer_are_redelivered(connect, child):
    pub = await connect("pub")
    holder = child("hold", pub.port, "work")
    assert await holder.line() == "ready"
    for n in range(3):
        await pub.publish("work.item", n, qos=1)
    assert [await holder.line() for _ in range(3)] == ["got 0", "got 1", "got 2"]
    assert (await queue_status(pub, "work"))["in_flight"] == 3
    holder.kill()

    other = await connect("other")
    got: list[Message] = []
    await other.subscribe("work.*", got.append, queue="work", durable=True)
    await eventually(lambda: len(got) == 3)
    assert [(m.payload, m.delivery_count) for m in got] == [(0, 2), (1, 2), (2, 2)]
    q = await settled_queue(pub, "work")
    assert (q["redelivered"], q["acked"]) == (3, 3)


async def test_a_full_queue_refuses_qos1_and_counts_qos0(connect):
    consumer = await connect("consumer")
    pub = await connect("pub")
    plain: list[int] = []
    await pub.subscribe("t", lambda m: plain.append(m.payload))
    await consumer.subscribe("t", print, queue="small", durable=True, max_length=2)
    await consumer.unsubscribe(queue="small")
    await pub.publish("t", 1, qos=1)
    await pub.publish("t", 2, qos=1)
    with pytest.raises(QueueFullError, match="small"):
        await pub.publish("t", 3, qos=1)
    await pub.publish("t", 4)
    await eventually(lambda: len(plain) == 4)
    q = await queue_status(pub, "small")
    assert (q["depth"], q["dropped"]) == (2, 2)


async def test_delete_queue(connect):
    consumer = await connect("consumer")
    await consumer.subscribe("t", print, queue="gone", durable=True)
    await consumer.unsubscribe(queue="gone")
    await consumer.publish("t", 1, qos=1)
    assert await consumer.delete_queue("gone") == 1
    assert (await status(consumer))["queues"] == []
    with pytest.raises(InvalidMessageError, match="no queue"):
        await consumer.delete_queue("gone")


async def test_purge_queue_drops_waiting_messages_and_keeps_the_queue(connect):
    consumer = await connect("consumer")
    pub = await connect("pub")
    await consumer.subscribe("t", print, queue="backlog", durable=True)
    await consumer.unsubscribe(queue="backlog")
    for n in range(3):
        await pub.publish("t", n, qos=1)
    assert await pub.purge_queue("backlog") == 3
    q = await queue_status(pub, "backlog")
    assert (q["depth"], q["patterns"]) == (0, ["t"])
    # Still bound: what is published next is kept, and delivered.
    got: list[Message] = []
    await pub.publish("t", "after", qos=1)
    await consumer.subscribe("t", got.append, queue="backlog", durable=True)
    await eventually(lambda: got)
    assert [m.payload for m in got] == ["after"]
    with pytest.raises(InvalidMessageError, match="no queue"):
        await pub.purge_queue("nonesuch")


# -- ttl --------------------------------------------------------------------------------


async def test_expired_messages_are_never_delivered_and_are_counted(connect):
    consumer = await connect("consumer")
    pub = await connect("pub")
    letters: list[Message] = []
    await pub.subscribe("dead_letter.#", letters.append)
    await consumer.subscribe("t", print, queue="q", durable=True)
    await consumer.unsubscribe(queue="q")
    await pub.publish("t", "short", qos=1, ttl=0.2)
    await pub.publish("t", "long", qos=1, ttl=60)
    await asyncio.sleep(0.4)  # "short" expires
    got: list[Message] = []
    markers: list[Message] = []

    def consume(message: Message) -> None:
        (markers if message.payload == "marker" else got).append(message)

    await consumer.subscribe("t", consume, queue="q", durable=True)
    await eventually(lambda: got and letters)
    # The queue delivers in order: "short" would come before a message published now.
    await pub.publish("t", "marker", qos=1)
    await eventually(lambda: markers)
    assert [m.payload for m in got] == ["long"]
    assert (letters[0].payload["reason"], letters[0].payload["payload"]) == ("expired", "short")
    s = await status(pub)
    assert s["messages"]["expired"] == 1
    assert s["queues"][0]["expired"] == 1


# -- retained messages and last will ----------------------------------------------------


async def test_retained_message_reaches_late_subscribers_first_and_can_be_cleared(connect):
    pub = await connect("pub")
    await pub.publish("home.temp", {"c": 19}, retain=True)
    await pub.publish("home.temp", {"c": 21}, retain=True, qos=1)
    await pub.publish("home.door", "open", retain=True, qos=1)

    late = await connect("late")
    got: list[Message] = []
    await late.subscribe("home.*", got.append)
    await eventually(lambda: len(got) == 2)
    assert sorted((m.topic, str(m.payload), m.retained) for m in got) == [
        ("home.door", "open", True),
        ("home.temp", "{'c': 21}", True),
    ]
    await pub.publish("home.temp", {"c": 22})
    await eventually(lambda: len(got) == 3)
    assert (got[2].payload, got[2].retained) == ({"c": 22}, False), "live messages are not"
    assert (await status(pub))["messages"]["retained"] == 2

    await pub.publish("home.temp", None, retain=True, qos=1)
    await pub.publish("home.door", "", retain=True, qos=1)
    later = await connect("later")
    seen: list[Message] = []
    await later.subscribe("home.*", seen.append)
    await later.publish("home.probe", 1)
    await eventually(lambda: seen)
    assert [m.topic for m in seen] == ["home.probe"], "cleared topics deliver nothing"
    assert (await status(pub))["messages"]["retained"] == 0


async def test_last_will_on_abrupt_close_but_not_on_disconnect(connect, child):
    watcher = await connect("watcher")
    heard: list[Message] = []
    await watcher.subscribe("clients.willy.status", heard.append)
    gone: list[Message] = []
    await watcher.subscribe("system.client.disconnected", gone.append)
    markers: list[Message] = []
    await watcher.subscribe("test.marker", markers.append)

    clean = child("will", watcher.port, "clean")
    assert [await clean.line(), await clean.line()] == ["ready", "done"]
    await eventually(lambda: heard)
    # The broker publishes a will as the connection ends, right after announcing the
    # disconnection: a marker published once the announcement is here comes after it.
    await eventually(lambda: any(m.payload["client_id"] == "willy" for m in gone))
    await watcher.publish("test.marker", None)
    await eventually(lambda: markers)
    assert [m.payload for m in heard] == [{"online": True}], "no will after disconnect()"

    crash = child("will", watcher.port, "crash")
    assert await crash.line() == "ready"
    await eventually(lambda: len(heard) == 2)
    crash.kill()
    await eventually(lambda: len(heard) == 3)
    assert heard[2].payload == {"online": False}
    assert heard[2].sender == "willy"
    late: list[Message] = []
    other = await connect("other")
    await other.subscribe("clients.*.status", late.append)
    await eventually(lambda: late)
    assert (late[0].payload, late[0].retained) == ({"online": False}, True)


async def test_a_bad_will_is_refused_at_the_call(connect):
    client = BrokerClient("w", host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="topic"):
        await client.connect(will={"payload": 1})
    with pytest.raises(InvalidMessageError, match="qos"):
        await client.connect(will={"topic": "a", "qos": 3})


# -- persistence -----------------------------------------------------------------------


async def test_a_restart_restores_queues_unacknowledged_and_retained_messages(
    start_broker, tmp_path
):
    data_dir = tmp_path / "data"
    broker = start_broker(data_dir=str(data_dir))
    port = broker.port
    consumer = BrokerClient("consumer", host="127.0.0.1", port=port, reconnect=False)
    assert await consumer.connect()
    held: list[Message] = []
    hold = asyncio.Event()

    async def keep(message: Message) -> None:
        held.append(message)
        await hold.wait()

    await consumer.subscribe("jobs.*", keep, queue="jobs", durable=True, prefetch=2)
    pub = BrokerClient("pub", host="127.0.0.1", port=port, reconnect=False)
    assert await pub.connect()
    for n in range(5):
        await pub.publish("jobs.x", n, qos=1)
    await pub.publish("cfg.mode", "auto", retain=True, qos=1)
    await eventually(lambda: len(held) == 2)
    await pub.disconnect()
    await consumer.disconnect()
    broker.stop_sync()

    again = start_broker(data_dir=str(data_dir))
    client = BrokerClient("after", host="127.0.0.1", port=again.port)
    assert await client.connect()
    q = await queue_status(client, "jobs")
    assert (q["depth"], q["consumers"], q["patterns"]) == (5, 0, ["jobs.*"])
    got: list[Message] = []
    await client.subscribe("jobs.*", got.append, queue="jobs", durable=True)
    await client.subscribe("cfg.*", got.append)
    await eventually(lambda: len(got) == 6)
    from_queue = [(m.payload, m.delivery_count) for m in got if m.queue]
    assert sorted(from_queue) == [(0, 2), (1, 2), (2, 1), (3, 1), (4, 1)]
    assert [(m.payload, m.retained) for m in got if not m.queue] == [("auto", True)]
    await client.disconnect()


async def test_configured_queues_exist_from_the_start(start_broker, tmp_path):
    queues = [{"name": "audit", "patterns": ["anything.#"], "max_length": 10, "max_deliveries": 2}]
    broker = start_broker(queues=queues)
    client = BrokerClient("c", host="127.0.0.1", port=broker.port)
    assert await client.connect()
    await client.publish("anything.at.all", 1, qos=1)
    q = await queue_status(client, "audit")
    assert (q["depth"], q["max_length"], q["max_deliveries"], q["durable"]) == (1, 10, 2, True)
    await client.disconnect()


def test_bad_queue_configuration_is_refused():
    from message_broker import BrokerConfig

    for queues, match in [
        ([{"name": "a b", "patterns": ["x"]}], "queue name"),
        ([{"name": "a", "patterns": ["x.#.y"]}], "#"),
        ([{"name": "a", "patterns": []}, {"name": "a", "patterns": []}], "twice"),
        ([{"name": "a", "patterns": ["x"], "colour": 1}], "colour"),
        ([{"name": "a", "patterns": ["x"], "durable": False}], "durable"),
    ]:
        with pytest.raises(ValueError, match=match):
            MessageBroker(BrokerConfig(queues=queues))


def test_a_damaged_store_is_a_clear_startup_error(tmp_path):
    from message_broker import BrokerConfig

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "broker.db").write_bytes(b"this is not a database" * 500)
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0, data_dir=str(data_dir)))
    with pytest.raises(OSError, match="damaged"):
        broker.start_sync()
    assert not broker.is_running
    assert (data_dir / "broker.db").read_bytes().startswith(b"this is not"), "left untouched"


def test_an_unusable_data_dir_is_a_clear_startup_error(tmp_path):
    from message_broker import BrokerConfig

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0, data_dir=str(not_a_dir / "d")))
    with pytest.raises(OSError, match="data_dir"):
        broker.start_sync()


def test_two_brokers_cannot_share_a_data_dir(start_broker, tmp_path):
    from message_broker import BrokerConfig

    start_broker(data_dir=str(tmp_path))
    second = MessageBroker(BrokerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path)))
    with pytest.raises(OSError, match="in use"):
        second.start_sync()


def test_a_store_from_another_schema_is_refused(tmp_path):
    from message_broker import BrokerConfig

    db = sqlite3.connect(tmp_path / "broker.db")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema', 99)")
    db.commit()
    db.close()
    broker = MessageBroker(BrokerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path)))
    with pytest.raises(OSError, match="another version"):
        broker.start_sync()


def test_the_command_reports_a_damaged_store_and_exits_1(tmp_path):
    (tmp_path / "broker.db").write_bytes(b"\x00garbage" * 1000)
    result = subprocess.run(
        [sys.executable, "-m", "message_broker", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 1, result
    assert "damaged" in result.stderr
    assert "Traceback" not in result.stderr


async def test_the_readme_example_runs_as_written():
    """The "Delivery guarantees" example, on the default host and port."""
    (example,) = readme_blocks("## Delivery guarantees", "python")
    broker = MessageBroker()
    await broker.start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", example, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await broker.stop()
    assert process.returncode == 0
    assert out.decode().split("\n")[0] == "{'id': 7} 1"


async def test_confirm_on_ack_confirms_a_qos1_publish_once_a_consumer_acknowledged_it(
    start_broker, connect
) -> None:
    broker = start_broker(
        queues=[{"name": "audit", "patterns": ["audit.#"], "confirm_on_ack": 1.0}]
    )
    consumer = await connect("consumer", broker)
    publisher = await connect("publisher", broker)
    taken = await consumer.subscribe("audit.#", queue="audit", durable=True)

    confirmed = asyncio.create_task(publisher.publish("audit.login", {"user": "ada"}, qos=1))
    msg = await taken.next_msg(timeout=5)
    await asyncio.sleep(0.2)
    assert not confirmed.done(), "confirmed before the consumer acknowledged it"
    msg.ack()
    assert await asyncio.wait_for(confirmed, timeout=5) == msg.id

    # Never acknowledged in time: the publisher hears so, and the message stays queued.
    not_confirmed = r"is not confirmed: .*within 1(\.0)? s; it stays queued"
    with pytest.raises(StorageError, match=not_confirmed):
        await publisher.publish("audit.logout", {"user": "ada"}, qos=1)
    held = await taken.next_msg(timeout=5)
    assert held.payload == {"user": "ada"} and held.topic == "audit.logout"


def test_confirm_on_ack_must_be_a_sensible_time() -> None:
    queue = {"name": "audit", "patterns": ["audit.#"], "confirm_on_ack": 0}
    with pytest.raises(ConfigError, match="confirm_on_ack must be more than 0"):
        BrokerConfig.from_dict({"queues": [queue]})
