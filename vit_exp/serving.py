"""What a served image classifier reads and answers, without MindSpore: the request's image rows
(encoded bytes, base64 over HTTP), one answer row per image (an unreadable one gets its ``error``), and
the NumPy preprocessing the exported models ship. Both pyfunc models (pyfunc_model.py, MindSpore; and
exported_model.py, ONNX Runtime or MindIR) answer through :func:`answer`."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence

import numpy as np

INPUT_COLUMN = "image"
TOP_K = 5
# top_k(images, k) -> (indices, probabilities), each (N, k), best first
TopKFunction = Callable[[list[np.ndarray], int], tuple[np.ndarray, np.ndarray]]


def image_bytes(value) -> bytes:
    """A request value as image bytes: bytes as they are, a string base64-decoded."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode("".join(value.split()), validate=True)  # wrapped lines are fine
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64 (send the image's bytes base64-encoded)") from None
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


def answer(model_input, params: dict | None, default_k: int, class_names: Sequence[str], top_k: TopKFunction):
    """One output row per input row (a DataFrame with an ``image`` column, or a list of values): the
    top-k classes of each readable image, ``error`` (and empty predictions) for each other one."""
    import pandas as pd

    from vit_exp.data.images import decode_rgb
    from vit_exp.errors import DataError

    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise ValueError(f"input needs an '{INPUT_COLUMN}' column of image bytes")
        values = list(model_input[INPUT_COLUMN])
    else:
        values = list(model_input)
    k = min(int((params or {}).get("top_k", default_k)), len(class_names))
    images, errors = {}, {}
    for i, value in enumerate(values):
        try:
            images[i] = decode_rgb(image_bytes(value), source=f"row {i}")
        except (DataError, ValueError) as exc:
            errors[i] = str(exc) if str(exc).startswith(f"row {i}") else f"row {i}: {exc}"
    rows = {i: None for i in range(len(values))}
    if images:
        indices, probabilities = top_k(list(images.values()), k)
        for i, best, p in zip(images, indices, probabilities, strict=True):
            rows[i] = {
                "class_index": int(best[0]),
                "class_name": class_names[best[0]],
                "probability": float(p[0]),
                "top_k_indices": [int(j) for j in best],
                "top_k_names": [class_names[j] for j in best],
                "top_k_probabilities": p.astype(float).tolist(),
                "error": None,
            }
    failed = {"class_index": None, "class_name": None, "probability": None}
    failed |= {"top_k_indices": [], "top_k_names": [], "top_k_probabilities": []}
    records = [row if row is not None else {**failed, "error": errors[i]} for i, row in rows.items()]
    columns = [*failed, "error"]
    if not errors:
        return pd.DataFrame.from_records(records, columns=columns)
    # object columns keep None (JSON null) in the failed rows' fields, not NaN
    return pd.DataFrame({c: pd.Series([r[c] for r in records], dtype=object) for c in columns})


def softmax_top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and softmax probabilities of the ``k`` best classes per row, best first."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(probabilities, order, axis=1)


COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: resize weights are 11-bit fixed point


def _linear_taps(source: int, size: int, clamp_weights: bool):
    """Source indices and fixed-point weights of each output pixel along one axis, as OpenCV's
    ``resize`` computes them (half-pixel centres; columns clamp their weights, rows only their indices)."""
    position = ((np.arange(size) + 0.5) * (source / size) - 0.5).astype(np.float32)
    low = np.floor(position).astype(np.int64)
    fraction = (position - low).astype(np.float32)
    if clamp_weights:
        fraction[low < 0], low[low < 0] = 0, 0
        fraction[low >= source - 1], low[low >= source - 1] = 0, source - 1
    w0 = np.rint((1 - fraction) * COEF_SCALE).astype(np.int64)
    w1 = np.rint(fraction * COEF_SCALE).astype(np.int64)
    return np.clip(low, 0, source - 1), np.clip(low + 1, 0, source - 1), w0, w1


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """An HWC uint8 image resized to ``size`` x ``size`` bit for bit as MindSpore's ``vision.Resize``
    (OpenCV's INTER_LINEAR on uint8: fixed-point weights, its vectorised rounding)."""
    height, width = image.shape[:2]
    x0, x1, a0, a1 = _linear_taps(width, size, clamp_weights=True)
    y0, y1, b0, b1 = _linear_taps(height, size, clamp_weights=False)
    pixels = image.astype(np.int64)
    rows = pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]
    b0, b1 = b0[:, None, None], b1[:, None, None]
    out = (((b0 * (rows[y0] >> 4)) >> 16) + ((b1 * (rows[y1] >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def preprocess(
    images: Sequence[np.ndarray], image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Decoded RGB images (HWC uint8) as the model's float32 NCHW batch: resized, then normalised."""
    mean_array, std_array = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    batch = [(resize_bilinear(image, image_size) - mean_array) / std_array for image in images]
    return np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2), dtype=np.float32)
