"""Project tasks. `nox` runs lint and tests (what CI runs); `nox -s tests -- -k name`
passes arguments to pytest."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True

PYTHON_PATHS = ["python", "tests", "noxfile.py"] + [
    path for path in ("examples", "bench", "docs") if os.path.isdir(path)
]
# `cargo test` builds the core without the Python feature; a target directory of its
# own keeps it from rebuilding what maturin builds with the feature on.
CORE_TARGET = {"CARGO_TARGET_DIR": os.path.join("target", "core")}
# The Windows-only code (named pipe, owner-only ACLs) is checked from Linux too.
WINDOWS = "x86_64-pc-windows-gnu"
WINDOWS_TARGET = {"CARGO_TARGET_DIR": os.path.join("target", "windows")}
_apt_updated = False


def apt_install(session: nox.Session, *packages: str) -> bool:
    """Installs Debian packages (as root, with apt-get); False when this machine can't."""
    import shutil

    global _apt_updated
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return False
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        session.run("apt-get", "update", "-qq", external=True, env=env)
        _apt_updated = True
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    session.run(*install, external=True, env=env)
    return True


@nox.session
def tests(session: nox.Session) -> None:
    """Rust unit tests, then the Python suite against the release wheel, which is
    also installed alone into a fresh virtualenv to run an example from it."""
    session.run("cargo", "test", "--locked", external=True, env=CORE_TARGET)
    install_wine(session)
    install_peers(session)
    wheel = build_wheel(session)
    session.install(f"{wheel}[test]")
    session.run("pytest", *session.posargs)
    run_example_from_fresh_venv(session, wheel)


def build_wheel(session: nox.Session) -> str:
    """One abi3 wheel, for every CPython from 3.10 on, as `maturin build --release`
    makes it."""
    import glob
    import shutil

    dist = os.path.join("target", "dist")
    shutil.rmtree(dist, ignore_errors=True)
    session.install("maturin>=1.9.4,<2")
    session.run("maturin", "build", "--release", "--locked", "--out", dist)
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    if "-cp310-abi3-" not in os.path.basename(wheel):
        session.error(f"expected one abi3 wheel for CPython >= 3.10, got {wheel}")
    return wheel


def run_example_from_fresh_venv(session: nox.Session, wheel: str) -> None:
    """What a user gets from the wheel alone: a new virtualenv, the wheel, an example
    run outside the source tree (so nothing is imported from it)."""
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mb-wheel-") as scratch:
        venv = os.path.join(scratch, "venv")
        session.run(sys.executable, "-m", "venv", venv, external=True)
        bin_dir = os.path.join(venv, "Scripts" if sys.platform == "win32" else "bin")
        python = os.path.join(bin_dir, "python")
        install = [python, "-m", "pip", "install", "--quiet", os.path.abspath(wheel)]
        session.run(*install, external=True)
        example = os.path.abspath(os.path.join("examples", "hello.py"))
        with session.chdir(scratch):
            session.run(python, example, external=True)
            session.run(os.path.join(bin_dir, "message-broker"), "--version", external=True)


def install_wine(session: nox.Session) -> None:
    """The AutoHotkey tests run real AutoHotkey under Wine on an Xvfb display; without
    them (not root, no apt-get) those tests are skipped and say why."""
    import shutil
    import sys

    if sys.platform == "win32" or (shutil.which("wine") and shutil.which("Xvfb")):
        return
    if not apt_install(session, "wine", "wine64", "xvfb", "xauth"):
        session.warn("Wine is missing: the AutoHotkey tests will be skipped")


# The real programs the tests meet, from Debian's packages: NATS and Mosquitto for the
# bridges, Redis for channels_redis beside our Channels layer, Chromium and its driver for
# the browser tests (never a browser download).
PEER_PROGRAMS = {
    "nats-server": "nats-server",
    "mosquitto": "mosquitto",
    "mosquitto_sub": "mosquitto-clients",
    "redis-server": "redis-server",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


def install_peers(session: nox.Session) -> None:
    """Installs the peer programs that are missing; without them (not root, no apt-get)
    the tests that need one are skipped and say why, except in CI, where they fail."""
    import shutil

    missing = sorted({pkg for prog, pkg in PEER_PROGRAMS.items() if not shutil.which(prog)})
    if missing and not apt_install(session, *missing):
        session.warn(f"missing {', '.join(missing)}: the tests that need them will be skipped")


@nox.session
def lint(session: nox.Session) -> None:
    """rustfmt, clippy (core and bindings), ruff and mypy."""
    session.install("ruff", "mypy")
    session.run("ruff", "check", *PYTHON_PATHS)
    session.run("mypy", "--ignore-missing-imports", "python/message_broker")
    session.run("ruff", "format", "--check", *PYTHON_PATHS)
    session.run("cargo", "fmt", "--all", "--check", external=True)
    clippy = ["cargo", "clippy", "--locked", "--all-targets"]
    session.run(*clippy, "--", "-D", "warnings", external=True, env=CORE_TARGET)
    session.run(*clippy, "--features", "python", "--", "-D", "warnings", external=True)
    if windows_toolchain(session):
        windows = [*clippy, "--target", WINDOWS, "--", "-D", "warnings"]
        session.run(*windows, external=True, env=WINDOWS_TARGET)


def windows_toolchain(session: nox.Session) -> bool:
    """The Windows target and a MinGW C compiler (SQLite's bundled build needs one),
    installed when missing; where they cannot be, the check is skipped, loudly."""
    import shutil
    import subprocess

    listed = subprocess.run(
        ["rustup", "target", "list", "--installed"], capture_output=True, text=True, check=False
    )
    if WINDOWS not in listed.stdout.split():
        added = subprocess.run(["rustup", "target", "add", WINDOWS], check=False)
        if added.returncode != 0:
            session.warn(f"SKIPPED the Windows check: the {WINDOWS} target cannot be installed")
            return False
    if not shutil.which("x86_64-w64-mingw32-gcc") and not apt_install(
        session, "gcc-mingw-w64-x86-64"
    ):
        session.warn("SKIPPED the Windows check: no MinGW C compiler (x86_64-w64-mingw32-gcc)")
        return False
    return True


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite against a release build (not run by default or in CI).
    `nox -s bench -- --peer nats` compares with nats-server, which the session installs
    with apt-get when it is missing (as root); `nox -s bench -- --help` lists options."""
    import shutil

    session.install(".", "nats-py", "matplotlib>=3.8")
    wants_nats = "nats" in session.posargs or "--peer=nats" in session.posargs
    has_nats = shutil.which("nats-server") or os.path.exists("/usr/sbin/nats-server")
    if wants_nats and not has_nats:
        if os.geteuid() != 0:
            session.error("nats-server is missing: sudo apt-get install -y nats-server")
        session.run("apt-get", "update", external=True)
        session.run("apt-get", "install", "-y", "nats-server", external=True)
    session.run("python", "-m", "bench", "run", *session.posargs)


@nox.session
def bench_channels(session: nox.Session) -> None:
    """The Django Channels layer beside channels_redis on redis-server, against a release
    build (not run by default or in CI); redis-server is installed when missing (as
    root). `nox -s bench_channels -- --help` lists options."""
    import shutil

    session.install(".", "channels>=4.2", "channels-redis==4.3.0")
    if not shutil.which("redis-server") and not apt_install(session, "redis-server"):
        session.error("redis-server is missing: sudo apt-get install -y redis-server")
    session.run("python", "-m", "bench", "channels", *session.posargs)
