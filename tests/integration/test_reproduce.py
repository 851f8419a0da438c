"""Reproduce (issue 28): a short deterministic run trained again from its record gives the same
metrics at every step (0.0 on train/loss and val/top1), as a new run tagged with the run it
reproduces; a model URI names its run; a sweep job reproduces as one plain run; other code or data,
or a record without data digests, is refused in one line before anything is recorded.

Real CLI processes for the training (the refusals: the CLI's entry in this process), a real SQLite
store, a tiny ViT on 3 colour classes in deterministic mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import run_cli
from vit_exp.config import PROJECT_ROOT

pytestmark = pytest.mark.integration  # real training processes: the integration tier

MODEL = "repro-vit"


def train_args(root: Path, cache: Path) -> list[str]:
    return [
        *TINY_MODEL,
        "data=image_folder",
        f"data.root={root}",
        "trainer.epochs=2",
        "trainer.batch_size=8",
        "trainer.deterministic=true",
        f"registry.name={MODEL}",
        "mlflow.experiment=original",
        f"paths.cache_dir={cache}",
    ]


def code_allowance() -> list[str]:
    """``allow_code_change=true`` when this checkout has uncommitted changes (or is no git checkout):
    the code check is tested on its own; a clean checkout (CI's) reproduces without it."""
    from vit_exp.tracking.record.lifecycle import git_state

    return [] if git_state().get("git.dirty") == "false" else ["allow_code_change=true"]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict:
    """One short deterministic training run (experiment ``original``) in a store of its own."""
    import mlflow

    folder = tmp_path_factory.mktemp("reproduce")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    root = write_image_folder(folder / "ds", ["ant", "bee", "cat"], per_class=8, size=16)
    args = train_args(root, folder / "cache")
    proc = run_cli(
        "vit_exp.run", *args, f"hydra.run.dir={folder / 'original'}", env={"MLFLOW_TRACKING_URI": uri}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("original").experiment_id])
    return {"uri": uri, "client": client, "run": run, "root": root, "folder": folder}


def reproduce(original: dict, tmp_path: Path, *args: str):
    return run_cli(
        "vit_exp.reproduce",
        *args,
        f"run_dir={tmp_path / 'new-run'}",
        f"hydra.run.dir={tmp_path / 'reproduce'}",
        env={"MLFLOW_TRACKING_URI": original["uri"]},
    )


