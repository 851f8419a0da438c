"""``hydra/sweeper: optuna_study``: a Hydra sweeper on a persistent, shareable Optuna (4.x) study.

Each trial comes from ``study.ask()`` and runs as one Hydra job (numbered by its trial number)
through the configured launcher, ``hydra.sweeper.n_jobs`` trials at a time; its return value is
told to the study (NaN or an exception: FAIL, with the job's one-line error as user attr
``error``). The study lives in ``hydra.sweeper.storage`` (an SQLite file beside the MLflow store by
default), so a rerun of the same command continues it and several sweep processes can share it.
``hydra.sweeper.n_trials`` counts the trials of the study, not of this command: trials COMPLETE,
PRUNED or FAIL, plus the ones RUNNING elsewhere; a trial left RUNNING by a sweep that was killed is
marked FAIL (not counted) and run again.

Optuna is imported only when a sweep runs (``_study.py``), so Hydra's plugin scan stays cheap.
"""

# No ``from __future__ import annotations``: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses would look the string annotations up.
import logging
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Beside a SQLite MLflow store (vit-exp's resolver); with a tracking server, <root>/mlruns/optuna.db.
DEFAULT_STORAGE = "${vit_exp.beside_store:${mlflow.tracking_uri},optuna.db,${paths.root_dir}/mlruns}"


@dataclass
class OptunaStudySweeperConf:
    _target_: str = "hydra_plugins.vit_exp_optuna_sweeper.optuna_sweeper.OptunaStudySweeper"
    _recursive_: bool = False  # the sweeper instantiates ``sampler`` itself (per-trial seeds, clear errors)
    # maximize | minimize the job's return value
    direction: str = "minimize"
    # required: trials of the same study are shared and counted toward n_trials across reruns
    study_name: str | None = None
    # sqlite:///path.db | journal:///path.log (or a path ending .log) | postgresql://... | null (in memory)
    storage: str | None = DEFAULT_STORAGE
    # trials the study should hold (COMPLETE, PRUNED, FAIL, or RUNNING elsewhere), across reruns
    n_trials: int = 20
    # trials launched at a time through the Hydra launcher (e.g. hydra/launcher=joblib)
    n_jobs: int = 1
    # an Optuna sampler, instantiated with seed + trial number when seed is set
    sampler: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # search space, e.g. optim.lr: tag(log, interval(1e-4, 1e-2)); batch: choice(32, 64)
    params: dict[str, Any] | None = None
    # a RUNNING trial of another host is given up (FAIL, re-queued) after grace_period s without a beat
    heartbeat_interval: int = 30
    grace_period: int = 120
    # a batch whose jobs raised more often than this ends the sweep with the job's exception
    max_failure_rate: float = 0.0


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna_study", node=OptunaStudySweeperConf, provider="vit_exp"
)


class OptunaStudySweeper(Sweeper):
    """Hydra's side of the sweeper; the Optuna work is in ``_study.StudySweep``."""

    # Before its first job the sweeper calls the Hydra callbacks' ``on_first_launch(config, tags)``
    # (vit-exp's sweep callback makes the parent run then: none when the study has nothing to run),
    # and as it ends ``on_sweep_result(config, tags, metrics, step)`` (the study's best so far).
    calls_on_first_launch = True

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.launcher = None
        self.callbacks: list[Any] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.callbacks = list(getattr(hydra_context.callbacks, "callbacks", []))
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call ``hook(config=..., **kwargs)`` of the callbacks that have it; an Exception is a warning
        (the log's handlers mask credentials) and the sweep goes on, as with Hydra's own hooks."""
        for callback in self.callbacks:
            function = getattr(callback, hook, None)
            if function is None:
                continue
            try:
                function(config=self.config, **kwargs)
            except Exception as exc:
                log.warning(
                    "Callback %s.%s raised %s: %s", type(callback).__name__, hook, type(exc).__name__, exc
                )

    def sweep(self, arguments: list[str]) -> None:
        from ._study import StudySweep

        assert self.config is not None and self.launcher is not None
        StudySweep(self.config, self.launcher, self.notify, **self.settings).run(list(arguments))
