"""Registry consumers on a real SQLite store: promote, eval by alias, predict a mixed folder, serve.

The CLIs run in this process through their entry function (tests/helpers/inprocess.py); the model
comes from the session's trained store (tests/conftest.py).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import tiny_vit
from tests.helpers.processes import free_port, stop_process, wait_for_http

CLASSES = ["ant", "bee", "cat"]


pytestmark = pytest.mark.integration  # make test stays under ~6 min; CI's integration tier runs it


@pytest.fixture(scope="module")
def registry(trained_store):
    """Model 'consumer-vit' versions 1 and 2: a tiny ViT trained for 2 epochs on 3 colour classes.

    The session's trained store (tests/conftest.py) registered them as 'tiny-vit'; 'consumer-vit'
    registers the same two checkpoints again (their LoggedModels, run and tags), so what these tests
    change (aliases, version tags, eval runs) leaves 'tiny-vit' as it was trained.
    """
    import mlflow

    client = client_for(trained_store)
    client.create_registered_model("consumer-vit")
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(trained_store["uri"])  # a source models:/<model_id> resolves from it
    try:
        for version in sorted(client.search_model_versions("name='tiny-vit'"), key=lambda v: int(v.version)):
            client.create_model_version(
                "consumer-vit",
                source=version.source,
                run_id=version.run_id,
                tags=version.tags,
                model_id=version.model_id,
            )
    finally:
        mlflow.set_tracking_uri(None)  # it also wrote the environment: the test's store again
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment
    return {"uri": trained_store["uri"], "root": trained_store["root"], "tmp": trained_store["tmp"]}


@pytest.fixture
def champion(registry) -> str:
    """Make sure @champion exists (the best version by val/top1); return its version."""
    client = client_for(registry)
    aliases = client.get_registered_model("consumer-vit").aliases
    if "champion" not in aliases:
        versions = client.search_model_versions("name='consumer-vit'")
        best = max(versions, key=lambda v: (float(v.tags["val/top1"]), -int(v.version)))
        client.set_registered_model_alias("consumer-vit", "champion", best.version)
    return str(client.get_model_version_by_alias("consumer-vit", "champion").version)


def promote_choice(versions) -> str:
    """The version promote picks: best val/top1, then lowest val/loss, then later epoch and version."""

    def key(v):
        tags = v.tags
        return (float(tags["val/top1"]), -float(tags["val/loss"]), int(tags["epoch"]), int(v.version))

    return str(max(versions, key=key).version)


def cli(registry, module: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI ``module`` on the registry's store, in this process (tests/helpers/inprocess.py)."""
    return run_main(module, f"mlflow.tracking_uri={registry['uri']}", *args)


def client_for(registry):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=registry["uri"], registry_uri=registry["uri"])


def one_error_line(proc) -> str:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def test_promote_dry_run_then_promote_then_min_delta(registry):
    client = client_for(registry)
    for alias in client.get_registered_model("consumer-vit").aliases:  # start from no aliases
        client.delete_registered_model_alias("consumer-vit", alias)
    out = registry["tmp"] / "promote"
    dry = cli(registry, "vit_exp.promote", "name=consumer-vit", "dry_run=true", f"hydra.run.dir={out}/a")
    assert dry.returncode == 0, dry.stderr
    assert "candidate" in dry.stdout and "val/top1" in dry.stdout
    assert client.get_registered_model("consumer-vit").aliases == {}

    best = promote_choice(client.search_model_versions("name='consumer-vit'"))
    first = cli(registry, "vit_exp.promote", "name=consumer-vit", f"hydra.run.dir={out}/b")
    assert first.returncode == 0, first.stderr
    assert str(client.get_model_version_by_alias("consumer-vit", "champion").version) == str(best)
    tags = client.get_model_version("consumer-vit", best).tags
    assert tags["promotion.alias"] == "champion" and "@" in tags["promotion.by"]
    assert tags["promotion.metric"].startswith("val/top1=") and tags["promotion.replaced_version"] == "none"

    # Another version now reports a better eval score: it wins on eval/top1 unless min_delta blocks it.
    other = "1" if str(best) == "2" else "2"
    client.set_model_version_tag("consumer-vit", other, "eval/top1", "0.99")
    client.set_model_version_tag("consumer-vit", best, "eval/top1", "0.98")
    blocked = cli(
        registry,
        "vit_exp.promote",
        "name=consumer-vit",
        "metric=eval/top1",
        "min_delta=0.05",
        f"hydra.run.dir={out}/c",
    )
    assert blocked.returncode == 0 and "stays on version" in blocked.stdout + blocked.stderr
    assert str(client.get_model_version_by_alias("consumer-vit", "champion").version) == str(best)
    moved = cli(
        registry,
        "vit_exp.promote",
        "name=consumer-vit",
        "metric=eval/top1",
        "reason=better eval",
        f"hydra.run.dir={out}/d",
    )
    assert moved.returncode == 0, moved.stderr
    assert str(client.get_model_version_by_alias("consumer-vit", "champion").version) == other
    assert str(client.get_model_version_by_alias("consumer-vit", "previous").version) == str(best)
    assert client.get_model_version("consumer-vit", other).tags["promotion.reason"] == "better eval"
    # leave the registry as the other tests expect: champion = best by val/top1
    client.set_registered_model_alias("consumer-vit", "champion", best)


