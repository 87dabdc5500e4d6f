"""The README's code examples, for tests that run them as written."""

from __future__ import annotations

import re

from support import REPOSITORY


def readme_blocks(heading: str, language: str = "autohotkey") -> list[str]:
    """The code blocks in ``language`` of the README section under ``heading``, up to
    the next heading of its level or above (``## `` ends a ``### `` section too)."""
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    if heading.startswith("### "):
        section = section.split("\n### ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
