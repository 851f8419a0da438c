"""Sweeps under faults: a failing job, Ctrl-C, a broken sweeper. Every job runs or is accounted for,
and the parent run ends with a status that matches its children (never RUNNING). A sweep that
cannot succeed stops before its first job and records nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import run_cli, start_cli

SMALL = [*TINY_MODEL, "model.num_layers=1", "registry.register=none"]


def runs_by_role(store: str) -> tuple[object, list]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    parents = [r for r in runs if r.data.tags.get("vit_exp.role") == "sweep"]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r is not parents[0]]


def stored_runs(store: str) -> list:
    """Every run of every experiment in ``store`` (none when the store was never created)."""
    if not Path(store.removeprefix("sqlite:///")).exists():
        return []
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


SWEEP_FILE = """defaults:
  - train
  - _self_
trainer:
  epochs: three
hydra:
  sweeper:
    params:
      optim.lr: 1e-3,2e-3
"""


@pytest.mark.parametrize(
    "args, key",
    [
        (["trainer.epochs=three", "optim.lr=1e-3,2e-3,3e-3,4e-3"], "trainer.epochs"),  # a fixed override
        (["optimized_metric=val/acc", "optim.lr=1e-3,2e-3"], "optimized_metric=val/acc"),
        (["optim.lr=-1,-2"], "optim.lr"),  # every value of the swept key is bad
        (["--config-name", "bad_sweep"], "trainer.epochs"),  # the sweep file's fixed value
    ],
    ids=["fixed-override", "optimized-metric", "every-swept-value", "sweep-file"],
)
def test_a_sweep_that_cannot_succeed_stops_before_its_first_job(tmp_path, tracking_store, args, key):
    """One error line naming the key, exit 1, no job started, nothing recorded (issue 24)."""
    (tmp_path / "bad_sweep.yaml").write_text(SWEEP_FILE)
    proc = run_main(
        "vit_exp.run",
        "--multirun",
        "--config-dir",
        str(tmp_path),
        *args,  # --config-name first: the overrides follow in one run
        *SMALL,
        "trainer.max_steps=2",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: ") and key in errors[0]
    assert "Launching" not in proc.stdout and "#0" not in proc.stdout, proc.stdout[-2000:]
    assert not (tmp_path / "sweep").exists()
    assert stored_runs(tracking_store) == []


@pytest.mark.integration
def test_a_failing_job_does_not_stop_the_sweep(tmp_path, tracking_store):
    proc = run_cli(
        "vit_exp.run",
        "--multirun",
        *SMALL,
        "trainer.max_steps=2",
        "optim.lr=-1,1e-3",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: 1 of 2 sweep job(s) did not finish; job 0 (")
    assert "optim.lr=-1" in errors[-1] and "optim.lr must be a number > 0, got -1" in errors[-1]
    assert "Traceback" not in proc.stderr
    table = proc.stdout[proc.stdout.index("sweep results (2 job(s))") :]
    assert "   0  FAILED" in table and "error: optim.lr must be a number > 0" in table
    assert "   1  FINISHED" in table
    parent, children = runs_by_role(tracking_store)
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children] == ["FINISHED"]  # job 0 failed before creating a run
    assert parent.data.tags["sweep.failed_jobs"] == "0"
    assert parent.data.tags["sweep.job.0.error"] == "optim.lr must be a number > 0, got -1"
    assert "sweep.job.1.error" not in parent.data.tags


@pytest.mark.integration
def test_a_job_that_fails_while_training_is_in_the_record(tmp_path, tracking_store):
    """A job whose run had started (an unreadable image in its first epoch): its run ends FAILED
    tagged with the one-line error, and the parent run names the job and the same line."""
    root = write_image_folder(tmp_path / "ds", ["a", "b"], per_class=4, size=16)
    broken = root / "train" / "a" / "zz_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    proc = run_cli(
        "vit_exp.run",
        "--multirun",
        *SMALL,
        "data=image_folder",
        f"data.root={root}",
        "trainer.batch_size=4",
        "trainer.epochs=1",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 1
    line = (tmp_path / "sweep" / "0" / "error.txt").read_text().strip()
    assert line.startswith(f"unreadable image {broken}")
    parent, (child,) = runs_by_role(tracking_store)
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"
    assert parent.data.tags["sweep.failed_jobs"] == "0"
    assert parent.data.tags["sweep.job.0.error"] == line
    assert (
        child.data.tags["vit_exp.error"] == line
    )  # the job's own run (vit_exp/tracking/record/lifecycle.py)


@pytest.mark.integration
def test_ctrl_c_in_a_sweep_ends_the_parent_and_the_job_killed(tmp_path, tracking_store):
    process = start_cli(
        "vit_exp.run",
        "--multirun",
        *SMALL,
        "trainer.epochs=500",
        "optim.lr=1e-3,2e-3",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        log=tmp_path / "sweep.log",
    )
    deadline = time.time() + 180
    while time.time() < deadline and "epoch 2/500 done" not in (tmp_path / "sweep.log").read_text():
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, (tmp_path / "sweep.log").read_text()[-2000:]
    parent, children = runs_by_role(tracking_store)
    assert parent.info.status == "KILLED"
    assert [c.info.status for c in children] == ["KILLED"]  # job 1 never started


@pytest.mark.parametrize(
    "space, words, parent",
    [
        ("optim.lr: interval(1e-2, 1e-4)", ["low"], None),  # rejected before a trial: nothing recorded
        ("data: choice(digits, nope)", ["data=nope: no such option"], "FAILED"),  # trial 0 draws nope
    ],
    ids=["before-the-first-trial", "at-the-first-launch"],
)
def test_a_sweeper_that_breaks_ends_the_parent_failed_in_one_line(
    tmp_path, tracking_store, space, words, parent
):
    """The Optuna sweeper makes the parent run at its first launch: broken before it (a search space
    Optuna rejects), nothing is recorded; broken at it (trial 0's config cannot be composed, as a
    storage error would break it), the parent ends FAILED. One error line either way."""
    (tmp_path / "broken.yaml").write_text(
        "defaults:\n  - train\n  - override hydra/sweeper: optuna_study\n  - _self_\n"
        "hydra:\n  sweeper:\n    direction: maximize\n    study_name: broken\n    n_trials: 1\n"
        f"    sampler:\n      seed: 0\n    params:\n      {space}\n"
    )
    proc = run_main(
        "vit_exp.run",
        "--multirun",
        "--config-dir",
        str(tmp_path),
        "--config-name",
        "broken",
        *SMALL,
        "trainer.max_steps=1",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: ") and all(w in errors[0] for w in words), errors[0]
    if parent is None:
        assert stored_runs(tracking_store) == []
    else:
        parent_run, children = runs_by_role(tracking_store)
        assert parent_run.info.status == parent and children == []
        assert parent_run.data.tags["optuna.study_name"] == "broken"
