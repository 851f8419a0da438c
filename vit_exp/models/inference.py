"""Inference with a trained ViT: build it from its config, load its checkpoint, return top-k classes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class TopK:
    """Top-k predictions for a batch: class indices and probabilities, shape (N, k), best first."""

    indices: np.ndarray
    probabilities: np.ndarray


class Predictor:
    """A ViT in inference mode plus what it needs to read images: size, mean/std and class names."""

    def __init__(
        self, net, class_names: Sequence[str], image_size: int, mean: Sequence[float], std: Sequence[float]
    ):
        self.net = net
        self.net.set_train(False)
        self.class_names = list(class_names)
        self.image_size = int(image_size)
        self.mean = list(mean)
        self.std = list(std)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, config: Mapping, class_names: Sequence[str], precision: str = "fp32"
    ) -> Predictor:
        """Build the ViT of ``config["model"]`` and load ``checkpoint`` (every name must fit);
        ``precision``: what the dense layers multiply in (``device.precision``: fp32 | bf16 | auto)."""
        import mindspore as ms

        from vit_exp.errors import CheckpointError
        from vit_exp.models.checkpoint import load_into
        from vit_exp.models.kernels.plan import current_device_target, plan_kernels
        from vit_exp.models.vit import ViT, ViTConfig

        num_classes = int(config["model"].get("num_classes") or len(class_names))
        architecture = ViTConfig.from_mapping(config["model"], num_classes=num_classes, precision=precision)
        net = ViT(architecture, plan_kernels(architecture, current_device_target()))
        report = load_into(net, ms.load_checkpoint(str(checkpoint)), Path(checkpoint), head_names=())
        if report.reinitialised:
            raise CheckpointError(f"checkpoint {checkpoint} has no usable classification head")
        return cls(net, class_names, net.image_size, config["data"]["mean"], config["data"]["std"])

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax class probabilities (N, num_classes) for a preprocessed float32 NCHW batch."""
        import mindspore as ms
        from mindspore import ops

        logits = self.net(ms.Tensor(np.ascontiguousarray(batch, dtype=np.float32)))
        return ops.softmax(logits, axis=-1).asnumpy()

    def top_k(self, images: Sequence[np.ndarray], k: int = 5, batch_size: int = 32) -> TopK:
        """Top-k of decoded RGB images (HWC uint8), in batches of ``batch_size``."""
        from vit_exp.data.images import preprocess

        k = min(k, len(self.class_names))
        indices, probs = [], []
        for start in range(0, len(images), batch_size):
            batch = preprocess(images[start : start + batch_size], self.image_size, self.mean, self.std)
            p = self.probabilities(batch)
            order = np.argsort(-p, axis=1, kind="stable")[:, :k]
            indices.append(order)
            probs.append(np.take_along_axis(p, order, axis=1))
        if not indices:
            return TopK(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        return TopK(np.concatenate(indices).astype(np.int64), np.concatenate(probs))
