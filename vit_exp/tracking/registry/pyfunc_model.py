"""The MLflow pyfunc model (models-from-code): a registered ViT checkpoint that classifies images.

MLflow loads this file by path (nothing is unpickled); vit_exp comes from the version's code archive.
Artifact: ``checkpoint`` (.ckpt). Model config (in the MLmodel): ``model`` and ``data`` (the run's ViT
and input normalisation), ``class_names``, ``top_k``. Input: an ``image`` column of encoded image bytes
(base64 strings over HTTP). Output per image: ``class_index``, ``class_name``, ``probability`` (top-1),
``top_k_indices``, ``top_k_names``, ``top_k_probabilities``, and ``error`` (null, or why the image
could not be read; its other fields are then empty). k: ``params.top_k``, else ``registry.top_k``.
"""

from __future__ import annotations

import base64
import binascii

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
            return base64.b64decode("".join(value.split()), validate=True)  # wrapped lines are fine
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64 (send the image's bytes base64-encoded)") from None
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


class ViTImageClassifier(PythonModel):
    """Loads the checkpoint into our ViT on first use and returns top-k classes per image."""

    def load_context(self, context) -> None:
        from vit_exp.models.inference import Predictor

        config = context.model_config
        self.predictor = Predictor.from_checkpoint(
            context.artifacts["checkpoint"], config, config["class_names"]
        )
        self.top_k = int(config.get("top_k", TOP_K))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One row per input row; an unreadable image's row gets ``error`` and empty predictions."""
        from vit_exp.data.images import decode_rgb
        from vit_exp.errors import DataError

        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise ValueError(f"input needs an '{INPUT_COLUMN}' column of image bytes")
            values = list(model_input[INPUT_COLUMN])
        else:
            values = list(model_input)
        k = int((params or {}).get("top_k", self.top_k))
        images, errors = {}, {}
        for i, value in enumerate(values):
            try:
                images[i] = decode_rgb(_as_bytes(value), source=f"row {i}")
            except (DataError, ValueError) as exc:
                errors[i] = str(exc) if str(exc).startswith(f"row {i}") else f"row {i}: {exc}"
        rows = {i: None for i in range(len(values))}
        if images:
            top = self.predictor.top_k(list(images.values()), k=k)
            names = self.predictor.class_names
            for i, indices, probabilities in zip(images, top.indices, top.probabilities, strict=True):
                rows[i] = {
                    "class_index": int(indices[0]),
                    "class_name": names[indices[0]],
                    "probability": float(probabilities[0]),
                    "top_k_indices": indices.tolist(),
                    "top_k_names": [names[j] for j in indices],
                    "top_k_probabilities": probabilities.astype(float).tolist(),
                    "error": None,
                }
        failed = {"class_index": None, "class_name": None, "probability": None}
        failed |= {"top_k_indices": [], "top_k_names": [], "top_k_probabilities": []}
        records = [row if row is not None else {**failed, "error": errors[i]} for i, row in rows.items()]
        columns = [*failed, "error"]
        if not errors:
            return pd.DataFrame.from_records(records, columns=columns)
        # object columns keep None (JSON null) in the failed rows' fields, not NaN
        return pd.DataFrame({c: pd.Series([r[c] for r in records], dtype=object) for c in columns})


mlflow.models.set_model(ViTImageClassifier())
