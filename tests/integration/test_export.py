"""``python -m vit_exp.export`` on a real SQLite store: an ONNX and a MindIR export registered beside
the version they come from, linked both ways, exported once; the ONNX one served by ``mlflow models
serve`` where ``import mindspore`` fails, answering as the MindSpore version does; ViT-B/16 exports
equal to the model; bad input in one line with nothing registered."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import free_port, run_cli, stop_process, wait_for_http

pytestmark = pytest.mark.integration
CLASSES = ["ant", "bee", "cat"]
NAME = "export-vit"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A tiny ViT trained 2 epochs on 3 colour classes, versions 1 and 2 of ``export-vit``."""
    return train_tiny(tmp_path_factory.mktemp("export"), NAME)


def train_tiny(tmp: Path, name: str, *overrides: str) -> dict:
    """``python -m vit_exp.run``: a tiny ViT, 2 epochs on 3 colour classes, a version of ``name`` per
    epoch, in its own SQLite store under ``tmp``; its store, data, folder, client and output."""
    import mlflow

    from tests.helpers.data import write_image_folder

    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    root = write_image_folder(tmp / "ds", CLASSES, per_class=8, size=16)
    proc = run_cli(
        "vit_exp.run",
        *TINY_MODEL,
        "data=image_folder",
        f"data.root={root}",
        "trainer.epochs=2",
        "trainer.batch_size=8",
        f"registry.name={name}",
        "registry.register=every",
        *overrides,
        f"mlflow.tracking_uri={uri}",
        f"paths.cache_dir={tmp / 'cache'}",
        f"hydra.run.dir={tmp / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {"uri": uri, "root": root, "tmp": tmp, "client": client, "output": proc.stdout + proc.stderr}


def export(store, *args: str):
    return run_main(
        "vit_exp.export",
        *args,
        f"mlflow.tracking_uri={store['uri']}",
        f"hydra.run.dir={store['tmp'] / 'exports'}",
    )


def images(store) -> list[bytes]:
    return [sorted((store["root"] / "val" / c).glob("*.png"))[0].read_bytes() for c in CLASSES]


def test_export_registers_beside_its_version_once(store):
    client = store["client"]
    proc = export(store, f"model_uri=models:/{NAME}/2", "format=onnx")
    assert proc.returncode == 0, proc.stderr
    assert f"registered models:/{NAME}-onnx/1 (exported from models:/{NAME}/2" in proc.stderr + proc.stdout
    source = client.get_model_version(NAME, "2")
    exported = client.get_model_version(f"{NAME}-onnx", "1")
    assert source.tags["vit_exp.export.onnx"] == f"models:/{NAME}-onnx/1"
    assert exported.tags["vit_exp.exported_from"] == f"models:/{NAME}/2"
    assert exported.run_id == source.run_id
    for key in ("data.name", "data.digest", "val/top1", "epoch"):
        assert exported.tags[key] == source.tags[key]
    assert float(exported.tags["export.max_abs_diff"]) <= 1e-4
    # the same step's val metrics on the same dataset, on the export's LoggedModel
    source_model = client.get_logged_model(source.source.removeprefix("models:/"))
    export_model = client.get_logged_model(exported.source.removeprefix("models:/"))
    assert export_model.source_run_id == source.run_id

    def metrics(model):
        return {(m.key, m.step, m.value, m.dataset_digest) for m in model.metrics}

    assert metrics(export_model) == metrics(source_model) and metrics(source_model)
    run = client.get_run(source.run_id)
    assert export_model.model_id in {o.model_id for o in run.outputs.model_outputs}

    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(store["uri"])
    ours = Model.load(mlflow.artifacts.download_artifacts(f"models:/{NAME}-onnx/1") + "/MLmodel")
    theirs = Model.load(mlflow.artifacts.download_artifacts(f"models:/{NAME}/2") + "/MLmodel")
    assert ours.signature == theirs.signature
    assert ours.flavors["python_function"]["config"]["class_names"] == CLASSES
    assert ours.flavors["onnx"]["data"] == "artifacts/model.onnx"

    again = export(store, f"model_uri=models:/{NAME}/2", "format=onnx")
    assert again.returncode == 0, again.stderr
    assert f"already exported to onnx: models:/{NAME}-onnx/1" in again.stderr + again.stdout
    assert len(client.search_model_versions(f"name='{NAME}-onnx'")) == 1

    mindir = export(store, f"model_uri=models:/{NAME}/2", "format=mindir")
    assert mindir.returncode == 0, mindir.stderr
    assert client.get_model_version(NAME, "2").tags["vit_exp.export.mindir"] == f"models:/{NAME}-mindir/1"


def test_onnx_export_is_served_without_mindspore_and_answers_as_the_version(store, tmp_path):
    import mlflow
    import pandas as pd

    if export(store, f"model_uri=models:/{NAME}/2", "format=onnx").returncode:
        pytest.fail("export failed")
    mlflow.set_tracking_uri(store["uri"])
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}-onnx/1"))
    requirements = (local / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "mindspore" not in requirements
    assert "mlflow-skinny==" in requirements  # MLflow without its server's dependencies

    blocked = tmp_path / "blocked" / "mindspore"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no MindSpore in this serving environment')\n")
    port = free_port()
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=store["uri"],
        PYTHONPATH=str(blocked.parent),  # `import mindspore` fails in the server and its workers
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}-onnx/1"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path / "serve.log"
    server = subprocess.Popen(
        command, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log_path)
        rows = [base64.b64encode(b).decode() for b in images(store)] + ["not base64!"]
        request = {"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]}}
        body = json.dumps(request).encode()
        post = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=60) as answer:
            served = json.loads(answer.read())["predictions"]
    finally:
        stop_process(server)
    assert "no MindSpore in this serving environment" not in log_path.read_text()  # nothing tried
    version = mlflow.pyfunc.load_model(f"models:/{NAME}/2").predict(pd.DataFrame({"image": images(store)}))
    assert [row["class_name"] for row in served[:3]] == list(version["class_name"])
    assert [row["top_k_names"] for row in served[:3]] == [list(n) for n in version["top_k_names"]]
    np.testing.assert_allclose([row["probability"] for row in served[:3]], version["probability"], atol=1e-5)
    assert served[3]["class_name"] is None and served[3]["error"].startswith("row 3: not valid base64")

    # the MindIR export, loaded as a pyfunc (it runs on MindSpore's GraphCell), answers the same
    if export(store, f"model_uri=models:/{NAME}/2", "format=mindir").returncode:
        pytest.fail("export failed")
    mindir = mlflow.pyfunc.load_model(f"models:/{NAME}-mindir/1").predict(
        pd.DataFrame({"image": images(store)})
    )
    assert list(mindir["class_name"]) == list(version["class_name"])
    np.testing.assert_allclose(mindir["probability"], version["probability"], atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "mindir"])
