"""Predict image files with a registered ViT: top-k classes per image as JSON, CSV and labelled copies.

python -m vit_exp.predict model_uri=models:/NAME@champion inputs=<file or folder>
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from vit_exp.cli import hydra_run_dir, make_main
from vit_exp.errors import DataError, positive_int

log = logging.getLogger("vit_exp.predict")


def collect_inputs(inputs: str | Path) -> tuple[Path, list[Path]]:
    """The base folder and the files to predict (a single file, or every file under a folder)."""
    path = Path(inputs).expanduser()
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"inputs: folder {path} has no files")
        return path, files
    raise DataError(f"inputs: no such file or folder: {path}")


def decode_images(files: list[Path]) -> tuple[list, list[Path], list[dict]]:
    """The decoded images, their files, and a ``{"file", "error"}`` row for each unreadable one."""
    from vit_exp.data.images import decode_rgb

    images, readable, failures = [], [], []
    for path in files:
        try:
            images.append(decode_rgb(path.read_bytes(), source=str(path)))
            readable.append(path)
        except (DataError, OSError) as exc:
            failures.append({"file": str(path), "error": str(exc)})
            log.warning("skipped %s: not a readable image", path)
    return images, readable, failures


def predict(cfg: DictConfig) -> list[dict]:
    """Predict ``cfg.inputs`` with ``cfg.model_uri``; write predictions; return them."""
    from hydra.utils import instantiate

    from vit_exp.prediction_files import annotate_images, write_predictions
    from vit_exp.tracking.registry.resolve import load_predictor, resolve
    from vit_exp.tracking.store import use_store

    top_k, batch_size = positive_int("top_k", cfg.top_k), positive_int("batch_size", cfg.batch_size)
    base, files = collect_inputs(cfg.inputs)
    client = use_store(cfg.mlflow.tracking_uri)
    ref = resolve(client, cfg.model_uri)
    device = instantiate(cfg.device)
    device.apply()
    predictor = load_predictor(ref.pinned_uri, device.precision)
    images, readable, failures = decode_images(files)
    if not images:
        raise DataError(f"inputs: none of the {len(files)} file(s) under {cfg.inputs} is a readable image")
    top = predictor.top_k(images, k=top_k, batch_size=batch_size)
    names = predictor.class_names
    rows = [
        {
            "file": str(path),
            "top_k": [
                {"rank": r + 1, "class_index": int(i), "class_name": names[i], "probability": float(p)}
                for r, (i, p) in enumerate(zip(top.indices[n], top.probabilities[n], strict=True))
            ],
        }
        for n, path in enumerate(readable)
    ]
    out_dir = Path(cfg.output_dir) if cfg.output_dir else (hydra_run_dir() or Path("predictions"))
    written = write_predictions(rows, failures, ref.uri, out_dir)
    if cfg.annotate:
        annotate_images(rows, images, base, out_dir / "annotated")
    for row in rows:
        best = row["top_k"][0]
        log.info(
            "%s: %s %s (%.4f)", row["file"], best["class_index"], best["class_name"], best["probability"]
        )
    unreadable = f", {len(failures)} unreadable" if failures else ""
    log.info(
        f"predicted {len(rows)} image(s){unreadable} with {ref.uri}; wrote {', '.join(map(str, written))}"
    )
    return rows


main = make_main("predict", predict)

if __name__ == "__main__":
    main()
