"""Checkpoints as MLflow model versions: a LoggedModel of the run holding the pyfunc, registered, tagged."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

from vit_exp.tracking.record.records import VersionRecord
from vit_exp.tracking.retries import create_once
from vit_exp.tracking.store import already_exists

PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(__file__).resolve().parents[2]
# What pyfunc_model.py imports of vit_exp, and what that imports: all a version ships of the package,
# as one zip archive (imported from there: zipimport; the kernels' C++ sources are read through
# importlib.resources), so a version is 5 files and its checkpoint, each one upload to a server.
INFERENCE_CODE = (
    "__init__.py",
    "errors.py",
    "credentials.py",
    "serving.py",
    "data/__init__.py",
    "data/images.py",
    "models",
)
CODE_ARCHIVE = f"{PACKAGE_DIR.name}.zip"
CODE_SUFFIXES = (".py", ".cc", ".h")
# What save_model writes that loading and serving do not need: python_env.yaml (the virtualenv / uv env
# managers then read conda.yaml and requirements.txt; the conda one needs conda.yaml).
UNSHIPPED = ("python_env.yaml",)


def pyfunc_signature(top_k: int):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        # "string", not "binary": MLflow would base64-decode a binary column itself and fail the whole
        # request on one bad value; the model decodes each row and answers a bad one with its error.
        inputs=Schema([ColSpec("string", "image")]),
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
    """What a version ships of its run's config: the ViT and its input normalisation (no machine paths)."""
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


