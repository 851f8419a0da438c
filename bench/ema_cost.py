"""What the EMA of the weights (``trainer.ema.decay``) costs per optimizer step.

    GLOG_v=3 .venv/bin/python bench/ema_cost.py [--model vit_tiny] [--steps 40] [--rounds 6]

The default run's model and optimizer (Adam), batch 64 of in-memory images in graph mode; the same
train step timed without and with ``EmaWeights.update()`` after each step (what ``trainer.ema`` adds),
alternated A B A B; per step: the wall time and the process's CPU time (all threads, steadier on a
busy VM), medians over rounds. Also the EMA validation's swap (twice per validated epoch).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _models import cpu_vit, vit_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    import mindspore as ms
    from mindspore import nn

    from vit_exp.config import group_settings
    from vit_exp.train.ema import EmaWeights
    from vit_exp.train.losses import CrossEntropySmooth

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    config = vit_config(args.model)
    net = cpu_vit(config)
    rates = np.full(args.steps * (2 * args.rounds + 2) + 40, 1e-4, np.float32)  # one per step
    optimizer = group_settings("optim", "adam").build(net.trainable_params(), rates)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, CrossEntropySmooth(config.num_classes, 0.1)), optimizer)
    step.set_train(True)
    ema = EmaWeights(net, 0.999)
    rng = np.random.default_rng(0)
    size = config.image_size
    images = ms.Tensor(rng.normal(size=(args.batch, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, config.num_classes, args.batch).astype(np.int32))

    def timed(with_ema: bool) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step(images, labels).asnumpy()  # the loop reads each step's loss
            if with_ema:
                ema.update()
        return (time.perf_counter() - wall) / args.steps * 1e3, (time.process_time() - cpu) / args.steps * 1e3

    timed(False), timed(True)  # compile both
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for with_ema in (False, True):
            results[with_ema].append(timed(with_ema))
    swaps = []
    for _ in range(20):
        start = time.perf_counter()
        ema.swap()
        swaps.append((time.perf_counter() - start) * 1e3)
    params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    shape = f"batch {args.batch}, {args.steps} steps x {args.rounds} rounds"
    print(f"{args.model}: {params:,} trainable parameters, {shape}")
    for key, name in ((0, "wall ms/step"), (1, "CPU ms/step")):
        base = statistics.median(r[key] for r in results[False])
        with_ema = statistics.median(r[key] for r in results[True])
        print(f"  {name}: {base:.2f} without EMA, {with_ema:.2f} with: x{with_ema / base:.3f}")
    print(f"  swap (EMA validation, twice per validated epoch): {statistics.median(swaps):.2f} ms")


if __name__ == "__main__":
    main()
