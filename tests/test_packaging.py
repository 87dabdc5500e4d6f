"""What a new user meets first: the hello example, the package's metadata and files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


def test_the_hello_example_runs_as_written():
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / "hello.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "greetings.world: {'text': 'hello'}",
        "21 doubled is 42",
    ]


def test_importing_the_package_leaves_the_client_side_until_it_is_named():
    script = """
import sys
import message_broker
assert "asyncio" not in sys.modules, "asyncio imported with the package"
assert "message_broker.client" not in sys.modules
from message_broker import ActionClient, BrokerClient, Event, NodeMonitor, TypedMessage
assert BrokerClient.__module__ == "message_broker.client"
assert "asyncio" in sys.modules
missing = [name for name in message_broker.__all__ if not hasattr(message_broker, name)]
assert not missing, missing
assert set(message_broker.__all__) <= set(dir(message_broker))
assert message_broker.typed.decode and message_broker.heartbeat.NodeMonitor is NodeMonitor
try:
    message_broker.NoSuchThing
except AttributeError as error:
    print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "module 'message_broker' has no attribute 'NoSuchThing'"


def test_the_configuration_reference_names_every_setting_and_option():
    import dataclasses
    import inspect

    from message_broker import BrokerClient, BrokerConfig

    reference = (REPOSITORY / "docs" / "configuration.md").read_text(encoding="utf-8")
    for field in dataclasses.fields(BrokerConfig):
        assert f"| `{field.name}` |" in reference, f"BrokerConfig.{field.name} is not documented"
    for name in inspect.signature(BrokerClient).parameters:
        assert f"| `{name}` |" in reference, f"BrokerClient({name}=) is not documented"


def test_the_license_is_the_one_the_package_declares():
    import tomllib

    license_text = (REPOSITORY / "LICENSE").read_text(encoding="utf-8")
    declared = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "MIT"}
    assert license_text.startswith("MIT License")
    assert 'license = "MIT"' in (REPOSITORY / "Cargo.toml").read_text()


def test_the_service_definitions_start_the_broker_with_options_it_takes():
    import re
    import shlex

    from message_broker._cli import build_parser

    unit = (REPOSITORY / "examples" / "service" / "message-broker.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, flags=re.M)
    command, *arguments = shlex.split(exec_start.replace("%h", "/home/user"))
    assert command.endswith("/message-broker")
    parsed = build_parser().parse_args(arguments)
    assert (parsed.command, parsed.require_token) == ("serve", True)
    assert parsed.data_dir == "/home/user/.local/share/message-broker/data"

    task = (REPOSITORY / "examples" / "service" / "message-broker-at-logon.ps1").read_text()
    (argument,) = re.findall(r'-Argument "(.*)"$', task, flags=re.M)
    parsed = build_parser().parse_args(shlex.split(argument.replace("`", "")))
    assert (parsed.command, parsed.require_token) == ("serve", True)


def test_every_public_class_method_and_property_has_a_docstring():
    import inspect

    import message_broker
    from message_broker import ahk_bridge, channels_layer, qt_client, sync

    public = [getattr(message_broker, name) for name in message_broker.__all__]
    public += [qt_client.QtBrokerClient, qt_client.QtBrokerHost, qt_client.QtSubscription]
    public += [ahk_bridge.AHKBridge, sync.SyncBrokerClient, sync.SyncSubscription]
    public += [channels_layer.BrokerChannelLayer, channels_layer.ChannelFull]
    public += [channels_layer.MessageTooLarge]
    missing = []
    for cls in (obj for obj in public if inspect.isclass(obj)):
        if not (cls.__doc__ or "").strip():
            missing.append(cls.__name__)
        for name, member in vars(cls).items():
            if name.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            if type(member).__name__ == "Signal":  # documented by the string after it
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if not (getattr(member, "__doc__", None) or "").strip():
                missing.append(f"{cls.__name__}.{name}")
    assert missing == []