def write_model_inputs(folder: Path, config: dict, class_names: list[str]) -> Path:
    """Write what all versions of one run share: the version config and the class names."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "class_names.json").write_text(json.dumps(class_names, indent=1))
    return folder


def save_pyfunc(
    folder: Path,
    model_file: Path,
    artifacts: Mapping[str, Path],
    code: tuple[str, ...],
    signature,
    requirements: list[str],
    model_config: Mapping,
):
    """``mlflow.pyfunc.save_model`` of the models-from-code ``model_file`` into ``folder``, with ``code``
    (vit_exp's files) as one zip, every path inside ``folder``; return its ``Model`` (its ``MLmodel``
    is not written: the caller writes it last, when the folder is whole)."""
    import mlflow
    from mlflow.models import Model

    archive = write_code_archive(folder.parent / f"{folder.name}-code" / CODE_ARCHIVE, code)
    with warnings.catch_warnings():  # the signature says the input: no example is shipped
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        mlflow.pyfunc.save_model(
            path=str(folder),
            python_model=str(model_file),
            artifacts={name: str(path) for name, path in artifacts.items()},
            code_paths=[str(archive)],
            signature=signature,
            pip_requirements=requirements,
            model_config=dict(model_config),
        )
    model = Model.load(str(folder / "MLmodel"))
    # Loading needs only paths inside the model directory: drop the writing machine's paths.
    flavor = model.flavors["python_function"]
    flavor["model_code_path"] = Path(flavor["model_code_path"]).name
    flavor["code"] = f"{flavor['code']}/{CODE_ARCHIVE}"  # the archive itself goes on sys.path
    for artifact in flavor["artifacts"].values():
        artifact.pop("uri", None)
    for name in ("MLmodel", *UNSHIPPED):
        (folder / name).unlink(missing_ok=True)
    return model


class PyfuncModelWriter:
    """Writes a run's checkpoints as MLflow pyfunc models, each the artifacts of its own LoggedModel:
    ``mlflow.pyfunc.save_model`` (slow) runs once per writer, each version adds its checkpoint and
    ``MLmodel`` (last) to a copy. ``model_config`` (the MLmodel's, read by pyfunc_model.py): ``top_k``,
    the version config's ``model`` and ``data``, and ``class_names``."""

    def __init__(self, model_config: Mapping):
        self.model_config = dict(model_config)
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._model = None
        self._template_bytes = 0
        self._stored_once: Path | None = None  # the first local model's folder: later ones link to it

    def prepare(self) -> None:
        """Write the directory every version shares now (else the first ``write`` does it: ~0.5-1 s)."""
        if self._model is None:
            self._save_template()

    def _save_template(self) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="vit_exp_pyfunc_")  # removed with the writer
        work = Path(self._workdir.name)
        placeholder = work / "placeholder" / "checkpoint.ckpt"  # each version adds its own checkpoint
        placeholder.parent.mkdir()
        placeholder.touch()
        template = work / "model"
        self._model = save_pyfunc(
            template,
            PYFUNC_MODEL_FILE,
            {"checkpoint": placeholder},
            INFERENCE_CODE,
            pyfunc_signature(int(self.model_config["top_k"])),
            pip_requirements(),
            self.model_config,
        )
        (template / "artifacts" / placeholder.name).unlink()
        self._template_bytes = sum(f.stat().st_size for f in template.rglob("*") if f.is_file())

    def write(
        self, client, model, checkpoint: Path, step: int, run_id: str, network_only: bool = False
    ) -> None:
        """Store the pyfunc model of ``checkpoint`` (its network file only, hard linked on a local store)
        as the artifacts of the LoggedModel ``model``; ``network_only``: ``checkpoint`` is a network
        file held for its version, without its ``.state.ckpt`` beside it."""
        import copy
        import datetime

        from vit_exp.train.state import network_file, state_file

        checkpoint = network_file(checkpoint)  # named by its state file (a resume=X.state.ckpt): the same
        with tempfile.TemporaryDirectory(prefix="vit_exp_network_") as folder:
            earlier_layout = not network_only and not state_file(checkpoint).is_file()
            if earlier_layout:  # a single-file full-state checkpoint
                from vit_exp.models.checkpoint import write_network_checkpoint

                checkpoint = write_network_checkpoint(checkpoint, Path(folder) / checkpoint.name)
            self.prepare()
            mlmodel = copy.deepcopy(self._model)
            mlmodel.flavors["python_function"]["artifacts"]["checkpoint"] = {
                "path": f"artifacts/{checkpoint.name}"
            }
            mlmodel.metadata = {"global_step": step, "checkpoint": checkpoint.name}
            mlmodel.model_uuid = model.model_id
            mlmodel.model_id, mlmodel.run_id = model.model_id, run_id
            mlmodel.utc_time_created = str(datetime.datetime.now(datetime.UTC).replace(tzinfo=None))
            mlmodel.model_size_bytes = checkpoint.stat().st_size + self._template_bytes
            # A local store gets the files straight into place (the checkpoint as a hard link).
            target = local_folder(model.artifact_location)
            staged = target or Path(folder) / "model"
            self._place_shared_files(staged, local=target is not None)
            link_or_copy(checkpoint, staged / "artifacts" / checkpoint.name)
            mlmodel.save(str(staged / "MLmodel"))  # last: a model directory with MLmodel is whole
            if target is None:
                upload_files(client, model.model_id, staged)
            elif self._stored_once is None:
                self._stored_once = target

    def _place_shared_files(self, staged: Path, local: bool) -> None:
        """Put the files every version shares (code zip, environment, pyfunc_model.py) into ``staged``:
        on a local store, hard links of the run's first stored model's files (the code is stored once
        per run), else, or if those are gone, copies."""
        template = Path(self._workdir.name) / "model"
        shared = [f.relative_to(template) for f in template.rglob("*") if f.is_file()]
        if local and self._stored_once is not None:
            try:
                for relative in shared:
                    os.link(self._stored_once / relative, _fresh(staged / relative))
                return
            except OSError:  # moved, deleted or another file system: copy instead
                self._stored_once = None
                for relative in shared:  # unlinked first: a copy must not write through a link
                    (staged / relative).unlink(missing_ok=True)
        shutil.copytree(template, staged, dirs_exist_ok=True)


def upload_files(client, model_id: str, folder: Path) -> None:
    """Upload ``folder``'s files as the model's artifacts, ``MLmodel`` last (it marks the model whole),
    each file its own upload (a failure retries that file, not the folder), ``UPLOADS`` at once."""
    from concurrent.futures import ThreadPoolExecutor

    def upload(path: Path) -> None:
        parent = path.parent.relative_to(folder).as_posix()
        client.log_model_artifact(model_id, str(path), None if parent == "." else parent)

    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name != "MLmodel")
    with ThreadPoolExecutor(UPLOADS, thread_name_prefix="mlflow-upload") as pool:
        list(pool.map(upload, files))  # raises the first failure, once every upload has ended
    upload(folder / "MLmodel")


