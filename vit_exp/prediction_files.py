"""The files a predict run writes: JSON and CSV tables, and image copies with the predicted label drawn on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def write_predictions(rows: list[dict], failures: list[dict], model_uri: str, out_dir: Path) -> list[Path]:
    """``predictions.json`` (everything) and ``predictions.csv`` (one line per file and rank)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "predictions.json"
    json_path.write_text(
        json.dumps({"model_uri": model_uri, "predictions": rows, "errors": failures}, indent=2)
    )
    csv_path = out_dir / "predictions.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "rank", "class_index", "class_name", "probability"])
        writer.writerows(
            [row["file"], item["rank"], item["class_index"], item["class_name"], f"{item['probability']:.6f}"]
            for row in rows
            for item in row["top_k"]
        )
    return [json_path, csv_path]


def annotate_images(rows: list[dict], images: list[np.ndarray], base: Path, folder: Path) -> None:
    """Save each image (HWC uint8 RGB) with its top-1 class written in a band across its top, as a PNG
    under ``folder`` (the layout of the inputs under ``base``)."""
    from PIL import Image, ImageDraw, ImageFont

    for row, image in zip(rows, images, strict=True):
        best = row["top_k"][0]
        label = f"{best['class_index']} {best['class_name']} ({best['probability']:.1%})"
        picture = Image.fromarray(image)
        if picture.width < 224:  # tiny inputs (e.g. 8x8 digits) are enlarged so the text is legible
            scale = 224 / picture.width
            picture = picture.resize((224, max(1, round(picture.height * scale))), Image.NEAREST)
        draw = ImageDraw.Draw(picture)
        font = ImageFont.load_default(size=max(12, picture.width // 16))
        box = draw.textbbox((0, 0), label, font=font)
        draw.rectangle((0, 0, box[2] + 8, box[3] + 8), fill=(0, 0, 0))
        draw.text((4, 4), label, fill=(255, 255, 0), font=font)
        path = folder / Path(row["file"]).relative_to(base).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
