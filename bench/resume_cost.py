"""What resuming costs: checkpoint size before/after (network only vs full state), time to write a
full-state checkpoint, and the data replay a mid-epoch resume does.

    .venv/bin/python bench/resume_cost.py [--models vit_tiny vit_b16] [--rounds 3]

Sizes and write times use the real model configs (``conf/model``) with Adam, as training does; the
replay time is one digits epoch through the training pipeline (decode, augment, batch) without the
model, against one training epoch of the default run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _models import cpu_vit, vit_config


def sizes_and_write_times(model: str, rounds: int, folder: Path) -> dict:
    import mindspore as ms
    from mindspore import nn

    from vit_exp.config import group_settings
    from vit_exp.train.state import checkpoint_files, save_training_checkpoint

    net = cpu_vit(vit_config(model, num_classes=1000 if model != "vit_tiny" else 10))
    optimizer = group_settings("optim", "adam", lr=1e-3).build(
        net.trainable_params(), np.full(1000, 1e-3, np.float32)
    )
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    train_step = ms.amp.build_train_network(net, optimizer, loss, level="O0")
    state = {"position": {"epoch": 1, "step_in_epoch": 0, "global_step": 0, "epoch_done": True}}
    network_times, full_times = [], []
    for i in range(rounds):
        start = time.perf_counter()
        ms.save_checkpoint(net, str(folder / f"network-{i}.ckpt"))
        network_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        save_training_checkpoint(train_step, folder / f"full-{i}.ckpt", state)
        full_times.append(time.perf_counter() - start)
    result = {
        "network_mb": (folder / "network-0.ckpt").stat().st_size / 1e6,
        "full_mb": sum(p.stat().st_size for p in checkpoint_files(folder / "full-0.ckpt")) / 1e6,
        "network_write_s": statistics.median(network_times),
        "full_write_s": statistics.median(full_times),
    }
    for path in folder.glob("*.ckpt"):
        path.chmod(0o600)
        path.unlink()
    return result


def replay_seconds(folder: Path) -> tuple[float, int]:
    """Seconds to run one digits epoch through the training pipeline (no model), and its batches."""
    from framework_overhead import digits

    from vit_exp.data.pipeline import TrainBatches

    data = digits(folder)
    batches = TrainBatches(data, 32, 64, seed=42, exact_skip=True)
    for _ in batches.epoch(1):  # warm-up (workers, page cache)
        pass
    start = time.perf_counter()
    count = sum(1 for _ in batches.epoch(2))
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "vit_b16"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import mindspore as ms

    ms.set_device("CPU")
    with tempfile.TemporaryDirectory(prefix="vit_exp_bench_") as folder:
        for model in args.models:
            r = sizes_and_write_times(model, args.rounds, Path(folder))
            print(
                f"{model}: network-only {r['network_mb']:.1f} MB (write {r['network_write_s']:.3f} s), "
                f"full state {r['full_mb']:.1f} MB (write {r['full_write_s']:.3f} s, fsync included), "
                f"x{r['full_mb'] / r['network_mb']:.2f}"
            )
        seconds, count = replay_seconds(Path(folder))
    print(f"replay: one digits epoch ({count} batches of 64) through the pipeline in {seconds:.3f} s")


if __name__ == "__main__":
    main()
