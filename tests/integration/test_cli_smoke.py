"""Each CLI that other tests run in-process, once as a real ``python -m vit_exp.<cli>`` process.

Most CLI tests call the entry function in the test process (tests/helpers/inprocess.py). These start
each command as a user does (a fresh interpreter, the module's ``__main__``) on the session's
trained store (tests/conftest.py) and check its exit code, output and files. ``vit_exp.run`` is a
real process in that store's training and all through the integration tier; ``vit_exp.ui`` in
test_ui.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.processes import run_cli

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)

CLASSES = ["ant", "bee", "cat"]  # of the trained store


def store_args(trained_store: dict, run_dir: Path) -> list[str]:
    return [f"mlflow.tracking_uri={trained_store['uri']}", f"hydra.run.dir={run_dir}"]


def test_eval_runs_as_a_process(trained_store, tmp_path):
    proc = run_cli(
        "vit_exp.eval",
        "model_uri=models:/tiny-vit/2",
        "data=image_folder",
        f"data.root={trained_store['root']}",
        "tag_version=false",  # the shared store's versions stay as trained
        "mlflow.experiment=smoke-eval",
        *store_args(trained_store, tmp_path / "eval"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval on 36 images: top1" in proc.stdout
    assert (tmp_path / "eval" / "per_class_accuracy.csv").is_file()


def test_predict_runs_as_a_process(trained_store, tmp_path):
    image = sorted((trained_store["root"] / "val" / "bee").glob("*.png"))[0]
    proc = run_cli(
        "vit_exp.predict",
        "model_uri=models:/tiny-vit/1",
        f"inputs={image}",
        f"output_dir={tmp_path / 'out'}",
        *store_args(trained_store, tmp_path / "predict"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    assert row["file"] == str(image) and row["top_k"][0]["class_name"] in CLASSES


def test_promote_runs_as_a_process(trained_store, tmp_path):
    proc = run_cli(
        "vit_exp.promote", "name=tiny-vit", "dry_run=true", *store_args(trained_store, tmp_path / "promote")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "candidate" in proc.stdout and "[dry run]" in proc.stdout
    assert set(trained_store["client"].get_registered_model("tiny-vit").aliases) == {
        "best",
        "last",
    }  # a dry run


def test_sync_runs_as_a_process(trained_store, tmp_path):
    outbox = trained_store["tmp"] / "run" / "mlflow_outbox"
    proc = run_cli("vit_exp.sync", f"outbox={outbox}", f"hydra.run.dir={tmp_path / 'sync'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = trained_store["run"].info.run_id
    assert "nothing to send" in proc.stdout and "are all stored" in proc.stdout and run_id in proc.stdout