def refusal(original: dict, tmp_path: Path, *args: str) -> str:
    """The one error line of a reproduce that is refused (in this process), nothing recorded."""
    client = original["client"]
    experiment = original["run"].info.experiment_id
    before = len(client.search_runs([experiment]))
    proc = run_main(
        "vit_exp.reproduce",
        *args,
        f"hydra.run.dir={tmp_path / 'refused'}",
        env={"MLFLOW_TRACKING_URI": original["uri"]},
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(client.search_runs([experiment])) == before  # nothing recorded
    (line,) = [text for text in proc.stderr.splitlines() if text.startswith("error:")]
    return line


def new_run(original: dict, proc) -> object:
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run_id = original["client"], original["run"].info.run_id
    (reproduction,) = client.search_runs(
        [original["run"].info.experiment_id],
        f"tags.`vit_exp.reproduces` = '{run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert reproduction.info.run_id != run_id
    assert reproduction.info.status == "FINISHED"
    assert f"run {reproduction.info.run_id} against run {run_id}:" in proc.stdout
    return reproduction


def differences(proc) -> dict[str, str]:
    """The printed table: metric -> its largest difference."""
    table = proc.stdout.split(" against run ")[1].splitlines()[2:]
    return {
        line.split()[0]: line.split()[2] for line in table if line.startswith("  ") and "only in" not in line
    }


def test_a_short_deterministic_run_reproduces_exactly(original, tmp_path):
    client, run = original["client"], original["run"]
    versions = len(client.search_model_versions(f"name='{MODEL}'"))
    proc = reproduce(original, tmp_path, f"models:/{MODEL}@best", *code_allowance())
    reproduction = new_run(original, proc)
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions  # no versions of its own
    shown = differences(proc)
    assert shown["train/loss"] == "0.0" and shown["val/top1"] == "0.0", proc.stdout
    assert reproduction.data.tags["vit_exp.reproduce.exact"] == "true"
    assert reproduction.data.tags["vit_exp.config_digest"] == run.data.tags["vit_exp.config_digest"]
    assert reproduction.info.run_name == run.info.run_name
    assert (tmp_path / "new-run" / "train.log").is_file()  # a training run's own directory and log
    report = json.loads(
        Path(client.download_artifacts(reproduction.info.run_id, "reproduction.json")).read_text()
    )
    assert report["metrics"]["train/loss"] == {"steps": 6, "max_abs_diff": 0.0}
    assert report["metrics"]["val/top1"] == {"steps": 2, "max_abs_diff": 0.0}
    assert report["original_run_id"] == run.info.run_id and report["only_in_original"] == []


def test_another_commit_is_refused_then_allowed(original, tmp_path):
    client, run_id = original["client"], original["run"].info.run_id
    recorded = original["run"].data.tags["git.commit"]
    client.set_tag(run_id, "git.commit", "f" * 40)
    try:
        line = refusal(original, tmp_path, run_id)
        assert f"run {run_id} was trained at commit ffffffffffff" in line
        assert f"; this checkout is at commit {recorded[:12]}" in line
        assert "pass allow_code_change=true" in line
        proc = reproduce(original, tmp_path, run_id, "allow_code_change=true")
    finally:
        client.set_tag(run_id, "git.commit", recorded)
    reproduction = new_run(original, proc)
    assert reproduction.data.tags["vit_exp.reproduce.code_changed"] == "true"
    assert "trained at commit ffffffffffff" in proc.stdout  # the warning
    assert differences(proc)["train/loss"] == "0.0"


def test_other_data_or_no_data_digests_are_refused(original, tmp_path):
    client, run = original["client"], original["run"]
    run_id, tags = run.info.run_id, run.data.tags
    extra = original["root"] / "val" / "ant" / "extra.png"
    extra.write_bytes((original["root"] / "val" / "ant" / "ant_0.png").read_bytes())
    try:
        line = refusal(original, tmp_path, run_id, *code_allowance())
    finally:
        extra.unlink()
    assert line.startswith(
        f"error: run {run_id} was trained on other data: val split {tags['data.val_digest']} then, "
    )
    assert "train split" not in line
    client.delete_tag(run_id, "data.train_digest")
    try:
        line = refusal(original, tmp_path, run_id)
    finally:
        client.set_tag(run_id, "data.train_digest", tags["data.train_digest"])
    assert line.startswith(f"error: run {run_id} was recorded without data digests (no data.train_digest tag")


def test_a_sweep_job_reproduces_as_one_plain_run(original, tmp_path):
    client, uri = original["client"], original["uri"]
    args = [a for a in train_args(original["root"], original["folder"] / "cache") if "experiment" not in a]
    proc = run_cli(
        "vit_exp.run",
        "--multirun",
        "--config-dir",
        "sweeps",
        "--config-name",
        "grid_lr_batch",
        *args,
        "optim.lr=2e-3",  # one job: the grid's keys given one value each
        "mlflow.experiment=sweep",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    experiment = client.get_experiment_by_name("sweep").experiment_id
    (job,) = client.search_runs([experiment], "tags.`hydra.job.num` = '0'")
    proc = reproduce(original | {"run": job}, tmp_path, job.info.run_id, *code_allowance())
    reproduction = new_run(original | {"run": job}, proc)
    assert (
        "mlflow.parentRunId" not in reproduction.data.tags and "hydra.job.num" not in reproduction.data.tags
    )
    assert f"--config-dir {PROJECT_ROOT / 'sweeps'} --config-name grid_lr_batch" in proc.stdout
    assert differences(proc)["train/loss"] == "0.0" and differences(proc)["val/top1"] == "0.0"
