"""Decode image files or bytes of any common format into normalised CHW arrays for inference."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from vit_exp.errors import DataError


def decode_rgb(data: bytes, source: str = "image") -> np.ndarray:
    """Decode image bytes (JPEG, PNG, BMP, ...; grayscale, CMYK, RGBA, palette) into HWC uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = opened
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise DataError(f"{source}: not a readable image (unknown image format or corrupt data)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: not a readable image ({type(exc).__name__}: {exc})") from None


def preprocess(
    images: Sequence[np.ndarray], image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Resize each RGB image to ``image_size`` square, normalise, stack as float32 NCHW; uses
    MindSpore's vision ops eagerly, so results equal the ``infer`` pipeline's."""
    from mindspore.dataset import vision

    ops = [
        vision.Resize([image_size, image_size]),
        vision.Normalize(mean=list(mean), std=list(std)),
        vision.HWC2CHW(),
    ]
    out = []
    for image in images:
        array = image
        for op in ops:
            array = op(array)
        out.append(np.asarray(array, dtype=np.float32))
    return np.stack(out)
