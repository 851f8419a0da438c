"""Every example ``--help`` shows runs as written, after the default run (``make run``), in a store of
its own: the command line as printed, plus where its files go (``hydra.run.dir``, the cache)."""

from __future__ import annotations

import signal
import time
import urllib.request

import pytest

from tests.helpers.examples import example_args
from tests.helpers.processes import free_port, run_cli, start_cli
from vit_exp.help import COMMANDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~4 min: two default runs (reproduce) and a sweep

# promote before the eval of @champion
ORDER = ("train", "promote", "eval", "predict", "export", "sync", "reproduce", "ui")


def test_every_help_example_runs_after_the_default_run(tmp_path, tracking_store):
    cache, default_run_dir = tmp_path / "cache", tmp_path / "runs" / "0"
    env = {"VIT_EXP_CACHE_DIR": str(cache)}
    examples = [e for command in ORDER for e in COMMANDS[command][2]]
    for number, example in enumerate(examples):
        module, args = example_args(example)
        args = [a.replace(".cache/", f"{cache}/").replace("RUN_DIR", str(default_run_dir)) for a in args]
        where = "hydra.sweep.dir" if "--multirun" in args else "hydra.run.dir"
        args.append(f"{where}={tmp_path / 'runs' / str(number)}")
        if module == "vit_exp.reproduce":  # the training it starts: its directory too
            args.append(f"run_dir={tmp_path / 'runs' / f'{number}-training'}")
        if module == "vit_exp.ui":
            _serves(module, [a for a in args if not a.startswith("port=")], tmp_path, env)
            continue
        proc = run_cli(module, *args, env=env)
        assert proc.returncode == 0, f"{example}\n{proc.stderr[-3000:]}"
        assert "error:" not in proc.stderr, f"{example}\n{proc.stderr[-3000:]}"


def _serves(module: str, args: list[str], tmp_path, env: dict) -> None:
    """The UI example: its server answers (on a free port, not the example's)."""
    port = free_port()
    process = start_cli(module, *args, f"port={port}", log=tmp_path / "ui.log", env=env)
    try:
        deadline, answered = time.time() + 120, False
        while time.time() < deadline and not answered:
            try:
                answered = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
            except OSError:
                time.sleep(0.5)
        assert answered, (tmp_path / "ui.log").read_text()[-3000:]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
