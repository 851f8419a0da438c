"""A registered version exported (ONNX | MindIR) and recorded as its own model: a LoggedModel of the
same run with the same step, dataset and metrics, registered as ``NAME-<format>``, linked both ways
(``vit_exp.exported_from`` on the export, ``vit_exp.export.<format>`` on the source version).

Nothing is written before the export passes its check; every create is looked up first (an export
asked for again, or retried over a flaky network, finds its model and version instead of making new
ones), and the version is created last, so a failed export leaves at most a PENDING model, which the
next try completes."""

from __future__ import annotations

import datetime
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as installed
from pathlib import Path

from vit_exp.errors import RegistryError
from vit_exp.models.export import FORMATS, ExportCheck
from vit_exp.tracking.registry.resolve import ModelRef
from vit_exp.tracking.registry.versions import (
    ensure_registered_model,
    existing_version,
    is_ready,
    list_version_on_model,
    local_folder,
    pyfunc_signature,
    save_pyfunc,
    upload_files,
)
from vit_exp.tracking.retries import create_once

EXPORTED_MODEL_FILE = Path(__file__).with_name("exported_model.py")
# What exported_model.py imports of vit_exp: request handling and NumPy preprocessing, no MindSpore.
SERVING_CODE = (
    "__init__.py",
    "errors.py",
    "credentials.py",
    "serving.py",
    "data/__init__.py",
    "data/images.py",
)
EXPORTED_FROM = "vit_exp.exported_from"
MODEL_TYPES = {"onnx": "ONNX ViT image classifier", "mindir": "MindIR ViT image classifier"}


def export_name(name: str, fmt: str) -> str:
    """The registered model of ``name``'s ``fmt`` exports: ``vit_tiny-digits-onnx``."""
    return f"{name}-{fmt}"


def export_tag(fmt: str) -> str:
    """The source version's tag naming its ``fmt`` export."""
    return f"vit_exp.export.{fmt}"


def serving_requirements(fmt: str) -> list[str]:
    """What a fresh environment needs to serve a ``fmt`` export (vit_exp's few files travel as code):
    its runtime and ``mlflow-skinny``, MLflow without its tracking server's dependencies (it loads and
    serves a model: 406 MB of environment instead of 987 MB with ``mlflow``, bench/RESULTS.md)."""
    runtime = (
        f"onnxruntime=={installed('onnxruntime')}"
        if fmt == "onnx"
        else f"mindspore=={installed('mindspore')}"
    )
    return [runtime, f"mlflow-skinny=={installed('mlflow-skinny')}", "numpy<2", "pandas<3", "pillow"]


@dataclass(frozen=True)
class Source:
    """The version being exported, as read from the store."""

    ref: ModelRef
    run: object  # mlflow Run
    model: object  # its LoggedModel


