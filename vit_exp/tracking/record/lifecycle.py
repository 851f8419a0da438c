"""MLflow run lifecycle: run name, tags, params and artifacts, and a guaranteed end status
(FINISHED, FAILED with ``traceback.txt``, or KILLED on Ctrl-C)."""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import subprocess
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vit_exp.config import PROJECT_ROOT
from vit_exp.credentials import mask
from vit_exp.errors import failure_message
from vit_exp.tracking.record import MlflowSettings
from vit_exp.tracking.retries import Patience, create_once, with_patience
from vit_exp.tracking.store import experiment_id, use_store

log = logging.getLogger("vit_exp.tracking")

PARENT_RUN_FILE = ".mlflow_parent_run_id"
MAX_PARAM_LENGTH = 6000


def flatten(config: Mapping | DictConfig, prefix: str = "") -> dict[str, str]:
    """``{"optim.lr": "0.001", ...}``: dotted keys for every leaf; Hydra's own node is skipped."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    flat: dict[str, str] = {}
    for key, value in config.items():
        if not prefix and key == "hydra":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = mask(str(value))[:MAX_PARAM_LENGTH]
    return flat


LOCATION_KEYS = ("data.root", "data.check_cache_dir", "model.checkpoint_cache_dir")


def is_location_key(key: str) -> bool:
    """Where a job keeps files (``paths.*``, cache folders): a tag of its run, not a param, so the
    UI's parameter plots and comparisons show hyperparameters, not each job's directories."""
    return key.startswith("paths.") or key in LOCATION_KEYS


def readable_run_name(config: Mapping, overrides: list[str]) -> str:
    """``vit_tiny-digits optim.lr=0.001 trainer.batch_size=32`` (paths and hydra overrides left out)."""
    keep = [
        o for o in overrides if not o.lstrip("+~").startswith(("paths.", "hydra.", "mlflow.", "registry."))
    ]
    keep = [o for o in keep if not o.startswith(("model=", "data="))]
    name = " ".join([f"{config['model']['name']}-{config['data']['name']}", *keep])
    return mask(name)[:250]


def git_state(folder: Path = PROJECT_ROOT) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` of the project's checkout (empty when not a git tree)."""
    git = functools.partial(
        subprocess.run, cwd=folder, capture_output=True, text=True, timeout=10, check=True
    )
    try:
        commit = git(["git", "rev-parse", "HEAD"]).stdout.strip()
        status = git(["git", "status", "--porcelain", "--untracked-files=no"]).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


def environment_listing() -> str:
    """``name==version`` of every installed distribution, sorted (the run's environment artifact)."""
    from importlib.metadata import distributions

    names = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return "\n".join(sorted(names, key=str.lower)) + "\n"


RUN_TAG_KEYS = (("device", "target"), ("device", "mode"), ("model", "name"), ("data", "name"))


def run_tags(config: Mapping, overrides: list[str]) -> dict[str, str]:
    """Tags of a training run: overrides, git state, library versions, device."""
    import mindspore
    import mlflow

    return {
        "hydra.overrides": mask(" ".join(overrides)) or "(none)",
        "mindspore.version": mindspore.__version__,
        "mlflow.version": mlflow.__version__,
        "python.version": platform.python_version(),
        **{f"{group}.{key}": str(config[group][key]) for group, key in RUN_TAG_KEYS},
        **git_state(),
    }


def sweep_parent_run_id(sweep_dir: Path | None, run_dir: Path | None) -> str | None:
    """The sweep's parent run id, written by the sweep callback into the sweep directory."""
    if sweep_dir is None:
        return None
    for folder in [sweep_dir, *(list(run_dir.parents)[:3] if run_dir else [])]:
        path = folder / PARENT_RUN_FILE
        if path.is_file():
            return path.read_text().strip()
    log.warning("mlflow: no sweep parent run found in %s; this job's run is not nested", sweep_dir)
    return None


