"""Top-1 / Top-5 accuracy metrics for ``mindspore.train.Model``."""

from __future__ import annotations


def classification_metrics(num_classes: int) -> dict:
    """``{"top1": ..., "top5": ...}``; top-5 becomes top-k with k = num_classes below 5 classes."""
    from mindspore.train import Top1CategoricalAccuracy, TopKCategoricalAccuracy

    return {
        "top1": Top1CategoricalAccuracy(),
        "top5": TopKCategoricalAccuracy(min(5, num_classes)),
    }
