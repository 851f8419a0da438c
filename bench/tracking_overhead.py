"""Cost of MLflow step logging relative to a tiny-ViT training step on this CPU.

    .venv/bin/python bench/tracking_overhead.py [--steps 1000] [--rounds 3]

Measures, in one process:
1. the median time of a vit_tiny train step (batch 64, 32x32, graph mode, pre-loaded batch);
2. for ``mlflow.log_details_every_n_steps`` 1 (four points a step) and 10 (the default: loss every
   step, LR and speed every 10): the mean time per step spent in ``MlflowMetricLogger.on_train_step_end``
   (its sends included) against a real SQLite store over ``--steps`` real train steps (the step
   runs between the timed calls, as in training), after a warm-up send; then ``close()``'s time,
   and a check that every metric was stored;
3. images/s of vit_exp's training loop (``vit_exp.train.loop.run_training``, pre-loaded batches)
   without vs with the MLflow callback (default settings), alternated A B A B, with the ratio of
   each round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _models import cpu_vit, vit_config


def build(batch: int):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.config import group_settings
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.lr import cosine_schedule

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    net = cpu_vit(vit_config())
    adam = group_settings("optim", "adam", lr=1e-3)
    lr_values = adam.learning_rates(cosine_schedule(100_000, 100))
    step = nn.TrainOneStepCell(
        nn.WithLossCell(net, CrossEntropySmooth(10)), adam.build(net.trainable_params(), lr_values)
    )
    # Training mode, as run_training sets it each epoch: a Cell starts in inference mode, where the
    # fused kernels' FeedForward runs dense1+GELU as one forward-only kernel (no bprop: no train graph).
    step.set_train(True)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.normal(size=(batch, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 10, batch).astype(np.int32))
    return net, lr_values, step, images, labels


def time_steps(step, images, labels, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step(images, labels).asnumpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def logger_cost(
    store: Path, step_parts, steps: int, details_every: int, warmup: int = 250
) -> tuple[float, float, float, int]:
    """Seconds per step in ``on_train_step_end`` (wall, then its thread's CPU: time taken off the CPU by
    other processes does not count there), ``close()`` seconds, train/loss points stored.

    Runs as in training: a real train step between two calls, after ``warmup`` logged steps and a
    send (the first send compiles SQLAlchemy's statements), with pre-existing objects frozen out of
    the cyclic GC, as ``fit`` does.
    """
    from mindspore.train import RunContext

    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.train.callbacks import TrainHistory
    from vit_exp.train.loop import CallbackParams, gc_frozen

    _, _, train_step, images, labels = step_parts
    client, run_id, outbox = local_outbox(store)
    history = TrainHistory(64, np.full(warmup + steps + 1, 1e-3, dtype=np.float32))
    logger = MlflowMetricLogger(outbox.put, history, details_every_n_steps=details_every)
    context = RunContext(CallbackParams())

    def log_step(i: int) -> None:
        history.global_step, history.last_loss, history.last_step_ms = i, 1.0 / i, 50.0
        logger.on_train_step_end(context)

    for i in range(1, warmup + 1):
        log_step(i)
    logger.flush()
    total = total_cpu = 0.0
    with gc_frozen():
        for i in range(warmup + 1, warmup + steps + 1):
            train_step(images, labels).asnumpy()
            start, start_cpu = time.perf_counter(), time.thread_time()
            log_step(i)
            total_cpu += time.thread_time() - start_cpu
            total += time.perf_counter() - start
        start = time.perf_counter()
        logger.flush()
        closing = time.perf_counter() - start
    stored = len(client.get_metric_history(run_id, "train/loss"))
    return total / steps, total_cpu / steps, closing, stored - warmup


def local_outbox(store: Path):
    """A new run in the SQLite store under ``store``, and its outbox (sending in the caller's thread)."""
    from vit_exp.tracking.record.outbox import Outbox, RunSender
    from vit_exp.tracking.store import use_store

    client = use_store(f"sqlite:///{store / 'mlflow.db'}")
    run_id = client.create_run("0").info.run_id
    return client, run_id, Outbox(store / f"outbox-{run_id}", RunSender(client, run_id), background=False)


def _batches(images, labels, steps: int):
    """``epoch_batches`` for the loop: the same pre-loaded batch ``steps`` times."""
    return lambda epoch, skip: [(images, labels)] * (steps - skip)


def loop_ips(step_parts, store: Path, steps: int, with_mlflow: bool) -> float:
    """Images/s of ``run_training`` over ``steps`` pre-loaded batches, with or without the MLflow logger."""
    from vit_exp.tracking.record.metrics import MlflowMetricLogger
    from vit_exp.train.callbacks import TrainHistory
    from vit_exp.train.loop import run_training
    from vit_exp.train.plan import TrainPlan

    _, lr_values, step, images, labels = step_parts
    history = TrainHistory(64, lr_values)
    callbacks = [history]
    if with_mlflow:
        callbacks.append(MlflowMetricLogger(local_outbox(store)[2].put, history))
    start = time.perf_counter()
    plan = TrainPlan(epochs=1, steps_per_epoch=steps, total_steps=steps, validation_epochs=())
    run_training(step, _batches(images, labels, steps), plan=plan, callbacks=callbacks)
    seconds = time.perf_counter() - start
    return steps * 64 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="train steps per timing")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    parts = build(64)
    _, _, step, images, labels = parts
    time_steps(step, images, labels, 20)  # graph compile + warm-up
    step_s = time_steps(step, images, labels, 300)
    print(f"vit_tiny train step (batch 64): median {step_s * 1000:.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        for details_every in (1, 10):
            cost, cpu, closing, stored = logger_cost(Path(tmp), parts, args.steps, details_every)
            print(
                f"mlflow.log_details_every_n_steps={details_every}: on_train_step_end "
                f"{cost * 1e6:.1f} us/step = {100 * cost / step_s:.3f}% of a step "
                f"(its thread's CPU {cpu * 1e6:.1f} us/step = {100 * cpu / step_s:.3f}%); "
                f"close() {closing * 1000:.0f} ms ({stored}/{args.steps} train/loss points stored)"
            )
        results = {False: [], True: []}
        for _ in range(args.rounds):
            for with_mlflow in (False, True):
                results[with_mlflow].append(loop_ips(parts, Path(tmp), args.steps, with_mlflow))
        base, tracked = statistics.median(results[False]), statistics.median(results[True])
        rounds = ", ".join(f"{t / b:.3f}" for b, t in zip(results[False], results[True], strict=True))
        print(
            f"training loop images/s: without MLflow {base:.0f}, with the MLflow callback {tracked:.0f} "
            f"(ratio {tracked / base:.3f}; per round: {rounds})"
        )


if __name__ == "__main__":
    main()
