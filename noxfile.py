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
    session.install(".[test]")
    session.run("pytest", *session.posargs)


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
