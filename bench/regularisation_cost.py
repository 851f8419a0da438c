"""What the regularisation settings (issue 27) cost the default train step, each against off.

    GLOG_v=3 .venv/bin/python bench/regularisation_cost.py [--rounds 6] [--steps 30]

The default run's vit_tiny (batch 64, graph mode, Adam, a pre-loaded batch), one train step per variant:
off (MindSpore's ``amp.build_train_network``, the default), ``model.drop_path_rate=0.1``,
``optim.clip_grad_norm=1.0``, ``optim.layer_decay=0.75``, and all three. Each variant is compiled once,
then the variants run in rotation (A B C D E per round) ``--steps`` steps each; printed per variant:
median over rounds of the mean step time and of the process CPU seconds per step (all threads; steadier
than wall time on a shared VM), and each as a ratio to off (median of the per-round ratios).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _models import cpu_vit, vit_config

VARIANTS = {
    "off": {},
    "drop_path_rate=0.1": {"drop_path_rate": 0.1},
    "clip_grad_norm=1.0": {"clip_grad_norm": 1.0},
    "layer_decay=0.75": {"layer_decay": 0.75},
    "all three": {"drop_path_rate": 0.1, "clip_grad_norm": 1.0, "layer_decay": 0.75},
}


def train_step(settings: dict, batch: int):
    """The train step of a variant: the default run's model, optimizer and loss with ``settings``."""
    from vit_exp.config import group_settings
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.step import build_train_step

    net = cpu_vit(vit_config(drop_path_rate=settings.get("drop_path_rate", 0.0)))
    optim_keys = {k: v for k, v in settings.items() if k != "drop_path_rate"}
    adam = group_settings("optim", "adam", **optim_keys)
    optimizer = adam.build(net.trainable_params(), adam.learning_rates(np.ones(100_000, np.float32)))
    return build_train_step(net, optimizer, CrossEntropySmooth(10, 0.1), "O0", adam.clip_grad_norm)


def measure(step, x, y, steps: int) -> tuple[float, float]:
    """Mean wall seconds and process CPU seconds per step over ``steps`` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step(x, y)
    loss.asnumpy()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    import mindspore as ms

    from vit_exp.config import group_settings

    group_settings("device").apply(seed=0)  # graph mode, as the default run
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(args.batch, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 10, args.batch).astype(np.int32))
    steps = {}
    for name, settings in VARIANTS.items():
        start = time.perf_counter()
        steps[name] = train_step(settings, args.batch)
        measure(steps[name], x, y, 3)  # compile and warm up
        print(f"{name}: built and compiled in {time.perf_counter() - start:.1f} s", flush=True)
    results = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name, step in steps.items():
            results[name].append(measure(step, x, y, args.steps))
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    off = results["off"]
    print(f"\n{'variant':<22} {'ms/step':>8} {'ratio':>6} {'CPU ms/step':>12} {'ratio':>6}")
    for name, rows in results.items():
        wall = statistics.median(w for w, _ in rows) * 1e3
        cpu = statistics.median(c for _, c in rows) * 1e3
        wall_ratio = statistics.median(w / o for (w, _), (o, _) in zip(rows, off, strict=True))
        cpu_ratio = statistics.median(c / o for (_, c), (_, o) in zip(rows, off, strict=True))
        print(f"{name:<22} {wall:>8.1f} {wall_ratio:>6.3f} {cpu:>12.1f} {cpu_ratio:>6.3f}")


if __name__ == "__main__":
    main()
