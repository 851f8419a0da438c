"""The training console: a progress bar on a terminal (never in train.log), log lines and warnings
printed above it, and under msrun a rank on each line with only rank 0's INFO lines."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import struct
import sys
import termios
import warnings

import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL

# "epoch 1/1 step 6/44  loss 2.3012  lr 1.000e-03  1234 img/s  100%|██████████| 6/6 [00:01<00:00]"
BAR = re.compile(
    r"epoch 1/1 step (\d+)/44  loss \d+\.\d{4}  lr \d\.\d{3}e[-+]\d\d  \d+ img/s\s+\d+%\|.*?\| (\d+)/6 "
    r"\[\d\d:\d\d<\d\d:\d\d\]"
)
STEP_LINE = re.compile(r"\] epoch 1/1 step \d+/44  loss")


def test_a_forced_bar_shows_epoch_step_loss_rate_and_eta_and_stays_out_of_train_log(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main(
        "vit_exp.run",
        *TINY_MODEL,
        "trainer.max_steps=6",
        "trainer.batch_size=32",
        "trainer.print_every_n_steps=2",
        "trainer.progress_bar=true",  # stdout is no terminal here: forced
        "mlflow.enabled=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    drawn = BAR.findall(out)
    assert drawn and drawn[-1] == ("6", "6")  # the last step is drawn (close() refreshes it)
    assert not STEP_LINE.search(out)  # the bar replaces the step lines
    assert "epoch 1/1 done in" in out and "val loss" in out and "finished 6 step(s)" in out
    log = (run_dir / "train.log").read_text()
    assert "epoch 1/1 done in" in log and "finished 6 step(s)" in log
    assert "\r" not in log and "%|" not in log and not re.search(r"epoch 1/1 step \d+/44", log)


def test_lines_without_a_terminal_are_the_step_lines(tmp_path):
    """trainer.progress_bar=auto (the default) and stdout a file: the lines as before, no bar."""
    proc = run_main(
        "vit_exp.run",
        *TINY_MODEL,
        "trainer.max_steps=4",
        "trainer.batch_size=32",
        "trainer.print_every_n_steps=2",
        "mlflow.enabled=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = re.findall(r"epoch 1/1 step (\d+)/44  loss \d+\.\d{4}  lr \S+  \d+ img/s\n", proc.stdout)
    assert lines == ["2", "4"]
    assert "%|" not in proc.stdout and "\r" not in proc.stdout


def test_auto_means_a_bar_on_a_terminal_and_only_on_the_main_worker():
    from vit_exp.train.progress import wants_bar

    main_fd, terminal_fd = pty.openpty()
    with os.fdopen(terminal_fd, "w") as terminal:
        assert not wants_bar("auto", is_main=True, stream=terminal)  # no size yet: tqdm would draw nothing
        fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 x 120
        assert wants_bar("auto", is_main=True, stream=terminal)
        assert not wants_bar("auto", is_main=False, stream=terminal)
        assert not wants_bar(False, is_main=True, stream=terminal)
    os.close(main_fd)
    assert not wants_bar("auto", is_main=True, stream=io.StringIO())
    assert wants_bar(True, is_main=True, stream=io.StringIO())


def test_log_lines_and_warnings_print_above_the_bar_and_the_console_is_given_back(monkeypatch):
    from vit_exp.train.progress import ProgressBar

    console = io.StringIO()
    monkeypatch.setattr("sys.stdout", console)
    monkeypatch.setattr("sys.stderr", console)
    logger = logging.getLogger("vit_exp.test_progress")
    handler = logging.StreamHandler(console)
    logger.addHandler(handler)
    bar = ProgressBar(total_steps=10, redraw_s=0)  # every step drawn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = print_to_stderr  # as Python's own (pytest records warnings instead)
            show = warnings.showwarning
            bar.open(done=0)
            bar.show("epoch 1/1 step 1/10", 2.5, 1e-3, 100.0)
            logger.warning("a log line while the bar shows")
            bar.show("epoch 1/1 step 2/10", 2.4, 1e-3, 100.0)
            warnings.warn("a warning while the bar shows", UserWarning, stacklevel=1)
            bar.close()
            assert warnings.showwarning is show
    finally:
        logger.removeHandler(handler)
    assert "emit" not in vars(handler)  # the handler's own emit again
    text = console.getvalue()
    for message in ("a log line while the bar shows", "a warning while the bar shows"):
        before, _, after = text.partition(message)
        row = before.rpartition("\n")[2].rpartition("\r")[2]  # what the message's row shows before it
        assert "epoch" not in row and "%|" not in row, row  # the bar was cleared, not written over
        assert "epoch 1/1 step" in before and "epoch 1/1 step" in after  # drawn before, redrawn after


def print_to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.mark.parametrize(
    ("environment", "label", "level"),
    [
        ({}, "", "NOTSET"),
        ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2", "RANK_ID": "0"}, "[rank 0]", "NOTSET"),
        ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2", "RANK_ID": "1"}, "[rank 1]", "WARNING"),
    ],
)
def test_under_msrun_console_lines_name_their_rank_and_other_ranks_print_warnings_only(
    monkeypatch, environment, label, level
):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vit_exp.config import CONFIG_DIR

    for key in ("MS_ROLE", "MS_WORKER_NUM", "RANK_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    GlobalHydra.instance().clear()
    logging_config = cfg.hydra.job_logging
    assert logging_config.formatters.console.format == f"[%(asctime)s]{label} %(message)s"
    assert logging_config.handlers.console.level == level
    assert "level" not in logging_config.handlers.file  # train.log keeps every INFO line
