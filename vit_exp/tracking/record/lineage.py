"""Data lineage in MLflow: a run's datasets (``log_inputs``, contexts train/val) and their identity tags."""

from __future__ import annotations

import json
import time

from vit_exp.data.digest import DataIdentity, SplitDigest

# A unique-key violation, as SQLite, PostgreSQL and MySQL word it (also inside a server's answer).
DUPLICATE_KEY = ("UNIQUE constraint failed", "violates unique constraint", "Duplicate entry")
INPUT_ATTEMPTS = 5
IMAGE_FOLDER_SCHEMA = {
    "mlflow_colspec": [{"type": "binary", "name": "image"}, {"type": "long", "name": "label"}]
}


def dataset_entity(identity: DataIdentity, split: SplitDigest):
    """An MLflow Dataset for one split: name, digest (``DataIdentity.dataset_digest``: MLflow computes
    none), local source, schema and a profile of counts."""
    from mlflow.entities import Dataset

    profile = {"num_images": split.num_images, "num_bytes": split.num_bytes, "num_classes": split.num_classes}
    return Dataset(
        name=identity.name,
        digest=identity.dataset_digest(split),
        source_type="local",
        source=json.dumps({"uri": split.path}),
        schema=json.dumps(IMAGE_FOLDER_SCHEMA),
        profile=json.dumps(profile),
    )


def log_datasets(client, run_id: str, identity: DataIdentity) -> None:
    """Record the train and val splits as the run's inputs and the data identity as run tags."""
    from mlflow.entities import DatasetInput, InputTag, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [
        DatasetInput(dataset_entity(identity, split), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for context, split in (("train", identity.train), ("val", identity.val))
    ]
    log_inputs_racing_others(client, run_id, inputs)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in identity.tags().items()])


def log_inputs_racing_others(client, run_id: str, inputs: list) -> None:
    """``log_inputs``, retried when another job inserts the same dataset at the same moment (MLflow's
    look-up-then-insert is not serialized across processes; on the retry the dataset exists)."""
    for attempt in range(1, INPUT_ATTEMPTS + 1):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as exc:
            if attempt == INPUT_ATTEMPTS or not any(marker in str(exc) for marker in DUPLICATE_KEY):
                raise
            time.sleep(0.05 * attempt)
