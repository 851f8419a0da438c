"""What lineage costs: the split digest per 10k images (uncached, cached), the extra time per model
version of a LoggedModel, and disk bytes per registered checkpoint on a local store.

    .venv/bin/python bench/lineage_cost.py [--images 10000] [--versions 20] [--disk-model vit_b16]

Digest: a split of ``--images`` small files in 100 class folders, listed uncached (warm page cache)
and from the cache, extrapolated linearly to ImageNet's 1.28M images. Versions: the same vit_tiny
checkpoint registered ``--versions`` times into a fresh SQLite store, as a LoggedModel (what
training does) and, alternated, the way it was done before (files under the run's artifacts, a
``runs:/`` source). Disk: one epoch checkpoint of ``--disk-model`` with Adam, written as training
writes it and registered; unique bytes (hard links counted once) under the checkpoint folder and the
artifact store, against the checkpoint's size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _models import cpu_vit, vit_config


def digest_seconds(images: int, folder: Path, rounds: int = 5) -> dict:
    from vit_exp.data.digest import compute_split_digest, split_digest

    split = folder / "train"
    classes = [f"n{i:08d}" for i in range(100)]
    for i, name in enumerate(classes):
        (split / name).mkdir(parents=True)
        for j in range(images // len(classes)):
            (split / name / f"{name}_{j}.JPEG").write_bytes(b"\xff\xd8" + bytes(300 + (i + j) % 700))
    indexing = {name: i for i, name in enumerate(classes)}
    compute_split_digest("train", split, indexing)  # warm the page cache
    uncached, cached = [], []
    for r in range(rounds):
        start = time.perf_counter()
        compute_split_digest("train", split, indexing)
        uncached.append(time.perf_counter() - start)
        split_digest("train", split, indexing, folder / f"cache{r}")  # fills the cache
        start = time.perf_counter()
        split_digest("train", split, indexing, folder / f"cache{r}")
        cached.append(time.perf_counter() - start)
    per_10k = statistics.median(uncached) * 10_000 / images
    return {
        "uncached_s_per_10k": per_10k,
        "cached_s": statistics.median(cached),
        "imagenet_uncached_s": per_10k * 128.1,
    }


def _train_network(model: str, num_classes: int):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.config import group_settings

    net = cpu_vit(vit_config(model, num_classes=num_classes))
    optimizer = group_settings("optim", "adam", lr=1e-3).build(
        net.trainable_params(), np.full(1000, 1e-3, np.float32)
    )
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    return net, ms.amp.build_train_network(net, optimizer, loss, level="O0")


def _store(folder: Path):
    import mlflow

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("bench", artifact_location=str(folder / "artifacts"))
    run = client.create_run(experiment)
    return client, run.info


def _writer(folder: Path, net):
    from vit_exp.tracking.registry.versions import model_writer, version_config, write_model_inputs

    class Data:
        name, class_map, mean, std = "bench", "folder", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    config = version_config("bench", net.config, Data())
    inputs = write_model_inputs(folder / "inputs", config, [str(i) for i in range(10)])
    return model_writer(inputs, 5), inputs


def version_seconds(versions: int, folder: Path) -> dict:
    from vit_exp.tracking.registry.versions import ensure_registered_model, register_version, version_record
    from vit_exp.train.state import save_training_checkpoint

    net, train_step = _train_network("vit_tiny", 10)
    client, run = _store(folder)
    writer, inputs = _writer(folder, net)
    ensure_registered_model(client, "logged")
    ensure_registered_model(client, "plain")
    logged, plain = [], []
    for i in range(versions):
        checkpoint = save_training_checkpoint(train_step, folder / "ckpt" / f"m-e{i:03d}-s{i:06d}.ckpt", {})
        client.log_metric(run.run_id, "val/top1", 0.5, step=i)
        record = version_record(checkpoint, i, "logged", {"epoch": i}, inputs, 5)
        start = time.perf_counter()
        register_version(client, run, record, writer, ensure_model=False, check_existing=False)
        logged.append(time.perf_counter() - start)
        start = time.perf_counter()
        _plain_version(client, run, checkpoint, i, writer)
        plain.append(time.perf_counter() - start)
    return {
        "logged_ms": 1000 * statistics.median(logged[1:]),
        "plain_ms": 1000 * statistics.median(plain[1:]),
    }


def _plain_version(client, run, checkpoint: Path, step: int, writer) -> None:
    """The way versions were made before LoggedModels: files under the run's artifacts, runs:/ source."""

    class RunArtifacts:  # the writer's target: a folder of the run's artifacts, uploaded
        model_id = f"plain-{step}"
        artifact_location = "remote:"

    path = f"models/{checkpoint.name[:-5]}"

    class Client:
        @staticmethod
        def log_model_artifacts(model_id, local_dir):
            client.log_artifacts(run.run_id, local_dir, artifact_path=path)

    writer.write(Client, RunArtifacts, checkpoint, step, run.run_id)
    client.create_model_version("plain", source=f"{run.artifact_uri}/{path}", run_id=run.run_id)


def unique_bytes(*folders: Path) -> int:
    seen, total = set(), 0
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                stat = path.stat()
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_size
    return total


def disk_per_version(model: str, folder: Path) -> dict:
    from vit_exp.tracking.registry.versions import ensure_registered_model, register_version, version_record
    from vit_exp.train.state import checkpoint_files, save_training_checkpoint

    net, train_step = _train_network(model, 1000)
    client, run = _store(folder)
    writer, inputs = _writer(folder, net)
    ensure_registered_model(client, "disk")
    checkpoints = folder / "checkpoints"
    checkpoint = save_training_checkpoint(train_step, checkpoints / f"{model}-e001-s000001.ckpt", {})
    size = sum(p.stat().st_size for p in checkpoint_files(checkpoint))
    before = unique_bytes(checkpoints, folder / "artifacts")
    register_version(client, run, version_record(checkpoint, 1, "disk", {}, inputs, 5), writer)
    after = unique_bytes(checkpoints, folder / "artifacts")
    return {
        "checkpoint_mb": size / 1e6,
        "network_mb": checkpoint.stat().st_size / 1e6,
        "disk_mb": after / 1e6,
        "registering_added_mb": (after - before) / 1e6,
        "ratio": after / size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--disk-model", default="vit_b16")
    args = parser.parse_args()
    import mindspore as ms

    ms.set_device("CPU")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as folder:
        print("digest:", digest_seconds(args.images, Path(folder)))
    with tempfile.TemporaryDirectory() as folder:
        print("version:", version_seconds(args.versions, Path(folder)))
    with tempfile.TemporaryDirectory() as folder:
        print("disk:", disk_per_version(args.disk_model, Path(folder)))


if __name__ == "__main__":
    main()
