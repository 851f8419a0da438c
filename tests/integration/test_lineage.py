"""Lineage on one store holding a digits model and an ImageNet-layout model (1000-class head, 5 wnids).

Each run records its splits as MLflow datasets, each version its data identity; the default names do
not collide; eval refuses data whose classes do not fit the model, and accepts a subset.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers.data import write_image_folder, write_meta_mat
from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import run_cli
from vit_exp.data.digest import class_names_digest, compute_split_digest

# 1000 leaves; index 236 is the real ImageNet index of n02107142 "Doberman".
LEAVES = [(f"n{i:08d}", f"class {i}") for i in range(1000)]
LEAVES[236] = ("n00000236", "Doberman, Doberman pinscher")
SUBSET = [LEAVES[i][0] for i in (1, 100, 236, 500, 999)]
SMALL = [*TINY_MODEL, "model.num_layers=1", "trainer.epochs=1"]

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Train one epoch on digits and one on the ImageNet-layout subset into the same store."""
    tmp = tmp_path_factory.mktemp("lineage")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    imagenet = write_image_folder(tmp / "imagenet", SUBSET, per_class=4, size=16, splits=("train", "val"))
    write_meta_mat(imagenet / "ILSVRC2012_devkit_t12" / "data" / "meta.mat", LEAVES)
    common = [f"mlflow.tracking_uri={uri}", f"paths.cache_dir={tmp / 'cache'}"]
    imagenet_data = ["data=imagenet", f"data.root={imagenet}", "trainer.batch_size=8"]
    for name, data in (("digits", ["trainer.batch_size=64"]), ("imagenet", imagenet_data)):
        proc = run_cli("vit_exp.run", *SMALL, *data, *common, f"hydra.run.dir={tmp / name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {"uri": uri, "client": client, "tmp": tmp, "imagenet": imagenet, "common": common}


def test_default_names_do_not_collide(store):
    names = {m.name for m in store["client"].search_registered_models()}
    assert names == {"vit_tiny-digits", "vit_tiny-imagenet"}


def test_runs_record_their_datasets_and_versions_their_data(store):
    client = store["client"]
    experiment = client.get_experiment_by_name("vit-exp").experiment_id
    runs = {r.data.tags["data.name"]: r for r in client.search_runs([experiment])}
    imagenet = runs["imagenet"]
    inputs = {i.tags[0].value: i.dataset for i in imagenet.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val"}
    indexing = {wnid: int(wnid[1:]) for wnid in SUBSET}
    for split, dataset in inputs.items():
        expected = compute_split_digest(split, store["imagenet"] / split, indexing)
        data_digest = imagenet.data.tags["data.digest"]  # its start, then the split's own digest
        assert dataset.name == "imagenet" and dataset.digest == data_digest[:8] + expected.digest[:8]
        assert json.loads(dataset.profile)["num_images"] == 20
        assert json.loads(dataset.source)["uri"] == str(store["imagenet"] / split)
    (version,) = client.search_model_versions("name='vit_tiny-imagenet'")
    tags, described = (
        version.tags,
        version.description,
    )  # the data's name and digest as tags, the rest described
    assert tags["data.name"] == "imagenet" and "num_classes `1000`" in described
    assert tags["data.digest"] == imagenet.data.tags["data.digest"]
    assert f"train_digest `{inputs['train'].digest}`" in described
    names_digest = class_names_digest([w.split(",")[0] for _, w in LEAVES])
    assert f"class_names_digest `{names_digest}`" in described
    (digits,) = client.search_model_versions("name='vit_tiny-digits'")
    assert "num_classes `10`" in digits.description and digits.tags["data.digest"] != tags["data.digest"]


def test_eval_accepts_a_subset_and_refuses_other_classes(store, tmp_path):
    imagenet = [f"data.root={store['imagenet']}", "data=imagenet"]
    ok = run_cli(
        "vit_exp.eval",
        "model_uri=models:/vit_tiny-imagenet/latest",
        *imagenet,
        *store["common"],
        f"hydra.run.dir={tmp_path / 'ok'}",
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    rows = {
        int(r["class_index"]): r["class_name"]
        for r in csv.DictReader((tmp_path / "ok" / "per_class_accuracy.csv").open())
    }
    assert rows[236] == "Doberman" and sorted(rows) == [1, 100, 236, 500, 999]

    wrong = run_main(
        "vit_exp.eval",
        "model_uri=models:/vit_tiny-digits/latest",
        *imagenet,
        *store["common"],
        f"hydra.run.dir={tmp_path / 'wrong'}",
    )
    lines = [line for line in wrong.stderr.splitlines() if line.strip()]
    assert wrong.returncode != 0 and len(lines) == 1 and "Traceback" not in wrong.stderr, wrong.stderr
    assert "data imagenet" in lines[0] and "models:/vit_tiny-digits/latest (trained on digits)" in lines[0]

    reverse = run_main(
        "vit_exp.eval",
        "model_uri=models:/vit_tiny-imagenet/1",
        *store["common"],
        f"hydra.run.dir={tmp_path / 'reverse'}",
    )
    lines = [line for line in reverse.stderr.splitlines() if line.strip()]
    assert reverse.returncode != 0 and len(lines) == 1, reverse.stderr
    assert "data digits" in lines[0] and "label 0 '0'" in lines[0] and "'class 0'" in lines[0]


def test_predict_any_image_with_latest(store, tmp_path):
    image = next((store["imagenet"] / "val" / SUBSET[2]).glob("*.png"))
    proc = run_cli(
        "vit_exp.predict",
        "model_uri=models:/vit_tiny-imagenet/latest",
        f"inputs={image}",
        f"output_dir={tmp_path / 'out'}",
        *store["common"],
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    top = row["top_k"][0]
    assert top["class_name"] == LEAVES[top["class_index"]][1].split(",")[0]
