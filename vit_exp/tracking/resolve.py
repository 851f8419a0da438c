"""Resolve a model URI (``models:/NAME/V``, ``models:/NAME@alias``, ``runs:/ID/path``) with clear errors,
and load it as a :class:`~vit_exp.models.predictor.Predictor`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vit_exp.errors import ConfigError, VitExpError, first_line

_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w-]+)$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})/(?P<path>.+)$")


class RegistryError(VitExpError):
    """The tracking store or registry cannot give what was asked for."""


@dataclass
class ModelRef:
    """What a model URI points at: registered name/version (None for runs:/) and the source run."""

    uri: str
    name: str | None
    version: str | None
    run_id: str | None


def check_store(tracking_uri: str):
    """An MlflowClient for ``tracking_uri``; RegistryError when the store does not answer."""
    import logging
    import os

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:
        first = first_line(str(exc)) or type(exc).__name__
        raise RegistryError(
            f"mlflow.tracking_uri={tracking_uri}: tracking store unreachable ({first[:200]})"
        ) from None
    return client


def _registered_names(client) -> list[str]:
    return sorted(m.name for m in client.search_registered_models(max_results=1000))


def _check_name(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        names = _registered_names(client)
        if not names:
            raise RegistryError(
                "the model registry is empty: train and register a model first (python -m vit_exp.run)"
            ) from None
        raise RegistryError(
            f"unknown registered model '{name}'; registered models: {', '.join(names)}"
        ) from None


def resolve(client, uri: str) -> ModelRef:
    """Check that ``uri`` exists in the store and say what it points at."""
    from mlflow.exceptions import MlflowException

    if not uri or uri == "???":
        raise ConfigError(
            "model_uri is required, e.g. model_uri=models:/vit_tiny/1 or models:/vit_tiny@champion"
        )
    if match := _MODELS_VERSION.match(uri):
        name, version = match["name"], match["version"]
        _check_name(client, name)
        try:
            mv = client.get_model_version(name, version)
        except MlflowException:
            known = sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)
            raise RegistryError(
                f"model '{name}' has no version {version}; versions: {', '.join(map(str, known)) or 'none'}"
            ) from None
        return ModelRef(uri, name, str(mv.version), mv.run_id)
    if match := _MODELS_ALIAS.match(uri):
        name, alias = match["name"], match["alias"]
        _check_name(client, name)
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            aliases = sorted(client.get_registered_model(name).aliases)
            raise RegistryError(
                f"model '{name}' has no alias '{alias}'; aliases: {', '.join(aliases) or 'none'} "
                f"(set one with python -m vit_exp.promote name={name})"
            ) from None
        return ModelRef(uri, name, str(mv.version), mv.run_id)
    if match := _RUNS.match(uri):
        try:
            client.get_run(match["run_id"])
        except MlflowException:
            raise RegistryError(f"model_uri={uri}: no run {match['run_id']} in this tracking store") from None
        return ModelRef(uri, None, None, match["run_id"])
    raise ConfigError(
        f"model_uri={uri} is not a model URI; "
        "use models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH"
    )


def load_predictor(uri: str):
    """Load the pyfunc at ``uri`` and return its Predictor (network, class names, image size)."""
    import mlflow

    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:
        first = first_line(str(exc)) or type(exc).__name__
        raise RegistryError(f"model_uri={uri}: cannot load the model ({first[:300]})") from None
    python_model = model.unwrap_python_model()
    predictor = getattr(python_model, "predictor", None)
    if predictor is None:
        raise RegistryError(f"model_uri={uri} is not a vit-exp ViT model")
    return predictor
