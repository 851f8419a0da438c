"""What ``registry.export`` costs the thread that registers a version: starting the detached export
process (``background_export.start``), from a process holding a ViT-B/16 (about 1 GB), as a training
process does. The export itself then runs in that process (its time: bench/serving.py and the
export's own log).

Run: ``GLOG_v=3 .venv/bin/python bench/export_launch_cost.py [--repeats 20]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from vit_exp.models.config import ViTConfig
    from vit_exp.models.kernels.plan import plan_kernels
    from vit_exp.models.vit import ViT
    from vit_exp.tracking.registry import background_export

    config = ViTConfig(num_classes=1000)
    net = ViT(config, plan_kernels(config, "CPU"))  # keeps the process at training size
    memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    folder = Path(tempfile.mkdtemp(prefix="vit_exp_launch_"))
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        process = background_export.start(f"models:/not-registered/{i}", ["onnx"], folder)
        times.append(time.perf_counter() - start)
        process.kill()  # only the launch is measured
        process.wait()
    del net
    print(f"process memory (max RSS): {memory_mb:.0f} MB; {args.repeats} launches")
    print(f"launch: median {statistics.median(times) * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
