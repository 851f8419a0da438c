"""The Optuna side of the ``optuna_study`` sweeper (imported only when a sweep runs).

Sharing one study between reruns and concurrent sweep processes:

- Each asked trial records its owner (``host:pid:process start time``) and, every
  ``heartbeat_interval`` s while its job runs, a heartbeat (trial user attrs, Optuna's public API;
  this works on every storage, JournalStorage included, which has no heartbeat of its own in
  Optuna 4; a study of an earlier vit-exp has them as system attrs: both are read).
- Before each batch, a RUNNING trial is stale when its owner is a process of this host that is gone
  (seen at once, e.g. after kill -9), or, for another host's trial, when its last beat is older
  than ``grace_period`` s. A stale trial is told FAIL and its params are enqueued (user attr
  ``vit_exp_sweeper.retry_of`` names it), so the next ``ask()`` retries them; a FAIL trial queued
  again does not count toward ``n_trials``.
- For a file storage (SQLite, journal file) opening, the stale check, the count and the asks of a
  batch run under an exclusive ``flock`` on ``<file>.sweeper.lock``: processes on one machine never
  overshoot ``n_trials`` and a batch gets consecutive trial numbers (job number == trial number).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

if int(optuna.__version__.split(".")[0]) < 4:
    raise ImportError(f"hydra/sweeper=optuna_study needs optuna>=4,<5, found optuna {optuna.__version__}")

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer, ValueType
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from vit_exp.credentials import mask, reveal  # one-line errors, credentials kept out of logs
from vit_exp.errors import ConfigError as _ConfigError
from vit_exp.errors import error_line

log = logging.getLogger(__name__)

SWEEPER = "vit_exp_sweeper."  # the prefix of the sweeper's own trial attrs
OWNER = SWEEPER + "owner"
BEAT = SWEEPER + "heartbeat"
RETRY_OF = SWEEPER + "retry_of"
ERROR = "error"  # a FAIL trial's user attr: its job's one-line error
MAX_ERROR_LENGTH = 500
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class SweeperConfigError(_ConfigError):
    """A ``hydra.sweeper.*`` value the user must fix (the message names the key)."""


# ----------------------------------------------------------------------------------- search space


def _distribution(override: Override) -> BaseDistribution | None:
    """The Optuna distribution of a sweep override (None: a fixed value)."""
    if not override.is_sweep_override():
        return None
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        raise ValueError("glob(...) is not supported: use choice(...)")
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices:
            raise ValueError("empty choice")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():  # Hydra's range: stop excluded, as with the basic sweeper
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"range({value.start}, {value.stop}, {value.step}) is empty")
        low, high, step = min(values), max(values), abs(value.step)
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            return IntDistribution(low, high, step=step)
        return FloatDistribution(float(low), float(low + round((high - low) / step) * step), step=step)
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(
        f"'{override.input_line}' is not supported: use choice(...), range(...) or interval(...)"
    )


def search_space(entries: list[tuple[str, str]]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Distributions and fixed overrides from ``(where, "key=value")`` entries (later ones win)."""
    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for where, line in entries:
        try:
            (override,) = parser.parse_overrides([line])
            key = override.get_key_element()
            distribution = _distribution(override)
        except (HydraException, ValueError, TypeError) as exc:
            raise SweeperConfigError(f"{where}: bad search space '{line}': {error_line(exc)}") from None
        space.pop(key, None)
        fixed.pop(key, None)
        if distribution is None:
            fixed[key] = line
        else:
            space[key] = distribution
    return space, fixed


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> None:
    if isinstance(distribution, CategoricalDistribution):
        trial.suggest_categorical(name, distribution.choices)
    elif isinstance(distribution, IntDistribution):
        trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    else:
        trial.suggest_float(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )


def _as_override(key: str, value: Any) -> str:
    if value is None:
        return f"{key}=null"
    if isinstance(value, float):
        return f"{key}={value!r}"
    return f"{key}={value}"


# ------------------------------------------------------------------------------ storage and locks


