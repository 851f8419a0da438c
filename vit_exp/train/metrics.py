"""Top-1 / Top-5 accuracy: MindSpore metrics for validation, and a NumPy report for eval runs."""

from __future__ import annotations


def classification_metrics(num_classes: int) -> dict:
    """``{"top1": ..., "top5": ...}``; top-5 becomes top-k with k = num_classes below 5 classes."""
    from mindspore.train import Top1CategoricalAccuracy, TopKCategoricalAccuracy

    return {"top1": Top1CategoricalAccuracy(), "top5": TopKCategoricalAccuracy(min(5, num_classes))}


def classification_report(probabilities, labels, num_classes: int, k: int = 5) -> dict:
    """Top-1/top-k accuracy (as MindSpore's metrics count them), unsmoothed cross-entropy, per-class
    accuracy and confusion matrix of (N, C) softmax ``probabilities`` and (N,) int ``labels``."""
    import numpy as np

    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = min(k, num_classes)
    predicted = probabilities.argmax(axis=1)
    top_k = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    correct = np.diag(confusion)
    eps = np.finfo(np.float64).tiny
    return {
        "top1": float((predicted == labels).mean()),
        "top5": float((top_k == labels[:, None]).any(axis=1).mean()),  # top-k, k = min(5, classes)
        "loss": float(-np.log(np.maximum(probabilities[np.arange(len(labels)), labels], eps)).mean()),
        "count": len(labels),
        "per_class_accuracy": np.where(support > 0, correct / np.maximum(support, 1), np.nan),
        "support": support,
        "confusion": confusion,
    }
