"""A stand-in for an AutoHotkey script under AHKBridge: speaks the bridge's lines on
its standard streams. The first argument picks what it does."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

ids = itertools.count(1)
inbox: list[dict] = []


def send(message: dict) -> None:
    sys.stdout.write(json.dumps(message, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def read() -> dict | None:
    line = sys.stdin.readline()
    return json.loads(line) if line else None


def call(method: str, **params: object) -> dict:
    call_id = next(ids)
    send({"jsonrpc": "2.0", "method": method, "params": params, "id": call_id})
    while True:
        answer = read()
        if answer is None:
            sys.exit(5)
        if answer.get("method") == "message":
            inbox.append(answer["params"])
        elif answer.get("id") == call_id:
            return answer


def receive() -> dict | None:
    if inbox:
        return inbox.pop(0)
    while (incoming := read()) is not None:
        if incoming.get("method") == "message":
            return incoming["params"]
    return None


def echo() -> None:
    call("subscribe", patterns=["child.in", "child.svc"])
    call("publish", topic="child.ready", payload={"args": sys.argv[2:]})
    while (message := receive()) is not None:
        if message.get("reply_to"):
            call("publish", topic=message["reply_to"], payload={"echo": message["payload"]})
        elif message["payload"] == "ask":
            answer = call("request", topic="py.svc", payload={"n": 2}, timeout=5)
            missing = call("request", topic="nobody.here", payload=None, timeout=5)
            call("publish", topic="child.out", payload={"answer": answer, "missing": missing})
        elif message["payload"] == "quit":
            call("disconnect")
            return
        else:
            call("publish", topic="child.out", payload=message)


def garbage() -> None:
    sys.stdout.write("hello, this is not JSON\n")
    sys.stdout.write('{"no": "method"}\n')
    sys.stdout.flush()
    invalid = read()
    answers = {
        "invalid": invalid,
        "unknown": call("frobnicate"),
        "bad_params": call("publish", topic=7),
        "reserved": call("publish", topic="system.mine", payload=1),
    }
    call("publish", topic="child.answers", payload=answers)


def crash() -> None:
    call("publish", topic="child.crashing", payload="now")
    sys.stderr.write("boom: something went wrong\n")
    sys.exit(3)


def stubborn() -> None:
    # Ignores the end of its input: only terminate() stops it.
    call("publish", topic="child.ready", payload="stubborn")
    while True:
        time.sleep(0.1)


def stall() -> None:
    # Reads nothing until the file named by its second argument appears (a minute at
    # most), then counts what reached it, up to a child.end message.
    call("subscribe", patterns=["child.flood", "child.end"])
    call("publish", topic="child.ready", payload="stalling")
    go = Path(sys.argv[2])
    for _ in range(1200):
        if go.exists():
            break
        time.sleep(0.05)
    numbers = []
    while (message := receive()) is not None and message["topic"] != "child.end":
        numbers.append(message["payload"]["n"])
    in_order = numbers == sorted(set(numbers))
    call("publish", topic="child.counted", payload={"count": len(numbers), "in_order": in_order})


modes = {"echo": echo, "garbage": garbage, "crash": crash, "stubborn": stubborn, "stall": stall}
modes[sys.argv[1]]()
