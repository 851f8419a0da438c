"""Checkpoints as MLflow model versions: log the pyfunc (models-from-code), register it, tag it."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vit_exp.errors import ConfigError, check_field_types, positive_int
from vit_exp.tracking.store import already_exists

PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(__file__).resolve().parent.parent
POLICIES = ("every", "best", "last", "none")


@dataclass
class RegistrySettings:
    """The ``registry`` config group: which checkpoints become versions of which registered model."""

    register: str = "every"
    name: str = "vit"
    top_k: int = 5

    def __post_init__(self) -> None:
        check_field_types(self, "registry")
        if self.register not in POLICIES:
            raise ConfigError(f"registry.register must be one of {POLICIES}, got {self.register!r}")
        if not self.name:
            raise ConfigError("registry.name must be a non-empty model name")
        positive_int("registry.top_k", self.top_k)


def pyfunc_signature(top_k: int = 5):
    """Input: an ``image`` column of encoded bytes; output: top-1 and top-k columns; param ``top_k``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema(
            [
                ColSpec("long", "class_index"),
                ColSpec("string", "class_name"),
                ColSpec("double", "probability"),
                ColSpec(Array("long"), "top_k_indices"),
                ColSpec(Array("string"), "top_k_names"),
                ColSpec(Array("double"), "top_k_probabilities"),
            ]
        ),
        params=ParamSchema([ParamSpec("top_k", "long", top_k)]),
    )


def pip_requirements() -> list[str]:
    """What a fresh environment needs to load the model (vit_exp itself travels as code)."""
    from importlib.metadata import version

    return [
        f"mindspore=={version('mindspore')}",
        "numpy<2",
        "pandas<3",
        f"mlflow=={version('mlflow')}",
        "pillow",
        "pyyaml",
        "scipy",
    ]


def version_config(model_name: str, architecture, data) -> dict:
    """What a version ships of its run's config: the ViT and how its inputs are normalised.

    No path, URI or other setting of the training machine (the run's params hold those).
    """
    from dataclasses import asdict

    return {
        "model": {"name": model_name, **asdict(architecture)},
        "data": {
            "name": data.name,
            "class_map": data.class_map,
            "mean": list(data.mean),
            "std": list(data.std),
        },
    }


def write_model_inputs(folder: Path, config: dict, class_names: list[str]) -> dict[str, Path]:
    """Write the config and class-name artifacts shared by all versions of one run."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    names_path = folder / "class_names.json"
    names_path.write_text(json.dumps(class_names, indent=1))
    return {"config": config_path, "class_names": names_path}


class PyfuncModelWriter:
    """Logs checkpoints as MLflow pyfunc models (models-from-code) to the active run.

    ``mlflow.pyfunc.save_model`` runs once per writer; each checkpoint then logs that directory, its
    own checkpoint and its own ``MLmodel`` (last): ~30 ms a version instead of ~0.3 s (bench/RESULTS.md).
    """

    def __init__(self, shared_artifacts: Mapping[str, Path], example_image: bytes, top_k: int):
        self.shared_artifacts = dict(shared_artifacts)
        self.example_image = example_image
        self.top_k = top_k
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._model = None
        self._template_bytes = 0

    def _save_template(self, checkpoint: Path) -> None:
        import mlflow
        import pandas as pd
        from mlflow.models import Model

        self._workdir = tempfile.TemporaryDirectory(prefix="vit_exp_pyfunc_")  # removed with the writer
        work = Path(self._workdir.name)
        code = work / "code" / PACKAGE_DIR.name  # the package without __pycache__
        shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        template = work / "model"
        mlflow.pyfunc.save_model(
            path=str(template),
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={
                "checkpoint": str(checkpoint),
                **{k: str(v) for k, v in self.shared_artifacts.items()},
            },
            code_paths=[str(code)],
            signature=pyfunc_signature(self.top_k),
            input_example=pd.DataFrame({"image": [self.example_image]}),
            pip_requirements=pip_requirements(),
            model_config={"top_k": self.top_k},
        )
        self._model = Model.load(str(template / "MLmodel"))
        # Loading needs only paths inside the model directory: drop the training machine's paths.
        flavor = self._model.flavors["python_function"]
        flavor["model_code_path"] = Path(flavor["model_code_path"]).name
        for artifact in flavor["artifacts"].values():
            artifact.pop("uri", None)
        (template / "MLmodel").unlink()
        (template / "artifacts" / checkpoint.name).unlink()
        self._template_bytes = sum(f.stat().st_size for f in template.rglob("*") if f.is_file())

    def log(self, checkpoint: Path, step: int, artifact_path: str) -> None:
        """Log the pyfunc model of ``checkpoint`` under ``artifact_path`` of the active run."""
        import copy
        import datetime
        import uuid

        import mlflow

        if self._model is None:
            self._save_template(checkpoint)
        work = Path(self._workdir.name)
        mlflow.log_artifacts(str(work / "model"), artifact_path=artifact_path)
        mlflow.log_artifact(str(checkpoint), artifact_path=f"{artifact_path}/artifacts")
        model = copy.deepcopy(self._model)
        model.flavors["python_function"]["artifacts"]["checkpoint"] = {"path": f"artifacts/{checkpoint.name}"}
        model.metadata = {"global_step": step, "checkpoint": checkpoint.name}
        model.model_uuid = uuid.uuid4().hex
        model.utc_time_created = str(datetime.datetime.now(datetime.UTC).replace(tzinfo=None))
        model.model_size_bytes = checkpoint.stat().st_size + self._template_bytes
        model.save(str(work / "MLmodel"))
        mlflow.log_artifact(str(work / "MLmodel"), artifact_path=artifact_path)


def log_checkpoint_version(
    writer: PyfuncModelWriter,
    checkpoint: Path,
    registered_name: str,
    step: int,
    tags: Mapping[str, object],
    ensure_model: bool = True,
) -> str:
    """Log ``checkpoint`` as a pyfunc model of the active run, register it, tag the version.

    ``ensure_model=False`` skips creating ``registered_name`` when the caller knows it exists.

    The model is logged as run artifacts (``runs:/<run>/models/<name>``) rather than with
    ``log_model``, which would load and run every version once to validate its input example.
    ``tests/`` load and serve the model instead.
    """
    import mlflow

    artifact_path = f"models/{checkpoint.stem.replace('.', '_')}"
    writer.log(checkpoint, step, artifact_path)
    client = mlflow.MlflowClient()
    if ensure_model:
        ensure_registered_model(client, registered_name)
    version = client.create_model_version(
        registered_name,
        source=mlflow.get_artifact_uri(artifact_path),
        run_id=mlflow.active_run().info.run_id,
        tags={k: str(v) for k, v in tags.items()},
    )
    return str(version.version)


def ensure_registered_model(client, name: str) -> None:
    """Create the registered model ``name`` unless it exists (parallel sweep jobs may race)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="MindSpore ViT checkpoints registered by vit-exp"
            )
        except MlflowException as exc:
            if not already_exists(exc):
                raise