UPLOADS = 4  # files uploaded at once (a version is 5 small files and its checkpoint)


def write_code_archive(target: Path, code: tuple[str, ...] = INFERENCE_CODE) -> Path:
    """Zip ``code`` (vit_exp's files and folders, sources only) into ``target``, its files under
    ``vit_exp/``; the same code gives the same bytes."""
    import zipfile

    files = []
    for name in code:
        source = PACKAGE_DIR / name
        found = source.rglob("*") if source.is_dir() else [source]
        files += [f for f in found if f.is_file() and f.suffix in CODE_SUFFIXES]
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            entry = zipfile.ZipInfo(f"{PACKAGE_DIR.name}/{path.relative_to(PACKAGE_DIR).as_posix()}")
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
    return target


def local_folder(location: str) -> Path | None:
    """The folder of a local artifact location (a path or ``file://`` URI); None for a remote one."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and location[1:3] in (":/", ":\\")):
        return Path(location)
    return None


def _fresh(target: Path) -> Path:
    """``target``, its folder made and any file there removed (to be written anew)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    return target


def link_or_copy(source: Path, target: Path) -> None:
    _fresh(target)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def version_record(
    checkpoint: Path,
    step: int,
    name: str,
    tags: Mapping[str, object],
    inputs: Path,
    top_k: int,
    hold_in: Path | None = None,
) -> VersionRecord:
    """The outbox record that makes ``checkpoint`` a version of ``name`` (all a later process needs).
    ``hold_in``: where the network file is hard linked until the record is stored, so pruning the
    checkpoint meanwhile loses no version (the record then names the link, ``network_only``)."""
    held = None
    if hold_in is not None:
        from vit_exp.train.state import network_file

        held = hold_in / network_file(checkpoint).name
        link_or_copy(network_file(checkpoint), held)
    return VersionRecord(
        str(held or checkpoint),
        step,
        name,
        {k: str(v) for k, v in tags.items()},
        str(inputs),
        top_k,
        network_only=held is not None,
        release=[str(held)] if held else (),
    )


MODEL_TYPE = "MindSpore ViT image classifier"
VAL_METRICS = ("val/top1", "val/top5", "val/loss")
EMA_VAL_METRICS = ("val_ema/top1", "val_ema/top5", "val_ema/loss")  # a run with trainer.ema on


def register_version(
    client,
    run,
    record: VersionRecord,
    writer: PyfuncModelWriter,
    ensure_model: bool = True,
    check_existing: bool = True,
) -> str | None:
    """Make a version record's checkpoint a LoggedModel of ``run`` (a RunInfo) and register it
    (``record.register``; else None: a LoggedModel only).

    The model is an output of the run at its step, with that step's val metrics; the version's source
    is ``models:/<model_id>``. Files are written directly (``log_model`` would run every version once).
    Exactly once: each create is looked up before a resend (``create_once``), with ``check_existing``
    (a replay, resume or sync) also before it is sent; a PENDING model is completed."""
    from mlflow.entities import LoggedModelStatus

    checkpoint = Path(record.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} is gone; it cannot become a model version")
    name, step = record.name, int(record.step)
    if ensure_model and record.register:
        ensure_registered_model(client, name)
    model = _existing_model(client, run, checkpoint) if check_existing or record.model_logged else None
    completing = model is not None  # a PENDING one may be an output of the run already
    model = model or _create_model(client, run, checkpoint, step)
    if not is_ready(model):
        writer.write(client, model, checkpoint, step, run.run_id, record.network_only)
        dataset = record.dataset or record.tags  # an older journal's record: its tags have the data
        keys = VAL_METRICS + (EMA_VAL_METRICS if "weights" in record.tags else ())  # the weights tag: EMA on
        link_to_run(client, run.run_id, model.model_id, step, dataset, completing, keys)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)  # READY: whole and linked
    if not record.register:
        return None
    version = existing_version(client, name, run.run_id, model.model_id) if check_existing else None
    if version is None:
        version = create_once(
            client,
            lambda: client.create_model_version(
                name,
                source=f"models:/{model.model_id}",
                run_id=run.run_id,
                tags=record.tags,
                description=record.description or None,
                model_id=model.model_id,
            ),
            lambda: existing_version(client, name, run.run_id, model.model_id),
            f"the version of {checkpoint.name}",
        )
    list_version_on_model(client, model.model_id, name, str(version.version))
    return str(version.version)