def source_of(client, ref: ModelRef) -> Source:
    """The run and LoggedModel of version ``ref``; a RegistryError when either is gone."""
    from mlflow.exceptions import MlflowException

    label = f"version {ref.version} of {ref.name}"
    try:
        run = client.get_run(ref.run_id)
    except MlflowException:
        raise RegistryError(
            f"{label}: its run {ref.run_id} is gone from this store; nothing to export from"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise RegistryError(f"{label}: its run {ref.run_id} is deleted; restore it to export this version")
    found = client.get_model_version(ref.name, ref.version)
    model_id = found.model_id or (found.source or "").removeprefix("models:/")
    if not model_id or "/" in model_id:
        raise RegistryError(
            f"{label} was registered without a LoggedModel (an older vit-exp); re-register it"
        )
    return Source(ref, run, client.get_logged_model(model_id))


@dataclass(frozen=True)
class Exported:
    """A registered export: its registered model, version and URI, and whether this call made it."""

    name: str
    version: str
    created: bool

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def find_export(client, source: Source, fmt: str) -> Exported | None:
    """The export of ``source`` in ``fmt`` that is already registered (None when there is none)."""
    model = _existing_model(client, source, fmt)
    if model is None or not is_ready(model):
        return None
    found = existing_version(
        client, export_name(source.ref.name, fmt), source.run.info.run_id, model.model_id
    )
    return Exported(found.name, str(found.version), False) if found else None


def register_export(
    client, source: Source, fmt: str, file: Path, check: ExportCheck, config: dict
) -> Exported:
    """Record the checked export ``file`` as a LoggedModel of the source's run and register it;
    ``config``: the source version's model config (``model``, ``data``, ``class_names``, ``top_k``)."""
    from mlflow.entities import LoggedModelStatus

    name = export_name(source.ref.name, fmt)
    run_id = source.run.info.run_id
    ensure_registered_model(client, name, f"{FORMATS[fmt]} exports of {source.ref.name}'s versions (vit-exp)")
    model = _existing_model(client, source, fmt) or create_once(
        client,
        lambda: client.create_logged_model(
            source.run.info.experiment_id,
            name=_model_name(source, fmt),
            source_run_id=run_id,
            tags={EXPORTED_FROM: source.ref.pinned_uri, "format": fmt},
            model_type=MODEL_TYPES[fmt],
        ),
        lambda: _existing_model(client, source, fmt),
        f"the LoggedModel of the {fmt} export",
    )
    if not is_ready(model):
        _write_model(client, model, source, fmt, file, config)
        _copy_metrics(client, source, model.model_id)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    tags = {k: v for k, v in source.ref.tags.items() if not k.startswith("vit_exp.export.")}
    tags |= {
        EXPORTED_FROM: source.ref.pinned_uri,
        "format": fmt,
        "export.max_abs_diff": f"{check.max_abs_diff:.3g}",
    }
    version = existing_version(client, name, run_id, model.model_id) or create_once(
        client,
        lambda: client.create_model_version(
            name,
            source=f"models:/{model.model_id}",
            run_id=run_id,
            tags=tags,
            description=f"{fmt} export of {source.ref.pinned_uri} ({check.describe()})",
            model_id=model.model_id,
        ),
        lambda: existing_version(client, name, run_id, model.model_id),
        f"the version of the {fmt} export",
    )
    list_version_on_model(client, model.model_id, name, str(version.version))
    exported = Exported(name, str(version.version), True)
    client.set_model_version_tag(source.ref.name, source.ref.version, export_tag(fmt), exported.uri)
    return exported


def _model_name(source: Source, fmt: str) -> str:
    return f"{source.model.name}-{fmt}"


def _existing_model(client, source: Source, fmt: str):
    """The export's LoggedModel in the source run: READY, else PENDING (to complete), else None."""
    found = client.search_logged_models(
        [source.run.info.experiment_id],
        filter_string=f"source_run_id = '{source.run.info.run_id}' AND name = '{_model_name(source, fmt)}'",
    )
    mine = [m for m in found if m.tags.get(EXPORTED_FROM) == source.ref.pinned_uri]
    ready = [m for m in mine if is_ready(m)]
    pending = [m for m in mine if str(m.status).endswith("PENDING")]
    return (ready or pending or [None])[0]


def _write_model(client, model, source: Source, fmt: str, file: Path, config: dict) -> None:
    """The export's pyfunc model (``exported_model.py``) with the ``onnx`` flavor for ONNX, stored as
    the LoggedModel's artifacts, ``MLmodel`` last."""
    model_config = {
        "format": fmt,
        "image_size": int(config["model"]["image_size"]),
        "mean": list(config["data"]["mean"]),
        "std": list(config["data"]["std"]),
        "class_names": list(config["class_names"]),
        "top_k": int(config.get("top_k", 5)),
    }
    with tempfile.TemporaryDirectory(prefix="vit_exp_export_") as work:
        staged = Path(work) / "model"
        signature = pyfunc_signature(model_config["top_k"])
        requirements = serving_requirements(fmt)
        mlmodel = save_pyfunc(
            staged, EXPORTED_MODEL_FILE, {"model": file}, SERVING_CODE, signature, requirements, model_config
        )
        if fmt == "onnx":
            import onnx

            mlmodel.add_flavor(
                "onnx",
                onnx_version=onnx.__version__,
                data=f"artifacts/{file.name}",
                providers=["CPUExecutionProvider"],
                code=None,
            )
        mlmodel.metadata = {"exported_from": source.ref.pinned_uri, "format": fmt}
        mlmodel.model_uuid = mlmodel.model_id = model.model_id
        mlmodel.run_id = source.run.info.run_id
        mlmodel.utc_time_created = str(datetime.datetime.now(datetime.UTC).replace(tzinfo=None))
        mlmodel.model_size_bytes = sum(f.stat().st_size for f in staged.rglob("*") if f.is_file())
        target = local_folder(model.artifact_location)
        if target is None:
            mlmodel.save(str(staged / "MLmodel"))
            upload_files(client, model.model_id, staged)
            return
        shutil.copytree(staged, target, dirs_exist_ok=True)
        mlmodel.save(str(target / "MLmodel"))  # last: a model directory with MLmodel is whole


def _copy_metrics(client, source: Source, model_id: str) -> None:
    """The source model's metrics (its step's val metrics, on its dataset) onto the export's model."""
    from mlflow.entities import Metric

    metrics = [
        Metric(
            m.key,
            m.value,
            m.timestamp,
            m.step,
            model_id=model_id,
            dataset_name=m.dataset_name,
            dataset_digest=m.dataset_digest,
        )
        for m in source.model.metrics or []
    ]
    if metrics:
        client.log_batch(source.run.info.run_id, metrics=metrics, synchronous=True)
    outputs = client.get_run(source.run.info.run_id).outputs
    if not any(o.model_id == model_id for o in (outputs.model_outputs if outputs else [])):
        from mlflow.entities import LoggedModelOutput

        step = int(source.model.tags.get("global_step", 0))
        client.log_outputs(source.run.info.run_id, [LoggedModelOutput(model_id, step)])
