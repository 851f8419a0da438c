"""A Hydra callback that gives every ``--multirun`` sweep one MLflow parent run.

Jobs are checked before anything is recorded; each job's run is a child of the parent, which gets the best
job's val metrics and the failed jobs' errors, and ends FINISHED, FAILED (non-zero exit) or KILLED.

A sweeper whose class sets ``calls_on_first_launch`` (``optuna_study``) calls the callback's
``on_first_launch`` before its first job, so a sweep with nothing to run makes no parent; it may also
call ``on_sweep_result`` with tags and metrics for the parent (an Optuna study's best so far)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_exp.cli import JOB_ERROR_FILE, StopCommand, call_on_abort, composition_error, fail_at_exit, job_check
from vit_exp.credentials import mask
from vit_exp.errors import failure_message, first_line, user_message
from vit_exp.tracking.record.lifecycle import MAX_PARAM_LENGTH, PARENT_RUN_FILE, create_run_once
from vit_exp.tracking.store import experiment_id, use_store

log = logging.getLogger("vit_exp.tracking")

MAX_CHECKED_JOBS = 256  # a sweep whose first 256 jobs all fail the check is left to run
MAX_ERROR_TAG_LENGTH = 500


def _settings(config: DictConfig):
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
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    runs = {int(r.data.tags["hydra.job.num"]): r for r in children if "hydra.job.num" in r.data.tags}
    jobs = []
    for folder in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        listed = folder / ".hydra" / "overrides.yaml"
        error = folder / JOB_ERROR_FILE
        jobs.append(
            SweepJob(
                num=int(folder.name),
                overrides=" ".join(yaml.safe_load(listed.read_text()) or []) if listed.is_file() else "",
                error=error.read_text().strip() if error.is_file() else None,
                run=runs.get(int(folder.name)),
            )
        )
    return jobs


def end_parent_if_running(settings, run_id: str, status: str) -> None:
    client = use_store(settings.tracking_uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status=status)
        log.info("mlflow: sweep parent run %s ended %s", run_id, status)


class MlflowSweepCallback(Callback):
    """Parent MLflow run per sweep; a summary table of its jobs at the end."""

    def __init__(self) -> None:
        self.parent_id: str | None = None  # this command's parent run, once made (or reopened)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_before_start(config)
        if not sweeper_calls_on_first_launch(config):
            self.start_parent(config)

    def on_first_launch(self, config: DictConfig, tags: dict[str, str] | None = None, **kwargs: Any) -> None:
        """Called by the sweeper before its first job: the parent run, with the sweeper's ``tags``."""
        self.start_parent(config, tags or {})

    def start_parent(self, config: DictConfig, tags: dict[str, str] | None = None) -> None:
        """Make the sweep's parent run (or reopen the earlier one with ``resume=auto``), once."""
        settings = _settings(config)
        if settings is None or self.parent_id is not None:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        client = use_store(settings.tracking_uri)
        experiment = experiment_id(settings)
        key = sweep_key(config)
        run_id = _earlier_sweep(client, experiment, key) if str(config.get("resume")) == "auto" else None
        if run_id is None:
            run_id = _new_parent(client, experiment, config, sweep_dir, key)
        if tags:
            record_sweeper_result(client, run_id, tags, {})
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
        self.parent_id = run_id
        call_on_abort(lambda status: end_parent_if_running(settings, run_id, status))

    def on_sweep_result(
        self,
        config: DictConfig,
        tags: dict[str, str],
        metrics: dict[str, float],
        step: int = 0,
        **kwargs: Any,
    ) -> None:
        """Called by the sweeper as it ends: its ``tags`` and ``metrics`` (at ``step``) on the parent,
        if one was made."""
        settings = _settings(config)
        if settings is not None and self.parent_id is not None:
            client = use_store(settings.tracking_uri)
            record_sweeper_result(client, self.parent_id, tags, metrics, step)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """A failed sweep job's error on the parent run at once (``sweep.failed_jobs`` comes at the end)."""
        error = Path(str(config.hydra.runtime.output_dir)) / JOB_ERROR_FILE
        parent = Path(str(config.hydra.sweep.dir)) / PARENT_RUN_FILE
        if config.hydra.mode != RunMode.MULTIRUN or not error.is_file() or not parent.is_file():
            return
        try:
            settings = _settings(config)
            if settings is not None:
                tag = job_error_tag(config.hydra.job.num, error.read_text())
                use_store(settings.tracking_uri).set_tag(parent.read_text().strip(), *tag)
        except Exception as exc:  # on_multirun_end tags it again
            num = config.hydra.job.num
            log.warning(f"mlflow: cannot put job {num}'s error on the sweep's parent run: {mask(str(exc))}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _settings(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if settings is None or self.parent_id is None:  # none made: nothing ran, or MLflow is off
            return
        client = use_store(settings.tracking_uri)
        parent = client.get_run(self.parent_id)
        jobs = sweep_jobs(client, sweep_dir, parent)
        print(sweep_table(client, jobs), flush=True)
        metric = str(config.get("optimized_metric", "val/top1"))
        best = best_job(client, jobs, metric)
        if best is not None:
            record_best_job(client, parent.info.run_id, best)
            job, value = best.job, best.metrics[metric]
            log.info(
                f"mlflow: best job {job.num} ({job.overrides}): {metric} {value:.4f}, "
                f"run {job.run.info.run_id}"
            )
        failed = [job for job in jobs if job.status != "FINISHED"]
        record_failed_jobs(client, parent, failed)
        end_parent_if_running(settings, parent.info.run_id, "FAILED" if failed else "FINISHED")
        if failed:
            first = failed[0]
            fail_at_exit(
                f"{len(failed)} of {len(jobs)} sweep job(s) did not finish; job {first.num} "
                f"({first.overrides}): {first.error or first.status}"
            )


def sweeper_calls_on_first_launch(config: DictConfig) -> bool:
    """Whether the configured sweeper calls ``on_first_launch`` before its first job (then the parent
    waits for it)."""
    try:
        sweeper = get_class(str(config.hydra.sweeper._target_))
    except Exception:  # Hydra reports a sweeper it cannot load
        return False
    return bool(getattr(sweeper, "calls_on_first_launch", False))


def record_sweeper_result(
    client, run_id: str, tags: dict[str, str], metrics: dict[str, float], step: int = 0
) -> None:
    """The sweeper's ``tags`` (masked) and ``metrics`` (at ``step``, e.g. its trial count) on the parent."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
        tags=[RunTag(k, mask(str(v))[:MAX_PARAM_LENGTH]) for k, v in tags.items()],
    )


def check_before_start(config: DictConfig) -> None:
    """Stop the command (``error: ...``, exit 1, no run recorded) when no job of the sweep can
    pass its first check; a value bad for some jobs only is left to those jobs."""
    check = job_check()
    if check is None:
        return
    errors: list[str] = []
    for num, overrides in enumerate(candidate_jobs(config)):
        if num == MAX_CHECKED_JOBS:
            return  # too many to tell: left to the jobs
        error = job_error(config, num, overrides, check)
        if error is None:
            return
        errors.append(error)
    if errors:  # the error most jobs share (the first job's on a tie) names what to fix first
        raise StopCommand(Counter(errors).most_common(1)[0][0])


def candidate_jobs(config: DictConfig) -> Iterator[list[str]]:
    """The override lists of the sweep's jobs in the basic sweeper's order (of an Optuna
    ``interval``, its two ends); none when the overrides cannot be read here (the sweeper reports them)."""
    params = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    lines = [f"{k}={v}" for k, v in params.items()]  # as written: ${...} is the job's to resolve
    lines += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)  # the command line wins
    choices: dict[str, list[str]] = {}
    try:
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        for override in parser.parse_overrides(lines):
            choices[override.get_key_element()] = _choices(override)
    except Exception:
        return
    for job in itertools.product(*choices.values()):
        yield list(job)


def _choices(override) -> list[str]:
    """The ``key=value`` lines one override gives its jobs (a range's two ends for an interval)."""
    if not override.is_sweep_override():
        return [override.input_line]
    key = override.get_key_element()
    if override.is_interval_sweep():
        value = override.value()
        return [f"{key}={value.start!r}", f"{key}={value.end!r}"]
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def job_error(config: DictConfig, num: int, overrides: list[str], check: Callable[[Any], None]) -> str | None:
    """Job ``num``'s one-line error before it starts (composition, or ``check`` failing with a user
    error); None when it passes or fails otherwise (the job reports that)."""
    try:
        job = job_config(config, num, overrides)
    except Exception as exc:
        return composition_error(exc)
    hydra = HydraConfig.instance()
    previous = hydra.cfg
    hydra.set_config(job)  # ${hydra:...} resolves as in the job, then as it was
    try:
        check(job)
    except Exception as exc:
        return failure_message(exc) if user_message(exc) is not None else None
    finally:
        hydra.cfg = previous
    return None


def job_config(config: DictConfig, num: int, overrides: list[str]) -> DictConfig:
    """Job ``num``'s config as Hydra's launcher makes it: composed, numbered, its directory set."""
    job = GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)
    with open_dict(job):
        job.hydra.job.id = job.hydra.job.num = num
        folder = os.path.join(str(job.hydra.sweep.dir), str(job.hydra.sweep.subdir))
        job.hydra.runtime.output_dir = os.path.abspath(folder)
    return job


def record_failed_jobs(client, parent, failed: list[SweepJob]) -> None:
    """Tag the parent run with the jobs that did not finish (``sweep.failed_jobs``: ``0,2``) and each
    one's one-line error (``sweep.job.<n>.error``); a continued sweep's earlier ones are removed."""
    from mlflow.entities import RunTag

    tags = dict(job_error_tag(job.num, job.error or f"ended {job.status}") for job in failed)
    if failed:
        tags["sweep.failed_jobs"] = ",".join(str(job.num) for job in failed)
    for key in parent.data.tags:
        if key not in tags and (key == "sweep.failed_jobs" or _is_job_error_tag(key)):
            client.delete_tag(parent.info.run_id, key)
    if tags:
        client.log_batch(parent.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def _is_job_error_tag(key: str) -> bool:
    return key.startswith("sweep.job.") and key.endswith(".error")


def job_error_tag(num: int, error: str) -> tuple[str, str]:
    """The parent run's tag for job ``num``'s error: its first line, credentials masked, shortened."""
    return f"sweep.job.{num}.error", mask(first_line(error))[:MAX_ERROR_TAG_LENGTH]


def sweep_key(config: DictConfig) -> str:
    """What makes two sweep commands the same sweep: task, sweeper, overrides (``resume=`` aside)."""
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
    info = parent.info
    log.info(
        f"resume=auto: continuing sweep parent run {info.run_id} ('{info.run_name}', was {info.status}): "
        "finished jobs are skipped"
    )
    return parent.info.run_id


def _new_parent(client, experiment: str, config: DictConfig, sweep_dir: Path, key: str) -> str:
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    overrides = " ".join(config.hydra.overrides.task) or "(none)"
    sweeper = str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1]
    what = "-".join(str(config[g].name) for g in ("model", "data") if g in config and "name" in config[g])
    name = f"sweep {what or config.get('task_name', '')} {overrides}"[:250]
    tags = {
        MLFLOW_RUN_NAME: name,
        "hydra.sweep.dir": str(sweep_dir),
        "hydra.sweep.overrides": overrides,
        "hydra.sweeper": sweeper,
        "vit_exp.role": "sweep",
        "vit_exp.sweep_key": key,
    }
    run = create_run_once(client, experiment, name, tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in sweep_params(config).items()])
    log.info("mlflow: sweep parent run %s (%s)", run.info.run_id, name)
    return run.info.run_id


def sweep_params(config: DictConfig) -> dict[str, str]:
    """The sweep's keys as params: swept keys with their choices (or range), and fixed overrides."""
    params = {}
    for override in config.hydra.overrides.task:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    params.pop("resume", None)
    params |= {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    return {k: mask(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}


@dataclass(frozen=True)
class BestJob:
    """The sweep's best job by the best value of its optimized metric, with that epoch's val metrics."""

    job: SweepJob
    metrics: dict[str, float]


def best_job(client, jobs: list[SweepJob], metric: str = "val/top1") -> BestJob | None:
    """The job with the best ``metric`` value over its epochs (earlier on a tie); None if none logged it."""
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
