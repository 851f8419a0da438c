"""Reproduce a training run from its record: find it, check code, config, data and environment, start
it again as a new run tagged ``vit_exp.reproduces=<run id>``, and compare the two runs' metrics.

The config is rebuilt from the run's recorded Hydra overrides (``hydra/overrides.yaml``) and config
name (a sweep job's ``--config-dir`` / ``--config-name``, from ``hydra/hydra.yaml``), composed from this
checkout's ``conf/``, and not loaded from its ``config_resolved.yaml``: the new run is then started as
the original was, ``python -m vit_exp.run <its overrides>``, so its run directory, checkpoints and log
follow this machine's layout (the resolved record holds the original's directories), and its run name
and ``hydra.overrides`` are the original's. The resolved record is the check: the composed config
must equal it on every key a resume compares (``tracking.resume.comparable_config``: locations,
``mlflow.*`` and ``registry.*`` aside).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vit_exp.config import CONFIG_DIR, PROJECT_ROOT
from vit_exp.credentials import mask, reveal
from vit_exp.errors import ConfigError, DataError, RegistryError, ReproductionError

log = logging.getLogger("vit_exp.reproduce")

REPRODUCES_TAG = "vit_exp.reproduces"  # on the new run: the id of the run it reproduces
CODE_CHANGED_TAG = "vit_exp.reproduce.code_changed"  # "true": started with allow_code_change=true
EXACT_TAG = "vit_exp.reproduce.exact"  # "true": every compared metric equal at every step
REPORT_FILE = "reproduction.json"
DIGEST_TAGS = {"train": "data.train_digest", "val": "data.val_digest"}
ENVIRONMENT_TAGS = ("mindspore.version", "mlflow.version", "python.version")
TIMING = ("train/step_time_ms", "train/throughput_img_s", "train/epoch_time_s")  # differ run to run
NOT_COMPARED_PREFIX = "system/"  # the machine's load while it trained
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# Overrides the new run sets itself (its store, experiment, a new run, its own tags).
_REPLACED = (
    "resume=",
    "mlflow.tracking_uri=",
    "mlflow.experiment=",
    "mlflow.tags.vit_exp.reproduce",
    "registry.register=",
    "registry.export=",
)


@dataclass(frozen=True)
class Record:
    """What a training run recorded of how it was started (see the module's docstring)."""

    run: object  # mlflow.entities.Run
    experiment: str  # its experiment's name
    config_name: str  # train, or a sweep config's name
    config_dir: Path | None  # a sweep config's folder (--config-dir)
    overrides: list[str]
    config: dict[str, str]  # the flat config it recorded (tracking.resume.recorded_config)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def tags(self) -> dict[str, str]:
        return self.run.data.tags


def find_run(client, source: str | None):
    """The run ``source`` names: a run id, or a model version's run (``models:/NAME/VERSION|@ALIAS``)."""
    from mlflow.exceptions import MlflowException

    from vit_exp.tracking.registry.resolve import resolve

    if not source or source == "???":
        raise ConfigError(
            "say which run to reproduce: python -m vit_exp.reproduce <run id | models:/NAME/VERSION "
            "| models:/NAME@ALIAS>"
        )
    if source.startswith("models:/"):
        ref = resolve(client, source)
        what = f"version {ref.version} of {ref.name}"
    elif _RUN_ID.match(source):
        ref, what = None, f"run {source}"
    else:
        raise ConfigError(
            f"source={source} is neither a run id (32 hex digits) nor a model URI "
            "(models:/NAME/VERSION or models:/NAME@ALIAS)"
        )
    run_id = ref.run_id if ref is not None else source
    try:
        run = client.get_run(run_id)
    except MlflowException:
        run = None
    if run is None or run.info.lifecycle_stage == "deleted":
        if ref is not None:
            raise RegistryError(f"{what}: its run {run_id} is gone from this store")
        raise RegistryError(f"no run {run_id} in this store ({mask(client.tracking_uri)})")
    return run


def read_record(client, run) -> Record:
    """The run's record; ReproductionError when it is not a training run, or has no data digests."""
    from vit_exp.tracking.resume import TAG_DIGEST, recorded_config

    tags, run_id = run.data.tags, run.info.run_id
    role = tags.get("vit_exp.role")
    if role == "eval":
        source = tags.get("model.source_run_id")
        hint = f": reproduce the run that trained its model, {source}" if source else ""
        raise ReproductionError(f"run {run_id} is an eval run, not a training run{hint}")
    if role == "sweep":
        raise ReproductionError(
            f"run {run_id} is a sweep's parent run, not a training run: reproduce one of its jobs' runs"
        )
    if TAG_DIGEST not in tags:
        raise ReproductionError(
            f"run {run_id} is not a vit-exp training run (it has no {TAG_DIGEST} tag); "
            "reproduce a run of python -m vit_exp.run"
        )
    if missing := [key for key in DIGEST_TAGS.values() if key not in tags]:
        raise ReproductionError(
            f"run {run_id} was recorded without data digests (no {missing[0]} tag: a run of a vit-exp "
            "before data digests, or one that failed before its data was read): its data cannot be "
            "checked, so it is not reproduced"
        )
    files = _hydra_files(client, run)
    hydra = (files.get("hydra.yaml") or {}).get("hydra", {})
    overrides = files.get("overrides.yaml")
    if overrides is None:  # the tag: overrides joined by spaces
        text = tags.get("hydra.overrides", "(none)")
        overrides = [] if text == "(none)" else text.split(" ")
    config = recorded_config(client, run)
    return Record(
        run=run,
        experiment=client.get_experiment(run.info.experiment_id).name,
        config_name=str(hydra.get("job", {}).get("config_name") or "train"),
        config_dir=_config_dir(hydra, config.get("paths.root_dir"), run_id),
        overrides=[str(o) for o in overrides],
        config=config,
    )


def _hydra_files(client, run) -> dict[str, object]:
    """The run's ``hydra/overrides.yaml`` and ``hydra/hydra.yaml`` artifacts, parsed (absent: left out)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
    found = {}
    with tempfile.TemporaryDirectory(prefix="vit_exp_reproduce_") as folder:
        try:
            for name in ("overrides.yaml", "hydra.yaml"):
                with contextlib.suppress(MlflowException, OSError):
                    found[name] = yaml.safe_load(
                        Path(repo.download_artifacts(f"hydra/{name}", folder)).read_text()
                    )
        finally:
            if hasattr(repo, "thread_pool"):
                repo.thread_pool.shutdown(wait=True)  # its download threads would keep the command alive
    return found


def _config_dir(hydra: dict, root: str | None, run_id: str) -> Path | None:
    """The ``--config-dir`` the run was composed with (a sweep's), found in this checkout if it moved."""
    sources = hydra.get("runtime", {}).get("config_sources") or []
    given = [s["path"] for s in sources if s.get("provider") == "command-line" and s.get("schema") == "file"]
    if not given:
        return None
    folder = Path(given[0])
    if not folder.is_dir() and root and folder.is_relative_to(root):
        folder = PROJECT_ROOT / folder.relative_to(root)  # the same folder of this checkout
    if not folder.is_dir():
        raise ConfigError(f"run {run_id} was composed with --config-dir {given[0]}, which is not here")
    return folder


def check_code(record: Record, allow_change: bool) -> list[str]:
    """Nothing when the run was trained from a clean checkout at this checkout's commit and this one is
    clean; else ReproductionError naming both commits, or (``allow_change``) that line as a warning."""
    from vit_exp.tracking.record.lifecycle import git_state

    state = git_state()
    then, now = record.tags.get("git.commit"), state.get("git.commit")
    dirty_then, dirty_now = record.tags.get("git.dirty") == "true", state.get("git.dirty") == "true"
    if then and then == now and not dirty_then and not dirty_now:
        return []
    changes = " with uncommitted changes"
    trained = f"at commit {then[:12]}{changes if dirty_then else ''}" if then else "outside a git checkout"
    here = f"at commit {now[:12]}{changes if dirty_now else ''}" if now else "not a git checkout"
    message = f"run {record.run_id} was trained {trained}; this checkout is {here}"
    if not allow_change:
        raise ReproductionError(
            f"{message}: use a clean checkout of its commit, or pass allow_code_change=true"
        )
    return [f"{message} (allow_code_change=true: reproducing it anyway)"]


def training_overrides(record: Record, code_changed: bool) -> list[str]:
    """The run's overrides for ``python -m vit_exp.run``: a new run in its experiment, tagged."""
    keep = [o for o in record.overrides if not o.lstrip("+~").startswith(_REPLACED)]
    resumed = any(o.lstrip("+~").startswith("resume=") for o in record.overrides)
    added = [
        *(["resume=null"] if resumed else []),  # a new run (null is train.yaml's default)
        f"mlflow.experiment={_quoted(record.experiment)}",
        "registry.register=none",  # no versions: the registry holds what was trained once
        "registry.export=[]",
        f"+mlflow.tags.{REPRODUCES_TAG}={record.run_id}",
    ]
    if code_changed:
        added.append(f"+mlflow.tags.{CODE_CHANGED_TAG}='true'")  # quoted: a string, not True
    return keep + added


def _quoted(value: str) -> str:
    """``value`` as a Hydra override value (quoted unless plain)."""
    if re.fullmatch(r"[\w./-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def config_arguments(record: Record) -> list[str]:
    """``--config-dir D --config-name N`` for a run composed from another config than train.yaml."""
    if record.config_dir is None and record.config_name == "train":
        return []
    return [
        *(["--config-dir", str(record.config_dir)] if record.config_dir else []),
        "--config-name",
        record.config_name,
    ]


def run_dir_arguments(run_dir: str | None) -> list[str]:
    """``hydra.run.dir=<run_dir>`` for a new run's directory of the user's choice (None: Hydra's)."""
    return [f"hydra.run.dir={_quoted(str(run_dir))}"] if run_dir else []


def compose(record: Record, overrides: list[str]):
    """The config ``python -m vit_exp.run`` composes from the run's config name and ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    folder = record.config_dir or CONFIG_DIR
    extra = [f"hydra.searchpath=[file://{CONFIG_DIR}]"] if record.config_dir else []
    with _own_hydra(), initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        return hydra_compose(record.config_name, overrides=[*overrides, *extra])


@contextlib.contextmanager
def _own_hydra() -> Iterator[None]:
    """Hydra's global state for a composition of its own, the running command's put back after it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    saved = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        restore_gh_from_backup(saved)


def check_config(record: Record, cfg, allow_change: bool) -> list[str]:
    """Nothing when the composed ``cfg`` equals the run's recorded config on every compared key; else
    ReproductionError listing the differences, or (``allow_change``) that line as a warning."""
    from omegaconf import OmegaConf, open_dict

    from vit_exp.tracking.record.lifecycle import flatten
    from vit_exp.tracking.resume import WORLD_SIZE, comparable_config, config_differences

    if (world_size := int(record.config.get(WORLD_SIZE, "1") or 1)) > 1:
        raise ReproductionError(
            f"run {record.run_id} trained with {world_size} data-parallel workers (msrun); reproduce runs "
            "one process, which reads the data in another order: it is not reproduced"
        )
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.paths.output_dir = "(not used)"  # the run's directory: Hydra's, once it runs
    now = comparable_config(flatten(OmegaConf.to_container(cfg, resolve=True)))
    then = comparable_config(record.config)
    if not (differences := config_differences(then, now)):
        return []
    shown = "; ".join(differences[:6]) + (
        f"; and {len(differences) - 6} more" if len(differences) > 6 else ""
    )
    message = f"run {record.run_id}'s overrides compose to another config than it recorded: {shown}"
    if not allow_change:
        raise ReproductionError(f"{message} (conf/ changed?); pass allow_code_change=true to run it anyway")
    return [f"{message} (allow_code_change=true: reproducing it anyway)"]


def check_data(record: Record, cfg) -> None:
    """DataError naming the split and both digests when the config's data is not the run's."""
    from hydra.utils import instantiate

    from vit_exp.data.digest import SHORT_LENGTH, data_identity

    data = instantiate(cfg.data)
    identity = data_identity(data, Path(cfg.paths.cache_dir) / "data_digests")
    different = []
    for split, tag in ((identity.train, DIGEST_TAGS["train"]), (identity.val, DIGEST_TAGS["val"])):
        then, now = record.tags[tag], identity.dataset_digest(split)
        if then[SHORT_LENGTH:] != now[SHORT_LENGTH:]:  # the split's own part (the rest covers both)
            different.append(f"{split.split} split {then} then, {now} now (in {split.path})")
    if different:
        raise DataError(f"run {record.run_id} was trained on other data: {'; '.join(different)}")


def environment_warnings(record: Record) -> list[str]:
    """A line per library (and Python) whose version is not the run's."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import mlflow

    try:
        mindspore = version("mindspore")
    except PackageNotFoundError:
        mindspore = "(not installed)"
    now = {"mindspore.version": mindspore, "mlflow.version": mlflow.__version__}
    now["python.version"] = platform.python_version()
    return [
        f"{key}: run {record.run_id} was trained with {record.tags[key]}, this environment has "
        f"{now[key]}: results may differ"
        for key in ENVIRONMENT_TAGS
        if key in record.tags and record.tags[key] != now[key]
    ]


def run_training(client, record: Record, arguments: list[str], tracking_uri: str) -> str:
    """Run ``python -m vit_exp.run arguments`` (its output is this command's); the new run's id."""
    log.info(f"reproducing run {record.run_id}: python -m vit_exp.run {mask(' '.join(arguments))}")
    env = dict(os.environ, MLFLOW_TRACKING_URI=reveal(tracking_uri))
    since = int(time.time() * 1000)
    sys.stdout.flush()
    sys.stderr.flush()
    # A session of its own: Ctrl-C reaches it once, forwarded, and it ends its run KILLED.
    process = subprocess.Popen(
        [sys.executable, "-m", "vit_exp.run", *arguments], env=env, start_new_session=True
    )
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        process.wait()
        raise
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise ReproductionError(
            f"the reproduction of run {record.run_id} failed (python -m vit_exp.run exit code {code}): "
            "its error is above"
        )
    return _new_run_id(client, record, since)


def _new_run_id(client, record: Record, since_ms: int) -> str:
    query = f"tags.`{REPRODUCES_TAG}` = '{record.run_id}' and attributes.start_time >= {since_ms}"
    runs = client.search_runs(
        [record.run.info.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise ReproductionError(
            f"the reproduction of run {record.run_id} ended, but its run is not in the store"
        )
    return runs[0].info.run_id


@dataclass(frozen=True)
class MetricDifference:
    """One metric of both runs: the steps both have, and the largest |reproduction - original| there."""

    key: str
    steps: int
    max_abs_diff: float | None  # None: no step in common

    @property
    def timing(self) -> bool:
        return self.key in TIMING


@dataclass(frozen=True)
class Comparison:
    """Every metric of the original run against the reproduction's."""

    original: str
    reproduction: str
    metrics: list[MetricDifference]
    only_original: list[str] = field(default_factory=list)
    only_reproduction: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Every metric but the timings equal at every common step, and none missing."""
        compared = [m for m in self.metrics if not m.timing]
        return not self.only_original and all(m.max_abs_diff == 0.0 for m in compared)

    def table(self) -> str:
        """The console's table: metric, steps compared, largest absolute difference."""
        width = max([len("metric"), *(len(m.key) for m in self.metrics)])
        lines = [
            f"run {self.reproduction} against run {self.original}:",
            f"  {'metric':<{width}}  {'steps':>6}  max |difference|",
        ]
        for m in self.metrics:
            note = "  (timing: differs run to run)" if m.timing else ""
            lines.append(f"  {m.key:<{width}}  {m.steps:>6}  {_number(m.max_abs_diff)}{note}")
        if self.only_original:
            lines.append(f"  only in the original: {', '.join(self.only_original)}")
        if self.only_reproduction:
            lines.append(f"  only in the reproduction: {', '.join(self.only_reproduction)}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "original_run_id": self.original,
            "reproduction_run_id": self.reproduction,
            "exact": self.exact,
            "metrics": {m.key: {"steps": m.steps, "max_abs_diff": m.max_abs_diff} for m in self.metrics},
            "only_in_original": self.only_original,
            "only_in_reproduction": self.only_reproduction,
            "warnings": self.warnings,
        }


def _number(value: float | None) -> str:
    if value is None:
        return "no common step"
    return "0.0" if value == 0 else f"{value:.3g}"


def compare_runs(client, original: str, reproduction: str, warnings: list[str] = ()) -> Comparison:
    """Per metric of ``original`` (``system/*`` aside), the largest difference over common steps."""
    keys = {
        run: sorted(k for k in client.get_run(run).data.metrics if not k.startswith(NOT_COMPARED_PREFIX))
        for run in (original, reproduction)
    }
    metrics = []
    for key in keys[original]:
        if key not in keys[reproduction]:
            continue
        then, now = (_by_step(client, run, key) for run in (original, reproduction))
        common = sorted(set(then) & set(now))
        diffs = [_difference(then[s], now[s]) for s in common]
        metrics.append(MetricDifference(key, len(common), max(diffs) if diffs else None))
    return Comparison(
        original,
        reproduction,
        metrics,
        [k for k in keys[original] if k not in keys[reproduction]],
        [k for k in keys[reproduction] if k not in keys[original]],
        list(warnings),
    )


def _by_step(client, run_id: str, key: str) -> dict[int, float]:
    """A metric's value per step (a step logged twice: its last value)."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return {int(m.step): float(m.value) for m in history}


def _difference(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b)


def record_comparison(client, comparison: Comparison) -> None:
    """The comparison on the new run: ``reproduction.json`` and the ``vit_exp.reproduce.exact`` tag."""
    client.log_dict(comparison.reproduction, comparison.as_dict(), REPORT_FILE)
    client.set_tag(comparison.reproduction, EXACT_TAG, str(comparison.exact).lower())
