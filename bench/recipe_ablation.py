"""The fine-tuning recipe's pieces on digits with little data: best val top-1 over 3 seeds each.

    GLOG_v=3 .venv/bin/python bench/recipe_ablation.py [--fraction 0.1] [--epochs 30] [--seeds 1 2 3]

Each variant is the default run (vit_tiny on digits) on ``data.train_fraction`` of the training
images, with the same epochs and batch, plus one piece of the recipe (or all of them), run as a real
``python -m vit_exp.run`` into its own SQLite store. Per variant: the mean and spread (min..max,
population std) of the run's ``best/val_top1`` over the seeds (``trainer.seed``). Validation is the
whole val split every epoch. ``--full`` adds the full-data default run with the overrides given
(``--full-overrides``), for the chosen default.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "basic": [],
    "+randaug": ["augment.randaug.num_ops=2"],
    "+random erasing": ["augment.random_erasing.prob=0.25"],
    "+mixup/cutmix": ["augment.mix.prob=1.0"],
    "+drop path 0.1": ["model.drop_path_rate=0.1"],
    "+ema": ["trainer.ema.decay=0.99"],
    "all (deit + drop path + ema)": ["augment=deit", "model.drop_path_rate=0.1", "trainer.ema.decay=0.99"],
}


def best_top1(store: Path, overrides: list[str]) -> tuple[float, float | None, float]:
    """Train once (a CLI process) into ``store``; the run's best val top-1 of the raw weights, of the
    EMA (None without one) and the wall seconds."""
    import mlflow

    uri = f"sqlite:///{store / 'mlflow.db'}"
    command = [
        sys.executable,
        "-m",
        "vit_exp.run",
        *overrides,
        f"mlflow.tracking_uri={uri}",
        "mlflow.system_metrics=false",
        "registry.register=none",
        "trainer.progress_bar=false",
        f"hydra.run.dir={store / 'run'}",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(overrides)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    ema = [m.value for m in client.get_metric_history(run.info.run_id, "val_ema/top1")]
    return run.data.metrics["best/val_top1"], max(ema, default=None), seconds


def spread(values: list[float]) -> str:
    return (
        f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f} "
        f"({min(values):.4f}..{max(values):.4f})"
    )


def row(name: str, results: list[tuple[float, float | None, float]]) -> str:
    """A table row: the raw weights' best val top-1 over the seeds, the EMA's (if any), seconds a run."""
    ema = [r[1] for r in results if r[1] is not None]
    seconds = statistics.mean(r[2] for r in results)
    return f"| {name} | {spread([r[0] for r in results])} | {spread(ema) if ema else '-'} | {seconds:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--full", action="store_true", help="also the full-data default run")
    parser.add_argument("--full-overrides", nargs="*", default=[])
    args = parser.parse_args()
    common = [
        f"data.train_fraction={args.fraction}",
        f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch}",
    ]
    print(
        f"digits, data.train_fraction={args.fraction}, {args.epochs} epochs, batch {args.batch}, "
        f"seeds {args.seeds}"
    )
    print("| variant | best val top-1: mean ± std (min..max) | EMA weights' best | s/run |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="vit_exp_ablation_") as tmp:
        for name, overrides in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            results = [
                best_top1(
                    Path(tmp) / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}-{seed}",
                    [*common, *overrides, f"trainer.seed={seed}"],
                )
                for seed in args.seeds
            ]
            print(row(name, results), flush=True)
        if args.full:
            results = [
                best_top1(Path(tmp) / f"full-{seed}", [*args.full_overrides, f"trainer.seed={seed}"])
                for seed in args.seeds
            ]
            print(row(f"full data, {' '.join(args.full_overrides) or 'default'}", results))


if __name__ == "__main__":
    main()
