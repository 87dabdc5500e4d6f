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


@nox.session
def tests(session: nox.Session) -> None:
    """Rust unit tests, then the Python suite against a release build."""
    session.run("cargo", "test", "--locked", external=True, env=CORE_TARGET)
    install_wine(session)
    session.install(".[test]")
    session.run("pytest", *session.posargs)


def install_wine(session: nox.Session) -> None:
    """The AutoHotkey tests run real AutoHotkey under Wine on an Xvfb display; without
    them (not root, no apt-get) those tests are skipped and say why."""
    import shutil
    import sys

    if sys.platform == "win32" or (shutil.which("wine") and shutil.which("Xvfb")):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        session.warn("Wine is missing: the AutoHotkey tests will be skipped")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    packages = ["wine", "wine64", "xvfb", "xauth"]
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    session.run(*install, external=True, env=env)


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


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite against a release build (not run by default or in CI).
    `nox -s bench -- --peer nats` compares with nats-server, which the session installs
    with apt-get when it is missing (as root); `nox -s bench -- --help` lists options."""
    import shutil

    session.install(".", "nats-py")
    wants_nats = "nats" in session.posargs or "--peer=nats" in session.posargs
    has_nats = shutil.which("nats-server") or os.path.exists("/usr/sbin/nats-server")
    if wants_nats and not has_nats:
        if os.geteuid() != 0:
            session.error("nats-server is missing: sudo apt-get install -y nats-server")
        session.run("apt-get", "update", external=True)
        session.run("apt-get", "install", "-y", "nats-server", external=True)
    session.run("python", "-m", "bench", "run", *session.posargs)
