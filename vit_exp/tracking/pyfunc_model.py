"""The MLflow pyfunc model (models-from-code): a registered ViT checkpoint that classifies images.

MLflow loads this file by path; nothing is unpickled. Artifacts of each model version:
``checkpoint`` (the MindSpore .ckpt), ``config`` (the composed run config, YAML) and
``class_names`` (JSON list, index -> name).

Input: a DataFrame with an ``image`` column of encoded image bytes (JPEG/PNG/...; over HTTP the
bytes are base64 strings). Output: one row per image with ``class_index``, ``class_name``,
``probability`` (the top-1) and ``top_k_indices``, ``top_k_names``, ``top_k_probabilities``;
``k`` is the version's ``top_k`` (its model config, from ``registry.top_k``) unless
``params.top_k`` is given.
"""

from __future__ import annotations

import base64
import binascii
import json

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

TOP_K = 5
INPUT_COLUMN = "image"


def _as_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value)
        except (binascii.Error, ValueError):
            raise ValueError("image values must be bytes or base64-encoded strings") from None
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


class ViTImageClassifier(PythonModel):
    """Loads the checkpoint into our ViT on first use and returns top-k classes per image."""

    def load_context(self, context) -> None:
        import yaml

        from vit_exp.models.inference import Predictor

        with open(context.artifacts["config"]) as fh:
            config = yaml.safe_load(fh)
        with open(context.artifacts["class_names"]) as fh:
            class_names = json.load(fh)
        self.predictor = Predictor.from_checkpoint(context.artifacts["checkpoint"], config, class_names)
        self.top_k = int((getattr(context, "model_config", None) or {}).get("top_k", TOP_K))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from vit_exp.data.images import decode_rgb

        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise ValueError(f"input needs an '{INPUT_COLUMN}' column of image bytes")
            values = list(model_input[INPUT_COLUMN])
        else:
            values = list(model_input)
        k = int((params or {}).get("top_k", self.top_k))
        images = [decode_rgb(_as_bytes(v), source=f"row {i}") for i, v in enumerate(values)]
        top = self.predictor.top_k(images, k=k)
        names = self.predictor.class_names
        return pd.DataFrame(
            {
                "class_index": top.indices[:, 0],
                "class_name": [names[i] for i in top.indices[:, 0]],
                "probability": top.probabilities[:, 0].astype(float),
                "top_k_indices": [row.tolist() for row in top.indices],
                "top_k_names": [[names[i] for i in row] for row in top.indices],
                "top_k_probabilities": [row.astype(float).tolist() for row in top.probabilities],
            }
        )


mlflow.models.set_model(ViTImageClassifier())
