"""bf16 mixed precision for the ViT's dense layers on CPU (``device.precision``).

MindSpore 2.10's CPU MatMul refuses bfloat16 (and runs float16 at float32 speed), so the dense
layers call oneDNN's bf16 GEMM through ``bf16_kernels.cc``, a MindSpore ``aot`` Custom op linked
against the ``libdnnl.so.3`` that ships inside the MindSpore wheel. Parameters, optimizer state,
activations between layers, reductions (norms, softmax, loss, bias gradients) and checkpoints stay
float32: only the matrix inputs of each multiply are rounded to bfloat16, with float32 accumulation.

``precision`` is ``fp32``, ``bf16`` or ``auto`` (bf16 where the CPU multiplies bf16 natively:
``avx512_bf16`` or ``amx_bf16``). Where bf16 cannot run (another CPU, no compiler, no oneDNN) the
model falls back to fp32 with one warning.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from vit_exp.errors import ConfigError, KernelBuildError
from vit_exp.models.config import PRECISIONS
from vit_exp.models.kernel_build import build_library

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("bf16_kernels.cc")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The feature flags of this machine's CPU (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def onednn_library() -> Path:
    """The oneDNN library inside the MindSpore wheel (``mindspore/lib/libdnnl.so.3``)."""
    import mindspore

    path = Path(mindspore.__file__).parent / "lib" / "libdnnl.so.3"
    if not path.exists():
        raise KernelBuildError(f"this MindSpore has no oneDNN library ({path} is missing)")
    return path


def bf16_library() -> Path:
    """Path of the compiled bf16 kernel library, built on first use (see :mod:`kernel_build`)."""
    outcome = _build_once()
    if isinstance(outcome, KernelBuildError):
        raise outcome
    return outcome


@functools.cache
def _build_once() -> Path | KernelBuildError:
    try:
        onednn = onednn_library()
        return build_library(SOURCE, (str(onednn), f"-Wl,-rpath,{onednn.parent}"))
    except KernelBuildError as exc:
        return exc


def forget_bf16_library() -> None:
    """Forget this process's build outcome (the next :func:`bf16_library` looks again)."""
    _build_once.cache_clear()


def check_precision(precision: str) -> str:
    """``precision`` lower-cased, or a ConfigError naming ``device.precision``."""
    value = str(precision).lower()
    if value not in PRECISIONS:
        raise ConfigError(f"device.precision must be one of {PRECISIONS}, got {precision!r}")
    return value


def resolve_precision(precision: str, device_target: str) -> str:
    """What the dense layers compute in here: ``"bf16"`` or ``"fp32"``.

    ``bf16`` on a CPU without native bf16, or where the kernels cannot be built, falls back to fp32
    with one warning; ``auto`` picks bf16 only where it is native and buildable, and says so at INFO.
    bf16 is a CPU setting: on GPU/Ascend use ``device.amp_level``.
    """
    requested = check_precision(precision)
    if requested == "fp32":
        return "fp32"
    if device_target != "CPU":
        if requested == "bf16":
            raise ConfigError(
                f"device.precision=bf16 is for the CPU; on {device_target} use device.amp_level (e.g. O2)"
            )
        return "fp32"
    reason = None if cpu_has_bf16() else f"this CPU has none of {', '.join(BF16_CPU_FLAGS)}"
    if reason is None:
        try:
            bf16_library()
        except KernelBuildError as exc:
            reason = str(exc)
    if reason is None:
        return "bf16"
    if requested == "bf16":
        _warn_fallback(reason)
    else:
        log.info("device.precision=auto: fp32 (%s)", reason)
    return "fp32"


@functools.cache
def _warn_fallback(reason: str) -> None:
    log.warning("device.precision=bf16 is not available (%s); training in fp32", reason)


def _dense_grad_shapes(x, w, _dy):
    return x, w, [w[0]]


def _dense_grad_dtypes(x, *_):
    return x, x, x


def _dense_shape(x, w, _b):
    return [*x[:-1], w[0]]


def _same_dtype(x, *_):
    return x


def dense_cells():
    """The (forward, backward) Custom ops of a bf16 dense layer ``x @ w.T + b`` (fp32 in and out)."""
    from mindspore import ops

    library = bf16_library()

    def custom(function: str, shapes, dtypes):
        return ops.Custom(f"{library}:{function}", out_shape=shapes, out_dtype=dtypes, func_type="aot")

    return (
        custom("Bf16DenseForward", _dense_shape, _same_dtype),
        custom("Bf16DenseBackward", _dense_grad_shapes, _dense_grad_dtypes),
    )
