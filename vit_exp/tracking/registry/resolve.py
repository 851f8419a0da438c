"""Resolve ``models:/`` and ``runs:/`` URIs with clear errors, and load them as a ``Predictor``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vit_exp.errors import ConfigError, RegistryError, first_line

_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)$")
_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w-]+)$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})/(?P<path>.+)$")


@dataclass
class ModelRef:
    """What a model URI points at: registered name/version (None for runs:/) and the source run."""

    uri: str
    name: str | None
    version: str | None
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)  # the version's tags (data.name, val/top1, ...)

    @property
    def pinned_uri(self) -> str:
        """The URI of exactly this version (an alias or ``latest`` may move while it is used)."""
        return f"models:/{self.name}/{self.version}" if self.name and self.version else self.uri


def require_registered_model(client, name: str) -> None:
    """RegistryError listing the registered models when ``name`` is not one of them."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=1000))
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
            "model_uri is required, e.g. model_uri=models:/vit_tiny-digits/1 "
            "or models:/vit_tiny-digits@champion"
        )
    if match := _MODELS_VERSION.match(uri):
        name, version = match["name"], match["version"]
        require_registered_model(client, name)
        if version == "latest":
            return _latest(client, uri, name)
        try:
            mv = client.get_model_version(name, version)
        except MlflowException:
            known = sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)
            raise RegistryError(
                f"model '{name}' has no version {version}; versions: {', '.join(map(str, known)) or 'none'}"
            ) from None
        return ModelRef(uri, name, str(mv.version), mv.run_id, dict(mv.tags))
    if match := _MODELS_ALIAS.match(uri):
        name, alias = match["name"], match["alias"]
        require_registered_model(client, name)
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            aliases = sorted(client.get_registered_model(name).aliases)
            raise RegistryError(
                f"model '{name}' has no alias '{alias}'; aliases: {', '.join(aliases) or 'none'} "
                f"(set one with python -m vit_exp.promote name={name})"
            ) from None
        return ModelRef(uri, name, str(mv.version), mv.run_id, dict(mv.tags))
    if match := _RUNS.match(uri):
        try:
            client.get_run(match["run_id"])
        except MlflowException:
            raise RegistryError(f"model_uri={uri}: no run {match['run_id']} in this tracking store") from None
        return ModelRef(uri, None, None, match["run_id"])
    raise ConfigError(
        f"model_uri={uri} is not a model URI; "
        "use models:/NAME/VERSION, models:/NAME/latest, models:/NAME@ALIAS or runs:/RUN_ID/PATH"
    )


def _latest(client, uri: str, name: str) -> ModelRef:
    """``models:/NAME/latest``: the highest version number (what MLflow itself resolves it to)."""
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise RegistryError(f"model '{name}' has no versions yet ({uri})")
    mv = max(versions, key=lambda v: int(v.version))
    return ModelRef(uri, name, str(mv.version), mv.run_id, dict(mv.tags))


def load_predictor(uri: str, precision: str = "fp32"):
    """The Predictor of the model at ``uri``, built with this vit_exp's code from its checkpoint, config
    and class names, so it loads the same whichever vit_exp wrote it. ``precision``: ``device.precision``."""
    return download_version(uri, precision)[0]


def download_version(uri: str, precision: str = "fp32"):
    """The Predictor of the model at ``uri`` and its model config (``model``, ``data``,
    ``class_names``, ``top_k``)."""
    import mlflow
    from mlflow.models import Model

    from vit_exp.models.inference import Predictor

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        flavor = Model.load(str(local / "MLmodel")).flavors["python_function"]
        checkpoint = local / flavor["artifacts"]["checkpoint"]["path"]
        config, class_names = _version_config(local, flavor)
    except KeyError:
        raise RegistryError(f"model_uri={uri} is not a vit-exp ViT model") from None
    except Exception as exc:
        first = first_line(str(exc)) or type(exc).__name__
        raise RegistryError(f"model_uri={uri}: cannot load the model ({first[:300]})") from None
    predictor = Predictor.from_checkpoint(checkpoint, config, class_names, precision)
    return predictor, {**config, "class_names": class_names}


def _version_config(local: Path, flavor: dict) -> tuple[dict, list[str]]:
    """A version's config (``model``, ``data``) and class names: its model config, or (a version
    written before they moved there) its ``config`` and ``class_names`` artifacts."""
    import json

    import yaml

    config = flavor.get("config") or {}
    if "class_names" in config:
        return config, config["class_names"]
    files = {name: local / flavor["artifacts"][name]["path"] for name in ("config", "class_names")}
    return yaml.safe_load(files["config"].read_text()), json.loads(files["class_names"].read_text())
