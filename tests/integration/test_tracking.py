"""A tiny real training run recorded in a real MLflow SQLite store, queried with MlflowClient."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.models import TINY_MODEL, requires_fused_kernels, tiny_vit
from tests.helpers.processes import run_cli


@pytest.fixture
def tiny_run(trained_store):
    """Two short epochs of a tiny ViT on a 3-class image folder, tracked in a temp store (shared by
    the session: tests/conftest.py)."""
    return trained_store


def test_params_tags_and_run_name(tiny_run):
    run = tiny_run["run"]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert float(params["optim.lr"]) == pytest.approx(3e-3)
    assert params["model.embed_dim"] == "32" and params["trainer.epochs"] == "2"
    assert int(params["model.num_parameters"]) > 10_000
    assert not any(k.startswith("hydra.") for k in params)
    # where the job kept its files is a tag, not a param (compare plots show hyperparameters)
    assert not [k for k in params if k.startswith("paths.") or k.endswith("cache_dir")]
    # params are hyperparameters: no class paths, no record or registry settings, no setup or locations
    assert not [k for k in params if k.endswith(("._target_", "._partial_"))]
    assert not [k for k in params if k.startswith(("mlflow.", "registry.")) or k == "data.root"]
    assert "data.num_workers" not in params and "trainer.print_every_n_steps" not in params
    assert run.data.tags["data.root"] == str(tiny_run["root"])
    tags = run.data.tags
    assert tags["paths.output_dir"] == str(tiny_run["tmp"] / "run")
    assert tags["paths.checkpoint_dir"] == str(tiny_run["tmp"] / "run" / "checkpoints")
    assert "optim.lr=3e-3" in tags["hydra.overrides"]
    assert tags["mindspore.version"] == "2.10.0" and tags["mlflow.version"].startswith("3.")
    assert tags["device.target"] == "cpu"
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert run.info.run_name.startswith("vit_tiny-image_folder") and "optim.lr=3e-3" in run.info.run_name
    # the last lines name the run's page in the UI, in the "Model training" view
    page = f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert f"mlflow ui: http://127.0.0.1:5000{page}" in tiny_run["stdout"]


def test_metric_histories(tiny_run):
    client, run_id = tiny_run["client"], tiny_run["run"].info.run_id
    steps_per_epoch = 36 // 8
    loss = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in loss] == list(range(1, 2 * steps_per_epoch + 1))
    # every 3 steps (mlflow.log_details_every_n_steps=3) and at each epoch's last step
    for key in ("train/lr", "train/step_time_ms", "train/throughput_img_s"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [3, 4, 6, 8], key
    lr = [m.value for m in sorted(client.get_metric_history(run_id, "train/lr"), key=lambda m: m.step)]
    assert 0 < lr[-1] < lr[0] < 3e-3
    step_ms = {m.step: m.value for m in client.get_metric_history(run_id, "train/step_time_ms")}
    for m in client.get_metric_history(run_id, "train/throughput_img_s"):
        assert m.value == pytest.approx(8 * 1000.0 / step_ms[m.step])  # batch 8, mean over the window
    for key in ("val/top1", "val/top5", "val/loss", "train/epoch_time_s"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [steps_per_epoch, 2 * steps_per_epoch], key
    assert all(0.0 <= m.value <= 1.0 for m in client.get_metric_history(run_id, "val/top1"))


def test_artifacts(tiny_run):
    client, run_id = tiny_run["client"], tiny_run["run"].info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {
        "hydra",
        "config_resolved.yaml",
        "environment.txt",
        "model_summary.txt",
        "class_names.json",
        "train.log",
    } <= top
    hydra_files = {a.path for a in client.list_artifacts(run_id, "hydra")}
    assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml"} <= hydra_files
    local = Path(client.download_artifacts(run_id, "class_names.json"))
    assert json.loads(local.read_text())["class_names"] == ["ant", "bee", "cat"]
    env = Path(client.download_artifacts(run_id, "environment.txt")).read_text()
    assert "mindspore==2.10.0" in env
    log = Path(client.download_artifacts(run_id, "train.log")).read_text()
    assert "epoch 2/2 done" in log and "best epoch" in log  # the console's lines, to the summary


def test_the_run_page_tells_the_runs_story(tiny_run):
    """The run's Description (``mlflow.note.content``): how it ended, model, data, progress, best
    epoch with its val metrics, time, the versions the store holds of it, the software."""
    run = tiny_run["run"]
    tags = run.data.tags
    ending, blank, *facts = tags["mlflow.note.content"].splitlines()
    assert ending == "**FINISHED**" and blank == ""
    facts = dict(line.removeprefix("- ").split(": ", 1) for line in facts)
    params = run.data.params["model.num_parameters"]
    assert facts["model"] == f"vit_tiny, {int(params):,} parameters, 3 classes"
    assert facts["data"] == f"image_folder:{tags['data.digest'][:8]} (36 train / 36 val images)"
    assert facts["progress"] == "epoch 2 of 2 done, step 8 of 8"
    best = run.data.metrics  # each metric's last value: best/* is the best epoch's
    assert facts["best"] == (
        f"epoch {int(best['best/epoch'])} by val/top1: top1 {best['best/val_top1']:.4f}, "
        f"top5 {best['best/val_top5']:.4f}, loss {best['best/val_loss']:.4f}"
    )
    assert facts["time"].endswith(" s")
    links = [f"[models:/tiny-vit/{v}](#/models/tiny-vit/versions/{v})" for v in (1, 2)]
    assert facts["model versions"] == ", ".join(links)  # what the store holds of the run
    assert f"mindspore {tags['mindspore.version']}" in facts["software"]


def test_one_data_digest_in_console_tags_datasets_versions_and_promote(tiny_run):
    """The console's ``image_folder:<8 hex>`` is the data digest's start, as promote shows it; each
    split's MLflow dataset digest (the UI's) begins with it and is the run's and versions' tag."""
    from vit_exp.data.digest import data_identity
    from vit_exp.data.folder import ImageFolderData
    from vit_exp.tracking.registry.checkpoints import DATA_TAGS
    from vit_exp.tracking.registry.promotion import VersionScore

    client, run = tiny_run["client"], tiny_run["run"]
    tags = run.data.tags
    label = f"image_folder:{tags['data.digest'][:8]}"
    assert f"data {label} in {tiny_run['root']} (36 train / 36 val images)" in tiny_run["stdout"]
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert {split: d.digest for split, d in inputs.items()} == {
        "train": tags["data.train_digest"],
        "val": tags["data.val_digest"],
    }
    assert all(d.digest.startswith(tags["data.digest"][:8]) and len(d.digest) == 16 for d in inputs.values())
    identity = data_identity(ImageFolderData(root=tiny_run["root"]), cache_dir=None)
    assert tags["data.digest"] == identity.digest and tags["data.val_digest"] == identity.dataset_digest(
        identity.val
    )
    for version in client.search_model_versions("name='tiny-vit'"):
        assert {key: version.tags[key] for key in DATA_TAGS} == {
            key: identity.tags()[key] for key in DATA_TAGS
        }
        assert all(
            f"{key.removeprefix('data.')} `{value}`" in version.description
            for key, value in identity.tags().items()
        )
        score = VersionScore(
            version.version, 0.0, [], run.info.run_id, "image_folder", version.tags["data.digest"]
        )
        assert score.data == label


def test_every_checkpoint_is_a_tagged_model_version(tiny_run, monkeypatch):
    client, run = tiny_run["client"], tiny_run["run"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_run["uri"])  # models:/ resolves from the global URIs
    versions = sorted(client.search_model_versions("name='tiny-vit'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert [v.tags["epoch"] for v in versions] == ["1", "2"]
    assert [
        client.get_logged_model(v.source.removeprefix("models:/")).tags["global_step"] for v in versions
    ] == ["4", "8"]
    history = client.get_metric_history(run.info.run_id, "val/top1")
    assert float(versions[-1].tags["val/top1"]) == pytest.approx(history[-1].value, abs=1e-5)
    assert all(v.run_id == run.info.run_id for v in versions)
    # six tags: the rule, the epoch, the data, the objective and its tie-breaker; the rest described
    assert set(versions[0].tags) == {
        "registered_by",
        "epoch",
        "data.name",
        "data.digest",
        "val/top1",
        "val/loss",
    }
    assert versions[0].tags["registered_by"] == "every (set by registry.register)"
    assert "val/top5" in versions[0].description and run.info.run_id in versions[0].description
    aliases = {k: str(v) for k, v in client.get_registered_model("tiny-vit").aliases.items()}
    top1 = [float(v.tags["val/top1"]) for v in versions]
    best = versions[top1.index(max(top1))]  # @best moves to a version that beats it: a tie keeps the holder
    assert aliases == {"last": "2", "best": str(best.version)}

    # Each version's MLmodel names its own checkpoint (the pyfunc directory is written once and
    # reused with the next checkpoint), and the file is in the version's artifacts.
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(tiny_run["uri"])
    mlflow.set_registry_uri(tiny_run["uri"])
    local = [Path(mlflow.artifacts.download_artifacts(artifact_uri=v.source)) for v in versions]
    models = [Model.load(str(path)) for path in local]
    assert [m.metadata["global_step"] for m in models] == [4, 8]
    paths = [m.flavors["python_function"]["artifacts"]["checkpoint"]["path"] for m in models]
    assert [p.rsplit("-", 2)[-2:] for p in paths] == [["e001", "s000004.ckpt"], ["e002", "s000008.ckpt"]]
    assert all((root / path).is_file() for root, path in zip(local, paths, strict=True))
    assert len({m.model_uuid for m in models}) == 2


def test_each_version_is_a_logged_model_of_its_run_stored_once(tiny_run):
    """MLflow 3: a LoggedModel per registered checkpoint (an output of the run at its step, with the
    run's val metrics of that step); the version comes from it; its checkpoint is the training
    checkpoint's own file (a hard link: one copy on disk)."""
    client, run = tiny_run["client"], tiny_run["run"]
    run_id = run.info.run_id
    models = client.search_logged_models([run.info.experiment_id], order_by=[{"field_name": "creation_time"}])
    assert [m.name for m in models] == ["vit_tiny-e001-s000004", "vit_tiny-e002-s000008"]
    assert all(m.source_run_id == run_id and str(m.status).endswith("READY") for m in models)
    outputs = client.get_run(run_id).outputs.model_outputs
    assert sorted((o.model_id, o.step) for o in outputs) == sorted(
        zip([m.model_id for m in models], [4, 8], strict=True)
    )
    versions = sorted(client.search_model_versions("name='tiny-vit'"), key=lambda v: int(v.version))
    assert [v.source for v in versions] == [f"models:/{m.model_id}" for m in models]
    val = {m.step: m for m in client.get_metric_history(run_id, "val/top1")}
    assert sorted(val) == [4, 8]  # linking the metrics to the models added no point to the run
    for model, step in zip(models, [4, 8], strict=True):
        linked = {m.key: m for m in model.metrics}
        assert set(linked) == {"val/top1", "val/top5", "val/loss"}
        assert linked["val/top1"].value == val[step].value and linked["val/top1"].step == step
        assert linked["val/top1"].dataset_name == "image_folder"
        checkpoint = tiny_run["tmp"] / "run" / "checkpoints" / f"{model.name}.ckpt"
        stored = Path(model.artifact_location.removeprefix("file://")) / "artifacts" / checkpoint.name
        assert stored.stat().st_ino == checkpoint.stat().st_ino  # the same file, stored once
    # The code and environment every version shares are stored once per run (hard links on a local store)
    first, second = (Path(m.artifact_location.removeprefix("file://")) for m in models)
    for shared in ("code/vit_exp.zip", "requirements.txt", "conda.yaml", "pyfunc_model.py"):
        assert (first / shared).stat().st_ino == (second / shared).stat().st_ino, shared
    assert (first / "MLmodel").stat().st_ino != (second / "MLmodel").stat().st_ino
    assert not list(Path(run.info.artifact_uri.removeprefix("file://")).glob("models"))


PREDICT_IN_A_FRESH_PROCESS = """
import importlib.util, json, sys
model_uri, paths, hide_checkout = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
if hide_checkout:  # the checkout's vit_exp (an editable install) out of the import path
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    assert importlib.util.find_spec("vit_exp") is None
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(model_uri)
out = model.predict(pd.DataFrame({"image": [open(p, "rb").read() for p in paths]}))
print(json.dumps({"idx": out["top_k_indices"].tolist(), "p": out["top_k_probabilities"].tolist(),
                  "names": out["class_name"].tolist(), "code": sys.modules["vit_exp"].__file__,
                  "fused": model.unwrap_python_model().predictor.net.uses_fused_kernels}))
"""


def predict_in_a_fresh_process(model_uri: str, images: list, cwd, env: dict, hide_checkout=False) -> dict:
    args = [model_uri, json.dumps([str(p) for p in images]), "1" if hide_checkout else "0"]
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT_IN_A_FRESH_PROCESS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_equals_direct_inference(served: dict, checkpoint, images: list, k: int = 2) -> None:
    """Top-k of MindSpore on ``checkpoint`` directly equals ``served`` (registry.top_k=2)."""
    import mindspore as ms
    from PIL import Image

    from vit_exp.data.images import preprocess

    net = tiny_vit(num_classes=3)
    net.set_train(False)
    ms.load_param_into_net(net, ms.load_checkpoint(str(checkpoint)), strict_load=True)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    batch = preprocess(arrays, 32, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    probs = ms.ops.softmax(net(ms.Tensor(batch)), axis=-1).asnumpy()
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    assert served["idx"] == order.tolist()
    np.testing.assert_allclose(served["p"], np.take_along_axis(probs, order, axis=1), rtol=1e-6, atol=1e-7)
    assert served["names"] == [["ant", "bee", "cat"][i] for i in order[:, 0]]


def test_pyfunc_in_fresh_process_equals_direct_inference(tiny_run):
    """models:/NAME/V loaded in a new process gives the same top-k as MindSpore on the checkpoint."""
    images = sorted((tiny_run["root"] / "val").rglob("*.png"))[::4]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tiny_run["uri"]}
    served = predict_in_a_fresh_process("models:/tiny-vit/2", images, tiny_run["tmp"], env)
    checkpoints = (tiny_run["tmp"] / "run/checkpoints").glob("*.ckpt")
    checkpoint = sorted(p for p in checkpoints if not p.name.endswith(".state.ckpt"))[-1]
    assert_equals_direct_inference(served, checkpoint, images)


def test_a_downloaded_version_needs_neither_the_checkout_nor_the_run_dir(tiny_run, tmp_path, monkeypatch):
    """Portable and private: no path of the training machine inside; loads from a copy elsewhere."""
    import mlflow

    from vit_exp.config import PROJECT_ROOT

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_run["uri"])  # models:/ resolves from the global URIs
    mlflow.set_tracking_uri(tiny_run["uri"])
    mlflow.set_registry_uri(tiny_run["uri"])
    copy = Path(mlflow.artifacts.download_artifacts("models:/tiny-vit/2", dst_path=str(tmp_path / "copy")))
    files = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
    stored = [f for f in files if f != "registered_model_meta"]  # written by the download (name, version)
    checkpoints = [f for f in stored if f.startswith("artifacts/") and f.endswith(".ckpt")]
    assert len(checkpoints) == 1 and len(stored) - 1 <= 5, stored  # small: vit_exp is one archive
    requirements = (copy / "requirements.txt").read_text().splitlines()
    assert {"numpy<2", "pandas<3", "mindspore==2.10.0"} <= set(requirements), requirements
    assert any(r.startswith("mlflow==3.") for r in requirements), requirements
    for path in (copy / f for f in files):
        text = path.read_bytes()
        for private in (str(tiny_run["tmp"]), str(PROJECT_ROOT), str(tiny_run["root"])):
            assert private.encode() not in text, f"{path.relative_to(copy)} holds {private}"
    images = sorted((tiny_run["root"] / "val").rglob("*.png"))[::4]
    staged = [tmp_path / "images" / p.name for p in images]
    staged[0].parent.mkdir()
    for source, target in zip(images, staged, strict=True):
        target.write_bytes(source.read_bytes())
    run_dir, moved = tiny_run["tmp"] / "run", tiny_run["tmp"] / "run-moved-away"
    run_dir.rename(moved)
    try:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        served = predict_in_a_fresh_process(str(copy), staged, tmp_path, env, hide_checkout=True)
    finally:
        moved.rename(run_dir)
    assert Path(served["code"]).is_relative_to(copy / "code" / "vit_exp.zip")  # the version's own vit_exp
    no_compiler = requires_fused_kernels.args[0]  # else the kernels build from the archive's sources
    assert served["fused"] is not no_compiler
    assert_equals_direct_inference(served, next((copy / "artifacts").glob("*.ckpt")), staged)


