"""The tracking store: the one place that points MLflow at it, finds the experiment, and reads its errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vit_exp.credentials import reveal, split_credentials
from vit_exp.errors import ConfigError, RegistryError, first_line
from vit_exp.locking import exclusive

SQLITE_PREFIX = "sqlite:///"


def use_store(tracking_uri: str):
    """Point MLflow's tracking and registry at ``tracking_uri``; return a client.

    Credentials in the URI (masked in the config, see credentials.py) go to MLflow as
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``. Also keeps MLflow's INFO lines off
    our console (importing mlflow sets its logger to INFO).
    """
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri, user, password = split_credentials(reveal(tracking_uri))
    if user:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not uri.startswith(SQLITE_PREFIX):
        return mlflow.MlflowClient()
    database = Path(uri[len(SQLITE_PREFIX) :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(database.with_name(database.name + ".lock")):
        # MLflow creates or migrates the schema, unguarded, when a process first opens a store:
        # two processes doing it at once break it. Open both stores one process at a time
        # (MLflow keeps them open for the rest of the process).
        client = mlflow.MlflowClient()
        client.search_registered_models(max_results=1)
    return client


def already_exists(exc: Exception) -> bool:
    """Whether an MLflow error says the thing to create exists (e.g. made by a parallel sweep job)."""
    return getattr(exc, "error_code", "") == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(exc)


def check_store(tracking_uri: str):
    """A client for ``tracking_uri`` that has answered once (no retries); RegistryError otherwise."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = use_store(tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:
        first = first_line(str(exc)) or type(exc).__name__
        raise RegistryError(
            f"mlflow.tracking_uri={tracking_uri}: tracking store unreachable ({first[:200]})"
        ) from None
    return client


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a local SQLite store, artifacts live next to the database file; servers decide themselves."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    db_path = Path(tracking_uri[len(SQLITE_PREFIX) :])
    return (db_path.parent / "artifacts" / experiment).resolve().as_uri()


def experiment_id(settings) -> str:
    """The id of ``settings.experiment`` in ``settings.tracking_uri``, creating the experiment if needed."""
    client = use_store(settings.tracking_uri)
    try:
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = settings.artifact_location or default_artifact_location(
            settings.tracking_uri, settings.experiment
        )
        return client.create_experiment(settings.experiment, artifact_location=location)
    except Exception as exc:
        if already_exists(exc):
            return client.get_experiment_by_name(settings.experiment).experiment_id
        first = first_line(str(exc)) or type(exc).__name__
        raise ConfigError(
            f"mlflow.tracking_uri={settings.tracking_uri}: tracking store unusable ({first})"
        ) from None