def _create_model(client, run, checkpoint: Path, step: int):
    return create_once(
        client,
        lambda: client.create_logged_model(
            run.experiment_id,
            name=_model_name(checkpoint),
            source_run_id=run.run_id,
            tags={"checkpoint": checkpoint.name, "global_step": str(step)},
            model_type=MODEL_TYPE,
        ),
        lambda: _existing_model(client, run, checkpoint),
        f"the LoggedModel of {checkpoint.name}",
    )


def _model_name(checkpoint: Path) -> str:
    return checkpoint.name[: -len(".ckpt")].replace(".", "_")


def is_ready(model) -> bool:
    from mlflow.entities import LoggedModelStatus

    return str(model.status) in ("READY", str(LoggedModelStatus.READY))


def _existing_model(client, run, checkpoint: Path):
    """The LoggedModel of ``checkpoint`` in ``run``: READY, else PENDING (to complete), else None."""
    found = client.search_logged_models(
        [run.experiment_id],
        filter_string=f"source_run_id = '{run.run_id}' AND name = '{_model_name(checkpoint)}'",
    )
    ready = [m for m in found if is_ready(m)]
    pending = [m for m in found if str(m.status).endswith("PENDING")]
    return (ready or pending or [None])[0]


def existing_version(client, name: str, run_id: str, model_id: str):
    """The version of registered model ``name`` made from LoggedModel ``model_id`` (None when none)."""
    for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if version.source == f"models:/{model_id}":
            return version
    return None


def link_to_run(
    client,
    run_id: str,
    model_id: str,
    step: int,
    data: Mapping[str, str],
    may_exist: bool = False,
    keys: tuple[str, ...] = VAL_METRICS,
) -> None:
    """Make the model an output of the run at ``step``, with the run's val metrics ``keys`` of that step
    (the same points: the run's history gains none) on the val split of ``data`` (``data.name``,
    ``data.val_digest``); ``may_exist``: it may be an output already."""
    from mlflow.entities import LoggedModelOutput, Metric

    if not (may_exist and _is_output(client, run_id, model_id)):
        create_once(
            client,
            lambda: client.log_outputs(run_id, [LoggedModelOutput(model_id, step)]),
            lambda: _is_output(client, run_id, model_id) or None,
            f"the output {model_id} of run {run_id}",
        )
    dataset = {}
    if data.get("data.name") and data.get("data.val_digest"):
        dataset = {"dataset_name": data["data.name"], "dataset_digest": data["data.val_digest"]}
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, **dataset)
        for key in keys
        for m in client.get_metric_history(run_id, key)
        if m.step == step
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics, synchronous=True)


def _is_output(client, run_id: str, model_id: str) -> bool:
    outputs = client.get_run(run_id).outputs
    return any(o.model_id == model_id for o in (outputs.model_outputs if outputs else []))


def list_version_on_model(client, model_id: str, name: str, version: str) -> None:
    """The ``mlflow.modelVersions`` tag the UI reads (a tracking server sets it; a database store not)."""
    key = "mlflow.modelVersions"
    listed = json.loads(client.get_logged_model(model_id).tags.get(key) or "[]")
    if not any(v.get("name") == name and str(v.get("version")) == version for v in listed):
        listed.append({"name": name, "version": version})
        client.set_logged_model_tags(model_id, {key: json.dumps(listed)})


def model_writer(inputs: Path, top_k: int) -> PyfuncModelWriter:
    """The writer for the versions of a run's model ``inputs`` (config and class names)."""
    import yaml

    config = yaml.safe_load((inputs / "config.yaml").read_text())
    class_names = json.loads((inputs / "class_names.json").read_text())
    return PyfuncModelWriter({"top_k": int(top_k), **config, "class_names": class_names})


def ensure_registered_model(
    client, name: str, description: str = "MindSpore ViT checkpoints registered by vit-exp"
) -> None:
    """Create the registered model ``name`` unless it exists (parallel sweep jobs may race)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=description)
        except MlflowException as exc:
            if not already_exists(exc):
                raise
