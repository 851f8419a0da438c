"""A Hydra callback that gives every ``--multirun`` sweep one MLflow parent run.

``on_multirun_start`` creates the parent run (tagged with the sweep directory and overrides) and
writes its id into the sweep directory, where each job's run finds it and becomes its child.
The parent's params are the sweep's keys (swept choices and fixed overrides).
``on_multirun_end`` prints a table of the jobs (status, val/top1, a failed job's error), puts the best
job's val metrics and run id on the parent (so sweeps compare in the runs table) and ends the
parent FINISHED, or FAILED when a job failed, which also makes the command exit non-zero. A sweep
that is interrupted or breaks ends its parent KILLED or FAILED (never RUNNING).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vit_exp.tracking.runs import PARENT_RUN_FILE

log = logging.getLogger("vit_exp.tracking")


def _settings(config: DictConfig):
    from hydra.utils import instantiate

    if "mlflow" not in config or not config.mlflow.get("enabled", True):
        return None
    return instantiate(config.mlflow)


@dataclass(frozen=True)
class SweepJob:
    """One job of the sweep, from its directory and its MLflow run (None when it failed before one)."""

    num: int
    overrides: str
    error: str | None
    run: object | None

    @property
    def status(self) -> str:
        if self.run is not None:
            return self.run.info.status
        return "FAILED" if self.error else "UNKNOWN"


def sweep_jobs(client, sweep_dir: Path, parent) -> list[SweepJob]:
    """The jobs Hydra started in ``sweep_dir`` (job directories named by number), in order."""
    from vit_exp.cli import JOB_ERROR_FILE

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    runs = {int(r.data.tags["hydra.job.num"]): r for r in children if "hydra.job.num" in r.data.tags}
    jobs = []
    for folder in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = folder / ".hydra" / "overrides.yaml"
        error = folder / JOB_ERROR_FILE
        jobs.append(
            SweepJob(
                num=int(folder.name),
                overrides=" ".join(yaml.safe_load(overrides.read_text()) or [])
                if overrides.is_file()
                else "",
                error=error.read_text().strip() if error.is_file() else None,
                run=runs.get(int(folder.name)),
            )
        )
    return jobs


def end_parent_if_running(settings, run_id: str, status: str) -> None:
    """End the sweep's parent run with ``status`` unless it has ended already."""
    from vit_exp.tracking.store import use_store

    client = use_store(settings.tracking_uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status=status)
        log.info("mlflow: sweep parent run %s ended %s", run_id, status)


