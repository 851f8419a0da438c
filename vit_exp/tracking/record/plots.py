"""Pictures for eval runs (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def confusion_matrix_png(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Save a confusion-matrix heat map restricted to the classes that occur (rows: true, cols: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = np.flatnonzero(confusion.sum(axis=1) + confusion.sum(axis=0))
    matrix = confusion[np.ix_(present, present)]
    names = [class_names[i] for i in present]
    size = min(4 + 0.35 * len(present), 24)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if len(present) <= 40:
        ax.set_xticks(range(len(present)), names, rotation=90)
        ax.set_yticks(range(len(present)), names)
        if len(present) <= 20:
            for (i, j), value in np.ndenumerate(matrix):
                color = "white" if value > matrix.max() / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=color)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
