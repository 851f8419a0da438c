"""Record an evaluation in MLflow: an eval run linked to the model, and eval tags on its version."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from omegaconf import DictConfig

from vit_exp.tracking.record import MlflowSettings
from vit_exp.tracking.record.lifecycle import tracked_run
from vit_exp.tracking.record.plots import confusion_matrix_png
from vit_exp.tracking.registry.resolve import ModelRef

log = logging.getLogger("vit_exp.tracking")


def write_per_class_csv(report: dict, class_names: list[str], path: Path) -> Path:
    """class_index, class_name, support, correct, accuracy for every class that occurs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class_index", "class_name", "support", "correct", "accuracy"])
        for i, support in enumerate(report["support"]):
            if support:
                correct = int(report["confusion"][i, i])
                writer.writerow([i, class_names[i], int(support), correct, f"{correct / support:.6f}"])
    return path


def log_eval_run(
    cfg: DictConfig,
    client,
    ref: ModelRef,
    data_name: str,
    class_names: list[str],
    report: dict,
    run_dir: Path | None,
    precision_used: str = "fp32",
) -> str | None:
    """Log eval/* metrics and artifacts in a new run and tag the model version; the run id, or None
    when ``mlflow.enabled`` is false. ``precision_used``: the resolved ``device.precision``."""
    from hydra.utils import instantiate

    settings: MlflowSettings = instantiate(cfg.mlflow)
    if not settings.enabled:
        return None
    folder = run_dir or Path(".")
    per_class = write_per_class_csv(report, class_names, folder / "per_class_accuracy.csv")
    picture = confusion_matrix_png(report["confusion"], class_names, folder / "confusion_matrix.png")
    tags = {
        "vit_exp.role": "eval",
        "model_uri": ref.uri,
        "model.registered_name": ref.name or "",
        "model.version": ref.version or "",
        "model.source_run_id": ref.run_id or "",
        "data.name": data_name,
    }
    name = f"eval {ref.name or ref.run_id}{'/' + ref.version if ref.version else ''} on {data_name}"
    with tracked_run(settings, name, tags, run_dir=run_dir) as run:
        run_id = run.info.run_id
        for key in ("top1", "top5", "loss", "count"):
            client.log_metric(run_id, f"eval/{key}", report[key])
        client.log_artifact(run_id, str(per_class))
        client.log_artifact(run_id, str(picture))
        for key, value in {
            "model_uri": ref.uri,
            "data.name": data_name,
            "data.root": str(cfg.data.root),
            "device.precision": str(cfg.device.precision),
            "device.precision_used": precision_used,
        }.items():
            client.log_param(run_id, key, value)
    if ref.name and ref.version and cfg.get("tag_version", True):
        for key in ("top1", "top5", "loss"):
            client.set_model_version_tag(ref.name, ref.version, f"eval/{key}", f"{report[key]:.6g}")
        client.set_model_version_tag(ref.name, ref.version, "eval/data", data_name)
        client.set_model_version_tag(ref.name, ref.version, "eval/run_id", run_id)
    log.info("mlflow: eval run %s; per-class accuracy and confusion matrix logged", run_id)
    return run_id
