"""Fused CPU kernels (GELU, LayerNorm) as MindSpore ``aot`` Custom operators.

MindSpore's CPU backend runs GELU and LayerNorm, and their gradients, as chains of element-wise
kernels, one memory pass each; ``cpu_kernels.cc`` does each in one vectorised, threaded pass.

The library is compiled once per source/compiler/CPU (kernel_build.py). Where that is impossible
(no compiler, not Linux, not a CPU target) ``model.fused_kernels=auto`` falls back to the composed
MindSpore ops with one warning; ``model.fused_kernels=on`` makes it an error.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from vit_exp.errors import ConfigError, KernelBuildError
from vit_exp.models.kernel_build import KernelLibrary

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
FUSED_KERNEL_MODES = ("auto", "on", "off")


_LIBRARY = KernelLibrary(SOURCE)


def kernel_library() -> Path:
    """Path of the compiled kernel library, building it on first use (atomic, cached on disk).

    Raises KernelBuildError saying why when it cannot be built; the outcome is remembered for the
    process (:func:`forget_kernel_library` forgets it).
    """
    return _LIBRARY.path()


def forget_kernel_library() -> None:
    """Forget this process's build outcome (the next :func:`kernel_library` looks again)."""
    _LIBRARY.forget()


def _device_target() -> str:
    return str(ms.get_context("device_target"))


def use_fused_kernels(mode: str) -> bool:
    """Resolve ``model.fused_kernels`` (auto | on | off) to whether this process uses the kernels."""
    mode = str(mode).lower()
    if mode not in FUSED_KERNEL_MODES:
        raise ConfigError(f"model.fused_kernels must be one of {FUSED_KERNEL_MODES}, got {mode!r}")
    if mode == "off":
        return False
    target = _device_target()
    if target != "CPU":
        if mode == "on":
            raise ConfigError(f"model.fused_kernels=on needs device CPU; this run's device is {target}")
        return False
    try:
        kernel_library()
    except KernelBuildError as exc:
        if mode == "on":
            raise ConfigError(f"model.fused_kernels=on but the kernels cannot be built: {exc}") from exc
        _warn_fallback(str(exc))
        return False
    return True


@functools.cache
def _warn_fallback(reason: str) -> None:
    log.warning("fused CPU kernels unavailable (%s); using composed MindSpore ops (slower)", reason)


def _custom(function: str, out_shape, out_dtype) -> ops.Custom:
    return ops.Custom(
        f"{kernel_library()}:{function}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot"
    )


def _same(x, *_):
    return x


def _layer_norm_grad_shapes(x, _dy, gamma, _eps):
    return x, gamma, gamma


def _layer_norm_grad_dtypes(x, *_):
    return x, x, x


class FusedGELU(nn.Cell):
    """GELU (exact erf form, or the tanh approximation) forward and gradient, one kernel each.

    Build it only where :func:`use_fused_kernels` said yes.
    """

    def __init__(self, approximate: bool):
        super().__init__()
        variant = "Tanh" if approximate else "Erf"
        self.forward = _custom(f"Gelu{variant}Forward", _same, _same)
        self.backward = _custom(f"Gelu{variant}Backward", _same, _same)

    def construct(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor):
        return (self.backward(x, dout),)


def _bfloat16(*_):
    return ms.bfloat16


class FusedLayerNorm(nn.Cell):
    """``(x, gamma, beta) -> LayerNorm(x) * gamma + beta`` over the last axis, with its gradient.

    ``bf16_output``: inference hands the result on as bfloat16 (rounded as the bf16 dense kernel
    that reads it would round it); training and fp32 keep float32.
    """

    def __init__(self, epsilon: float, bf16_output: bool = False):
        super().__init__()
        self.epsilon = Tensor([epsilon], ms.float32)
        self.forward = _custom("LayerNormForward", _same, _same)
        self.backward = _custom("LayerNormBackward", _layer_norm_grad_shapes, _layer_norm_grad_dtypes)
        self.bf16_output = bf16_output
        if bf16_output:
            self.forward_bf16 = _custom("LayerNormForwardBf16", _same, _bfloat16)

    def construct(self, x: Tensor, gamma: Parameter, beta: Parameter) -> Tensor:
        if self.bf16_output and not self.training:
            return self.forward_bf16(x, gamma, beta, self.epsilon)
        return self.forward(x, gamma, beta, self.epsilon)

    def bprop(self, x, gamma, beta, out, dout):
        dx, dgamma, dbeta = self.backward(x, dout, gamma, self.epsilon)
        return dx, dgamma, dbeta
