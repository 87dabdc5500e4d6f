"""What the tests share: a raw wire-protocol client (`wire`), the broker as a process of
its own (`broker_process`), real AutoHotkey (`autohotkey`), bounded waits (`waiting`),
the README's code blocks (`readme`), and the child programs tests start:
`bridge_child.py` and `delivery_child.py` run by path, `burst_publisher` and
`channels_fork_child` with ``python -m support.<program>`` from `TESTS`.

pyproject.toml puts `TESTS` on pytest's ``pythonpath``, so tests import these as
``from support.wire import RawClient``."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
"""This package's directory, where the child programs are."""
TESTS = SUPPORT.parent
"""The test suite's directory: the working directory for ``-m support.<program>``."""
REPOSITORY = TESTS.parent
