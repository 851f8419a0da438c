"""The Optuna study of a sweep persists (hydra/sweeper=optuna_study, Optuna 4): a sweep killed
mid-trial and run again continues the study; sweeps started together share it."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import run_cli, start_cli

SMALL = [*TINY_MODEL, "model.num_layers=1", "registry.register=none"]
SWEEP = """defaults:
  - train
  - override hydra/sweeper: optuna_study
  - _self_
hydra:
  sweeper:
    direction: maximize
    sampler:
      seed: 0
    params:
      optim.lr: tag(log, interval(1e-4, 1e-2))
"""


def study(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def sweep_args(tmp_path, name: str, trials: int, sweep_dir: str, steps: int = 2) -> list[str]:
    (tmp_path / "optuna_small.yaml").write_text(SWEEP)
    return [
        "--multirun",
        "--config-dir",
        str(tmp_path),
        "--config-name",
        "optuna_small",
        *SMALL,
        f"trainer.max_steps={steps}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.n_trials={trials}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / sweep_dir}",
    ]


@pytest.mark.integration
def test_a_sweep_killed_mid_trial_continues_where_it_stopped(tmp_path, tracking_store):
    """SIGKILL while trial 2 trains; the same command again: trials 0 and 1 keep their results,
    trial 2 is failed and its params run again (trial 3), and the study ends with 3 results."""
    storage = tracking_store.replace("mlflow.db", "optuna.db")  # the default: beside the store
    args = sweep_args(tmp_path, "killed", 3, "first")
    long_trials = [*args[:-1], "trainer.max_steps=120", "trainer.print_every_n_steps=10", args[-1]]
    first = start_cli("vit_exp.run", *long_trials, log=tmp_path / "first.log")
    deadline = time.time() + 300
    while time.time() < deadline:  # kill while trial 2 trains (a step line after its launch line)
        log = (tmp_path / "first.log").read_text()
        if "#2 :" in log and " step " in log[log.index("#2 :") :]:
            break
        assert first.poll() is None, log[-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    before = {t.number: t for t in study(storage, "killed").trials}
    assert [before[n].state.name for n in (0, 1, 2)] == ["COMPLETE", "COMPLETE", "RUNNING"]

    again = run_cli("vit_exp.run", *sweep_args(tmp_path, "killed", 3, "again"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial(s) 2 of study 'killed'" in again.stdout  # named as the one cut short
    after = {t.number: t for t in study(storage, "killed").trials}
    assert after[0].value == before[0].value and after[1].value == before[1].value  # kept, not rerun
    assert after[2].state.name == "FAIL" and after[3].state.name == "COMPLETE"
    assert after[3].params == before[2].params  # the trial cut short ran again
    assert sorted(p.name for p in (tmp_path / "again").iterdir() if p.is_dir()) == ["3"]  # job = trial
    assert sum(t.state.name == "COMPLETE" for t in after.values()) == 3 and len(after) == 4


@pytest.mark.slow
def test_two_sweeps_started_together_share_one_study(tmp_path, tracking_store):
    """Two commands at once on one storage: 4 trials in all, numbers unique, both succeed."""
    storage = tracking_store.replace("mlflow.db", "optuna.db")
    processes = [
        start_cli("vit_exp.run", *sweep_args(tmp_path, "shared", 4, f"sweep{i}"), log=tmp_path / f"{i}.log")
        for i in range(2)
    ]
    for i, process in enumerate(processes):
        assert process.wait(timeout=600) == 0, (tmp_path / f"{i}.log").read_text()[-3000:]
    trials = study(storage, "shared").trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    ran = [sorted(int(p.name) for p in (tmp_path / f"sweep{i}").iterdir() if p.is_dir()) for i in range(2)]
    assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3] and ran[0] and ran[1]  # both took part


@pytest.mark.parametrize(
    "override, words",
    [
        ("optimized_metric=val/loss", ["hydra.sweeper.direction=maximize", "direction=minimize"]),
        ("trainer.epochs=three", ["trainer.epochs must be an integer, got 'three'"]),  # every trial's
    ],
)
def test_a_sweep_no_trial_of_which_can_start_stops_before_any_trial(
    tmp_path, tracking_store, override, words
):
    """optimized_metric=val/loss with direction=maximize, or a bad fixed value: one line, exit 1, no
    trial, no study, no run (issue 24)."""
    proc = run_main("vit_exp.run", *sweep_args(tmp_path, "wrong", 2, "sweep"), override)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: ") and all(w in errors[0] for w in words), errors[0]
    assert not (tmp_path / "sweep").exists()
    assert not (tmp_path / "mlruns").exists()  # neither the MLflow store nor the study's optuna.db


def test_a_failed_trial_keeps_its_reason_in_the_study(tmp_path, tracking_store):
    """A trial whose job fails is FAIL in the study with the job's one-line error as user attr."""
    storage = tracking_store.replace("mlflow.db", "optuna.db")
    missing = tmp_path / "no-such-data"
    args = [*sweep_args(tmp_path, "failing", 1, "sweep"), "data=image_folder", f"data.root={missing}"]
    proc = run_main("vit_exp.run", *args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    line = (tmp_path / "sweep" / "0" / "error.txt").read_text().strip()
    assert line == f"data.root: folder not found: {missing}"
    (trial,) = study(storage, "failing").trials
    assert trial.state.name == "FAIL" and trial.user_attrs["error"] == line
    import mlflow

    client = mlflow.MlflowClient(tracking_store)
    (parent,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert parent.data.tags["sweep.failed_jobs"] == "0" and parent.data.tags["sweep.job.0.error"] == line


def sweep_parents(store: str) -> list:
    """The sweep parent runs of the store, oldest first."""
    import mlflow

    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("vit-exp").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.data.tags.get("vit_exp.role") == "sweep"]


@pytest.mark.integration
def test_each_parent_names_the_study_and_its_best_and_a_complete_study_makes_no_parent(
    tmp_path, tracking_store
):
    """A study by val/loss: one trial of 4 steps, then continued by a command with one trial of 1 step
    (a worse loss), then once more with nothing left. The continuing parent keeps its own best (trial
    1) and carries the study's (trial 0, of the first command); the last command prints one line,
    exits 0 and makes no run."""
    storage = tracking_store.replace("mlflow.db", "optuna.db")
    by_loss = ["hydra.sweeper.direction=minimize", "optimized_metric=val/loss"]
    first = run_main("vit_exp.run", *sweep_args(tmp_path, "grown", 1, "first", steps=4), *by_loss)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_main("vit_exp.run", *sweep_args(tmp_path, "grown", 2, "second", steps=1), *by_loss)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = study(storage, "grown").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].value < trials[1].value  # 4 steps beat 1 step: the study's best is not the 2nd's
    parents = sweep_parents(tracking_store)
    assert len(parents) == 2
    for parent, complete in zip(parents, (1, 2), strict=True):
        assert parent.data.tags["optuna.study_name"] == "grown"
        assert parent.data.tags["optuna.storage"] == storage
        assert parent.data.metrics["study/n_complete"] == complete
    continuing = parents[1].data
    assert continuing.metrics["study/best_value"] == trials[0].value
    assert continuing.metrics["study/best_trial"] == 0
    assert continuing.tags["optuna.best_params"] == f"optim.lr={trials[0].params['optim.lr']!r}"
    assert continuing.tags["sweep.best_job"] == "1"  # its own best: its one job, as before
    assert continuing.metrics["val/loss"] == trials[1].value

    again = run_main("vit_exp.run", *sweep_args(tmp_path, "grown", 2, "third"), *by_loss)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [line for line in again.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, again.stdout[-3000:]
    assert lines[0].endswith(
        f"Optuna: study 'grown' holds n_trials=2 trials (complete): best value {trials[0].value} "
        "(trial 0); nothing to run"
    )
    assert [p.info.run_id for p in sweep_parents(tracking_store)] == [p.info.run_id for p in parents]
    assert len(study(storage, "grown").trials) == 2
    assert not any(p.is_dir() for p in (tmp_path / "third").iterdir())  # no job
