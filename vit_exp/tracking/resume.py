"""Resume: the run and checkpoint a ``resume=`` value names, whether they may continue, and from where.

Every attempt holds ``.run.lock`` in the run's first directory, so a live run is never continued twice."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from vit_exp.credentials import mask
from vit_exp.errors import NOT_COMPARED, SETUP, CheckpointError, ConfigError, RegistryError
from vit_exp.locking import hold_if_free
from vit_exp.train.objective import best_value
from vit_exp.train.state import network_file, parse_checkpoint_name, read_training_state

log = logging.getLogger("vit_exp.tracking")

# What a resume does not compare: the groups of where and how a run is recorded, the command's own
# keys, and each setting declared ``NOT_COMPARED`` by its group's settings (errors.not_compared).
IGNORED_PREFIXES = ("paths.", "mlflow.", "registry.")
COMMAND_KEYS = frozenset({"resume", "task_name"})


def _declared(marker: str) -> frozenset[str]:
    """``group.key`` of each setting of the training groups declared with ``marker``."""
    from vit_exp.data.folder import ImageFolderData
    from vit_exp.device import DeviceSettings
    from vit_exp.errors import declared
    from vit_exp.models import build_vit
    from vit_exp.models.config import ViTConfig
    from vit_exp.train.trainer import TrainSettings

    groups = {
        "trainer": [TrainSettings],
        "device": [DeviceSettings],
        "data": [ImageFolderData],
        "model": [build_vit, ViTConfig],
    }
    return frozenset(
        f"{group}.{name}"
        for group, targets in groups.items()
        for t in targets
        for name in declared(t, marker)
    )


IGNORED_KEYS = COMMAND_KEYS | _declared(NOT_COMPARED)
SETUP_KEYS = _declared(SETUP)  # compared, yet not hyperparameters: the config artifact has them
NOT_CONFIG_PARAMS = frozenset({"model.num_parameters", "parallel.global_batch_size", "device.precision_used"})

TAG_DIGEST = "vit_exp.config_digest"
TAG_ATTEMPTS = "vit_exp.attempts"
TAG_RESUMES = "vit_exp.resume.count"
RUN_LOCK = ".run.lock"
UNFINISHED = ("RUNNING", "KILLED", "FAILED")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
WORLD_SIZE = "parallel.world_size"
# Keys added after runs were already recorded, compared only when not at the value that means "as
# before", so the config digests (and resume=auto / resume=<run id>) of earlier runs still match.
AS_BEFORE = {
    WORLD_SIZE: "1",
    "device.precision": "fp32",
    "augment._target_": "vit_exp.data.augment.AugmentSettings",
    "optim.no_weight_decay": "['bias', 'gamma', 'beta', 'cls', 'pos_embedding']",  # the rule before the key
}
# The fine-tuning recipe's settings (augmentation, regularisation, EMA, early stopping), each turned off
# by one key: ``{group prefix: (switch key, off value)}``. While off, the group's keys are neither
# compared (runs recorded before the recipe still resume) nor params (a run's params show what it
# turned on); on, they are both.
# ``augment=basic`` (today's transforms: its name, crop and flip) and the full train split are "off".
OFF = {
    "augment.randaug.": ("augment.randaug.num_ops", "0"),
    "augment.random_erasing.": ("augment.random_erasing.prob", "0.0"),
    "augment.mix.": ("augment.mix.prob", "0.0"),
    "augment.name": ("augment.name", "basic"),
    "augment.random_crop": ("augment.random_crop", "True"),
    "augment.hflip": ("augment.hflip", "True"),
    "data.train_fraction": ("data.train_fraction", "1.0"),
    "data.per_class_limit": ("data.per_class_limit", "None"),
    "model.drop_path_rate": ("model.drop_path_rate", "0.0"),
    "optim.clip_grad_norm": ("optim.clip_grad_norm", "None"),
    "optim.layer_decay": ("optim.layer_decay", "None"),
    "optim.no_weight_decay": ("optim.weight_decay", "0.0"),  # what weight decay skips: nothing to skip
    "trainer.ema.": ("trainer.ema.decay", "None"),
    "trainer.early_stopping.": ("trainer.early_stopping.patience", "None"),
}


def recipe_settings_off(flat: dict[str, str]) -> dict[str, str]:
    """``flat`` without the keys of the recipe settings that are off (``OFF``)."""
    off = tuple(prefix for prefix, (switch, value) in OFF.items() if _same(flat.get(switch, value), value))
    return {k: v for k, v in flat.items() if not k.startswith(off)}


def _same(value: str, off: str) -> bool:
    """``value`` is the off value, also as another spelling of the same number (``0`` for ``0.0``)."""
    try:
        return value == off or float(value) == float(off)
    except ValueError:
        return False


def comparable_config(flat: dict[str, str], world_size: int = 1) -> dict[str, str]:
    """The logged params ``flat`` a resume compares, plus the worker count if > 1 (it sets the data order)."""
    flat = recipe_settings_off(flat)
    comparable = {k: v for k, v in flat.items() if _compared(k) and AS_BEFORE.get(k) != v}
    if world_size > 1:
        comparable[WORLD_SIZE] = str(world_size)
    return comparable


def _compared(key: str) -> bool:
    return not key.startswith(IGNORED_PREFIXES) and key not in IGNORED_KEYS and key not in NOT_CONFIG_PARAMS


def hyperparameters(flat: dict[str, str]) -> dict[str, str]:
    """The run's params: the compared keys that choose what is learned (no class paths, no setup)."""
    return {
        k: v
        for k, v in recipe_settings_off(flat).items()
        if _compared(k) and k not in SETUP_KEYS and k.rpartition(".")[2] not in ("_target_", "_partial_")
    }


