"""The real programs some tests need (nats-server, mosquitto, redis-server, Chromium):
found on PATH or in the usual Debian places. A test asks with `require_program`, which
skips saying why when the program is missing, except in CI, where `.ci/run` installs
them (noxfile.py) and a missing one is a failure."""

from __future__ import annotations

import os
import shutil

import pytest

# Debian puts nats-server and redis-server in /usr/sbin and /usr/bin.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])


def find_program(name: str) -> str | None:
    """The program's full path, or None."""
    return shutil.which(name, path=_SEARCH_PATH)


def require_program(name: str, package: str | None = None) -> str:
    """The program's full path; a missing one skips the test (fails it in CI)."""
    path = find_program(name)
    if path is not None:
        return path
    reason = f"{name} is missing (Debian package {package or name})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI installs it with nox (noxfile.py install_peers)")
    pytest.skip(reason)