def open_storage(url: str | None, timeout: float = 60.0) -> tuple[Any, Path | None]:
    """The Optuna storage for ``hydra.sweeper.storage`` and the lock file of a file storage."""
    if not url:
        return optuna.storages.InMemoryStorage(), None
    real = reveal(url)
    path: Path | None = None
    try:
        if real.startswith("journal://") or ("://" not in real and real.endswith((".log", ".journal"))):
            path = Path(real.removeprefix("journal://")).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend), Path(f"{path}.sweeper.lock")
        if "://" not in real:
            raise ValueError("not a storage URL")
        engine_kwargs: dict[str, Any] = {}
        if real.startswith("sqlite"):
            from sqlalchemy.engine import make_url

            database = make_url(real).database
            if database and database != ":memory:":
                path = Path(database).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": timeout}}  # wait for the other writer
        with exclusive(Path(f"{path}.sweeper.lock") if path else None):  # one creates the tables
            storage = optuna.storages.RDBStorage(real, engine_kwargs=engine_kwargs)
        return storage, Path(f"{path}.sweeper.lock") if path else None
    except Exception as exc:
        raise SweeperConfigError(
            f"hydra.sweeper.storage: cannot open '{mask(url)}': {error_line(exc)} "
            "(use sqlite:///path.db, journal:///path.log, postgresql://..., or null for in memory)"
        ) from None


@contextlib.contextmanager
def exclusive(lock_file: Path | None) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_file`` (none for a server storage: nothing to lock)."""
    if lock_file is None:
        yield
        return
    from vit_exp.locking import exclusive as locked

    with locked(lock_file):
        yield


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), to tell a reused pid apart; None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _node() -> str:
    """Where this process's pids mean something: host name, boot id, pid namespace (containers)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid").strip("pid:[]"))
    return "/".join(parts)


def this_owner() -> str:
    return f"{_node()}:{os.getpid()}:{_start_time(os.getpid()) or ''}"


def owner_alive(owner: str) -> bool | None:
    """Whether the sweep process ``node:pid:start`` lives; None when it is elsewhere (another host)."""
    node, pid, start = owner.rsplit(":", 2)
    if node != _node():
        return None
    if start and Path("/proc/self/stat").exists():
        return _start_time(int(pid)) == start
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Heartbeat:
    """Beats for this process's RUNNING trials (``trials``, by number) every ``interval`` s, in a
    daemon thread."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.trials: dict[int, optuna.Trial] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="optuna-sweeper-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for trial in list(self.trials.values()):
                with contextlib.suppress(Exception):  # told meanwhile, or the storage is busy
                    trial.set_user_attr(BEAT, time.time())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _job_value(ret: Any) -> tuple[float, Exception | None]:
    """A job's return value as a float, and its exception (NaN with it when the job raised)."""
    try:
        result = ret.return_value  # raises the job's exception when it failed
        try:
            return float(result), None
        except (TypeError, ValueError):
            raise TypeError(f"the task returned {result!r}: it must return a float (NaN: failed)") from None
    except Exception as exc:
        return math.nan, exc


def job_error(ret: Any, exc: BaseException | None = None) -> str | None:
    """A failed trial's one-line reason, credentials masked: the ``error.txt`` its vit-exp job wrote
    in its directory, else the job's exception (None when neither is there)."""
    from vit_exp.cli import JOB_ERROR_FILE

    line = None
    output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
    path = Path(str(output_dir)) / JOB_ERROR_FILE if output_dir else None
    if path is not None and path.is_file():
        line = path.read_text().strip()
    if not line and exc is not None:
        line = error_line(exc)
    return mask(line)[:MAX_ERROR_LENGTH] if line else None


def _attr(trial: optuna.trial.FrozenTrial, key: str, default: Any = None) -> Any:
    """A sweeper attr of ``trial``: a user attr, or a system attr (a study of an earlier vit-exp)."""
    return trial.user_attrs.get(key, trial.system_attrs.get(key, default))


def fail_and_retry(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> bool:
    """Tell a RUNNING trial FAIL and enqueue its params (``RETRY_OF`` names it, so it is not counted);
    False when another process finished it first."""
    try:
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, UpdateFinishedTrialError):  # ValueError: "Cannot tell a FAIL trial"
        return False
    attrs = {k: v for k, v in trial.user_attrs.items() if not k.startswith(SWEEPER)}
    study.enqueue_trial(trial.params, user_attrs={**attrs, RETRY_OF: trial.number})
    return True