def config_digest(comparable: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest()


def config_differences(then: dict[str, str], now: dict[str, str]) -> list[str]:
    """``key: then -> now`` for each compared key whose value differs."""
    keys = sorted(k for k in set(then) | set(now) if _compared(k))
    unset = "(not set)"
    return [f"{k}: {then.get(k, unset)} -> {now.get(k, unset)}" for k in keys if then.get(k) != now.get(k)]


def attempt_tags(number: int, run_dir: Path | None, checkpoint_dir: Path, from_step: int | None) -> dict:
    """Tags of attempt ``number`` of a run (the first is 1): its directories, the step it began at."""
    tags = {TAG_ATTEMPTS: str(number), f"vit_exp.attempt.{number}.checkpoint_dir": str(checkpoint_dir)}
    if run_dir is not None:
        tags[f"vit_exp.attempt.{number}.run_dir"] = str(run_dir)
    if number > 1:
        tags[TAG_RESUMES] = str(number - 1)
        tags[f"vit_exp.attempt.{number}.from_step"] = str(from_step or 0)
    return tags


@dataclass
class Attempts:
    """The directories of a run's earlier attempts, from its tags."""

    run_dirs: list[Path]
    checkpoint_dirs: list[Path]

    @classmethod
    def of(cls, tags: dict[str, str]) -> Attempts:
        count = int(tags.get(TAG_ATTEMPTS, "0") or 0)
        run_dirs = [tags.get(f"vit_exp.attempt.{n}.run_dir") for n in range(1, count + 1)]
        ckpt_dirs = [tags.get(f"vit_exp.attempt.{n}.checkpoint_dir") for n in range(1, count + 1)]
        return cls([Path(d) for d in run_dirs if d], [Path(d) for d in ckpt_dirs if d])


@dataclass
class ResumeTarget:
    """What a continuing attempt starts from (``run_id`` None: a new run; ``checkpoint`` None: step 0);
    ``logged_steps``: per metric, the last step already in the run (not logged again)."""

    run_id: str | None
    checkpoint: Path | None
    state: dict | None
    attempt: int
    logged_steps: dict[str, int] = field(default_factory=dict)
    lock: object | None = None

    @property
    def from_step(self) -> int:
        return int(self.state["position"]["global_step"]) if self.state else 0


@dataclass(frozen=True)
class NothingToDo:
    """``resume=`` names a run that finished."""

    run_id: str
    message: str
    best: float | None  # of the run's ``optimized_metric``


def resolve_resume(job, client=None) -> ResumeTarget | NothingToDo | None:
    """What ``resume=`` (``job.resume``) continues; None for a new run."""
    if job.resume is None:
        return None
    value = job.resume
    if client is None:
        return from_checkpoint(value, job)
    now = job.comparable
    if value == "auto":
        return _auto(job, client, now)
    path = Path(value).expanduser()
    if path.is_file():
        return _from_checkpoint(job, client, path, now)
    if _RUN_ID.match(value):
        return _from_run_id(job, client, value, now)
    raise ConfigError(
        f"resume={value}: not a checkpoint file and not a run id (32 hex digits); "
        "use resume=auto, resume=<run id> or resume=<checkpoint path>"
    )


def from_checkpoint(value: str | Path, job) -> ResumeTarget:
    """The resume target of a run not recorded (``mlflow.enabled=false``), and of a data-parallel worker
    that does not record: the main worker's checkpoint ``value``."""
    path = Path(value).expanduser()
    if str(value) == "auto" or not path.is_file():
        raise ConfigError(
            f"resume={value}: runs are found in the MLflow store; with mlflow.enabled=false "
            "pass resume=<checkpoint path>"
        )
    return ResumeTarget(None, network_file(path), _checked_state(path, job.comparable), attempt=1)


def _checked_state(path: Path, now: dict) -> dict:
    """The training state of the checkpoint ``path`` names (by either file), checked against ``now``."""
    state = read_training_state(path, what=f"resume={path}")
    if state is None:
        raise CheckpointError(
            f"resume={path}: this checkpoint holds network parameters only (no training state); "
            f"start a new run from its weights with model.pretrained={path}"
        )
    if differences := config_differences(state.get("config", {}), now):
        raise ConfigError(
            f"resume={path}: the checkpoint was trained with another config: {_listed(differences)}"
        )
    return state


def _listed(differences: list[str]) -> str:
    shown = "; ".join(differences[:6])
    return shown + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")


def _auto(job, client, now: dict) -> ResumeTarget | NothingToDo | None:
    """In a sweep: this job's run under the sweep's parent (FINISHED: skipped). Alone: the newest
    unfinished run of this config in the experiment (a finished one does not stop a new run)."""
    from vit_exp.tracking.record.lifecycle import sweep_parent_run_id

    parent = sweep_parent_run_id(job.hydra.sweep_dir, job.hydra.run_dir)
    query = f"tags.`{TAG_DIGEST}` = '{config_digest(now)}'"
    if parent:
        query += f" and tags.`mlflow.parentRunId` = '{parent}'"
    experiment = client.get_experiment_by_name(job.mlflow.experiment)
    runs = []
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=100
        )
    if parent:
        if runs:
            return _continue(job, client, runs[0], "resume=auto")
        log.info("resume=auto: no earlier run of this job in this sweep; starting a new run")
        return None
    alone = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    unfinished = [r for r in alone if r.info.status in UNFINISHED]
    if unfinished:
        return _continue(job, client, unfinished[0], "resume=auto")
    finished = f" ({len(alone)} finished)" if alone else ""
    where = f"experiment '{job.mlflow.experiment}'{finished}"
    log.info(f"resume=auto: no unfinished run of this config in {where}; starting a new run")
    return None