@pytest.mark.integration
def test_an_unreadable_image_is_named_and_can_be_left_out(tmp_path, tracking_store):
    """A corrupt training image: one line naming it (the run ends FAILED, traceback kept); with
    data.skip_unreadable=true the split is checked once and training goes on without it."""
    root = write_image_folder(tmp_path / "ds", ["a", "b"], per_class=6, size=16)
    broken = root / "train" / "a" / "zz_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    common = [
        *TINY_MODEL,
        "data=image_folder",
        f"data.root={root}",
        "trainer.batch_size=4",
        "trainer.epochs=1",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    proc = run_cli("vit_exp.run", *common, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: unreadable image {broken} (Decode: image decode failed); remove it, or set "
        "data.skip_unreadable=true to train on the readable images"
    ], proc.stderr
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_store, registry_uri=tracking_store)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert run.info.status == "FAILED"
    assert "Traceback" in Path(client.download_artifacts(run.info.run_id, "traceback.txt")).read_text()
    story = run.data.tags["mlflow.note.content"].splitlines()  # the console's one line, in the description
    assert story[0] == f"**FAILED**: `{run.data.tags['vit_exp.error']}`" and str(broken) in story[0]
    assert any(line.startswith("- progress: epoch 0 of 1 done, step ") for line in story), story

    for attempt in ("first", "second"):
        skip = run_cli(
            "vit_exp.run", *common, "data.skip_unreadable=true", f"hydra.run.dir={tmp_path / attempt}"
        )
        assert skip.returncode == 0, skip.stderr[-3000:]
        assert "1 of 13 images in" in skip.stdout and "left out" in skip.stdout
        assert ("checking 13 images once" in skip.stdout) == (attempt == "first")  # cached afterwards
    (listing,) = (tmp_path / "cache" / "image_checks").glob("*.unreadable.txt")
    assert listing.read_text() == f"{broken}\n"