class MlflowSweepCallback(Callback):
    """Parent MLflow run per sweep; a summary table of its jobs at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _settings(config)
        if settings is None:
            return
        from vit_exp.cli import call_on_abort
        from vit_exp.tracking.store import experiment_id, use_store

        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        client = use_store(settings.tracking_uri)
        experiment = experiment_id(settings)
        key = sweep_key(config)
        run_id = None
        if str(config.get("resume")) == "auto":
            run_id = _earlier_sweep(client, experiment, key)
        if run_id is None:
            run_id = _new_parent(client, experiment, config, sweep_dir, key)
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
        call_on_abort(lambda status: end_parent_if_running(settings, run_id, status))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _settings(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        path = sweep_dir / PARENT_RUN_FILE
        if settings is None or not path.is_file():
            return
        from vit_exp.tracking.store import use_store

        client = use_store(settings.tracking_uri)
        parent = client.get_run(path.read_text().strip())
        jobs = sweep_jobs(client, sweep_dir, parent)
        print(sweep_table(client, jobs), flush=True)
        metric = str(config.get("optimized_metric", "val/top1"))
        best = best_job(client, jobs, metric)
        if best is not None:
            record_best_job(client, parent.info.run_id, best)
            log.info(
                "mlflow: best job %d (%s): %s %.4f, run %s",
                best.job.num,
                best.job.overrides,
                metric,
                best.metrics[metric],
                best.job.run.info.run_id,
            )
        failed = [job for job in jobs if job.status != "FINISHED"]
        end_parent_if_running(settings, parent.info.run_id, "FAILED" if failed else "FINISHED")
        if failed:
            from vit_exp.cli import fail_at_exit

            first = failed[0]
            fail_at_exit(
                f"{len(failed)} of {len(jobs)} sweep job(s) did not finish; job {first.num} "
                f"({first.overrides}): {first.error or first.status}"
            )


def sweep_key(config: DictConfig) -> str:
    """What makes two sweep commands the same sweep: task, sweeper, overrides (``resume=`` aside)."""
    import hashlib

    overrides = [o for o in config.hydra.overrides.task if not o.startswith("resume=")]
    sweeper = str(config.hydra.sweeper.get("_target_", ""))
    params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    text = repr((config.get("task_name"), sweeper, sorted(overrides), sorted(params.items())))
    return hashlib.sha256(text.encode()).hexdigest()


def _earlier_sweep(client, experiment: str, key: str) -> str | None:
    """The newest parent run of the same sweep, reopened (RUNNING) to continue; None when none."""
    runs = client.search_runs(
        [experiment],
        f"tags.`vit_exp.sweep_key` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        log.info("resume=auto: no earlier run of this sweep; starting a new one")
        return None
    parent = runs[0]
    count = int(parent.data.tags.get("vit_exp.resume.count", "0")) + 1
    client.update_run(parent.info.run_id, status="RUNNING")
    client.set_tag(parent.info.run_id, "vit_exp.resume.count", str(count))
    log.info(
        "resume=auto: continuing sweep parent run %s ('%s', was %s): finished jobs are skipped",
        parent.info.run_id,
        parent.info.run_name,
        parent.info.status,
    )
    return parent.info.run_id


def _new_parent(client, experiment: str, config: DictConfig, sweep_dir: Path, key: str) -> str:
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    overrides = " ".join(config.hydra.overrides.task) or "(none)"
    sweeper = str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1]
    what = "-".join(str(config[g].name) for g in ("model", "data") if g in config and "name" in config[g])
    name = f"sweep {what or config.get('task_name', '')} {overrides}"[:250]
    run = client.create_run(
        experiment,
        run_name=name,
        tags={
            MLFLOW_RUN_NAME: name,
            "hydra.sweep.dir": str(sweep_dir),
            "hydra.sweep.overrides": overrides,
            "hydra.sweeper": sweeper,
            "vit_exp.role": "sweep",
            "vit_exp.sweep_key": key,
        },
    )
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in sweep_params(config).items()])
    log.info("mlflow: sweep parent run %s (%s)", run.info.run_id, name)
    return run.info.run_id


def sweep_params(config: DictConfig) -> dict[str, str]:
    """The sweep's keys as params: each swept key with its choices (``optim.lr`` -> ``1e-3,3e-3``,
    or an Optuna range), and the fixed overrides of the command line."""
    from vit_exp.credentials import mask
    from vit_exp.tracking.runs import MAX_PARAM_LENGTH

    params = {}
    for override in config.hydra.overrides.task:
        key, _, value = override.partition("=")
        if key.lstrip("+~") != "resume":
            params[key.lstrip("+~")] = value
    for key, value in (config.hydra.sweeper.get("params") or {}).items():
        params[str(key)] = str(value)
    return {k: mask(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}


@dataclass(frozen=True)
class BestJob:
    """The sweep's best job by the best value of its optimized metric, with that epoch's val metrics."""

    job: SweepJob
    metrics: dict[str, float]


def best_job(client, jobs: list[SweepJob], metric: str = "val/top1") -> BestJob | None:
    """The job with the best value of ``metric`` over its epochs (the earlier job on a tie; higher
    or lower is better as the metric says); None when no job logged it."""
    from vit_exp.train.objective import HIGHER_IS_BETTER

    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    best: BestJob | None = None
    for job in jobs:
        if job.run is None:
            continue
        history = [
            m for m in client.get_metric_history(job.run.info.run_id, metric) if not math.isnan(m.value)
        ]
        if not history:
            continue
        top = max(history, key=lambda m: (sign * m.value, -m.step))
        if best is not None and sign * top.value <= sign * best.metrics[metric]:
            continue
        metrics = {metric: top.value}
        for key in ("val/top1", "val/top5", "val/loss"):
            same_step = [m for m in client.get_metric_history(job.run.info.run_id, key) if m.step == top.step]
            if same_step and key != metric:
                metrics[key] = same_step[-1].value
        best = BestJob(job, metrics)
    return best


def record_best_job(client, parent_id: str, best: BestJob) -> None:
    """Put the best job's val metrics (same keys as the jobs') and its run id on the parent run."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        parent_id,
        metrics=[Metric(k, v, now, 0) for k, v in best.metrics.items()],
        tags=[
            RunTag("sweep.best_run_id", best.job.run.info.run_id),
            RunTag("sweep.best_job", str(best.job.num)),
            RunTag("sweep.best_overrides", best.job.overrides or "(none)"),
        ],
    )


def sweep_table(client, jobs: list[SweepJob]) -> str:
    """A text table: job number, status, last and best val/top1, overrides, a failed job's error."""
    header = f"{'job':>4}  {'status':<9} {'val/top1':>9} {'best':>7}  overrides"
    lines = ["", f"sweep results ({len(jobs)} job(s)):", header, "-" * len(header)]
    for job in jobs:
        history = client.get_metric_history(job.run.info.run_id, "val/top1") if job.run else []
        last = f"{history[-1].value:.4f}" if history else "-"
        best = f"{max(m.value for m in history):.4f}" if history else "-"
        lines.append(f"{job.num:>4}  {job.status:<9} {last:>9} {best:>7}  {job.overrides}")
        if job.error:
            lines.append(f"{'':>6}error: {job.error}")
    return "\n".join(lines)