def _from_run_id(job, client, run_id: str, now: dict) -> ResumeTarget | NothingToDo:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"resume={run_id}: no such run in {mask(job.mlflow.tracking_uri)}") from None
    if differences := config_differences(comparable_config(recorded_config(client, run)), now):
        raise ConfigError(
            f"resume={run_id}: run '{run.info.run_name}' was trained with another config: "
            f"{_listed(differences)}; rerun with its values, or leave out resume= for a new run"
        )
    return _continue(job, client, run, f"resume={run_id}")


def recorded_config(client, run) -> dict[str, str]:
    """The flat config a run recorded: its ``config_resolved.yaml`` over its params (which alone hold
    ``parallel.world_size``; a run of an older vit-exp logged every key as a param)."""
    import tempfile

    import yaml
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from vit_exp.tracking.record.lifecycle import flatten

    repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="vit_exp_config_") as folder:
        try:
            path = repo.download_artifacts("config_resolved.yaml", folder)
        except (MlflowException, OSError):
            return dict(run.data.params)
        finally:
            repo.thread_pool.shutdown(wait=True)  # its download threads would keep the command alive
        config = yaml.safe_load(Path(path).read_text()) or {}
    return {**run.data.params, **flatten(config)}


def _from_checkpoint(job, client, path: Path, now: dict) -> ResumeTarget | NothingToDo:
    from mlflow.exceptions import MlflowException

    state = _checked_state(path, now)
    path = network_file(path)  # a checkpoint is named by its network file (what a version ships)
    run_id = state.get("run_id")
    try:
        run = client.get_run(run_id) if run_id else None
    except MlflowException:
        run = None
    if run is None:
        log.info(
            f"resume={path}: its run {run_id} is not in {mask(job.mlflow.tracking_uri)}; "
            "a new run continues from this checkpoint"
        )
        return ResumeTarget(None, path.resolve(), state, attempt=1)
    return _continue(job, client, run, f"resume={path}", checkpoint=path.resolve(), state=state)