@pytest.mark.integration
def test_ctrl_c_ends_the_run_killed_and_keeps_buffered_metrics(tmp_path, tracking_store):
    """Ctrl-C mid-training: the run ends KILLED and the metrics still buffered are stored."""
    import mlflow

    args = [
        *TINY_MODEL,
        "trainer.epochs=500",
        "mlflow.flush_interval_s=3600",  # nothing is sent before the interrupt
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vit_exp.run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_file = tmp_path / "run" / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and "epoch 2/500 done" not in (
        log_file.read_text() if log_file.exists() else ""
    ):
        time.sleep(0.5)
    assert "epoch 2/500 done" in log_file.read_text(), "training did not finish its second epoch"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri=tracking_store, registry_uri=tracking_store)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert run.info.status == "KILLED", stderr[-2000:]
    assert len(client.get_metric_history(run.info.run_id, "val/top1")) >= 2, stderr[-2000:]
    story = run.data.tags["mlflow.note.content"]
    # MindSpore's runtime may answer Ctrl-C with a SIGTERM of its own (vit_exp/cli.py)
    stopped = re.match(
        r"\*\*KILLED\*\* by (SIGINT \(Ctrl-C\)|SIGTERM) at step (\d+); checkpoint saved", story
    )
    assert stopped and f"step {stopped.group(2)} of " in story, story
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    epoch_ends = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= epoch_ends[1], stderr[-2000:]
