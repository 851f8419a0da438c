"""The MLflow pyfunc model (models-from-code): a registered ViT checkpoint that classifies images.

MLflow loads this file by path (nothing is unpickled); vit_exp comes from the version's code archive.
Artifact: ``checkpoint`` (.ckpt). Model config (in the MLmodel): ``model`` and ``data`` (the run's ViT
and input normalisation), ``class_names``, ``top_k``. Input: an ``image`` column of encoded image bytes
(base64 strings over HTTP). Output per image: ``class_index``, ``class_name``, ``probability`` (top-1),
``top_k_indices``, ``top_k_names``, ``top_k_probabilities``, and ``error`` (null, or why the image
could not be read; its other fields are then empty). k: ``params.top_k``, else ``registry.top_k``.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from vit_exp.serving import TOP_K, answer


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

        def top_k(images, k):
            found = self.predictor.top_k(images, k=k)
            return found.indices, found.probabilities

        return answer(model_input, params, self.top_k, self.predictor.class_names, top_k)


mlflow.models.set_model(ViTImageClassifier())
