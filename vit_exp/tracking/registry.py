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
EXAMPLE_IMAGE = "input_example.image"  # the encoded bytes of one validation image


@dataclass
class RegistrySettings:
    """The ``registry`` config group: which checkpoints become versions of which registered model."""

    register: str = "every"
    name: str = "vit"
    top_k: int = 5
    step_checkpoints: bool = False

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
                ColSpec("string", "error", required=False),
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


def write_model_inputs(folder: Path, config: dict, class_names: list[str], example: bytes) -> Path:
    """Write what all versions of one run share: config, class names and the input example."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / EXAMPLE_IMAGE).write_bytes(example)
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    names_path = folder / "class_names.json"
    names_path.write_text(json.dumps(class_names, indent=1))
    return folder


class PyfuncModelWriter:
    """Logs checkpoints of a run as MLflow pyfunc models (models-from-code).

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

    def log(self, client, run_id: str, checkpoint: Path, step: int, artifact_path: str) -> None:
        """Log the pyfunc model of ``checkpoint`` under ``artifact_path`` of the run ``run_id``.

        A version ships the network only: the optimizer's and the loop's state stay with the run.
        """
        from vit_exp.models.checkpoint import write_network_checkpoint

        with tempfile.TemporaryDirectory(prefix="vit_exp_network_") as folder:
            network = write_network_checkpoint(checkpoint, Path(folder) / checkpoint.name)
            self._log(client, run_id, network, step, artifact_path)

    def _log(self, client, run_id: str, checkpoint: Path, step: int, artifact_path: str) -> None:
        import copy
        import datetime
        import uuid

        if self._model is None:
            self._save_template(checkpoint)
        work = Path(self._workdir.name)
        client.log_artifacts(run_id, str(work / "model"), artifact_path=artifact_path)
        client.log_artifact(run_id, str(checkpoint), artifact_path=f"{artifact_path}/artifacts")
        model = copy.deepcopy(self._model)
        model.flavors["python_function"]["artifacts"]["checkpoint"] = {"path": f"artifacts/{checkpoint.name}"}
        model.metadata = {"global_step": step, "checkpoint": checkpoint.name}
        model.model_uuid = uuid.uuid4().hex
        model.utc_time_created = str(datetime.datetime.now(datetime.UTC).replace(tzinfo=None))
        model.model_size_bytes = checkpoint.stat().st_size + self._template_bytes
        model.save(str(work / "MLmodel"))
        client.log_artifact(run_id, str(work / "MLmodel"), artifact_path=artifact_path)


def version_record(
    checkpoint: Path, step: int, name: str, tags: Mapping[str, object], inputs: Path, top_k: int
):
    """The outbox record that makes ``checkpoint`` a version of ``name`` (all a later process needs)."""
    return {
        "kind": "version",
        "checkpoint": str(checkpoint),
        "step": step,
        "name": name,
        "tags": {k: str(v) for k, v in tags.items()},
        "model_inputs": str(inputs),
        "top_k": top_k,
    }


def register_version(
    client,
    run,
    record: dict,
    writer: PyfuncModelWriter,
    ensure_model: bool = True,
    check_existing: bool = True,
) -> str:
    """Log a version record's checkpoint as a pyfunc model of ``run`` (a RunInfo) and register it.

    The model is logged as run artifacts (``runs:/<run>/models/<name>``) rather than with
    ``log_model``, which would load and run every version once to validate its input example.
    With ``check_existing``, a record sent before (a replay after a crash) finds its version and
    makes no second one; ``ensure_model=False`` skips creating the registered model.
    """
    checkpoint = Path(record["checkpoint"])
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} is gone; it cannot become a model version")
    artifact_path = f"models/{checkpoint.stem.replace('.', '_')}"
    run_id, source = run.run_id, f"{run.artifact_uri}/{artifact_path}"
    name = record["name"]
    if ensure_model:
        ensure_registered_model(client, name)
    for existing in (
        client.search_model_versions(f"name='{name}' and run_id='{run_id}'") if check_existing else ()
    ):
        if existing.source == source:
            return str(existing.version)
    writer.log(client, run_id, checkpoint, record["step"], artifact_path)
    version = client.create_model_version(name, source=source, run_id=run_id, tags=record["tags"])
    return str(version.version)


def model_writer(record: dict) -> PyfuncModelWriter:
    """The writer for a version record's run (its config, class names and input example)."""
    inputs = Path(record["model_inputs"])
    shared = {"config": inputs / "config.yaml", "class_names": inputs / "class_names.json"}
    return PyfuncModelWriter(shared, (inputs / EXAMPLE_IMAGE).read_bytes(), int(record["top_k"]))


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
