"""``python -m vit_exp.reproduce``'s refusals, each one line with nothing recorded, and its comparison.

Runs recorded with MLflow's own client in the test's SQLite store (a training run's tags without the
training: the checks come before it); the reproduction itself is tests/integration/test_reproduce.py.
"""

from __future__ import annotations

import math

import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from vit_exp.reproduce import source_argument

DIGESTS = {"data.train_digest": "0" * 16, "data.val_digest": "1" * 16}


@pytest.fixture
def client(tracking_store):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_store, registry_uri=tracking_store)


def recorded_run(client, **tags: str) -> str:
    """A FINISHED run with ``tags`` (a training run's identity tag unless given)."""
    experiment = client.get_experiment_by_name("recorded") or client.create_experiment("recorded")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    run = client.create_run(experiment_id, tags={"vit_exp.config_digest": "c0ffee", **tags})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def reproduce(tmp_path, *args: str):
    proc = run_main("vit_exp.reproduce", *args, f"hydra.run.dir={tmp_path / 'reproduce'}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [text for text in proc.stderr.splitlines() if text.startswith("error:")]
    return line


def run_count(client) -> int:
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


def current_commit() -> str:
    from vit_exp.tracking.record.lifecycle import git_state

    return git_state().get("git.commit", "")


def test_a_bare_first_argument_is_the_source():
    assert source_argument(["abc", "allow_code_change=true"]) == ["source='abc'", "allow_code_change=true"]
    assert source_argument(["source=abc"]) == ["source=abc"]
    assert source_argument(["--cfg", "job"]) == ["--cfg", "job"]
    assert source_argument([]) == []


def test_without_a_source_it_says_what_to_give(tmp_path):
    assert "say which run to reproduce: python -m vit_exp.reproduce <run id" in reproduce(tmp_path)


def test_an_unknown_run_id_or_a_word_gets_one_line(tmp_path):
    assert f"no run {'a' * 32} in this store" in reproduce(tmp_path, "a" * 32)
    assert "source=latest is neither a run id (32 hex digits) nor a model URI" in reproduce(
        tmp_path, "latest"
    )


def test_a_version_whose_run_is_gone_names_the_run(client, tmp_path):
    run_id = recorded_run(client, **DIGESTS)
    client.create_registered_model("gone")
    client.create_model_version("gone", f"runs:/{run_id}/model", run_id)
    client.delete_run(run_id)
    line = reproduce(tmp_path, "models:/gone/1")
    assert line == f"error: version 1 of gone: its run {run_id} is gone from this store"


def test_an_eval_run_is_not_a_training_run(client, tmp_path):
    trained = recorded_run(client, **DIGESTS)
    evaluated = recorded_run(client, **{"vit_exp.role": "eval", "model.source_run_id": trained})
    line = reproduce(tmp_path, evaluated)
    assert line == (
        f"error: run {evaluated} is an eval run, not a training run: reproduce the run that trained its "
        f"model, {trained}"
    )


def test_a_run_recorded_before_data_digests_is_refused(client, tmp_path):
    run_id = recorded_run(client, **{"hydra.overrides": "(none)"})
    before = run_count(client)
    line = reproduce(tmp_path, run_id)
    assert line.startswith(f"error: run {run_id} was recorded without data digests (no data.train_digest tag")
    assert "it is not reproduced" in line
    assert run_count(client) == before  # nothing recorded


def test_another_commit_is_refused_naming_both_commits(client, tmp_path):
    run_id = recorded_run(client, **DIGESTS, **{"git.commit": "f" * 40, "git.dirty": "false"})
    before = run_count(client)
    line = reproduce(tmp_path, run_id)
    assert f"run {run_id} was trained at commit ffffffffffff; this checkout is " in line
    assert current_commit()[:12] in line
    assert line.endswith("use a clean checkout of its commit, or pass allow_code_change=true")
    assert run_count(client) == before


def test_other_data_is_refused_naming_the_split_and_both_digests(client, tmp_path):
    """allow_code_change=true lets the made-up record past the code and config checks, to its data."""
    root = write_image_folder(tmp_path / "ds", ["ant", "bee"], per_class=2, size=8)
    overrides = f"data=image_folder data.root={root} paths.cache_dir={tmp_path / 'cache'}"
    run_id = recorded_run(client, **DIGESTS, **{"hydra.overrides": overrides, "git.commit": current_commit()})
    before = run_count(client)
    line = reproduce(tmp_path, run_id, "allow_code_change=true")
    assert line.startswith(
        f"error: run {run_id} was trained on other data: train split 0000000000000000 then, "
    )
    assert f"now (in {root / 'train'}); val split 1111111111111111 then, " in line
    assert run_count(client) == before


def test_the_comparison_matches_steps_and_lists_missing_metrics(client):
    from vit_exp.tracking.reproduction import compare_runs

    original, reproduction = recorded_run(client), recorded_run(client)
    for step, (a, b) in enumerate([(1.0, 1.0), (0.5, 0.25), (math.nan, math.nan)]):
        client.log_metric(original, "train/loss", a, step=step)
        client.log_metric(reproduction, "train/loss", b, step=step)
    client.log_metric(reproduction, "train/loss", 9.0, step=7)  # a step the original does not have
    client.log_metric(original, "val/top1", 1.0, step=0)
    client.log_metric(original, "system/cpu_utilization_percentage", 50.0, step=0)  # not compared
    client.log_metric(reproduction, "val/top5", 1.0, step=0)
    comparison = compare_runs(client, original, reproduction)
    ((loss),) = comparison.metrics
    assert (loss.key, loss.steps, loss.max_abs_diff) == ("train/loss", 3, 0.25)
    assert (comparison.only_original, comparison.only_reproduction) == (["val/top1"], ["val/top5"])
    assert not comparison.exact
    table = comparison.table()
    assert "train/loss       3  0.25" in table
    assert "only in the original: val/top1" in table
