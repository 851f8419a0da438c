"""Training time under tracking-server faults, against the same run with the server up.

    .venv/bin/python bench/faults.py [--epochs 20] [--outage-s 20] [--cases up,outage,gone,down,clean,flaky]

With a real ``mlflow server`` on 127.0.0.1 (SQLite store, temp folder), the default-sized
vit_tiny on digits (a checkpoint and a model version every epoch), one process per case:
1. server up throughout;
2. server stopped after epoch 2 and started again ``--outage-s`` later (the issue-12 scenario);
3. server stopped after epoch 2 for good (``mlflow.drain_timeout_s=0``: the outbox keeps the rest);
4. a server that is down at start (how long until the one-line error);
5. ``clean`` and ``flaky`` (issue 24): the run through a fault-injecting proxy
   (tests/helpers/flaky_proxy.py), clean (no faults) and flaky (10 % of requests refused with 503,
   10 % of write answers lost after the server applied the write), measured in the same invocation:
   the ratio flaky / clean isolates the faults from the proxy's own cost (``--rounds`` pairs, in
   alternating order; medians).
Prints each case's wall time, its training time (the summary line) and the ratio to case 1, and
checks that cases 1-2 recorded every point and version; for the proxy pair, the ratio and whether
the record holds each point and each version exactly once. ``--cases`` picks cases (default: all).
The fault tests in tests/integration run the same faults as pass/fail checks (`make test-all` for
the slow ones).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.helpers: the server harness

from tests.helpers.flaky_proxy import FlakyProxy
from tests.helpers.processes import MlflowServer, free_port, start_cli

SERVER_CASES = {"up": "server up", "outage": "outage, server back", "gone": "server gone for good"}
PROXY_CASES = {"clean": {"refuse": 0.0, "lose_answer": 0.0}, "flaky": {"refuse": 0.1, "lose_answer": 0.1}}
CASES = (*SERVER_CASES, "down", *PROXY_CASES)


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


def run_id_of(log: Path) -> str | None:
    match = re.search(r"mlflow:? run:? ([0-9a-f]{32})", log.read_text())
    return match[1] if match else None


def exactly_once(server: MlflowServer, log: Path) -> str:
    """Whether the run of ``log`` holds each ``train/loss`` step and each epoch's version once."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    run_id = run_id_of(log)
    match = re.search(r"training (\d+) epoch\(s\) x (\d+) steps", log.read_text())
    if run_id is None or match is None:
        return "no run in the log"
    epochs, steps = int(match[1]), int(match[1]) * int(match[2])
    points = Counter(m.step for m in client.get_metric_history(run_id, "train/loss"))
    versions = Counter(
        int(v.tags["epoch"]) for v in client.search_model_versions(f"name='faults-vit' and run_id='{run_id}'")
    )
    status = client.get_run(run_id).info.status
    extra_points = {step: n for step, n in points.items() if n > 1}
    extra_versions = {epoch: n for epoch, n in versions.items() if n > 1}
    verdict = "exactly once"
    if extra_points or extra_versions:
        verdict = "DUPLICATES"
    elif len(points) < steps or len(versions) < epochs:
        verdict = "INCOMPLETE"
    return (
        f"{verdict}: {status}, {len(points)}/{steps} steps ({sum(points.values())} points, "
        f"repeated: {extra_points or 'none'}), {len(versions)}/{epochs} epochs' versions "
        f"({sum(versions.values())} versions, repeated: {extra_versions or 'none'})"
    )


def server_cases(server: MlflowServer, tmp: Path, cases: list[str], epochs: int, outage_s: float) -> None:
    """Cases 1-3: the run against the server itself, stopped (and started again) after epoch 2."""
    results = {}
    for key in cases:
        case = SERVER_CASES[key]
        folder = tmp / key
        folder.mkdir()
        extra = ("mlflow.drain_timeout_s=0",) if key == "gone" else ()
        start = time.perf_counter()
        process = train(server.url, folder, epochs, *extra)
        if key != "up":
            wait_for(folder / "train.out", "epoch 2/")
            server.stop()
            if key == "outage":
                time.sleep(outage_s)
                server.start()
        code = process.wait()
        wall = time.perf_counter() - start
        if server.process is None:
            server.start()
        results[case] = (wall, training_seconds(folder / "train.out"), code, recorded(server, epochs))
    base = results.get("server up", (0, float("nan")))[1]
    for case, (wall, seconds, code, what) in results.items():
        print(
            f"{case:<22} exit {code}  wall {wall:6.1f} s  training {seconds:6.1f} s "
            f"(x{seconds / base:.3f} of server up)  recorded: {what}"
        )


