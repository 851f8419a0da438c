"""The tracking store: the one place that points MLflow at it, finds the experiment, and reads its errors."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from vit_exp.credentials import MASK, mask, reveal, split_credentials
from vit_exp.errors import ConfigError, error_chain, first_line
from vit_exp.locking import exclusive
from vit_exp.tracking.retries import RetryingClient, is_transient, turn_off_mlflow_retries

SQLITE_PREFIX = "sqlite:///"
DENIED = ("UNAUTHENTICATED", "PERMISSION_DENIED")  # MLflow's codes of an HTTP 401 / 403
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "pymysql"}


def use_store(tracking_uri: str):
    """Point MLflow at ``tracking_uri``, check it answers, return a client; ConfigError when it gives no
    answer within ``DOWN_AFTER_S`` on first use (then a server's client retries transient failures)."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # importing mlflow sets it to INFO
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    uri, user, password = split_credentials(reveal(tracking_uri))
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value and value != MASK:  # a masked one (a URI from a record) leaves the environment's in place
            os.environ[name] = value
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    remote = is_server(uri)
    if remote:
        turn_off_mlflow_retries()
    if uri not in _answered:
        try:
            _open(uri)
        except Exception as exc:
            raise ConfigError(f"mlflow.tracking_uri={mask(tracking_uri)}: {_why_unusable(exc)}") from None
        _answered.add(uri)
    client = mlflow.MlflowClient()
    return RetryingClient(client) if remote else client


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (reached over the network) rather than a local store."""
    return urlparse(uri).scheme in ("http", "https")


_answered: set[str] = set()  # stores this process has reached once
DOWN_AFTER_S = 8.0  # a server with no answer at all for this long at start is down, not flaky
PROBE_TIMEOUT_S = 4.0
PROBE_WAIT_S = 0.5  # even waits at start: many tries before a server is called down


def _open(uri: str) -> None:
    import mlflow

    if uri.startswith(SQLITE_PREFIX):
        database = Path(uri[len(SQLITE_PREFIX) :])
        database.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(database.with_name(database.name + ".lock")):
            # MLflow creates or migrates the schema, unguarded, when a process first opens a store:
            # two processes doing it at once break it. Open both stores one process at a time
            # (MLflow keeps them open for the rest of the process).
            mlflow.MlflowClient().search_registered_models(max_results=1)
        return
    _probe(mlflow.MlflowClient())


def _probe(client) -> None:
    """Ask the server, retrying transient failures every ``PROBE_WAIT_S`` for ``DOWN_AFTER_S``: ~15 tries,
    so a server failing 6 requests in 10 is not taken for down (0.6^15 < 0.1 %)."""
    deadline = time.monotonic() + DOWN_AFTER_S
    while True:
        left = deadline - time.monotonic()
        try:
            with _request_timeout(max(1.0, min(PROBE_TIMEOUT_S, left))):
                client.search_experiments(max_results=1)
            return
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + PROBE_WAIT_S >= deadline:
                raise
            time.sleep(PROBE_WAIT_S)


@contextlib.contextmanager
def _request_timeout(seconds: float) -> Iterator[None]:
    """MLflow's HTTP answer timeout for the block (the start-up probe runs before other threads)."""
    key = "MLFLOW_HTTP_REQUEST_TIMEOUT"
    saved = os.environ.get(key)
    os.environ[key] = f"{seconds:.0f}"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _why_unusable(exc: Exception) -> str:
    """Why the store did not answer, and what to do, in a few words."""
    text = str(exc)
    if isinstance(exc, ModuleNotFoundError):
        package = DRIVER_PACKAGES.get(exc.name or "", exc.name)
        return (
            f"its database driver ({exc.name}) is not installed: pip install '{package}' in this environment"
        )
    if any(getattr(inner, "error_code", None) in DENIED for inner in error_chain(exc)):
        return (
            "credentials refused; give them as user:password@ in the URI or as "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        )
    for reason in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if reason in text:
            return (
                f"tracking store unreachable ({reason}); start the server or fix host and port, "
                "or record locally with mlflow.tracking_uri=sqlite:///mlruns/mlflow.db"
            )
    return f"tracking store unusable ({mask(first_line(text))[:200] or type(exc).__name__})"


def already_exists(exc: Exception) -> bool:
    """Whether an MLflow error says the thing to create exists (e.g. made by a parallel sweep job)."""
    return getattr(exc, "error_code", "") == "RESOURCE_ALREADY_EXISTS"


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a local SQLite store, artifacts live next to the database file; servers decide themselves."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return (Path(tracking_uri[len(SQLITE_PREFIX) :]).parent / "artifacts" / experiment).resolve().as_uri()


# What the experiment holds: model training runs, not GenAI traces (the tag MLflow's UI defines for it;
# MLflow 3.17's UI still opens on its GenAI overview unless the URL says ?workflowType=machine_learning).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def runs_page_url(
    tracking_uri: str, experiment: str, run_id: str | None = None, ui_url: str | None = None
) -> str:
    """The MLflow UI page of an experiment's runs (or one run), in the "Model training" view: on
    ``ui_url``, else the tracking server, else the UI ``make ui`` starts."""
    parsed = urlparse(ui_url or tracking_uri)
    base = "http://127.0.0.1:5000"
    if parsed.scheme in ("http", "https"):  # without any user:password@
        base = parsed._replace(netloc=parsed.netloc.rpartition("@")[2], query="", fragment="").geturl()
    page = f"{base.rstrip('/')}/#/experiments/{experiment}/runs"
    return (f"{page}/{run_id}" if run_id else page) + "?workflowType=machine_learning"


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
        return client.create_experiment(settings.experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
    except Exception as exc:
        if already_exists(exc):
            return client.get_experiment_by_name(settings.experiment).experiment_id
        raise ConfigError(
            f"mlflow.tracking_uri={mask(settings.tracking_uri)}: {_why_unusable(exc)}"
        ) from None
