"""Does the framework add anything? vit_exp's fit path vs a bare TrainOneStepCell loop.

    GLOG_v=3 .venv/bin/python bench/framework_overhead.py [--epochs 4] [--rounds 4] [--workers 2]

Same model (the default vit_tiny), same optimizer and loss, batch 64 on the digits folder:
- bare: a Python loop calling TrainOneStepCell on batches pre-loaded into memory;
- full: ``vit_exp.train.trainer.fit`` = our loop (vit_exp.train.loop) + history, progress and
  checkpoint callbacks + the MLflow callback (real SQLite store) + the real decode/augment pipeline.
Both train the same network object; alternated A B A B; images/s over the epochs after the first
(graph compile excluded).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from _models import default_vit_args

VIT = default_vit_args()


def digits(cache: Path, workers: int = 2):
    from vit_exp.data.digits import digits_data

    return digits_data(
        cache / "digits",
        train_crop_scale=(0.6, 1.0),
        train_crop_ratio=(0.8, 1.25),
        hflip_prob=0.0,
        val_resize_margin=0,
        num_workers=workers,
    )


def bare(data, epochs: int, net) -> float:
    import mindspore as ms
    from mindspore import nn

    from vit_exp.data.pipeline import train_dataset
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.lr import cosine_schedule
    from vit_exp.train.optim import build_optimizer

    batches = [
        (ms.Tensor(x), ms.Tensor(y))
        for x, y in train_dataset(data, 32, 64).create_tuple_iterator(output_numpy=True)
    ]
    optimizer = build_optimizer(
        net.trainable_params(), cosine_schedule(epochs * len(batches), len(batches)), name="adam", lr=1e-3
    )
    step = nn.TrainOneStepCell(nn.WithLossCell(net, CrossEntropySmooth(10)), optimizer)
    step.set_train(True)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, y in batches:
            step(x, y).asnumpy()
        times.append(time.perf_counter() - start)
    return len(batches) * 64 * (epochs - 1) / sum(times[1:])


def full(data, epochs: int, store: Path, net) -> float:
    import functools

    import mlflow

    from vit_exp.data.pipeline import train_dataset
    from vit_exp.tracking.callback import MlflowLogger
    from vit_exp.train.lr import cosine_schedule
    from vit_exp.train.optim import build_optimizer
    from vit_exp.train.trainer import TrainSettings, fit

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    with mlflow.start_run() as run:
        result = fit(
            net,
            train_dataset(data, 32, 64),
            None,
            settings=TrainSettings(epochs=epochs, batch_size=64, log_every_n_steps=10),
            num_classes=10,
            optimizer_factory=functools.partial(build_optimizer, name="adam", lr=1e-3),
            schedule_factory=cosine_schedule,
            checkpoint_dir=store / "ckpt",
            checkpoint_prefix="bench",
            extra_callbacks=lambda history, _: [MlflowLogger(run.info.run_id, history)],
        )
    epochs_after_first = result.history.epochs[1:]
    return (
        sum(e.step - p.step for p, e in zip(result.history.epochs, epochs_after_first, strict=False))
        * 64
        / sum(e.seconds for e in epochs_after_first)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers of the pipeline")
    args = parser.parse_args()
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data = digits(Path(tmp), args.workers)
        from vit_exp.models.vit import ViT

        # One network for both paths: separately built instances of the same model differed by up
        # to +-15 % in steady-state speed on this VM, which swamped the difference being measured.
        net = ViT(**VIT)
        results = {"bare": [], "full": []}
        for _ in range(args.rounds):
            results["bare"].append(bare(data, args.epochs, net))
            results["full"].append(full(data, args.epochs, Path(tmp), net))
        base, ours = statistics.median(results["bare"]), statistics.median(results["full"])
        print(f"bare TrainOneStepCell loop, pre-loaded batches: {base:.0f} img/s  {results['bare']}")
        print(f"vit_exp fit + callbacks + MLflow + pipeline:    {ours:.0f} img/s  {results['full']}")
        rounds = [f"{f / b:.3f}" for b, f in zip(results["bare"], results["full"], strict=True)]
        print(f"ratio full/bare: {ours / base:.3f} (per round: {', '.join(rounds)})")


if __name__ == "__main__":
    main()