# ------------------------------------------------------------------------------------- the sweep


class StudySweep:
    def __init__(  # noqa: PLR0913 (Hydra passes each sweeper config key)
        self,
        config: DictConfig,
        launcher: Any,
        notify: Callable[..., None] | None = None,
        *,
        direction: str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        sampler: Any,
        params: Any,
        heartbeat_interval: int,
        grace_period: int,
        max_failure_rate: float,
    ) -> None:
        self.config, self.launcher = config, launcher
        self.notify = notify or (lambda hook, **kwargs: None)  # the Hydra callbacks' hooks
        self.launched = False
        if str(direction) not in ("maximize", "minimize"):
            raise SweeperConfigError(
                f"hydra.sweeper.direction must be maximize or minimize, got {direction!r}"
            )
        if "optimized_metric" in config:  # vit-exp's training: fail here, not in every trial
            from vit_exp.train.objective import check_optimized_metric

            check_optimized_metric(str(config.optimized_metric), str(direction))
        if not study_name:
            raise SweeperConfigError(
                "hydra.sweeper.study_name is required: trials of the same study are shared and counted "
                "toward n_trials across reruns (hydra.sweeper.study_name=...)"
            )
        for key, value in (
            ("n_trials", n_trials),
            ("n_jobs", n_jobs),
            ("heartbeat_interval", heartbeat_interval),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SweeperConfigError(f"hydra.sweeper.{key} must be a positive integer, got {value!r}")
        if not grace_period > heartbeat_interval:
            raise SweeperConfigError(
                f"hydra.sweeper.grace_period ({grace_period}) must exceed "
                f"hydra.sweeper.heartbeat_interval ({heartbeat_interval})"
            )
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise SweeperConfigError(
                f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate!r}"
            )
        self.direction, self.study_name, self.storage_url = str(direction), str(study_name), storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.max_failure_rate = float(max_failure_rate)
        self.sampler_config = (
            OmegaConf.to_container(sampler, resolve=True) if OmegaConf.is_config(sampler) else sampler
        )
        self.params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
        self.owner = this_owner()

    # -- set-up

    def _sampler(self, trial_number: int) -> Any:
        """The sampler; with a seed, seeded by seed + trial number (reproducible, and two processes
        of one study do not draw the same points)."""
        spec = dict(self.sampler_config or {})
        if spec.get("seed") is not None:
            spec["seed"] = int(spec["seed"]) + trial_number
        try:
            return instantiate(spec)
        except Exception as exc:
            raise SweeperConfigError(f"hydra.sweeper.sampler: {error_line(exc)}") from None

    def _open(self, space: dict[str, BaseDistribution]) -> optuna.Study:
        storage, self.lock_file = open_storage(self.storage_url)
        with exclusive(self.lock_file):
            try:
                study = optuna.create_study(
                    study_name=self.study_name,
                    storage=storage,
                    sampler=self._sampler(0),
                    direction=self.direction,
                    load_if_exists=True,
                )
            except SweeperConfigError:
                raise
            except Exception as exc:
                raise SweeperConfigError(
                    f"hydra.sweeper.storage: cannot open study '{self.study_name}' in "
                    f"'{mask(str(self.storage_url))}': {error_line(exc)}"
                ) from None
            if len(study.directions) != 1 or study.direction.name.lower() != self.direction:
                raise SweeperConfigError(
                    f"hydra.sweeper.direction={self.direction}, but study '{self.study_name}' was created to "
                    f"{'/'.join(d.name.lower() for d in study.directions)}: use another study_name"
                )
            self._fail_stale(study)
            described = {k: repr(v) for k, v in space.items()}
            before = study.user_attrs.get("vit_exp_sweeper.search_space")
            if before is None:
                study.set_user_attr("vit_exp_sweeper.search_space", described)
            elif before != described:
                log.warning(
                    "Optuna study '%s' was started with another search space; its trials are kept",
                    self.study_name,
                )
        return study

    # -- stale trials and the budget

    def _fail_stale(self, study: optuna.Study) -> None:
        """Mark FAIL the RUNNING trials whose sweep process is gone, and re-queue their params."""
        now, stale = time.time(), []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = _attr(trial, OWNER)
            alive = owner_alive(owner) if owner else None
            if alive is None:  # another host's trial (or one killed before it got an owner)
                start = trial.datetime_start.timestamp() if trial.datetime_start else now
                alive = now - float(_attr(trial, BEAT, start)) < self.grace_period
            if not alive:
                stale.append(trial)
        failed = [trial for trial in stale if fail_and_retry(study, trial)]
        if failed:
            log.warning(
                "Optuna: trial(s) %s of study '%s' were left RUNNING by a sweep that ended (%s): "
                "marked FAIL and queued again with the same params",
                ", ".join(str(t.number) for t in failed),
                self.study_name,
                ", ".join(sorted({str(_attr(t, OWNER) or "owner unknown") for t in failed})),
            )

    @staticmethod
    def counted(study: optuna.Study) -> int:
        """Trials toward n_trials: COMPLETE, PRUNED, RUNNING, and FAIL unless interrupted (re-queued)."""
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get(RETRY_OF) for t in trials}
        return sum(
            1
            for t in trials
            if t.state in COUNTED or (t.state == TrialState.FAIL and t.number not in retried)
        )

    def _ask(self, study: optuna.Study, space: dict[str, BaseDistribution], heartbeat: Heartbeat) -> list:
        """The next batch of trials (none when the study holds n_trials), under the storage lock."""
        with exclusive(self.lock_file):
            self._fail_stale(study)
            budget = min(self.n_jobs, self.n_trials - self.counted(study))
            trials = []
            for _ in range(max(budget, 0)):
                trial = study.ask()
                if (self.sampler_config or {}).get("seed") is not None:
                    study.sampler = self._sampler(trial.number)  # params are sampled on suggest
                for name, distribution in space.items():
                    _suggest(trial, name, distribution)
                trial.set_user_attr(OWNER, self.owner)
                trial.set_user_attr(BEAT, time.time())
                heartbeat.trials[trial.number] = trial
                trials.append(trial)
            return trials

    # -- results

    def _tell(
        self,
        study: optuna.Study,
        trial: Any,
        value: float | None,
        heartbeat: Heartbeat,
        error: str | None = None,
    ) -> None:
        """Tell the trial's value (None: FAIL, keeping ``error`` as its user attr ``error``)."""
        heartbeat.trials.pop(trial.number, None)
        state = TrialState.COMPLETE if value is not None else TrialState.FAIL
        try:
            if value is None and error:
                trial.set_user_attr(ERROR, error)
            study.tell(trial, value, state=state)
            log.info("Optuna: trial %d %s", trial.number, f"value {value}" if value is not None else "FAIL")
        except (UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
            log.warning(
                "Optuna: trial %d was marked FAIL by another sweep meanwhile (no heartbeat for %d s?); "
                "its result %s is not in the study",
                trial.number,
                self.grace_period,
                value,
            )

    def _interrupted(self, study: optuna.Study, trials: list) -> None:
        """This sweep is ending before its trials did (Ctrl-C, SIGTERM): FAIL and re-queue them."""
        for trial in trials:
            with contextlib.suppress(Exception):
                fail_and_retry(study, trial)
        if trials:
            log.warning(
                "Optuna: sweep interrupted; trial(s) %s marked FAIL and queued again",
                ", ".join(str(t.number) for t in trials),
            )

    def _launch(self, study, trials, fixed, heartbeat) -> None:
        """Run ``trials`` as jobs numbered by trial number, one launch per run of consecutive numbers."""
        groups: list[list] = []
        for trial in sorted(trials, key=lambda t: t.number):
            if groups and groups[-1][-1].number + 1 == trial.number:
                groups[-1].append(trial)
            else:
                groups.append([trial])
        pending = list(trials)
        for group in groups:
            overrides = [
                tuple(_as_override(k, v) for k, v in t.params.items()) + tuple(fixed.values()) for t in group
            ]
            try:
                if not self.launched:  # the sweep's parent run is made now: none when nothing runs
                    self.launched = True
                    self.notify("on_first_launch", tags=self.study_tags())
                returns = self.launcher.launch(overrides, initial_job_idx=group[0].number)
            except BaseException:
                self._interrupted(study, pending)
                raise
            errors = []
            for trial, ret in zip(group, returns, strict=True):
                pending.remove(trial)
                value, exc = _job_value(ret)
                if exc is not None:
                    log.warning("Optuna: trial %d failed: %s", trial.number, error_line(exc))
                    errors.append(exc)
                if math.isnan(value) or math.isinf(value):
                    reason = job_error(ret, exc) or f"the job returned {value}"
                    self._tell(study, trial, None, heartbeat, reason)
                else:
                    self._tell(study, trial, value, heartbeat)
            if errors and len(errors) / len(group) > self.max_failure_rate:
                self._interrupted(study, pending)
                log.error(
                    "Optuna: %d of %d job(s) raised (hydra.sweeper.max_failure_rate=%s)",
                    len(errors),
                    len(group),
                    self.max_failure_rate,
                )
                raise errors[0]  # the job's own exception

    def run(self, arguments: list[str]) -> None:
        entries = [(f"hydra.sweeper.params.{k}", f"{k}={v}") for k, v in (self.params or {}).items()]
        entries += [(f"command-line override '{a}'", a) for a in arguments]
        space, fixed = search_space(entries)
        study = self._open(space)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        held = len(study.get_trials(deepcopy=False))
        if self.counted(study) < self.n_trials or study.get_trials(states=(TrialState.WAITING,)):
            log.info(
                "Optuna %s study '%s' in %s: %d trial(s) held, %d counted toward n_trials=%d; sampler %s, %s",
                optuna.__version__,
                self.study_name,
                self._storage_name(),
                held,
                self.counted(study),
                self.n_trials,
                type(study.sampler).__name__,
                self.direction,
            )
        heartbeat = Heartbeat(self.heartbeat_interval)
        ran = 0
        try:
            while trials := self._ask(study, space, heartbeat):
                self._launch(study, trials, fixed, heartbeat)
                ran += len(trials)
        except BaseException:
            with contextlib.suppress(Exception):  # the study's best on the parent all the same
                self._report(study, sweep_dir, ran)
            raise
        finally:
            heartbeat.close()
        if not ran:
            log.info(self._nothing_to_run(study))
        self._report(study, sweep_dir, ran)

    def _storage_name(self) -> str:
        return mask(str(self.storage_url)) if self.storage_url else "memory (not kept)"

    def study_tags(self) -> dict[str, str]:
        """What names the study on each parent run of its sweeps (storage credentials masked)."""
        return {"optuna.study_name": self.study_name, "optuna.storage": self._storage_name()}

    def _nothing_to_run(self, study: optuna.Study) -> str:
        """The one line of a command whose study holds n_trials trials: complete, and its best."""
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        state = f"{running} still running in another sweep" if running else "complete"
        try:
            trial = study.best_trial
            best = f"best value {trial.value} (trial {trial.number})"
        except ValueError:
            best = "no trial completed"
        return (
            f"Optuna: study '{self.study_name}' holds n_trials={self.n_trials} trials ({state}): {best}; "
            "nothing to run"
        )

    def _report(self, study: optuna.Study, sweep_dir: Path, ran: int) -> None:
        trials = study.get_trials(deepcopy=False)
        states = {
            s.name: sum(1 for t in trials if t.state == s)
            for s in TrialState
            if any(t.state == s for t in trials)
        }
        results: dict[str, Any] = {
            "name": "optuna_study",
            "study_name": self.study_name,
            "storage": mask(str(self.storage_url)) if self.storage_url else None,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "trials_run_by_this_sweep": ran,
            "trial_states": states,
        }
        n_complete = states.get(TrialState.COMPLETE.name, 0)
        tags, metrics = self.study_tags(), {"study/n_complete": float(n_complete)}
        try:
            best = study.best_trial
        except ValueError:
            if ran:
                log.warning("Optuna: no trial of study '%s' completed", self.study_name)
            results.update(best_trial=None, best_params=None, best_value=None)
        else:
            if ran:
                log.info("Best parameters: %s", best.params)
                log.info("Best value: %s (trial %d)", best.value, best.number)
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            tags["optuna.best_params"] = " ".join(_as_override(k, v) for k, v in best.params.items())
            metrics |= {"study/best_value": float(best.value), "study/best_trial": float(best.number)}
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        self.notify("on_sweep_result", tags=tags, metrics=metrics, step=n_complete)
