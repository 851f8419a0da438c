"""The MLflow pyfunc model (models-from-code) of an exported ViT: ONNX served by ONNX Runtime, or
MindIR by MindSpore, with no vit_exp installed and none of its kernels.

Artifact: ``model`` (``model.onnx`` | ``model.mindir``). Model config (in the MLmodel): ``format``,
``image_size``, ``mean``, ``std``, ``class_names``, ``top_k``. Request and answer are the MindSpore
pyfunc's (``vit_exp/serving.py``, shipped in the model's code archive with the preprocessing, which
equals MindSpore's bit for bit)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from vit_exp.serving import TOP_K, answer, preprocess, softmax_top_k

BATCH = 32  # images per runtime call


class ExportedImageClassifier(PythonModel):
    """Runs the exported graph on preprocessed images and returns top-k classes per image."""

    def load_context(self, context) -> None:
        config = context.model_config
        self.format = config["format"]
        self.image_size = int(config["image_size"])
        self.mean, self.std = list(config["mean"]), list(config["std"])
        self.class_names = list(config["class_names"])
        self.top_k = int(config.get("top_k", TOP_K))
        path = context.artifacts["model"]
        if self.format == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.logits = lambda batch: session.run(None, {"images": batch})[0]
        else:
            import mindspore as ms

            graph = ms.nn.GraphCell(ms.load(path))
            self.logits = lambda batch: graph(ms.Tensor(batch)).asnumpy()

    def classify(self, images: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k class indices and probabilities of decoded RGB images, ``BATCH`` per runtime call."""
        found = [
            softmax_top_k(
                self.logits(preprocess(images[i : i + BATCH], self.image_size, self.mean, self.std)), k
            )
            for i in range(0, len(images), BATCH)
        ]
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One row per input row; an unreadable image's row gets ``error`` and empty predictions."""
        return answer(model_input, params, self.top_k, self.class_names, self.classify)


mlflow.models.set_model(ExportedImageClassifier())
