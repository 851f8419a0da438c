"""Fused CPU kernels (GELU, LayerNorm) as MindSpore ``aot`` Custom operators.

MindSpore's CPU backend runs GELU and LayerNorm, and their gradients, as chains of element-wise
kernels, one memory pass each; ``cpu_kernels.cc`` does each in one vectorised, threaded pass.

The library is compiled once per source/compiler/CPU with ``g++`` into ``$VIT_EXP_KERNEL_CACHE``
(default ``~/.cache/vit_exp/kernels``). Where that is impossible (no compiler, not Linux, not a CPU
target) ``model.fused_kernels=auto`` falls back to the composed MindSpore ops with one warning;
``model.fused_kernels=on`` makes it an error.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from vit_exp.errors import ConfigError, KernelBuildError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
COMPILE_FLAGS = (
    "-O3",
    "-march=native",
    "-fno-trapping-math",
    "-fopenmp-simd",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-pthread",
)
FUSED_KERNEL_MODES = ("auto", "on", "off")


def kernel_cache_dir() -> Path:
    """Where compiled kernel libraries are kept (``VIT_EXP_KERNEL_CACHE`` or ``~/.cache/vit_exp/kernels``)."""
    return Path(os.environ.get("VIT_EXP_KERNEL_CACHE", "~/.cache/vit_exp/kernels")).expanduser()


def _cpu_signature() -> str:
    """The CPU model and feature flags (``-march=native`` output is only valid on a matching CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted))


def kernel_library() -> Path:
    """Path of the compiled kernel library, building it on first use (atomic, cached on disk).

    Raises KernelBuildError saying why when it cannot be built; the outcome is remembered for the
    process (:func:`forget_kernel_library` forgets it).
    """
    outcome = _build_once()
    if isinstance(outcome, KernelBuildError):
        raise outcome
    return outcome


@functools.cache
def _build_once() -> Path | KernelBuildError:
    try:
        return _build()
    except KernelBuildError as exc:
        return exc
    except OSError as exc:
        return KernelBuildError(f"cannot write the kernel cache {kernel_cache_dir()}: {exc}")


def forget_kernel_library() -> None:
    """Forget this process's build outcome (the next :func:`kernel_library` looks again)."""
    _build_once.cache_clear()


def _build() -> Path:
    if platform.system() != "Linux":
        raise KernelBuildError(f"MindSpore aot kernels need Linux, this is {platform.system()}")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (install g++ or set CXX)")
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join(COMPILE_FLAGS).encode() + compiler.encode() + _cpu_signature().encode()
    ).hexdigest()[:16]
    target = kernel_cache_dir() / f"vit_exp_cpu_kernels_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *COMPILE_FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True
        )
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
            raise KernelBuildError(f"compiling {SOURCE.name} failed: {first}")
        os.replace(built, target)  # atomic: concurrent builders (sweeps) never see a partial file
    log.info("built fused CPU kernels: %s", target)
    return target


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


class FusedLayerNorm(nn.Cell):
    """``(x, gamma, beta) -> LayerNorm(x) * gamma + beta`` over the last axis, with its gradient."""

    def __init__(self, epsilon: float):
        super().__init__()
        self.epsilon = Tensor([epsilon], ms.float32)
        self.forward = _custom("LayerNormForward", _same, _same)
        self.backward = _custom("LayerNormBackward", _layer_norm_grad_shapes, _layer_norm_grad_dtypes)

    def construct(self, x: Tensor, gamma: Parameter, beta: Parameter) -> Tensor:
        return self.forward(x, gamma, beta, self.epsilon)

    def bprop(self, x, gamma, beta, out, dout):
        dx, dgamma, dbeta = self.backward(x, dout, gamma, self.epsilon)
        return dx, dgamma, dbeta
