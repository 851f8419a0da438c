"""The kernel plan: which C++ kernels a ViT's layers run on, decided once, before the ViT is built.

``model.fused_kernels`` (auto | on | off): fused GELU/LayerNorm kernels on CPU. ``device.precision``
(fp32 | bf16 | auto, bf16 where the CPU has it natively): bf16 runs the dense layers on oneDNN's bf16
GEMM (MindSpore's CPU MatMul refuses bfloat16), all else stays float32. A kernel that cannot run here
falls back to MindSpore's ops / fp32 with one warning (``fused_kernels=on`` or bf16 off CPU: an error).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from vit_exp.errors import ConfigError, KernelBuildError
from vit_exp.models.config import ViTConfig, check_precision
from vit_exp.models.kernels.build import CPU_KERNELS, ONEDNN_KERNELS, KernelLibrary
from vit_exp.models.kernels.cpu import BF16_CPU_FLAGS, cpu_has_bf16

log = logging.getLogger(__name__)

FUSED_KERNEL_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class KernelPlan:
    """How the layers compute (same maths and parameters): ``fused`` GELU/LayerNorm, oneDNN ``dense``
    layers in "fp32" / "bf16" (None: MindSpore ops), a fp32 oneDNN ``attention``, the ``precision``."""

    fused: bool = False
    dense: str | None = None
    attention: bool = False
    precision: str = "fp32"


def plan_kernels(config: ViTConfig, device_target: str) -> KernelPlan:
    """The plan for ``config``'s ``fused_kernels`` and ``precision`` on ``device_target`` (CPU | GPU |
    Ascend), building each library it picks. Dense layers run on oneDNN with bf16, or fp32 with the
    fused kernels; attention then runs on its fp32 kernel (bf16 attention cost val accuracy), unless
    attention dropout is on."""
    fused = _fused(config.fused_kernels, device_target)
    precision = _precision(config.precision, device_target)
    if precision == "bf16":
        dense = "bf16"
    elif fused and _available(
        ONEDNN_KERNELS, "oneDNN dense/attention kernels unavailable (%s); using MindSpore's ops (slower)"
    ):
        dense = "fp32"
    else:
        dense = None
    return KernelPlan(fused, dense, dense is not None and config.attention_keep_prob == 1.0, precision)


def current_device_target() -> str:
    """MindSpore's device target in this process (CPU | GPU | Ascend), for callers that do not know it."""
    import mindspore as ms

    return str(ms.get_context("device_target"))


def _fused(mode: str, device_target: str) -> bool:
    mode = str(mode).lower()
    if mode not in FUSED_KERNEL_MODES:
        raise ConfigError(f"model.fused_kernels must be one of {FUSED_KERNEL_MODES}, got {mode!r}")
    if mode == "on" and device_target != "CPU":
        raise ConfigError(f"model.fused_kernels=on needs device CPU; this run's device is {device_target}")
    if mode == "off" or device_target != "CPU":
        return False
    if mode == "on":
        error = _build_error(CPU_KERNELS)
        if error is not None:
            raise ConfigError(f"model.fused_kernels=on but the kernels cannot be built: {error}")
        return True
    return _available(
        CPU_KERNELS, "fused CPU kernels unavailable (%s); using composed MindSpore ops (slower)"
    )


def _precision(precision: str, device_target: str) -> str:
    requested = check_precision(precision)
    if requested == "bf16" and device_target != "CPU":
        raise ConfigError(
            f"device.precision=bf16 is for the CPU; on {device_target} use device.amp_level (e.g. O2)"
        )
    if requested == "fp32" or device_target != "CPU":
        return "fp32"
    if not cpu_has_bf16():
        reason = f"this CPU has none of {', '.join(BF16_CPU_FLAGS)}"
    else:
        reason = _build_error(ONEDNN_KERNELS)
    if reason is None:
        return "bf16"
    if requested == "bf16":
        warn_once("device.precision=bf16 is not available (%s); training in fp32", reason)
    else:
        log.info("device.precision=auto: fp32 (%s)", reason)
    return "fp32"


def _build_error(library: KernelLibrary) -> str | None:
    try:
        library.path()
    except KernelBuildError as exc:
        return str(exc)
    return None


def _available(library: KernelLibrary, fallback: str) -> bool:
    """Whether ``library`` builds here; if not, warn once with ``fallback % why``."""
    error = _build_error(library)
    if error is not None:
        warn_once(fallback, error)
    return error is None


@functools.cache
def warn_once(message: str, reason: str) -> None:
    log.warning(message, reason)
