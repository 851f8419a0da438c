"""What system metrics (``mlflow.system_metrics=true``) cost a training step: MLflow's monitor on vs off.

    GLOG_v=3 .venv/bin/python bench/system_metrics_cost.py [--block-s 30] [--pairs 8] [--interval-s 10]

In one process, the default run's train step (vit_tiny, batch 64, 32x32, graph mode, a pre-loaded
batch) in blocks of ``--block-s`` seconds, alternated off / on for ``--pairs`` pairs (``on``: our
``SystemMetrics`` sampling every ``--interval-s`` into a real SQLite store, started before the block
and stopped after it, as a run does). Per block: the mean step time (a sample's work lands on a few
steps, which a median would hide), the median and the process's CPU seconds per step (all threads,
steadier than wall time on a shared machine); per pair the on/off ratio of each. Also the
monitor thread's own CPU seconds per sample (from the kernel's per-thread counters), a figure the
other users of a shared machine do not move: divided by the interval it bounds what the monitor can
take from training, and the time ``stop()`` takes at the end of a run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _models import cpu_vit, vit_config


def train_step(batch: int = 64):
    """The default run's train step (vit_tiny, Adam, label smoothing) and a pre-loaded batch."""
    import mindspore as ms
    from mindspore import nn

    from vit_exp.config import group_settings
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.lr import cosine_schedule

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    net = cpu_vit(vit_config())
    adam = group_settings("optim", "adam", lr=1e-3)
    optimizer = adam.build(net.trainable_params(), adam.learning_rates(cosine_schedule(1_000_000, 100)))
    step = nn.TrainOneStepCell(nn.WithLossCell(net, CrossEntropySmooth(10, 0.1)), optimizer)
    step.set_train(True)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.normal(size=(batch, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 10, batch).astype(np.int32))
    return step, images, labels


def block(step, images, labels, seconds: float) -> tuple[float, float, int, float]:
    """Mean and median seconds per train step over ``seconds`` of steps, the step count, and the
    process's CPU seconds (all threads) per step."""
    times = []
    cpu = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        step(images, labels).asnumpy()
        times.append(time.perf_counter() - start)
    return (
        statistics.fmean(times),
        statistics.median(times),
        len(times),
        (time.process_time() - cpu) / len(times),
    )


def thread_cpu_s(native_id: int) -> float:
    """User + system CPU seconds of this process's thread ``native_id``."""
    import psutil

    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    return float("nan")


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.4f} (min {min(values):.4f}, max {max(values):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-s", type=float, default=30.0, help="seconds of steps per block")
    parser.add_argument("--pairs", type=int, default=8, help="off/on pairs")
    parser.add_argument("--interval-s", type=float, default=10.0, help="mlflow.system_metrics_interval_s")
    args = parser.parse_args()

    from vit_exp.tracking.record.system_metrics import SystemMetrics
    from vit_exp.tracking.store import use_store

    step, images, labels = train_step()
    block(step, images, labels, 5.0)  # graph compile + warm-up
    mean_ratios, median_ratios, cpu_ratios, cpu_s, sample_counts, stops = [], [], [], [], [], []
    points = 0
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        client = use_store(uri)
        run_id = client.create_run("0").info.run_id
        for pair in range(args.pairs):
            off = block(step, images, labels, args.block_s)
            monitor = SystemMetrics(run_id, uri, args.interval_s, resumed=pair > 0)
            on = block(step, images, labels, args.block_s)
            thread = monitor.monitor._process
            cpu = thread_cpu_s(thread.native_id)
            start = time.perf_counter()
            monitor.stop()
            stops.append(time.perf_counter() - start)
            history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
            samples = len(history) - points
            points = len(history)
            cpu_s.append(cpu)
            sample_counts.append(samples)
            mean_ratios.append(on[0] / off[0])
            median_ratios.append(on[1] / off[1])
            cpu_ratios.append(on[3] / off[3])
            print(
                f"pair {pair + 1}: off {off[0] * 1000:.2f} ms mean / {off[1] * 1000:.2f} median "
                f"({off[2]} steps), on {on[0] * 1000:.2f} / {on[1] * 1000:.2f} ({on[2]} steps, "
                f"{samples} samples, monitor CPU {cpu * 1000:.1f} ms); on/off mean {mean_ratios[-1]:.4f}, "
                f"median {median_ratios[-1]:.4f}, CPU per step {cpu_ratios[-1]:.4f}",
                flush=True,
            )
    per_sample = sum(cpu_s) / max(sum(sample_counts), 1)  # the counters tick in 10 ms: summed over pairs
    print(f"step time on/off, mean per block:   {spread(mean_ratios)}")
    print(f"step time on/off, median per block: {spread(median_ratios)}")
    print(f"process CPU s per step on/off:      {spread(cpu_ratios)}")
    print(
        f"monitor CPU: {sum(cpu_s) * 1000:.0f} ms for {sum(sample_counts)} samples = "
        f"{per_sample * 1000:.1f} ms per sample = {100 * per_sample / args.interval_s:.3f} % of one core "
        f"at a sample every {args.interval_s:g} s"
    )
    print(f"stop(): median {statistics.median(stops) * 1000:.0f} ms, max {max(stops) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
