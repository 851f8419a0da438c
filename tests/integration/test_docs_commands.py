"""The docs' commands that no other test runs, run as written (tests/helpers/docs_commands.py,
RUN_LITERALLY): by bash, from a folder of their own (``.cache`` and the store there), after a short
training when they need a registered model. A console block's output lines must be in the output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.docs_commands import RUN_LITERALLY, doc_commands
from tests.helpers.processes import run_cli
from vit_exp.config import PROJECT_ROOT

pytestmark = pytest.mark.integration  # real processes; the registry part trains for ~30 s


@pytest.fixture
def workdir(tmp_path: Path):
    """A folder to run the docs' commands from: ``.cache`` is its own, ``sweeps`` the project's; the run
    directories they leave in the project's ``outputs/`` are removed afterwards."""
    (tmp_path / "sweeps").symlink_to(PROJECT_ROOT / "sweeps")
    outputs = PROJECT_ROOT / "outputs"

    def present() -> set[Path]:  # outputs/<task>/runs|multiruns/<time>
        return {
            p
            for p in [outputs, *outputs.glob("*"), *outputs.glob("*/*"), *outputs.glob("*/*/*")]
            if p.exists()
        }

    before = present()
    yield tmp_path
    for new in sorted(present() - before):
        shutil.rmtree(new, ignore_errors=True)  # parents first: what it held goes with it


def run_as_written(command: str, workdir: Path) -> subprocess.CompletedProcess:
    """``command`` by bash in ``workdir``, with this interpreter's ``python`` first on PATH and this
    checkout's ``vit_exp`` first on its path (as an editable install of it puts it)."""
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(PROJECT_ROOT),
        "VIT_EXP_CACHE_DIR": str(workdir / ".cache"),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        ["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
    )


def check(command: str, workdir: Path) -> None:
    expected = RUN_LITERALLY[command]
    proc = run_as_written(command, workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == expected.returncode, f"{command}\n{output[-3000:]}"
    shown = [line for c in doc_commands() if c.command == command for line in c.output]
    for text in (*expected.holds, *shown):
        assert text in output, f"{command}: {text!r} not in\n{output[-3000:]}"
    assert "Traceback" not in output, f"{command}\n{output[-3000:]}"


@pytest.mark.parametrize("command", sorted(c for c, e in RUN_LITERALLY.items() if not e.after_training))
def test_a_docs_command_runs_as_written(command, workdir):
    check(command, workdir)


def test_the_registry_commands_run_as_written_after_a_short_training(workdir):
    """eval and predict by ``@best``, on a model a 2-epoch default run registered in this store."""
    trained = run_cli(
        "vit_exp.run",
        "trainer.epochs=2",
        f"paths.cache_dir={workdir / '.cache'}",
        f"hydra.run.dir={workdir / 'train'}",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    for command in sorted(c for c, e in RUN_LITERALLY.items() if e.after_training):
        check(command, workdir)
