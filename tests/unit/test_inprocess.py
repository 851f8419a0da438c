"""tests/helpers/inprocess.py: a CLI run in the test process gives what the command gives and leaves
the process as it found it (so the next run, or test, starts clean)."""

from __future__ import annotations

import logging
import os
import signal
import sys

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL


def process_state() -> tuple:
    root = logging.getLogger()
    return (
        dict(os.environ),
        os.getcwd(),
        list(sys.argv),
        signal.getsignal(signal.SIGTERM),
        signal.getsignal(signal.SIGINT),
        root.handlers[:],
        root.level,
    )


def test_a_job_that_fails_in_process_gives_its_line_and_leaves_the_process_as_it_was(tmp_path):
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from vit_exp import cli

    before = process_state()
    args = [*TINY_MODEL, "model.image_size=30", f"hydra.run.dir={tmp_path / 'run'}"]
    first = run_main("vit_exp.run", *args)
    assert (first.returncode, first.stderr) == (
        1,
        "error: model.image_size=30 is not divisible by model.patch_size=8\n",
    )
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()  # the job ran under Hydra
    assert (tmp_path / "run" / "train.log").is_file()  # Hydra configured the job's logging
    assert process_state() == before
    assert not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()
    assert cli._abort_hooks == cli._failures == cli._last_lines == cli._job_checks == []
    again = run_main("vit_exp.run", *args)  # a second run in the same process: the same outcome
    assert (again.returncode, again.stdout, again.stderr) == (first.returncode, first.stdout, first.stderr)


def test_an_escaping_exception_is_a_traceback_and_exit_1_as_in_a_process(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the CLI then lets composition errors escape
    proc = run_main("vit_exp.run", "optim.lrate=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):") and "optim.lrate" in proc.stderr
