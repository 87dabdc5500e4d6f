"""Real AutoHotkey v2 for the tests: on Windows the executable itself, elsewhere under
Wine with a private prefix and an Xvfb display (AutoHotkey needs a window station).

AutoHotkey is found as AHKBridge finds it (`find_autohotkey`): the `ahk-binary` test
dependency, or the command `MESSAGE_BROKER_AHK` names. Wine and Xvfb come from the
system (the nox `tests` session installs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from message_broker.ahk_bridge import AHK_ENV, _script_path, find_autohotkey

from support import REPOSITORY

LIBRARY = REPOSITORY / "clients" / "ahk" / "MessageBroker.ahk"


def missing() -> str | None:
    """Why real AutoHotkey cannot run here, or None when it can."""
    if sys.platform != "win32":
        for tool in ("wine", "Xvfb", "wineserver"):
            if shutil.which(tool) is None:
                return (
                    f"{tool} not found: AutoHotkey runs under Wine here "
                    "(apt-get install wine wine64 xvfb xauth)"
                )
    if find_autohotkey() is None:
        return f"AutoHotkey not found: pip install ahk-binary, or set {AHK_ENV}"
    return None


class AutoHotkey:
    """Builds command lines that run a script with real AutoHotkey, and the environment
    they need."""

    def __init__(self, launcher: list[str], env: dict[str, str]) -> None:
        self.launcher = launcher
        """The command that runs AutoHotkey (``wine AutoHotkeyV2.exe`` here)."""
        self.env = env

    def command(self, script: Path | str, *args: str) -> list[str]:
        # /ErrorStdOut: a script that cannot load says why on stderr, no dialog.
        path = _script_path(str(script), self.launcher)
        return [*self.launcher, "/ErrorStdOut=UTF-8", path, *args]

    def windows_path(self, path: Path | str) -> str:
        """``path`` as AutoHotkey sees it: under Wine, on drive Z:, which is /."""
        return _script_path(str(path), self.launcher)

    def run(
        self, script: Path | str, *args: str, timeout: float = 60, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(script, *args),
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
        )


@contextlib.contextmanager
def autohotkey() -> Iterator[AutoHotkey]:
    """Real AutoHotkey for the duration of the block; everything it started is stopped
    at the end (Xvfb, the Wine server and every Wine process of the private prefix)."""
    launcher = find_autohotkey()
    assert launcher is not None
    env = dict(os.environ)
    if sys.platform == "win32":
        yield AutoHotkey(launcher, env)
        return
    with tempfile.TemporaryDirectory(prefix="mb-wine-") as prefix:
        display = subprocess.Popen(
            ["Xvfb", "-displayfd", "1", "-nolisten", "tcp", "-screen", "0", "800x600x24"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert display.stdout is not None
            number = display.stdout.readline().strip()
            if not number.isdigit():
                raise RuntimeError("Xvfb did not start")
            env.update(
                DISPLAY=f":{number}",
                WINEPREFIX=prefix,
                WINEDEBUG="-all",
                # No Mono or Gecko installers: AutoHotkey needs neither.
                WINEDLLOVERRIDES="mscoree,mshtml=",
            )
            # One Wine server for the whole session keeps each script's start short.
            subprocess.run(["wineboot", "--init"], env=env, timeout=300, capture_output=True)
            subprocess.run(["wineserver", "-p"], env=env, timeout=30, check=True)
            runner = AutoHotkey(launcher, env)
            # The first script starts Wine's helper processes, which inherit its output
            # and hold it open: let them inherit nothing of a test's.
            warm_up = Path(prefix) / "warm_up.ahk"
            warm_up.write_text("#Requires AutoHotkey v2.0\nExitApp(0)\n", encoding="utf-8")
            subprocess.run(
                runner.command(warm_up),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
            )
            yield runner
        finally:
            subprocess.run(["wineserver", "-k"], env=env, timeout=30, capture_output=True)
            subprocess.run(["wineserver", "-w"], env=env, timeout=30, capture_output=True)
            display.terminate()
            try:
                display.wait(10)
            except subprocess.TimeoutExpired:
                display.kill()
                display.wait()
