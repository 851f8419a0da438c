"""Images/s of the training pipeline per augmentation (issue 27): decode + augment + batch at 224 px.

    GLOG_v=3 .venv/bin/python bench/augment_throughput.py [--epochs 3] [--rounds 2] [--workers 2]

A generated ImageNet-layout folder of 512 400x300 JPEGs (as bench/pipeline.py), batch 16 (the
recipe's), ``data.num_workers`` 2; each pipeline in turn, ``--rounds`` times, the best round kept:
basic (augment=basic), basic + RandAugment (rand-m9-mstd0.5, 2 ops), basic + random erasing (p 0.25),
basic + mixup/CutMix (p 1.0), deit (all of them). Also the process's CPU ms per image (all threads).
Compare with what ViT-B/16 trains at here (bench/RESULTS.md): the pipeline must deliver more.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline import imagenet_like

PIPELINES = {
    "basic": {},
    "+ randaug m9 mstd0.5 n2": {"randaug": {"num_ops": 2}},
    "+ random erasing 0.25": {"random_erasing": {"prob": 0.25}},
    "+ mixup/CutMix 1.0": {"mix": {"prob": 1.0}},
    "deit (all)": {"randaug": {"num_ops": 2}, "random_erasing": {"prob": 0.25}, "mix": {"prob": 1.0}},
}


def measure(data, augment, epochs: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) over ``epochs`` after a warm-up epoch."""
    from vit_exp.data.pipeline import train_dataset

    dataset = train_dataset(data, 224, 16, augment=augment)
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs + 1)
    for _ in iterator:  # warm-up epoch
        pass
    start, cpu, count = time.perf_counter(), time.process_time(), 0
    for _ in range(epochs):
        for images, _ in iterator:
            count += images.shape[0]
    return count / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import mindspore.dataset as ds

    from vit_exp.data.augment import Augmentation, AugmentSettings
    from vit_exp.data.folder import ImageFolderData

    with tempfile.TemporaryDirectory() as tmp:
        root = imagenet_like(Path(tmp) / "imagenet", classes=4, per_class=128)
        (root / "val").mkdir()
        data = ImageFolderData(root=root, num_workers=args.workers)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, settings in PIPELINES.items():
                ds.config.set_seed(0)
                augment = Augmentation(AugmentSettings(**settings), num_classes=1000, label_smoothing=0.1)
                rate, cpu_ms = measure(data, augment, args.epochs)
                if rate > best.get(name, (0.0, 0.0))[0]:
                    best[name] = (rate, cpu_ms)
        for name, (rate, cpu_ms) in best.items():
            print(f"{name:26s} {rate:7.0f} img/s  {cpu_ms:5.2f} CPU ms/img")


if __name__ == "__main__":
    main()