@contextlib.contextmanager
def tracked_run(
    settings: MlflowSettings,
    run_name: str,
    tags: Mapping[str, str],
    sweep_dir: Path | None = None,
    run_dir: Path | None = None,
    finish: Callable[[str, str, str | None], None] | None = None,
    reopen_run_id: str | None = None,
) -> Iterator[object]:
    """Create an MLflow run (a sweep parent's child if there is one), or reopen ``reopen_run_id``, and
    always end it with a status, by ``finish(run_id, status, error)`` if given (a training run's
    outbox), else at once."""
    client = use_store(settings.tracking_uri)
    if reopen_run_id is not None:
        client.update_run(reopen_run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(reopen_run_id, key, value)
        run = client.get_run(reopen_run_id)
    else:
        run = _create_run(client, settings, run_name, tags, sweep_dir, run_dir)
    run_id = run.info.run_id
    where = f"experiment '{settings.experiment}' at {mask(settings.tracking_uri)}"
    log.info(f"mlflow: run {run_id} ({run.info.run_name}) in {where}")
    status, error = "FINISHED", None
    try:
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as exc:
        status, error = "FAILED", failure_message(exc)
        _log_traceback(client, run_id, run_dir)
        raise
    finally:
        if finish is None:
            end_run(client, run_id, status, error)
        else:
            finish(run_id, status, error)


ERROR_TAG = "vit_exp.error"  # a failed run's one-line error (as the console printed it)


def end_run(client, run_id: str, status: str, error: str | None = None) -> None:
    """End the run with ``status``; a failed one first gets its one-line ``error`` as a tag."""
    if error:
        client.set_tag(run_id, ERROR_TAG, error[:MAX_PARAM_LENGTH])
    client.set_terminated(run_id, status=status)
    log.info("mlflow: run %s ended %s", run_id, status)


def _create_run(client, settings: MlflowSettings, run_name: str, tags, sweep_dir, run_dir):
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    experiment = experiment_id(settings)
    name = settings.run_name or run_name
    all_tags = resolve_tags({**flatten(settings.tags or {}), **tags, MLFLOW_RUN_NAME: name})
    if parent := sweep_parent_run_id(sweep_dir, run_dir):
        all_tags[MLFLOW_PARENT_RUN_ID] = parent
    return create_run_once(client, experiment, name, all_tags)


RUN_KEY_TAG = "vit_exp.run_key"  # a run's identity, made before it exists: found again, not made twice


def create_run_once(client, experiment: str, run_name: str, tags: Mapping[str, str]):
    """``client.create_run`` exactly once, also when the answer is lost: the run is tagged with a new
    key and looked up by it before it is created again."""
    import uuid

    key = uuid.uuid4().hex
    tags = {**tags, RUN_KEY_TAG: key}

    def find():
        found = client.search_runs([experiment], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
        return found[0] if found else None

    return create_once(
        client, lambda: client.create_run(experiment, tags=tags, run_name=run_name), find, f"run '{run_name}'"
    )


def _log_traceback(client, run_id: str, run_dir: Path | None) -> None:
    text = mask(traceback.format_exc())
    try:
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "traceback.txt").write_text(text)
        # Retried for 10 s at most: with the server away, the run directory keeps the file.
        with_patience(client, Patience(10.0)).log_text(run_id, text, "traceback.txt")
    except Exception as exc:  # the run must still end FAILED
        log.warning("mlflow: could not log the traceback (%s)", mask(str(exc)))


def log_run_inputs(
    client,
    run_id: str,
    params: dict[str, str],
    flat: dict[str, str],
    yaml: str,
    hydra_dir: Path | None,
    class_names: list[str],
    net,
) -> None:
    """Log ``params`` (the hyperparameters, + parameter count), the location tags of ``flat`` and the
    artifacts (the whole config is ``config_resolved.yaml``)."""
    from mlflow.entities import Param, RunTag

    from vit_exp.models.vit import count_parameters, model_summary

    params = dict(params)
    params["model.num_parameters"] = str(count_parameters(net))
    params["device.precision_used"] = getattr(net, "precision", "fp32")  # what auto/bf16 resolved to
    locations = [RunTag(k, v) for k, v in flat.items() if is_location_key(k)]
    items = list(params.items())
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start : start + 100]])
    client.log_batch(run_id, tags=locations)
    for path in sorted(hydra_dir.glob("*.yaml")) if hydra_dir is not None else ():
        client.log_text(run_id, mask(path.read_text()), f"hydra/{path.name}")
    client.log_text(run_id, mask(yaml), "config_resolved.yaml")
    client.log_text(run_id, environment_listing(), "environment.txt")
    client.log_text(run_id, model_summary(net), "model_summary.txt")
    client.log_dict(run_id, {"class_names": class_names}, "class_names.json")
