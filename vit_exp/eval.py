"""Evaluate a registered ViT on a val split and log an MLflow eval run:
``python -m vit_exp.eval model_uri=models:/NAME/V [data=...]``."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from vit_exp.cli import hydra_run_dir, make_main
from vit_exp.errors import DataError, positive_int

log = logging.getLogger("vit_exp.eval")


def predict_dataset(predictor, dataset):
    """Softmax probabilities and labels for every batch of a MindSpore dataset."""
    import numpy as np

    probs, labels = [], []
    for images, batch_labels in dataset.create_tuple_iterator(output_numpy=True):
        probs.append(predictor.probabilities(images))
        labels.append(batch_labels)
    return np.concatenate(probs), np.concatenate(labels)


def check_classes_fit(data, model_classes: list[str], ref) -> None:
    """DataError unless every label of ``data`` is a class of the model with the same index and name
    (a subset passes: 5 ImageNet folders with ``class_map=imagenet`` against a 1000-class model)."""
    names = list(data.class_names)
    for folder, label in sorted(data.class_indexing.items(), key=lambda item: item[1]):
        ours = names[label] if label < len(names) else folder
        theirs = model_classes[label] if label < len(model_classes) else None
        if ours != theirs:
            trained_on = ref.tags.get("data.name") if ref.tags else None
            model = f"{ref.uri}" + (f" (trained on {trained_on})" if trained_on else "")
            found = f"'{theirs}'" if theirs is not None else f"no class {label} (it has {len(model_classes)})"
            raise DataError(
                f"data {data.name} ({data.root}, class_map={data.class_map}) does not fit {model}: "
                f"folder {folder} is label {label} '{ours}', the model has {found}; "
                "evaluate on the data the model was trained for (same class indices and names)"
            )


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.model_uri`` on ``cfg.data``'s val split; log an eval run; return the metrics."""
    from hydra.utils import instantiate

    from vit_exp.data.pipeline import val_dataset
    from vit_exp.tracking.record.eval_run import log_eval_run
    from vit_exp.tracking.registry.resolve import load_predictor, resolve
    from vit_exp.tracking.store import use_store
    from vit_exp.train.metrics import classification_report

    batch_size = positive_int("batch_size", cfg.batch_size)
    client = use_store(cfg.mlflow.tracking_uri)
    ref = resolve(client, cfg.model_uri)
    device = instantiate(cfg.device)
    device.apply()
    predictor = load_predictor(ref.pinned_uri, device.precision)
    data = instantiate(cfg.data)
    data.mean, data.std = predictor.mean, predictor.std  # normalise as the model was trained
    check_classes_fit(data, predictor.class_names, ref)
    source = f"version {ref.version}" if ref.version else "run"
    log.info(f"evaluating {ref.uri} ({source}) on {data.root}/{data.val_split}")
    probabilities, labels = predict_dataset(predictor, val_dataset(data, predictor.image_size, batch_size))
    report = classification_report(probabilities, labels, len(predictor.class_names))
    scores = f"top1 {report['top1']:.4f}  top5 {report['top5']:.4f}  loss {report['loss']:.4f}"
    log.info(f"eval on {report['count']} images: {scores}")
    log_eval_run(
        cfg, client, ref, data.name, predictor.class_names, report, hydra_run_dir(), predictor.net.precision
    )
    return {k: report[k] for k in ("top1", "top5", "loss", "count")}


main = make_main("eval", evaluate)

if __name__ == "__main__":
    main()
