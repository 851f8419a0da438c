"""The default dataset: scikit-learn's 8x8 digits, written once as an ImageNet-style image folder
(``train|val|infer/<class>/*.png``) so the default run exercises the real pipeline."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from vit_exp.locking import exclusive

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
MARKER = "vit_exp_digits.json"


def _split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: the same fraction of every class goes to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(idx) * val_fraction)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train)), np.sort(np.array(val))


def _write_split(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    from PIL import Image

    for i in indices:
        class_dir = folder / str(int(labels[i]))
        class_dir.mkdir(parents=True, exist_ok=True)
        pixels = (images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").convert("RGB").save(class_dir / f"digit_{i:04d}.png")


def _is_written(root: Path, expected: dict) -> bool:
    try:
        return json.loads((root / MARKER).read_text()).get("spec") == expected
    except (OSError, json.JSONDecodeError):
        return False


def ensure_digits_folder(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits folder under ``root`` unless an identical one is there (once across processes)."""
    root = Path(root).expanduser()
    expected = {"layout_version": LAYOUT_VERSION, "val_fraction": val_fraction, "seed": seed}
    if _is_written(root, expected):
        return root
    with exclusive(root.with_name(root.name + ".lock")):
        if not _is_written(root, expected):
            _write_digits_folder(root, val_fraction, seed, expected)
    return root


def _write_digits_folder(root: Path, val_fraction: float, seed: int, expected: dict) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    train_idx, val_idx = _split_indices(digits.target, val_fraction, seed)
    staging = root.with_name(root.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    # "infer": one image per class for the predict demo, as in the reference layout.
    first_per_class = [int(val_idx[digits.target[val_idx] == c][0]) for c in np.unique(digits.target)]
    for split, indices in (("train", train_idx), ("val", val_idx), ("infer", np.array(first_per_class))):
        _write_split(staging / split, digits.images, digits.target, indices)
    counts = {"train": len(train_idx), "val": len(val_idx), "classes": len(np.unique(digits.target))}
    (staging / MARKER).write_text(json.dumps({"spec": expected, "counts": counts}, indent=2))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(root)
    log.info("wrote the digits image folder to %s (%d train, %d val)", root, counts["train"], counts["val"])


def digits_data(root: str | Path, val_fraction: float = 0.2, seed: int = 0, **folder_args):
    """Ensure the digits folder exists under ``root`` and describe it as an ImageFolderData."""
    from vit_exp.data.folder import ImageFolderData

    ensure_digits_folder(root, val_fraction=val_fraction, seed=seed)
    return ImageFolderData(root=root, **folder_args)
