"""bf16 mixed precision for the ViT's dense layers on CPU (``device.precision``).

MindSpore 2.10's CPU MatMul refuses bfloat16 (and runs float16 at float32 speed), so the dense
layers and the attention call oneDNN's bf16 GEMM through ``onednn_kernels.cc`` (onednn.py): MindSpore
``aot`` Custom ops linked against the ``libdnnl.so.3`` inside the MindSpore wheel. Parameters,
optimizer state, activations between layers, reductions (norms, softmax, loss, bias gradients)
and checkpoints stay float32: only the matrix inputs of each multiply are rounded to bfloat16, with
float32 accumulation.

``precision`` is ``fp32``, ``bf16`` or ``auto`` (bf16 where the CPU multiplies bf16 natively:
``avx512_bf16`` or ``amx_bf16``). Where bf16 cannot run (another CPU, no compiler, no oneDNN) the
model falls back to fp32 with one warning.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from vit_exp.errors import ConfigError, KernelBuildError
from vit_exp.models.config import check_precision
from vit_exp.models.onednn import onednn_kernels

log = logging.getLogger(__name__)

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
            onednn_kernels()
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
