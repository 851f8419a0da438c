"""Every shell command of README.md and docs/*.md runs in a test or in CI (tests/helpers/docs_commands.py
says where), and the README stays a README."""

from __future__ import annotations

import ast

import pytest

from tests.helpers.docs_commands import (
    RUN_BY,
    RUN_LITERALLY,
    canonical,
    doc_commands,
    help_examples,
    make_recipe_command,
    where_it_runs,
)
from vit_exp.config import PROJECT_ROOT


def test_every_docs_command_runs_somewhere():
    commands = doc_commands()
    assert len(commands) >= 20  # the extraction finds the blocks (README's tour alone has 10)
    unclassified = [f"{c.where}: {c.command}" for c in commands if where_it_runs(c.command) is None]
    assert not unclassified, (
        "not run by any test: add it to RUN_LITERALLY or RUN_BY in tests/helpers/docs_commands.py, "
        "or use a --help example of vit_exp/help.py:\n" + "\n".join(unclassified)
    )


def test_no_table_entry_is_stale():
    """A command the docs dropped leaves the tables too (so the tables say what the docs run)."""
    in_docs = {c.command for c in doc_commands()}
    in_docs |= {make_recipe_command(c.split()[1]) for c in in_docs if c.startswith("make ")}  # make ui
    assert not (set(RUN_LITERALLY) - in_docs), set(RUN_LITERALLY) - in_docs
    assert not (set(RUN_BY) - in_docs), set(RUN_BY) - in_docs
    assert not (set(RUN_BY) & (help_examples() | set(RUN_LITERALLY)))


@pytest.mark.parametrize("command", sorted(RUN_BY))
def test_the_named_test_runs_the_command(command):
    """The test named for a command exists, and its source holds the command's distinctive parts."""
    node, parts = RUN_BY[command]
    path, name = node.split("::")
    module = ast.parse((PROJECT_ROOT / path).read_text())
    functions = {f.name: f for f in module.body if isinstance(f, ast.FunctionDef)}
    assert name in functions, f"{node} does not exist"
    if not name.startswith("test_"):  # a fixture: some test of the module must use it
        users = [
            f
            for f in functions.values()
            if f.name.startswith("test_") and name in {a.arg for a in f.args.args}
        ]
        assert users, f"no test of {path} uses the fixture {name}"
    source = " ".join(ast.get_source_segment((PROJECT_ROOT / path).read_text(), functions[name]).split())
    for part in parts:
        assert " ".join(part.split()) in source, f"{node} does not hold {part!r} of: {command}"


def test_the_extraction_reads_blocks_continuations_and_console_output(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "```bash\npython -m vit_exp.run \\\n    trainer.epochs=2   # two\n\n# a comment\n```\n"
        "```python\nprint('not shell')\n```\n"
    )
    (tmp_path / "docs" / "a.md").write_text("```console\n$ python -m vit_exp.run x=1\nerror: x\n```\n")
    found = [(c.where, c.command, c.output) for c in doc_commands(tmp_path)]
    assert found == [
        ("README.md:3", "python -m vit_exp.run trainer.epochs=2", ()),
        ("docs/a.md:2", "python -m vit_exp.run x=1", ("error: x",)),
    ]
    assert canonical("python -m vit_exp.ui port=5001   # note") == "python -m vit_exp.ui port=5001"


def test_an_unknown_command_is_not_classified():
    assert where_it_runs("python -m vit_exp.run trainer.epochs=999") is None
    assert where_it_runs("make lint") is None  # not in .ci/run, and not a python -m recipe
    assert where_it_runs("make run") is not None  # the recipe's python -m vit_exp.run: a --help example


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    pages = sorted(p.name for p in (PROJECT_ROOT / "docs").glob("*.md"))
    assert not [p for p in pages if f"docs/{p}" not in readme]
    nav = (PROJECT_ROOT / "mkdocs.yml").read_text()
    assert not [p for p in pages if f" {p}" not in nav]


def test_the_quick_start_keeps_its_two_commands():
    """make run, and make test: what .ci/run runs first (then make test-integration, make docs)."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.splitlines()] == ["make run", "make test"]
    ci = [line.strip() for line in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci if line.startswith("make ")] == [
        "make test",
        "make docs",
        "make test-integration",
    ]