def proxy_cases(server: MlflowServer, tmp: Path, cases: list[str], epochs: int, rounds: int) -> None:
    """Case 5: the run through the proxy, clean and flaky, ``rounds`` times in alternating order
    (clean, flaky, flaky, clean, ...: drift falls on both) after an untimed warm-up run; medians and
    their ratio."""
    results: dict[str, list[tuple[float, float]]] = {key: [] for key in cases}
    with FlakyProxy(server.url, seed=24) as proxy:
        (tmp / "proxy_warm_up").mkdir()  # the first run against a new server pays one-off costs (~15 s)
        proxy_run(server, proxy, tmp / "proxy_warm_up", epochs, "warm-up (clean, not counted)")
        for round_ in range(rounds):
            for key in cases if round_ % 2 == 0 else cases[::-1]:
                folder = tmp / f"proxy_{key}_{round_}"
                folder.mkdir()
                proxy.set_rates(**PROXY_CASES[key])
                results[key].append(proxy_run(server, proxy, folder, epochs, f"{key} round {round_ + 1}"))
    medians = {key: (median(w for w, _ in runs), median(t for _, t in runs)) for key, runs in results.items()}
    clean = medians.get("clean")
    for key, (wall, seconds) in medians.items():
        ratio = ""
        if key != "clean" and clean is not None:
            ratio = f"  x{wall / clean[0]:.3f} wall, x{seconds / clean[1]:.3f} training of clean"
        print(f"proxy {key:<6} median of {rounds}: wall {wall:6.1f} s  training {seconds:6.1f} s{ratio}")


def proxy_run(
    server: MlflowServer, proxy: FlakyProxy, folder: Path, epochs: int, name: str
) -> tuple[float, float]:
    """One run through ``proxy``: print its times, record and faults; return (wall, training) seconds."""
    before = proxy.counts()
    start = time.perf_counter()
    code = train(proxy.url, folder, epochs).wait()
    wall, seconds = time.perf_counter() - start, training_seconds(folder / "train.out")
    faults = {k: v - before[k] for k, v in proxy.counts().items() if v - before[k]}
    print(f"proxy {name}: exit {code}  wall {wall:6.1f} s  training {seconds:6.1f} s  proxy: {faults}")
    print(f"  record: {exactly_once(server, folder / 'train.out')}")
    if code != 0:
        print(f"  last line: {(folder / 'train.out').read_text().strip().splitlines()[-1]}")
    return wall, seconds


def down_at_start(tmp: Path) -> None:
    """Case 4: a server that is down at start: how long until the one-line error."""
    start = time.perf_counter()
    folder = tmp / "down_at_start"
    folder.mkdir()
    code = train(f"http://127.0.0.1:{free_port()}", folder, 1).wait()
    error = (folder / "train.out").read_text().strip().splitlines()[-1]
    print(f"server down at start    exit {code} after {time.perf_counter() - start:.1f} s: {error[:150]}")


def parse_cases(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {','.join(CASES)}")
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--outage-s", type=float, default=20.0)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {','.join(CASES)}")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of the clean/flaky pair (alternating order)"
    )
    args = parser.parse_args()
    cases = parse_cases(args.cases)
    with tempfile.TemporaryDirectory() as tmp:
        server = MlflowServer(Path(tmp) / "server").start()
        server_cases(server, Path(tmp), [c for c in cases if c in SERVER_CASES], args.epochs, args.outage_s)
        proxy_cases(server, Path(tmp), [c for c in cases if c in PROXY_CASES], args.epochs, args.rounds)
        server.stop()
        if "down" in cases:
            down_at_start(Path(tmp))


if __name__ == "__main__":
    main()
