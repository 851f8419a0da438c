"""The kernel plan: which C++ kernels a ViT's layers run on, decided once, before the ViT is built.

``model.fused_kernels`` (auto | on | off): the fused GELU/LayerNorm kernels, on a CPU target.
``device.precision`` (fp32 | bf16 | auto): what the dense layers multiply in. MindSpore 2.10's CPU
MatMul refuses bfloat16 (and runs float16 at float32 speed), so bf16 runs them on oneDNN's bf16 GEMM;
parameters, optimizer state, activations between layers, reductions and checkpoints stay float32.
``auto`` is bf16 where the CPU multiplies it natively. Where a kernel cannot run here (another CPU,
no compiler, not Linux) the plan falls back to MindSpore's ops / fp32 with one warning;
``fused_kernels=on`` is an error instead, and so is bf16 off the CPU (use ``device.amp_level``).
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
    """How the layers compute (same maths, same parameters): ``fused`` GELU/LayerNorm kernels, the
    dense layers as oneDNN kernels multiplying in ``dense`` "fp32" / "bf16" (None: MindSpore ops),
    ``attention`` as one fp32 oneDNN kernel each way, and the ``precision`` that amounts to."""

    fused: bool = False
    dense: str | None = None
    attention: bool = False
    precision: str = "fp32"


def plan_kernels(config: ViTConfig, device_target: str) -> KernelPlan:
    """The plan for ``config``'s ``fused_kernels`` and ``precision`` on ``device_target`` (CPU | GPU |
    Ascend), building each library it picks.

    The dense layers run on the oneDNN kernels with bf16 always (MindSpore's MatMul has no bf16),
    and in fp32 with the fused kernels on. Attention runs on its fp32 kernel with either (bf16
    attention cost the default run val accuracy: bench/RESULTS.md); attention dropout keeps the
    composed attention.
    """
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
    if mode == "off":
        return False
    if device_target != "CPU":
        if mode == "on":
            raise ConfigError(
                f"model.fused_kernels=on needs device CPU; this run's device is {device_target}"
            )
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
    if requested == "fp32":
        return "fp32"
    if device_target != "CPU":
        if requested == "bf16":
            raise ConfigError(
                f"device.precision=bf16 is for the CPU; on {device_target} use device.amp_level (e.g. O2)"
            )
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
    """Log ``message % reason`` as a warning, once per process for each message and reason."""
    log.warning(message, reason)
