"""A Hydra callback that gives every ``--multirun`` sweep one MLflow parent run.

``on_multirun_start`` creates the parent run (tagged with the sweep directory and overrides) and
writes its id into the sweep directory, where each job's run finds it and becomes its child.
``on_multirun_end`` prints a table of the jobs with their val/top1 and ends the parent run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vit_exp.tracking.runs import PARENT_RUN_FILE

log = logging.getLogger("vit_exp.tracking")


def _settings(config: DictConfig):
    from hydra.utils import instantiate

    if "mlflow" not in config or not config.mlflow.get("enabled", True):
        return None
    return instantiate(config.mlflow)


class MlflowSweepCallback(Callback):
    """Parent MLflow run per sweep; a summary table of its child runs at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _settings(config)
        if settings is None:
            return
        from mlflow import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        from vit_exp.tracking.store import experiment_id

        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        experiment = experiment_id(settings)
        overrides = " ".join(config.hydra.overrides.task) or "(none)"
        sweeper = str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1]
        what = "-".join(str(config[g].name) for g in ("model", "data") if g in config and "name" in config[g])
        name = f"sweep {what or config.get('task_name', '')} {overrides}"[:250]
        run = MlflowClient().create_run(
            experiment,
            run_name=name,
            tags={
                MLFLOW_RUN_NAME: name,
                "hydra.sweep.dir": str(sweep_dir),
                "hydra.sweep.overrides": overrides,
                "hydra.sweeper": sweeper,
                "vit_exp.role": "sweep",
            },
        )
        (sweep_dir / PARENT_RUN_FILE).write_text(run.info.run_id)
        log.info("mlflow: sweep parent run %s (%s)", run.info.run_id, name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _settings(config)
        path = Path(str(config.hydra.sweep.dir)) / PARENT_RUN_FILE
        if settings is None or not path.is_file():
            return
        from vit_exp.tracking.store import use_store

        client = use_store(settings.tracking_uri)
        parent = client.get_run(path.read_text().strip())
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        rows = sorted(children, key=lambda r: int(r.data.tags.get("hydra.job.num", 1_000_000)))
        print(sweep_table(client, rows), flush=True)
        failed = any(r.info.status != "FINISHED" for r in rows)
        client.set_terminated(parent.info.run_id, status="FAILED" if failed else "FINISHED")
        log.info("mlflow: sweep parent run %s ended with %d job run(s)", parent.info.run_id, len(rows))


def sweep_table(client, runs: list) -> str:
    """A text table: job number, status, last and best val/top1, overrides."""
    header = f"{'job':>4}  {'status':<9} {'val/top1':>9} {'best':>7}  overrides"
    lines = ["", f"sweep results ({len(runs)} job(s)):", header, "-" * len(header)]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val/top1")
        last = f"{history[-1].value:.4f}" if history else "-"
        best = f"{max(m.value for m in history):.4f}" if history else "-"
        job = run.data.tags.get("hydra.job.num", "?")
        overrides = run.data.tags.get("hydra.overrides", "")
        lines.append(f"{job:>4}  {run.info.status:<9} {last:>9} {best:>7}  {overrides}")
    return "\n".join(lines)