def test_eval_by_alias_matches_mindspore_metrics(registry, champion):
    out = registry["tmp"] / "eval"
    proc = cli(
        registry,
        "vit_exp.eval",
        "model_uri=models:/consumer-vit@champion",
        "data=image_folder",
        f"data.root={registry['root']}",
        "batch_size=7",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = client_for(registry)
    version = client.get_model_version_by_alias("consumer-vit", "champion")
    runs = client.search_runs(
        [client.get_experiment_by_name("vit-exp").experiment_id], filter_string="tags.`vit_exp.role` = 'eval'"
    )
    run = runs[0]
    assert run.data.tags["model.registered_name"] == "consumer-vit"
    assert run.data.tags["model.version"] == str(version.version)
    assert run.data.tags["model.source_run_id"] == version.run_id
    assert {"per_class_accuracy.csv", "confusion_matrix.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    assert float(version.tags["eval/top1"]) == pytest.approx(run.data.metrics["eval/top1"], abs=1e-6)
    assert version.tags["eval/run_id"] == run.info.run_id

    # MindSpore's own metrics on the same checkpoint and data.
    import mindspore as ms
    import mlflow
    from mindspore.train import Model, Top1CategoricalAccuracy, TopKCategoricalAccuracy

    from vit_exp.data.folder import ImageFolderData
    from vit_exp.data.pipeline import val_dataset

    mlflow.set_tracking_uri(registry["uri"])
    mlflow.set_registry_uri(registry["uri"])
    source = Path(mlflow.artifacts.download_artifacts(f"models:/consumer-vit/{version.version}"))
    (ckpt,) = (source / "artifacts").glob("*.ckpt")
    assert f"-e{int(version.tags['epoch']):03d}-" in ckpt.name
    net = tiny_vit(num_classes=3)
    ms.load_param_into_net(net, ms.load_checkpoint(str(ckpt)), strict_load=True)
    data = ImageFolderData(root=registry["root"])
    from vit_exp.train.losses import CrossEntropySmooth

    model = Model(
        net,
        loss_fn=CrossEntropySmooth(3),
        metrics={"top1": Top1CategoricalAccuracy(), "top5": TopKCategoricalAccuracy(3)},
    )
    expected = model.eval(val_dataset(data, 32, 7), dataset_sink_mode=False)
    assert run.data.metrics["eval/top1"] == pytest.approx(expected["top1"], abs=1e-9)
    assert run.data.metrics["eval/top5"] == pytest.approx(expected["top5"], abs=1e-9)
    rows = list(csv.DictReader((out / "per_class_accuracy.csv").open()))
    assert [r["class_name"] for r in rows] == CLASSES
    assert sum(int(r["correct"]) for r in rows) / sum(int(r["support"]) for r in rows) == pytest.approx(
        expected["top1"]
    )


@pytest.fixture
def mixed_folder(registry, tmp_path):
    from PIL import Image

    source = sorted((registry["root"] / "val" / "bee").glob("*.png"))[0]
    image = Image.open(source).convert("RGB")
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    image.convert("L").save(folder / "gray.png")
    image.convert("CMYK").save(folder / "cmyk.jpg")
    image.convert("RGBA").save(folder / "nested" / "rgba.png")
    image.save(folder / "plain.jpeg")
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    return folder


def test_predict_a_mixed_folder(registry, champion, mixed_folder, tmp_path):
    out = tmp_path / "pred"
    proc = cli(
        registry,
        "vit_exp.predict",
        "model_uri=models:/consumer-vit@champion",
        f"inputs={mixed_folder}",
        f"output_dir={out}",
        "top_k=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "predictions.json").read_text())
    files = sorted(Path(r["file"]).name for r in result["predictions"])
    assert files == ["cmyk.jpg", "gray.png", "plain.jpeg", "rgba.png"]
    assert [Path(e["file"]).name for e in result["errors"]] == ["broken.jpg"]
    assert "broken.jpg" in proc.stdout + proc.stderr
    for row in result["predictions"]:
        assert [t["rank"] for t in row["top_k"]] == [1, 2]
        assert row["top_k"][0]["class_name"] == CLASSES[row["top_k"][0]["class_index"]]
        assert row["top_k"][0]["probability"] >= row["top_k"][1]["probability"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 8
    assert (out / "annotated" / "nested" / "rgba.png").is_file() and (
        out / "annotated" / "cmyk.png"
    ).is_file()

    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(registry["uri"])
    model = mlflow.pyfunc.load_model("models:/consumer-vit@champion")
    plain = model.predict(pd.DataFrame({"image": [(mixed_folder / "plain.jpeg").read_bytes()]}))
    row = next(r for r in result["predictions"] if r["file"].endswith("plain.jpeg"))
    assert row["top_k"][0]["class_index"] == int(plain["class_index"][0])
    assert row["top_k"][0]["probability"] == pytest.approx(float(plain["probability"][0]), abs=1e-6)


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.mark.integration  # `mlflow models serve`: a server process
def test_serve_champion_over_http(registry, champion, tmp_path):
    port = free_port()
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=registry["uri"],
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/consumer-vit@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        images = [sorted((registry["root"] / "val" / c).glob("*.png"))[0].read_bytes() for c in CLASSES]
        request = {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(b).decode()] for b in images],
            }
        }
        served = post(f"http://127.0.0.1:{port}/invocations", request)["predictions"]

        import mlflow
        import pandas as pd

        mlflow.set_tracking_uri(registry["uri"])
        local = mlflow.pyfunc.load_model("models:/consumer-vit@champion").predict(
            pd.DataFrame({"image": images})
        )
        assert [p["class_index"] for p in served] == local["class_index"].tolist()
        np.testing.assert_allclose(
            [p["top_k_probabilities"] for p in served], local["top_k_probabilities"].tolist(), rtol=1e-6
        )
        assert all(p["error"] is None for p in served)

        # An unreadable image and a value that is not base64 among 16: the others are answered, each
        # bad row says why.
        batch = [images[i % 3] for i in range(16)]
        batch[7] = images[0][: len(images[0]) // 2]  # a truncated PNG
        rows = [[base64.b64encode(b).decode()] for b in batch]
        rows[11] = ["this is not base64!"]
        mixed = post(
            f"http://127.0.0.1:{port}/invocations",
            {"dataframe_split": {"columns": ["image"], "data": rows}},
        )["predictions"]
        assert len(mixed) == 16
        assert mixed[7]["class_index"] is None and mixed[7]["top_k_names"] == []
        assert mixed[7]["error"].startswith("row 7: not a readable image")
        assert mixed[11]["error"].startswith("row 11: not valid base64") and mixed[11]["class_name"] is None
        good = [p for i, p in enumerate(mixed) if i not in (7, 11)]
        assert all(p["error"] is None for p in good)
        expected = [served[i % 3]["class_index"] for i in range(16) if i not in (7, 11)]
        assert [p["class_index"] for p in good] == expected
    finally:
        stop_process(server)
        log.close()


def test_clear_errors(registry, champion, tmp_path):
    run_dir = f"hydra.run.dir={tmp_path / 'err'}"
    line = one_error_line(cli(registry, "vit_exp.eval", "model_uri=models:/nope/1", run_dir))
    assert "unknown registered model 'nope'" in line and "consumer-vit" in line
    line = one_error_line(cli(registry, "vit_exp.eval", "model_uri=models:/consumer-vit/99", run_dir))
    assert "no version 99" in line and "1, 2" in line
    line = one_error_line(
        cli(
            registry,
            "vit_exp.predict",
            "model_uri=models:/consumer-vit@gold",
            f"inputs={registry['root']}",
            run_dir,
        )
    )
    assert "no alias 'gold'" in line and "champion" in line
    line = one_error_line(
        cli(
            registry,
            "vit_exp.predict",
            "model_uri=models:/consumer-vit/1",
            f"inputs={tmp_path / 'missing'}",
            run_dir,
        )
    )
    assert "inputs: no such file or folder" in line and "missing" in line
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "notes.txt").write_text("not an image")
    (unreadable / "broken.png").write_bytes(b"\x89PNG broken")
    line = one_error_line(
        cli(registry, "vit_exp.predict", "model_uri=models:/consumer-vit/1", f"inputs={unreadable}", run_dir)
    )
    assert "none of the 2 file(s)" in line and "readable image" in line
    empty = f"mlflow.tracking_uri=sqlite:///{tmp_path / 'empty' / 'mlflow.db'}"
    line = one_error_line(run_main("vit_exp.promote", empty, "name=consumer-vit", run_dir))
    assert "model registry is empty" in line
    closed = f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}"
    line = one_error_line(run_main("vit_exp.eval", closed, "model_uri=models:/consumer-vit/1", run_dir))
    assert "tracking store unreachable" in line