def _continue(job, client, run, how: str, checkpoint: Path | None = None, state: dict | None = None):
    """Check that ``run`` may continue here, send its earlier attempts' records, find its checkpoint."""
    run_id, status = run.info.run_id, run.info.status
    if status not in UNFINISHED:
        history = client.get_metric_history(run_id, job.objective)
        return NothingToDo(
            run_id,
            f"{how}: run {run_id} ('{run.info.run_name}') already {status}; nothing to do "
            "(leave out resume= for a new run)",
            best_value(job.objective, [m.value for m in history]),
        )
    tags = run.data.tags
    attempts = Attempts.of(tags)
    home = attempts.run_dirs[0] if attempts.run_dirs else None
    lock = None
    if home is not None:
        lock = hold_if_free(home / RUN_LOCK)
        if lock is None:
            raise RegistryError(
                f"{how}: run {run_id} is being trained by a live process (it holds {home / RUN_LOCK}); "
                "stop that process or wait for it"
            )
    for folder in attempts.run_dirs:
        _send_earlier_records(client, run_id, folder)
    if checkpoint is None:
        checkpoint, state = latest_checkpoint(attempts.checkpoint_dirs)
    number = int(tags.get(TAG_ATTEMPTS, "1") or 1) + 1
    target = ResumeTarget(run_id, checkpoint, state, number, logged_steps(client, run_id), lock)
    where = f"checkpoint {checkpoint} (step {target.from_step})" if checkpoint else "step 0 (no checkpoint)"
    log.info("%s: continuing run %s ('%s', %s) from %s", how, run_id, run.info.run_name, status, where)
    return target


def _send_earlier_records(client, run_id: str, run_dir: Path) -> None:
    """Send what an earlier attempt left in its outbox (before this attempt logs anything)."""
    from vit_exp.tracking.record.outbox import OUTBOX_DIR, Outbox, RunSender, load_records, sent_count

    folder = run_dir / OUTBOX_DIR
    if not folder.is_dir() or len(load_records(folder)) <= sent_count(folder):
        return
    outbox = Outbox(folder, RunSender(client, run_id), background=False)
    left = outbox.send_pending()
    outbox.close()
    if left:
        raise RegistryError(
            f"resume: {left} record(s) of an earlier attempt of run {run_id} in {folder} could not be "
            f"stored; send them with python -m vit_exp.sync outbox={folder}, then resume"
        )


def latest_checkpoint(folders: list[Path]) -> tuple[Path | None, dict | None]:
    """The readable full-state checkpoint of highest step in ``folders`` and its state, or (None, None)."""
    found = []
    for order, folder in enumerate(folders):
        for path in folder.glob("*.ckpt") if folder.is_dir() else ():
            if parsed := parse_checkpoint_name(path.name):  # a validated one beats a preempt one of its step
                found.append((parsed[0], not parsed[1], order, path))
    for *_, path in sorted(found, reverse=True):
        try:
            state = read_training_state(path)
        except CheckpointError as exc:
            log.warning("%s; using an earlier checkpoint", exc)
            continue
        if state is not None:
            return path, state
    return None, None


def logged_steps(client, run_id: str) -> dict[str, int]:
    """Per metric key, the last step stored in the run (the run's latest metrics, with their steps)."""
    return {m.key: int(m.step) for m in client.get_run(run_id).data.to_proto().metrics}
