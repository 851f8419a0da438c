"""Training time under tracking-server faults, against the same run with the server up.

    .venv/bin/python bench/faults.py [--epochs 20] [--outage-s 20]

With a real ``mlflow server`` on 127.0.0.1 (SQLite store, temp folder), the default-sized
vit_tiny on digits (a checkpoint and a model version every epoch), one process per case:
1. server up throughout;
2. server stopped after epoch 2 and started again ``--outage-s`` later (the issue-12 scenario);
3. server stopped after epoch 2 for good (``mlflow.drain_timeout_s=0``: the outbox keeps the rest);
4. a server that is down at start (how long until the one-line error).
Prints each case's wall time, its training time (the summary line) and the ratio to case 1, and
checks that cases 1-2 recorded every point and version. The fault tests in tests/integration run
the same faults as pass/fail checks (`make test-all` for the slow ones).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.helpers: the server harness

from tests.helpers.processes import MlflowServer, free_port, start_cli


def train(server_url: str, folder: Path, epochs: int, *extra: str):
    return start_cli(
        "vit_exp.run",
        f"trainer.epochs={epochs}",
        "registry.name=faults-vit",
        f"mlflow.tracking_uri={server_url}",
        f"hydra.run.dir={folder / 'run'}",
        *extra,
        log=folder / "train.out",
    )


def wait_for(path: Path, text: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        if time.time() > deadline:
            raise SystemExit(f"'{text}' not in {path} after {timeout}s")
        time.sleep(0.1)


def training_seconds(log: Path) -> float:
    match = re.search(r"finished \d+ step\(s\) in ([\d.]+)s", log.read_text())
    return float(match[1]) if match else float("nan")


def recorded(server: MlflowServer, epochs: int) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    experiment = client.get_experiment_by_name("vit-exp")
    run = max(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)
    points = len(client.get_metric_history(run.info.run_id, "train/loss"))
    versions = len(client.search_model_versions(f"name='faults-vit' and run_id='{run.info.run_id}'"))
    return f"{run.info.status}, {points} train/loss points, {versions}/{epochs} versions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--outage-s", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = MlflowServer(Path(tmp) / "server").start()
        results = {}
        for case in ("server up", "outage, server back", "server gone for good"):
            folder = Path(tmp) / case.replace(" ", "_").replace(",", "")
            folder.mkdir()
            extra = ("mlflow.drain_timeout_s=0",) if case == "server gone for good" else ()
            start = time.perf_counter()
            process = train(server.url, folder, args.epochs, *extra)
            if case != "server up":
                wait_for(folder / "train.out", "epoch 2/")
                server.stop()
                if case == "outage, server back":
                    time.sleep(args.outage_s)
                    server.start()
            code = process.wait()
            wall = time.perf_counter() - start
            if server.process is None:
                server.start()
            results[case] = (
                wall,
                training_seconds(folder / "train.out"),
                code,
                recorded(server, args.epochs),
            )
        base = results["server up"][1]
        for case, (wall, seconds, code, what) in results.items():
            print(
                f"{case:<22} exit {code}  wall {wall:6.1f} s  training {seconds:6.1f} s "
                f"(x{seconds / base:.3f} of server up)  recorded: {what}"
            )
        server.stop()
        start = time.perf_counter()
        folder = Path(tmp) / "down_at_start"
        folder.mkdir()
        code = train(f"http://127.0.0.1:{free_port()}", folder, 1).wait()
        error = (folder / "train.out").read_text().strip().splitlines()[-1]
        print(f"server down at start    exit {code} after {time.perf_counter() - start:.1f} s: {error[:150]}")


if __name__ == "__main__":
    main()
