"""A run's record in MLflow (lifecycle, outbox, metrics, datasets, training and eval runs), and the
``mlflow`` config group's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from vit_exp.errors import ConfigError, check_field_types, positive_int


@dataclass
class MlflowSettings:
    """The ``mlflow`` config group (types only: the defaults are conf/mlflow/default.yaml's)."""

    tracking_uri: str
    experiment: str
    run_name: str | None
    ui_url: str | None
    artifact_location: str | None
    enabled: bool
    log_every_n_steps: int
    log_details_every_n_steps: int
    flush_interval_s: float
    drain_timeout_s: float
    system_metrics: bool
    system_metrics_interval_s: float
    tags: dict = field(default_factory=dict)  # more tags of each run created: {"team": "vision"}

    def __post_init__(self) -> None:
        check_field_types(self, "mlflow")
        if not self.tracking_uri:
            raise ConfigError(
                "mlflow.tracking_uri must be set (e.g. sqlite:///mlruns/mlflow.db or http://host:5000)"
            )
        for key in ("log_every_n_steps", "log_details_every_n_steps"):
            positive_int(f"mlflow.{key}", getattr(self, key))
        for key in ("flush_interval_s", "drain_timeout_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"mlflow.{key} must be a number >= 0, got {getattr(self, key)!r}")
        if (interval := self.system_metrics_interval_s) <= 0:
            raise ConfigError(f"mlflow.system_metrics_interval_s must be a number > 0, got {interval!r}")
