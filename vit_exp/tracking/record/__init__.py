"""A run's record in MLflow: its lifecycle, the outbox every write goes through, metrics, datasets,
and the training and eval runs built on them.

This module holds the ``mlflow`` config group's settings (its ``_target_``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vit_exp.errors import ConfigError, check_field_types, positive_int


@dataclass
class MlflowSettings:
    """The ``mlflow`` config group."""

    tracking_uri: str
    experiment: str = "vit-exp"
    run_name: str | None = None
    artifact_location: str | None = None
    enabled: bool = True
    log_every_n_steps: int = 1
    log_details_every_n_steps: int = 10
    flush_interval_s: float = 10.0
    drain_timeout_s: float = 120.0

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
