"""Cross-entropy with label smoothing, as in the reference recipe, and on soft (mixed) targets."""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops

from vit_exp.errors import ConfigError


class CrossEntropySmooth(nn.LossBase):
    """Softmax cross-entropy on sparse labels smoothed to on = 1 - s, off = s / (C - 1); mean reduction."""

    def __init__(self, num_classes: int, smoothing: float = 0.1, reduction: str = "mean"):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f"trainer.label_smoothing must be in [0, 1), got {smoothing}")
        self.num_classes = num_classes
        off = smoothing / (num_classes - 1) if num_classes > 1 else 0.0
        self.on_value = Tensor(1.0 - smoothing, ms.float32)
        self.off_value = Tensor(off, ms.float32)
        self.onehot = ops.OneHot()
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction=reduction)

    def construct(self, logits: Tensor, label: Tensor) -> Tensor:
        target = self.onehot(label, self.num_classes, self.on_value, self.off_value)
        return self.ce(logits, target)


class SoftTargetCrossEntropy(nn.LossBase):
    """Softmax cross-entropy on soft targets [B, C] (mixup/CutMix, smoothed before mixing): the batch
    mean of -sum_c target_c * log_softmax(logits)_c."""

    def __init__(self):
        super().__init__()
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction="mean")

    def construct(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.ce(logits, target)
