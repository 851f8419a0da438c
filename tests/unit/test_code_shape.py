"""The package stays readable: no function over MAX_LINES without a one-line reason on its ``def`` line."""

from __future__ import annotations

import ast

from vit_exp.config import PROJECT_ROOT

MAX_LINES = 60


def long_functions_without_a_reason() -> list[str]:
    found = []
    for path in sorted((PROJECT_ROOT / "vit_exp").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_LINES and "#" not in lines[node.lineno - 1]:
                    found.append(
                        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name} ({length} lines)"
                    )
    return found


def test_no_function_is_longer_than_a_screen_without_a_reason():
    assert long_functions_without_a_reason() == []