def test_vit_b16_export_gives_the_models_logits(tmp_path, fmt):
    from vit_exp.models.config import ViTConfig
    from vit_exp.models.export import check_export, write_export
    from vit_exp.models.kernels.plan import plan_kernels
    from vit_exp.models.vit import ViT

    config = ViTConfig(num_classes=1000)  # ViT-B/16 at 224, random weights
    net = ViT(config, plan_kernels(config, "CPU"))
    check = check_export(net, write_export(net, fmt, tmp_path), fmt)
    assert check.passed, check.describe()


def test_bad_input_is_one_line_and_registers_nothing(store):
    client = store["client"]

    def error(*args: str) -> str:
        proc = export(store, *args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        return line

    assert error(f"model_uri=models:/{NAME}/1", "format=tflite") == (
        "error: format=tflite: no such export format; choose one of: onnx, mindir"
    )
    failed = error(f"model_uri=models:/{NAME}/1", "format=onnx", "tolerance=1e-12")
    assert (
        f"the onnx export of models:/{NAME}/1 failed its check" in failed and "nothing registered" in failed
    )
    assert not [
        v
        for v in client.search_model_versions(f"name='{NAME}-onnx'")
        if v.tags.get("vit_exp.exported_from") == f"models:/{NAME}/1"
    ]
    assert "vit_exp.export.onnx" not in client.get_model_version(NAME, "1").tags
    assert "no version 9" in error(f"model_uri=models:/{NAME}/9")
    if export(store, f"model_uri=models:/{NAME}/2", "format=onnx").returncode:
        pytest.fail("export failed")
    assert error(f"model_uri=models:/{NAME}-onnx/1") == (
        f"error: models:/{NAME}-onnx/1 is the onnx export of models:/{NAME}/2; export that version instead"
    )

    # a version whose run is deleted
    import mlflow

    mlflow.set_tracking_uri(store["uri"])  # the version's source models:/<model_id> resolves from it
    version = client.get_model_version(NAME, "1")
    run = client.create_run(client.get_run(version.run_id).info.experiment_id)
    client.create_registered_model("orphan-vit")
    client.create_model_version("orphan-vit", source=version.source, run_id=run.info.run_id)
    client.delete_run(run.info.run_id)
    deleted = f"its run {run.info.run_id} is deleted; restore it to export this version"
    assert error("model_uri=models:/orphan-vit/1") == f"error: version 1 of orphan-vit: {deleted}"
    assert not client.search_registered_models("name='orphan-vit-onnx'")

    # ... and one whose run is gone from the store (mlflow gc removes a deleted run for good)
    gc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "gc",
            "--backend-store-uri",
            store["uri"],
            "--run-ids",
            run.info.run_id,
        ],
        capture_output=True,
        text=True,
    )
    assert gc.returncode == 0, gc.stderr
    gone = f"its run {run.info.run_id} is gone from this store; nothing to export from"
    assert error("model_uri=models:/orphan-vit/1") == f"error: version 1 of orphan-vit: {gone}"
    assert not client.search_registered_models("name='orphan-vit-onnx'")


def test_registry_export_exports_each_new_version_in_the_background(tmp_path):
    """``registry.export=[onnx]``: each version is exported by a detached process after it is
    registered, one at a time; the training command does not wait for them."""
    import time

    trained = train_tiny(tmp_path, "auto-vit", "registry.export=[onnx]")
    assert "exporting models:/auto-vit/2 to onnx in the background" in trained["output"]
    client = trained["client"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        tags = [client.get_model_version("auto-vit", v).tags for v in ("1", "2")]
        if all("vit_exp.export.onnx" in t for t in tags):
            break
        time.sleep(2)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "run" / "exports").glob("*.log")))
    assert [t.get("vit_exp.export.onnx") for t in tags] == [f"models:/auto-vit-onnx/{v}" for v in (1, 2)], (
        logs
    )
    exports = {
        v.version: v.tags["vit_exp.exported_from"]
        for v in client.search_model_versions("name='auto-vit-onnx'")
    }
    assert sorted(exports.values()) == ["models:/auto-vit/1", "models:/auto-vit/2"]
