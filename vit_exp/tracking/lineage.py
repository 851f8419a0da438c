"""Data lineage in MLflow: a run's datasets (``log_inputs``, contexts train/val) and their identity tags."""

from __future__ import annotations

import json

from vit_exp.data.digest import DataIdentity, SplitDigest

IMAGE_FOLDER_SCHEMA = {
    "mlflow_colspec": [{"type": "binary", "name": "image"}, {"type": "long", "name": "label"}]
}


def dataset_entity(name: str, split: SplitDigest):
    """An MLflow Dataset for one split: name, digest, local source, schema and a profile of counts."""
    from mlflow.entities import Dataset

    profile = {"num_images": split.num_images, "num_bytes": split.num_bytes, "num_classes": split.num_classes}
    return Dataset(
        name=name,
        digest=split.digest,
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
        DatasetInput(dataset_entity(identity.name, split), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for context, split in (("train", identity.train), ("val", identity.val))
    ]
    client.log_inputs(run_id, datasets=inputs)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in identity.tags().items()])
