"""The example command lines ``--help`` prints (vit_exp/help.py), as arguments."""

from __future__ import annotations

import shlex


def example_args(example: str) -> tuple[str, list[str]]:
    """``python -m vit_exp.<module> args  # comment`` -> (``vit_exp.<module>``, args)."""
    words = shlex.split(example, comments=True)
    assert words[:2] == ["python", "-m"], example
    return words[2], words[3:]
