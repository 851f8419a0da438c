"""A trained ViT written as ONNX or MindIR, and the check that the file computes what the ViT does.

Exports start from the reference layers (``KernelPlan()``: MindSpore's own ops, no C++ kernels, which no
exporter or other runtime knows) with the trained parameters; ONNX is written by ``onnx_graph.py``,
MindIR by ``mindspore.export`` with a dynamic batch size. Both take (batch, 3, S, S) float32 images,
preprocessed as for training, and return logits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vit_exp.errors import ExportError

FORMATS = {"onnx": "model.onnx", "mindir": "model.mindir"}  # format -> the file it is written as
TOLERANCE = 1e-4  # max |logit difference| from the fp32 MindSpore model an export may have
CHECK_BATCH = 8
TOP_K = 5


def check_format(name: str) -> str:
    """``name`` if it is an export format, else an ExportError listing them."""
    if name not in FORMATS:
        raise ExportError(f"format={name}: no such export format; choose one of: {', '.join(FORMATS)}")
    return name


@dataclass(frozen=True)
class ExportCheck:
    """How an export's logits compare with the fp32 MindSpore model's on the same batch."""

    max_abs_diff: float
    top_k_equal: bool
    images: int
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top_k_equal

    def describe(self) -> str:
        top = "identical" if self.top_k_equal else "DIFFERENT"
        tolerance = f"tolerance {self.tolerance:g}"
        return f"max |logit difference| {self.max_abs_diff:.2e} ({tolerance}), top-{TOP_K} {top}"


def reference_vit(net):
    """A ViT with ``net``'s architecture and parameters on the reference layers (exportable ops)."""
    import mindspore as ms

    from vit_exp.models.kernels.plan import KernelPlan
    from vit_exp.models.vit import ViT

    reference = ViT(net.config, KernelPlan())
    ms.load_param_into_net(
        reference, {p.name: ms.Parameter(p.data.copy(), p.name) for p in net.get_parameters()}
    )
    reference.set_train(False)
    return reference


def write_export(net, fmt: str, folder: Path) -> Path:
    """Write ``net`` (any kernel plan) as ``fmt`` into ``folder``; return the file."""
    import mindspore as ms

    target = folder / FORMATS[check_format(fmt)]
    folder.mkdir(parents=True, exist_ok=True)
    reference = reference_vit(net)
    if fmt == "onnx":
        import onnx

        from vit_exp.models.onnx_graph import vit_onnx

        params = {p.name: p.asnumpy() for p in reference.get_parameters()}
        onnx.save_model(vit_onnx(reference.config, params), str(target))
    else:
        size = reference.config.image_size
        images = ms.Tensor(shape=[None, 3, size, size], dtype=ms.float32)
        ms.export(reference, images, file_name=str(target.with_suffix("")), file_format="MINDIR")
    if not target.is_file():
        raise ExportError(f"the {fmt} export did not write {target}")
    return target


def exported_logits(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """The logits of an export file for a preprocessed batch, computed by its runtime (ONNX Runtime
    for ONNX, MindSpore's GraphCell for MindIR)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images})[0]
    import mindspore as ms

    return ms.nn.GraphCell(ms.load(str(path)))(ms.Tensor(images)).asnumpy()


def check_batch(image_size: int, size: int = CHECK_BATCH) -> np.ndarray:
    """A fixed batch of normalised-looking images (standard normal pixels, seed 0)."""
    return np.random.default_rng(0).standard_normal((size, 3, image_size, image_size)).astype(np.float32)


def compare(reference: np.ndarray, exported: np.ndarray, tolerance: float = TOLERANCE) -> ExportCheck:
    """Max |difference| of two batches of logits and whether their top-k classes (in order) agree."""
    k = min(TOP_K, reference.shape[1])
    order = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    theirs = np.argsort(-exported, axis=1, kind="stable")[:, :k]
    difference = float(np.abs(reference - exported).max()) if reference.shape == exported.shape else np.inf
    return ExportCheck(difference, bool((order == theirs).all()), len(reference), tolerance)


def check_export(net, path: Path, fmt: str, tolerance: float = TOLERANCE) -> ExportCheck:
    """Compare the export at ``path`` with ``net`` (in fp32) on :func:`check_batch`."""
    import mindspore as ms

    images = check_batch(net.config.image_size)
    net.set_train(False)
    return compare(net(ms.Tensor(images)).asnumpy(), exported_logits(path, fmt, images), tolerance)
