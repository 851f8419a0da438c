"""Does the framework add anything? vit_exp's fit path vs a bare TrainOneStepCell loop.

    GLOG_v=3 .venv/bin/python bench/framework_overhead.py [--epochs 5] [--rounds 6] [--workers 2]

Same model (the default vit_tiny), same optimizer and loss, batch 64 on the digits folder:
- bare: a Python loop calling TrainOneStepCell on batches pre-loaded into memory;
- full: ``vit_exp.train.trainer.fit`` = our loop (vit_exp.train.loop) + history, progress and
  checkpoint callbacks + the MLflow callback (real SQLite store, default cadence: loss every step,
  LR and speed every 10) + the real decode/augment pipeline; once with one checkpoint at the end,
  once with a checkpoint and a registered model version every epoch, as in the default run.
All paths train the same network object, alternated A B C A B C; images/s over the epochs after
the first (graph compile excluded); for ``full`` from the end of epoch 1 to the end of the last
epoch after all callbacks, so checkpoint saving, metric sends and registration count. Also printed:
CPU seconds per image of the whole process (all threads) over the same window, a steadier figure
on a noisy VM than images/s, which shows how much work the framework adds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from _models import cpu_vit, vit_config


def digits(cache: Path, workers: int = 2, prefetch: int = 64):
    from vit_exp.data.digits import digits_data

    return digits_data(
        cache / "digits",
        train_crop_scale=(0.6, 1.0),
        train_crop_ratio=(0.8, 1.25),
        hflip_prob=0.0,
        val_resize_margin=0,
        num_workers=workers,
        prefetch_size=prefetch,
    )


def bare(data, epochs: int, net) -> tuple[float, float]:
    """Images/s and CPU seconds per image (all threads) of epochs 2..N."""
    import mindspore as ms
    from mindspore import nn

    from vit_exp.config import group_settings
    from vit_exp.data.pipeline import train_dataset
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.lr import cosine_schedule

    batches = [
        (ms.Tensor(x), ms.Tensor(y))
        for x, y in train_dataset(data, 32, 64).create_tuple_iterator(output_numpy=True)
    ]
    adam = group_settings("optim", "adam", lr=1e-3)
    optimizer = adam.build(
        net.trainable_params(), adam.learning_rates(cosine_schedule(epochs * len(batches), len(batches)))
    )
    step = nn.TrainOneStepCell(nn.WithLossCell(net, CrossEntropySmooth(10)), optimizer)
    step.set_train(True)
    for x, y in batches:  # epoch 1: graph compile and warm-up, not timed
        step(x, y).asnumpy()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs - 1):
        for x, y in batches:
            step(x, y).asnumpy()
    images = len(batches) * 64 * (epochs - 1)
    return images / (time.perf_counter() - wall), (time.process_time() - cpu) / images


def full(data, epochs: int, store: Path, net, every_epoch: bool) -> tuple[float, float]:
    """Images/s and CPU s per image of epochs 2..N, between epoch ends after every callback ran.

    ``every_epoch``: a checkpoint and a registered model version every epoch (the default run);
    otherwise one checkpoint after the last epoch and no model versions.
    """
    from mindspore.train import Callback

    from vit_exp.config import group_settings
    from vit_exp.data.pipeline import TrainBatches
    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.tracking.record.outbox import Outbox, RunSender
    from vit_exp.tracking.registry.checkpoints import CheckpointRegistration
    from vit_exp.tracking.registry.versions import write_model_inputs
    from vit_exp.tracking.store import use_store
    from vit_exp.train.callbacks import CheckpointSaver, TrainHistory
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.lr import cosine_schedule
    from vit_exp.train.metrics import classification_metrics
    from vit_exp.train.trainer import fit

    class EpochClock(Callback):  # last in the list: the epoch's checkpoint and registration count
        def __init__(self):
            super().__init__()
            self.ends: list[tuple[float, float]] = []  # (wall, cpu) at each epoch end

        def on_train_epoch_end(self, run_context) -> None:
            self.ends.append((time.perf_counter(), time.process_time()))

    clock = EpochClock()
    batches = TrainBatches(data, 32, 64, seed=0, exact_skip=True)
    plan = group_settings("trainer", epochs=epochs, batch_size=64).plan(batches.steps_per_epoch)
    adam = group_settings("optim", "adam", lr=1e-3)
    lr_values = adam.learning_rates(cosine_schedule(plan.total_steps, plan.steps_per_epoch))
    history = TrainHistory(64, lr_values)
    client = use_store(f"sqlite:///{store / 'mlflow.db'}")
    run_id = client.create_run("0").info.run_id
    outbox = Outbox(store / f"outbox-{run_id}", RunSender(client, run_id), background=False)
    logger = MlflowMetricLogger(outbox.put, history)
    listeners = [logger]
    if every_epoch:  # registry.register=every (the default)
        classes = [str(i) for i in range(10)]
        inputs = write_model_inputs(store / "model_inputs", {"model": {}}, classes)
        settings = group_settings("registry", register="every", name="bench")
        listeners.append(
            CheckpointRegistration(settings, run_id, inputs, put=outbox.put, flush_metrics=logger.flush)
        )
    saver = CheckpointSaver(
        store / "ckpt", "bench", history, 1 if every_epoch else epochs, 100, listeners=listeners
    )
    callbacks = [history, logger, saver, *listeners[1:]]
    fit(
        net,
        batches.epoch,
        None,
        optimizer=adam.build(net.trainable_params(), lr_values),
        loss_fn=CrossEntropySmooth(10),
        metrics=classification_metrics(10),
        plan=plan,
        callbacks=[*callbacks, clock],
    )
    outbox.finish("FINISHED", wait_s=0)
    steps = history.epochs[-1].step - history.epochs[0].step
    (wall0, cpu0), (wall1, cpu1) = clock.ends[0], clock.ends[-1]
    return steps * 64 / (wall1 - wall0), (cpu1 - cpu0) / (steps * 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers of the pipeline")
    parser.add_argument("--prefetch", type=int, default=64, help="data.prefetch_size of the pipeline")
    args = parser.parse_args()
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data = digits(Path(tmp), args.workers, args.prefetch)
        # One network for both paths: separately built instances of the same model differed by up
        # to +-15 % in steady-state speed on this VM, which swamped the difference being measured.
        net = cpu_vit(vit_config())
        paths = {
            "bare TrainOneStepCell loop, pre-loaded batches": lambda: bare(data, args.epochs, net),
            "vit_exp fit + callbacks + MLflow step metrics + pipeline": lambda: full(
                data, args.epochs, Path(tmp), net, every_epoch=False
            ),
            "  + a checkpoint and a model version every epoch (default run)": lambda: full(
                data, args.epochs, Path(tmp), net, every_epoch=True
            ),
        }
        results = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, measure in paths.items():
                results[name].append(measure())
        base = results[next(iter(paths))]
        for name, values in results.items():
            ratios = [v[0] / b[0] for v, b in zip(values, base, strict=True)]
            cpu = statistics.median(v[1] for v in values)
            cpu_ratio = statistics.median(v[1] / b[1] for v, b in zip(values, base, strict=True))
            print(
                f"{name:<66} {statistics.median(v[0] for v in values):6.0f} img/s"
                f"  ratio to bare {statistics.median(ratios):.3f}"
                f" (per round: {', '.join(f'{r:.2f}' for r in ratios)})"
                f" | CPU {cpu * 1e6:.0f} us/img, x{cpu_ratio:.3f} of bare"
            )


if __name__ == "__main__":
    main()
