"""Cost of MLflow step logging relative to a tiny-ViT training step on this CPU.

    .venv/bin/python bench/tracking_overhead.py [--steps 300] [--rounds 2]

Measures, in one process:
1. the median time of a vit_tiny train step (batch 64, 32x32, graph mode, pre-loaded batch);
2. the mean cost per step of ``MlflowLogger.on_train_step_end`` against a real SQLite store,
   including the amortised asynchronous batch sends (then checks every metric was stored);
3. Model.train images/s without vs with the MLflow callback, alternated A B A B.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _models import default_vit_args


def build(batch: int):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.models.vit import ViT
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.lr import cosine_schedule
    from vit_exp.train.optim import build_optimizer

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    net = ViT(**default_vit_args())
    optimizer = build_optimizer(net.trainable_params(), cosine_schedule(100_000, 100), name="adam", lr=1e-3)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, CrossEntropySmooth(10)), optimizer)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.normal(size=(batch, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 10, batch).astype(np.int32))
    return net, optimizer, step, images, labels


def time_steps(step, images, labels, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step(images, labels).asnumpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def logger_cost(store: Path, steps: int) -> tuple[float, int]:
    import mlflow
    from mindspore.train import RunContext
    from mindspore.train.callback._callback import InternalCallbackParam

    from vit_exp.tracking.callback import MlflowLogger
    from vit_exp.train.callbacks import TrainHistory

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    with mlflow.start_run() as run:
        history = TrainHistory(64, np.full(steps + 1, 1e-3, dtype=np.float32))
        logger = MlflowLogger(run.info.run_id, history)
        context = RunContext(InternalCallbackParam())
        total = 0.0
        for i in range(1, steps + 1):
            history.global_step, history.last_loss, history.last_step_ms = i, 1.0 / i, 50.0
            start = time.perf_counter()
            logger.on_train_step_end(context)
            total += time.perf_counter() - start
        start = time.perf_counter()
        logger.wait()
        drain = time.perf_counter() - start
        stored = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss"))
    print(f"  (draining the queue at the end took {drain * 1000:.0f} ms, once per run)")
    return total / steps, stored


def model_train_ips(step_parts, store: Path, steps: int, with_mlflow: bool) -> float:
    import mindspore.dataset as ds
    import mlflow
    from mindspore.train import Model

    from vit_exp.tracking.callback import MlflowLogger
    from vit_exp.train.callbacks import TrainHistory
    from vit_exp.train.losses import CrossEntropySmooth

    net, optimizer, _, images, labels = step_parts
    data = ds.NumpySlicesDataset(
        {
            "image": np.repeat(images.asnumpy()[None], steps, 0).reshape(-1, 3, 32, 32),
            "label": np.repeat(labels.asnumpy()[None], steps, 0).reshape(-1),
        },
        shuffle=False,
    ).batch(64)
    model = Model(net, loss_fn=CrossEntropySmooth(10), optimizer=optimizer)
    history = TrainHistory(64, optimizer.lr_values)
    callbacks = [history]
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    run = mlflow.start_run() if with_mlflow else None
    if run:
        callbacks.append(MlflowLogger(run.info.run_id, history))
    start = time.perf_counter()
    model.train(1, data, callbacks=callbacks, dataset_sink_mode=False)
    seconds = time.perf_counter() - start
    if run:
        mlflow.end_run()
    return steps * 64 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    parts = build(64)
    _, _, step, images, labels = parts
    time_steps(step, images, labels, 20)  # graph compile + warm-up
    step_s = time_steps(step, images, labels, args.steps)
    print(f"vit_tiny train step (batch 64): median {step_s * 1000:.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        cost, stored = logger_cost(Path(tmp), args.steps)
        print(
            f"MlflowLogger.on_train_step_end: {cost * 1e6:.1f} us/step = {100 * cost / step_s:.3f}% of a step"
            f" ({stored}/{args.steps} train/loss points stored)"
        )
        results = {False: [], True: []}
        model_train_ips(parts, Path(tmp), 30, False)  # warm the Model graph
        for _ in range(args.rounds):
            for with_mlflow in (False, True):
                results[with_mlflow].append(model_train_ips(parts, Path(tmp), args.steps, with_mlflow))
        base, tracked = statistics.median(results[False]), statistics.median(results[True])
        print(
            f"Model.train images/s: without MLflow {base:.0f}, with MLflow callback {tracked:.0f} "
            f"(ratio {tracked / base:.3f}; rounds {results})"
        )


if __name__ == "__main__":
    main()
