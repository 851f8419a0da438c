"""Data parallelism with msrun on this machine: the default run, one process vs 2 workers.

    .venv/bin/python bench/data_parallel.py [--rounds 1] [ARGS...]

Each round runs the default experiment (``python -m vit_exp.run``, global batch 64) as one process
and as ``msrun --worker_num=2`` with ``trainer.batch_size=32`` per worker, alternated (A B A B), each
into its own SQLite store. Printed per run: wall time of the command, training time (the run's
``train/epoch_time_s`` summed), mean ``train/throughput_img_s`` (images of the global batch per
second), best ``val/top1``. Extra ARGS (Hydra overrides) go to both.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(workers: int, folder: Path, extra: list[str]) -> dict:
    bin_dir = Path(sys.executable).parent
    store = f"sqlite:///{folder / 'mlflow.db'}"
    args = [*extra, f"mlflow.tracking_uri={store}", f"hydra.run.dir={folder / 'run'}"]
    if workers == 1:
        command = [sys.executable, "-m", "vit_exp.run", *args]
    else:
        command = [
            str(bin_dir / "msrun"),
            f"--worker_num={workers}",
            f"--local_worker_num={workers}",
            f"--master_port={free_port()}",
            f"--log_dir={folder / 'msrun'}",
            "--join=True",
            "python",
            "-m",
            "vit_exp.run",
            *args,
            f"trainer.batch_size={64 // workers}",
        ]
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GLOG_v="3")
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    import mlflow

    client = mlflow.MlflowClient(store)
    (found,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    rid = found.info.run_id

    def values(key: str) -> list[float]:
        return [m.value for m in client.get_metric_history(rid, key)]

    return {
        "workers": workers,
        "wall_s": wall,
        "train_s": sum(values("train/epoch_time_s")),
        "img_s": statistics.mean(values("train/throughput_img_s")),
        "best_top1": max(values("val/top1")),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    known, extra = parser.parse_known_args()
    overrides = " ".join(extra) or "(default run)"
    print(f"# {time.strftime('%Y-%m-%d')} {os.cpu_count()} CPUs; overrides: {overrides}")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(known.rounds):
            for workers in (1, 2):
                row = run(workers, Path(tmp) / f"r{r}w{workers}", extra)
                print(
                    f"round {r + 1} workers {row['workers']}: wall {row['wall_s']:.1f} s, training "
                    f"{row['train_s']:.1f} s, {row['img_s']:.0f} img/s, best val/top1 {row['best_top1']:.4f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
