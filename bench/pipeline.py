"""Images/s of the training data pipeline alone (decode + augment + batch), per worker count.

    GLOG_v=3 .venv/bin/python bench/pipeline.py [--workers 1 2 4] [--epochs 3]

Two datasets: the digits folder at 32x32 (the default run) and a generated ImageNet-layout folder of
400x300 JPEGs at 224 (the reference recipe's transforms). Compare with what the model consumes
(bench/RESULTS.md): the pipeline should deliver at least 2x that.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def imagenet_like(root: Path, classes: int = 4, per_class: int = 64) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"n0{c:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(
                0, 255, (30, 40, 3), dtype=np.uint8
            )  # smooth-ish content compresses like photos
            Image.fromarray(base).resize((400, 300), Image.BICUBIC).save(folder / f"img_{i}.JPEG", quality=90)
    return root


def images_per_second(data, image_size: int, batch: int, epochs: int) -> float:
    from vit_exp.data.pipeline import train_dataset

    dataset = train_dataset(data, image_size, batch)
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs + 1)
    for _ in iterator:  # warm-up epoch
        pass
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for images, _ in iterator:
            count += images.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    from vit_exp.data.digits import digits_data
    from vit_exp.data.folder import ImageFolderData

    with tempfile.TemporaryDirectory() as tmp:
        root = imagenet_like(Path(tmp) / "imagenet")
        (root / "val").mkdir()
        for workers in args.workers:
            digits = digits_data(  # settings of conf/data/digits.yaml
                Path(tmp) / "digits",
                train_crop_scale=(0.6, 1.0),
                hflip_prob=0.0,
                num_workers=workers,
                prefetch_size=64,
            )
            folder = ImageFolderData(root=root, num_workers=workers)
            small = images_per_second(digits, 32, 64, args.epochs)
            large = images_per_second(folder, 224, 16, args.epochs)
            print(f"workers {workers}: digits@32 b64 {small:7.0f} img/s | JPEG@224 b16 {large:6.0f} img/s")


if __name__ == "__main__":
    main()
